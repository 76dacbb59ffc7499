#!/bin/bash
# The block layer's nbd protocol: kiln-img as a client of qemu-nbd, nbdkit and
# kiln-nbd, compared with qemu-img doing the same.
source "$KILN_INTEROP_LIB"
source "$(dirname "${BASH_SOURCE[0]}")/nbd_lib.sh"

qemu-img create -q -f raw disk.raw 32M
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 4M 1M' disk.raw >/dev/null

# Against qemu-nbd: info, map, convert (sparse), compare.
start_server q.sock qemu-nbd -f raw -r -t -e 4 -k "$TEST_DIR/q.sock" disk.raw
U=$(uri q.sock)
expect_equal "kiln-img info on qemu-nbd" "$(qemu-img info "$U" | mask_tool_names)" "$("$KILN_IMG" info "$U" | mask_tool_names)"
expect_equal "kiln-img map on qemu-nbd" "$(qemu-img map --output=json "$U")" "$("$KILN_IMG" map --output=json "$U")"
"$KILN_IMG" convert -O raw "$U" out.raw
expect_equal "kiln-img convert from qemu-nbd" "$(file_hash disk.raw)" "$(file_hash out.raw)"
check "conversion from nbd stays sparse" test "$(du -k out.raw | cut -f1)" -lt 4096
"$KILN_IMG" convert -O qcow2 "$U" out.qcow2
check "kiln-img convert nbd to qcow2" qemu-img compare -q disk.raw out.qcow2
check "kiln-img compare raw with nbd" "$KILN_IMG" compare -q -f raw disk.raw "$U"
# Legacy spelling.
expect_equal "legacy nbd:unix: syntax" "33554432" "$("$KILN_IMG" info --output=json "nbd:unix:$TEST_DIR/q.sock" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')"
stop_servers

# Against nbdkit memory (writable): convert into it, read back through qemu-img.
start_server m.sock nbdkit -U "$TEST_DIR/m.sock" -f memory 32M
"$KILN_IMG" convert -n -O raw disk.raw "$(uri m.sock)"
check "kiln-img convert into nbdkit memory" qemu-img compare -q -f raw -F raw disk.raw "$(uri m.sock)"
stop_servers

# Against nbdkit file.
start_server f.sock nbdkit -U "$TEST_DIR/f.sock" -f file disk.raw
expect_equal "kiln-img map on nbdkit file" "$(qemu-img map --output=json "$(uri f.sock)")" "$("$KILN_IMG" map --output=json "$(uri f.sock)")"
stop_servers

# kiln-img against kiln-nbd, TCP loopback.
port=$((20000 + RANDOM % 20000))
"$KILN_NBD" -f raw -r -t -b 127.0.0.1 -p $port disk.raw &
server_pids+=($!)
for i in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.05; done
"$KILN_IMG" convert -O raw "nbd://127.0.0.1:$port" tcp.raw
expect_equal "kiln-img convert over TCP from kiln-nbd" "$(file_hash disk.raw)" "$(file_hash tcp.raw)"
stop_servers

# Errors are one line.
err=$("$KILN_IMG" info "$(uri none.sock)" 2>&1 || true)
expect_equal "missing server: one error line" 1 "$(wc -l <<<"$err")"
expect_status "missing server: exit 1" 1 "$KILN_IMG" info "$(uri none.sock)"

finish
