#!/bin/bash
# kiln-nbd's command line against qemu-nbd's behaviour: one client without
# -t, -t, -x/-D, -o, -s, --discard/--detect-zeroes, --pid-file, --fork,
# socket activation, SIGTERM flushing, --image-opts, option errors.
source "$KILN_INTEROP_LIB"
source "$(dirname "${BASH_SOURCE[0]}")/nbd_lib.sh"

qemu-img create -q -f raw disk.raw 8M
qemu-io -f raw -c 'write -P 0x77 0 1M' disk.raw >/dev/null

# Without -t the server exits after its client leaves, as qemu-nbd does.
"$KILN_NBD" -f raw -r -k "$TEST_DIR/k.sock" disk.raw &
pid=$!
wait_for_socket k.sock
nbdinfo --size "$(uri k.sock)" >/dev/null
status=0
timeout 5 tail --pid=$pid -f /dev/null || status=$?
expect_equal "exits after the first client without -t" 0 "$status"
check "socket removed on exit" test ! -e k.sock

# With -t it keeps serving.
start_server k.sock "$KILN_NBD" -f raw -r -t -k "$TEST_DIR/k.sock" disk.raw
nbdinfo --size "$(uri k.sock)" >/dev/null
nbdinfo --size "$(uri k.sock)" >/dev/null
check "-t serves a second client" kill -0 "${server_pids[0]}"
stop_servers

# -x / -D: export name and description; a wrong name is refused.
start_server k.sock "$KILN_NBD" -f raw -r -t -x disk0 -D "the disk" -k "$TEST_DIR/k.sock" disk.raw
check "description listed" bash -c "nbdinfo --list '$(uri k.sock)' | grep -q 'description: the disk'"
check "named export served" nbdinfo --size "$(uri k.sock disk0)"
expect_status "wrong export refused" 1 nbdinfo "$(uri k.sock other)"
stop_servers

# -o OFFSET: serve from an offset of a raw file.
start_server k.sock "$KILN_NBD" -f raw -r -o 512k -k "$TEST_DIR/k.sock" disk.raw
expect_equal "-o shrinks the export" $((8 * 1024 * 1024 - 512 * 1024)) "$(nbdinfo --size "$(uri k.sock)")"
stop_servers

# -s: writes go to a temporary overlay; the image is untouched.
before=$(file_hash disk.raw)
start_server k.sock "$KILN_NBD" -f raw -s -t -k "$TEST_DIR/k.sock" disk.raw
qemu-io -f raw -c 'write -P 0x99 0 64k' "$(uri k.sock)" >/dev/null
check "-s: the write is visible through the export" bash -c "qemu-io -f raw -c 'read -P 0x99 0 64k' '$(uri k.sock)' >/dev/null"
stop_servers
expect_equal "-s leaves the image unchanged" "$before" "$(file_hash disk.raw)"

# --discard=unmap makes zero writes into holes; the default keeps them allocated.
for discard in ignore unmap; do
  cp disk.raw d-$discard.raw
  start_server k.sock "$KILN_NBD" -f raw -t --discard=$discard -k "$TEST_DIR/k.sock" d-$discard.raw
  qemu-io -f raw -c 'write -z -u 0 1M' "$(uri k.sock)" >/dev/null
  stop_servers
  start_server q.sock qemu-nbd -f raw -t --discard=$discard -k "$TEST_DIR/q.sock" "$(cp disk.raw q-$discard.raw; echo q-$discard.raw)"
  qemu-io -f raw -c 'write -z -u 0 1M' "$(uri q.sock)" >/dev/null
  stop_servers
  expect_equal "--discard=$discard allocation as qemu-nbd" "$(qemu-img map --output=json -f raw q-$discard.raw)" \
    "$(qemu-img map --output=json -f raw d-$discard.raw)"
done

# --detect-zeroes=unmap turns zero writes into holes.
cp disk.raw dz.raw
start_server k.sock "$KILN_NBD" -f raw -t --discard=unmap --detect-zeroes=unmap -k "$TEST_DIR/k.sock" dz.raw
qemu-io -f raw -c 'write -P 0 0 1M' "$(uri k.sock)" >/dev/null
stop_servers
check "--detect-zeroes=unmap punched a hole" bash -c "qemu-img map --output=json -f raw dz.raw | head -1 | grep -q '\"data\": false'"
expect_status "--detect-zeroes=unmap needs --discard=unmap" 1 "$KILN_NBD" -f raw --detect-zeroes=unmap -k "$TEST_DIR/x.sock" disk.raw

