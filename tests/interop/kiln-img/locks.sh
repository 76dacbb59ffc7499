# Kiln and QEMU honour each other's image locks (OFD byte-range locks at qemu's offsets).
source "$(dirname "$0")/common.sh"

qemu-img create -q -f raw img.raw 64M
holder=""
stop_holder() { if [ -n "$holder" ]; then kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true; holder=""; fi; }
trap 'stop_holder; cleanup_test_dir' EXIT

# wait_for_writer FILE: until a process holds locks on FILE (or ~10 s pass).
# Read from /proc/locks: probing by opening the image would race with the
# holder's own open and could make it fail instead.
wait_for_writer() {
  local inode
  inode=$(stat -c %i "$1")
  for _ in $(seq 100); do
    grep -qE "OFDLCK.*:${inode} " /proc/locks && return 0
    sleep 0.1
  done
  return 1
}

# QEMU holds the image for writing: Kiln may not write it; raw readers may read (as qemu's).
mkfifo qemu-commands
qemu-io -f raw img.raw <qemu-commands >/dev/null 2>&1 &
holder=$!
exec 7>qemu-commands
check "qemu-io holds the lock" wait_for_writer img.raw
message=$("$KILN_IMG" resize -f raw img.raw 128M 2>&1 || true)
expect_equal "kiln-img resize refused with a one-line lock message" \
  "kiln-img: Could not open 'img.raw': Failed to get shared \"write\" lock (is another process using the image?)" "$message"
expect_status "kiln-img convert -n into it refused" 1 "$KILN_IMG" convert -n -f raw -O raw img.raw img.raw
expect_status "kiln-img bench -w refused" 1 "$KILN_IMG" bench -w -c 1 -f raw img.raw
expect_status "kiln-img map (a raw reader) allowed, as qemu-img map" 0 "$KILN_IMG" map -f raw img.raw
expect_status "kiln-img info allowed" 0 "$KILN_IMG" info -f raw img.raw
expect_equal "image size untouched" "67108864" "$(stat -c %s img.raw)"
echo quit >&7
exec 7>&-
wait "$holder" 2>/dev/null || true
holder=""
expect_status "free again after qemu-io quits" 0 "$KILN_IMG" resize -f raw img.raw 128M

# Kiln holds the image for writing (a long write benchmark): QEMU may not write it.
"$KILN_IMG" bench -w -c 100000000 -d 1 -f raw img.raw >/dev/null 2>&1 &
holder=$!
check "kiln-img holds the lock" wait_for_writer img.raw
message=$(qemu-io -f raw -c "write 0 4k" img.raw 2>&1 || true)
check "qemu-io write refused: write lock" grep -q 'Failed to get "write" lock' <<<"$message"
expect_status "qemu-img resize refused" 1 qemu-img resize -f raw img.raw 256M
expect_status "qemu-img map (a raw reader) allowed" 0 qemu-img map -f raw img.raw
stop_holder

# qcow2 readers cache metadata, so they do not share writes (as qemu's): while
# qemu-io writes a qcow2 image, kiln-img info is refused unless -U forces sharing.
qemu-img create -q -f qcow2 img.qcow2 64M
mkfifo qemu-qcow2-commands
qemu-io -f qcow2 img.qcow2 <qemu-qcow2-commands >/dev/null 2>&1 &
holder=$!
exec 7>qemu-qcow2-commands
check "qemu-io holds the qcow2 lock" wait_for_writer img.qcow2
expect_status "qemu-img info refused" 1 qemu-img info img.qcow2
message=$("$KILN_IMG" info img.qcow2 2>&1 || true)
expect_equal "kiln-img info refused, as qemu-img info" \
  "kiln-img: Could not open 'img.qcow2': Failed to get shared \"write\" lock (is another process using the image?)" "$message"
expect_status "kiln-img info -U allowed" 0 "$KILN_IMG" info -U img.qcow2
echo quit >&7
exec 7>&-
wait "$holder" 2>/dev/null || true
holder=""
expect_status "kiln-img info once qemu-io quits" 0 "$KILN_IMG" info img.qcow2

# Two Kiln writers exclude each other too.
"$KILN_IMG" bench -w -c 100000000 -d 1 -f raw img.raw >/dev/null 2>&1 &
holder=$!
check "first kiln writer holds the lock" wait_for_writer img.raw
expect_status "second kiln writer refused" 1 "$KILN_IMG" bench -w -c 1 -f raw img.raw
stop_holder

finish
