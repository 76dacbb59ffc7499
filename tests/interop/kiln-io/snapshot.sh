#!/bin/bash
# -s: writes go to a temporary copy-on-write overlay and vanish on exit. The
# overlay's 64 KiB clusters give the same map/alloc picture as qemu's
# temporary qcow2 overlay.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

make_image base.img 4M
before=$(file_hash base.img)

compare_io "snapshot writes and reads" base.img -f raw -s \
  -c 'write -P 7 64k 64k' -c 'write -P 8 200k 1k' -c 'write -z 1M 64k' -c 'discard 2M 64k' -c 'writev -P 9 3M 100 200' \
  -c 'aio_write -P 10 3500k 4k' -c aio_flush \
  -c map -c 'alloc 0 4M' -c 'alloc 3M 2M' -c 'alloc 64k' -c 'alloc 60k 8k' -c 'alloc 4194000 1000' -c length \
  -c 'read -P 7 64k 64k' -c 'read -P 8 200k 1k' -c 'read -P 0 1M 64k' -c 'read -P 9 3M 300' -c 'read -v 196k 16' \
  -c 'read -v 100 20' -c 'read -v 128k 32' -c 'read -P 10 3500k 4k'
expect_equal "qemu-io -s left the image alone" "$before" "$(file_hash q.img)"
expect_equal "kiln-io -s left the image alone" "$before" "$(file_hash k.img)"

compare_io "snapshot partial clusters keep base data" base.img -f raw -s \
  -c 'write -P 1 131073 10' -c 'read -v 131056 48' -c 'write -P 2 196600 16' -c 'read -v 196592 32' -c map

compare_io "snapshot truncate" base.img -f raw -s -c 'truncate 8M' -c length -c 'read -P 0 4M 4M' \
  -c 'write -P 3 7M 4k' -c 'truncate 1M' -c length -c 'truncate 4M' -c 'read -P 0 1M 3M' -c 'read -v 100 20'

compare_io "snapshot read-only" base.img -f raw -s -r -c 'write 0 1' -c 'read -v 100 20'

# Interactive, over several commands, then the image is unchanged.
cp base.img k.img
printf 'write -P 0x55 0 1M\nread -P 0x55 0 1M\n' | "$KILN_IO" -f raw -s k.img > interactive.out
check "interactive -s reads its own writes" bash -c "! grep -q 'verification failed' interactive.out"
expect_equal "interactive -s left the image alone" "$before" "$(file_hash k.img)"

# The base is opened read-only, so a writer elsewhere is not locked out.
cp base.img shared.img
mkfifo holder.fifo
"$KILN_IO" -f raw -s shared.img < holder.fifo > holder.out 2>&1 &
holder=$!
exec 3> holder.fifo
trap 'exec 3>&-; kill $holder 2>/dev/null || true; wait $holder 2>/dev/null || true; cleanup_test_dir' EXIT
echo 'write -P 0x66 3M 64k' >&3
# Output reaches the file when the next prompt is flushed.
for _ in $(seq 50); do grep -q '^qemu-io> wrote' holder.out && break; sleep 0.1; done
check "the -s holder is running" grep -q 'wrote 65536/65536 bytes at offset 3145728' holder.out
check "a writer may open an image held by -s" "$QEMU_IO" -f raw -c 'write -q -P 0x77 64k 64k' shared.img
echo 'read -P 0x66 3M 64k' >&3
echo 'quit' >&3
exec 3>&-
wait $holder
check "the -s session saw only its own writes" bash -c "! grep -q 'verification failed' holder.out"
check "the image has the other writer's data only" "$QEMU_IO" -f raw -c 'read -q -P 0x77 64k 64k' -c 'read -q -P 0 3M 64k' shared.img

# The temporary overlay lives in $TMPDIR and is unlinked: nothing is left behind.
mkdir overlay-tmp
cp base.img k.img
TMPDIR=$PWD/overlay-tmp "$KILN_IO" -f raw -s -c 'write -P 1 0 1M' k.img > /dev/null
expect_equal "no overlay file left in TMPDIR" "" "$(ls -A overlay-tmp)"
status=0
TMPDIR=$PWD/no-such-dir "$KILN_IO" -f raw -s -c 'write -P 1 0 1M' k.img > /dev/null 2> tmpdir.err || status=$?
expect_equal "missing TMPDIR fails" 1 "$status"
expect_equal "missing TMPDIR: one-line error" 1 "$(wc -l < tmpdir.err)"

finish