# SIGTERM flushes and exits 0; acknowledged writes survive a restart.
cp disk.raw sig.raw
"$KILN_NBD" -f raw -t --pid-file "$TEST_DIR/nbd.pid" -k "$TEST_DIR/k.sock" sig.raw &
pid=$!
wait_for_socket k.sock
check "--pid-file written" test "$(cat nbd.pid)" == "$pid"
qemu-io -f raw -c 'write -P 0xab 2M 256k' -c flush "$(uri k.sock)" >/dev/null
kill -TERM $pid
status=0
wait $pid || status=$?
expect_equal "SIGTERM exits cleanly" 0 "$status"
check "--pid-file removed" test ! -e nbd.pid
start_server k.sock "$KILN_NBD" -f raw -r -t -k "$TEST_DIR/k.sock" sig.raw
check "flushed write survives the restart" qemu-io -r -f raw -c 'read -P 0xab 2M 256k' "$(uri k.sock)"
stop_servers

# --fork returns once the server is ready.
"$KILN_NBD" -f raw -r -t --fork --pid-file "$TEST_DIR/fork.pid" -k "$TEST_DIR/f.sock" disk.raw
check "--fork: socket ready on return" test -S f.sock
server_pids+=($(cat fork.pid))
check "--fork: serving" bash -c "nbdinfo --size '$(uri f.sock)' >/dev/null"
stop_servers

# systemd socket activation (LISTEN_FDS).
rm -f sa.sock
systemd-socket-activate -l "$TEST_DIR/sa.sock" "$KILN_NBD" -f raw -r -t disk.raw >/dev/null 2>&1 &
server_pids+=($!)
wait_for_socket sa.sock
expect_equal "socket activation" 8388608 "$(nbdinfo --size "$(uri sa.sock)")"
stop_servers

# Hostile clients: garbage after the greeting, an oversized option, a request
# with a bad magic, a mid-request disconnect. Each is dropped; the server goes on.
start_server k.sock "$KILN_NBD" -f raw -t -e 4 -k "$TEST_DIR/k.sock" sig.raw
before=$(file_hash sig.raw)
python3 - "$TEST_DIR/k.sock" <<'PY'
import socket, struct, sys
OPT = 0x49484156454F5054
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    assert len(s.recv(18, socket.MSG_WAITALL)) == 18
    return s
s = conn(); s.sendall(b"\x00\x00\x00\x03" + b"garbage" * 1000); s.close()
s = conn(); s.sendall(struct.pack(">IQII", 3, OPT, 3, 1 << 30) + b"x" * 65536); s.close()
s = conn()
s.sendall(struct.pack(">IQII", 3, OPT, 1, 0))          # NBD_OPT_EXPORT_NAME ""
s.recv(10, socket.MSG_WAITALL)
s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 1, 1, 0, 4096) + b"\xee" * 4096)  # bad magic write
s.close()
s = conn()
s.sendall(struct.pack(">IQII", 3, OPT, 1, 0))
s.recv(10, socket.MSG_WAITALL)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20) + b"\xee" * 1000)  # dies mid-payload
s.close()
PY
check "server survives hostile clients" bash -c "nbdinfo --size '$(uri k.sock)' >/dev/null"
stop_servers
expect_equal "hostile clients wrote nothing" "$before" "$(file_hash sig.raw)"

# --image-opts: the same option strings served by kiln-nbd and qemu-nbd give
# the same export (size, read-only flag, contents, map), and the same errors.
qemu-img create -q -f qcow2 io.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x3c 1M 64k' -c 'write -P 0x3d 3M 4k' io.qcow2 >/dev/null
export_summary() {  # URI: size, read-only flag, contents hash, allocation map
  nbdinfo --json "$1" | grep -E '"(export-size|is_read_only)"'
  nbdcopy "$1" - | sha256sum
  nbdinfo --map "$1"
}
image_opts_cases=(
  "driver=qcow2,file.filename=io.qcow2"
  "driver=qcow2,file.driver=file,file.filename=io.qcow2,cache.direct=on,l2-cache-size=1M"
  "driver=raw,offset=1M,size=2M,file.driver=file,file.filename=disk.raw"
  "driver=file,filename=disk.raw"
  "file.filename=io.qcow2"
)
for opts in "${image_opts_cases[@]}"; do
  start_server k.sock "$KILN_NBD" -t -r -k "$TEST_DIR/k.sock" --image-opts "$opts"
  kiln_summary=$(export_summary "$(uri k.sock)")
  stop_servers
  start_server q.sock qemu-nbd -t -r -k "$TEST_DIR/q.sock" --image-opts "$opts"
  qemu_summary=$(export_summary "$(uri q.sock)")
  stop_servers
  expect_equal "--image-opts $opts: same export as qemu-nbd" "$qemu_summary" "$kiln_summary"
done
# Writable through --image-opts: a write lands in the qcow2 file.
cp io.qcow2 iow.qcow2
start_server k.sock "$KILN_NBD" -t -k "$TEST_DIR/k.sock" --image-opts driver=qcow2,file.filename=iow.qcow2
qemu-io -f raw -c 'write -P 0x5e 2M 64k' "$(uri k.sock)" >/dev/null
stop_servers
check "--image-opts: write reached the qcow2 image" qemu-io -r -f qcow2 -c 'read -P 0x5e 2M 64k' iow.qcow2
image_opts_errors=(
  "driver=qcow2"                                   # no file
  "driver=qcow2,file.filename=io.qcow2,read-only=on"  # read-only node, writable export
  "driver=raw,file.foo=1,file.filename=disk.raw"   # unknown protocol option
  "driver=raw,bogus=1,file.filename=disk.raw"      # unknown format option
  "driver=qcow2,file.filename=nonexistent.qcow2"
)
for opts in "${image_opts_errors[@]}"; do
  kerr=$("$KILN_NBD" -k "$TEST_DIR/x.sock" --image-opts "$opts" 2>&1) && fail "--image-opts $opts accepted"
  qerr=$(qemu-nbd -k "$TEST_DIR/x.sock" --image-opts "$opts" 2>&1) && fail "qemu-nbd accepted $opts"
  expect_equal "--image-opts $opts: one error line" 1 "$(wc -l <<<"$kerr")"
  check "--image-opts $opts: error names the option string" grep -qF "Failed to blk_new_open '$opts'" <<<"$kerr"
done
for opts in "driver=qcow2" "driver=qcow2,file.filename=io.qcow2,read-only=on" "driver=raw,file.foo=1,file.filename=disk.raw"; do
  kerr=$("$KILN_NBD" -k "$TEST_DIR/x.sock" --image-opts "$opts" 2>&1 || true)
  qerr=$(qemu-nbd -k "$TEST_DIR/x.sock" --image-opts "$opts" 2>&1 || true)
  expect_equal "--image-opts $opts: same message as qemu-nbd" "$(mask_tool_names <<<"$qerr")" "$(mask_tool_names <<<"$kerr")"
done
expect_status "--image-opts with -f" 1 "$KILN_NBD" -f raw -k "$TEST_DIR/x.sock" --image-opts driver=raw,file.filename=disk.raw

# Option errors: exit 1 with a one-line message, like qemu-nbd.
expect_status "missing image" 1 "$KILN_NBD" -k "$TEST_DIR/x.sock" nonexistent.raw
expect_status "bad cache mode" 1 "$KILN_NBD" --cache=bogus -k "$TEST_DIR/x.sock" disk.raw
expect_status "bad discard mode" 1 "$KILN_NBD" --discard=bogus -k "$TEST_DIR/x.sock" disk.raw
expect_status "unknown bitmap" 1 "$KILN_NBD" -f raw -B nosuch -k "$TEST_DIR/x.sock" disk.raw
expect_status "qemu-nbd: unknown bitmap too" 1 qemu-nbd -f raw -B nosuch -k "$TEST_DIR/x.sock" disk.raw
err=$("$KILN_NBD" -k "$TEST_DIR/x.sock" nonexistent.raw 2>&1 || true)
expect_equal "one error line" 1 "$(wc -l <<<"$err")"
qerr=$(qemu-nbd -k "$TEST_DIR/x.sock" nonexistent.raw 2>&1 || true)
expect_equal "missing image: same message as qemu-nbd" "$(mask_tool_names <<<"$qerr")" "$(mask_tool_names <<<"$err")"

finish
