#!/bin/bash
# kiln-nbd as a server for libnbd's tools (nbdinfo, nbdcopy) and QEMU's
# (qemu-img, qemu-io), compared with qemu-nbd serving the same images.
source "$KILN_INTEROP_LIB"
source "$(dirname "${BASH_SOURCE[0]}")/nbd_lib.sh"

qemu-img create -q -f raw disk.raw 64M
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 3M' -c 'write -P 0x33 40M 512' disk.raw >/dev/null

# nbdinfo --json: same fields as qemu-nbd reports.
info_fields() { grep -E '"(export-size|is_read_only|can_flush|can_fua|can_trim|can_zero|can_fast_zero|can_df|can_cache|can_multi_conn|block_size_[a-z]+|structured|protocol)"' | sed 's/,$//'; }
for opts in "" "-r" "-e 2" "-e 0"; do
  start_server k.sock "$KILN_NBD" -f raw $opts -k "$TEST_DIR/k.sock" disk.raw
  kiln_info=$(nbdinfo --json "$(uri k.sock)" | info_fields)
  stop_servers
  start_server q.sock qemu-nbd -f raw $opts -k "$TEST_DIR/q.sock" disk.raw
  qemu_info=$(nbdinfo --json "$(uri q.sock)" | info_fields)
  stop_servers
  expect_equal "nbdinfo --json fields match qemu-nbd ($opts)" "$qemu_info" "$kiln_info"
done

# nbdinfo --map: the same allocation map as qemu-nbd.
start_server k.sock "$KILN_NBD" -f raw -r -k "$TEST_DIR/k.sock" disk.raw
kiln_map=$(nbdinfo --map "$(uri k.sock)")
stop_servers
start_server q.sock qemu-nbd -f raw -r -k "$TEST_DIR/q.sock" disk.raw
qemu_map=$(nbdinfo --map "$(uri q.sock)")
stop_servers
expect_equal "nbdinfo --map matches qemu-nbd" "$qemu_map" "$kiln_map"

# qemu:allocation-depth with -A.
start_server k.sock "$KILN_NBD" -f raw -r -A -t -k "$TEST_DIR/k.sock" disk.raw
kiln_depth=$(nbdinfo --map=qemu:allocation-depth "$(uri k.sock)")
check "nbdinfo lists qemu:allocation-depth" bash -c "nbdinfo --list '$(uri k.sock)' | grep -q qemu:allocation-depth"
stop_servers
start_server q.sock qemu-nbd -f raw -r -A -t -k "$TEST_DIR/q.sock" disk.raw
qemu_depth=$(nbdinfo --map=qemu:allocation-depth "$(uri q.sock)")
stop_servers
expect_equal "allocation-depth map matches qemu-nbd" "$qemu_depth" "$kiln_depth"

# nbdcopy out of and into kiln-nbd, 1 and 4 connections.
start_server k.sock "$KILN_NBD" -f raw -r -e 4 -t -k "$TEST_DIR/k.sock" disk.raw
nbdcopy "$(uri k.sock)" copy1.raw
nbdcopy --connections=4 "$(uri k.sock)" copy4.raw
stop_servers
expect_equal "nbdcopy from kiln-nbd" "$(file_hash disk.raw)" "$(file_hash copy1.raw)"
expect_equal "nbdcopy -C 4 from kiln-nbd" "$(file_hash disk.raw)" "$(file_hash copy4.raw)"
qemu-img create -q -f raw target.raw 64M
start_server t.sock "$KILN_NBD" -f raw -e 4 -t -k "$TEST_DIR/t.sock" target.raw
nbdcopy --connections=4 disk.raw "$(uri t.sock)"
stop_servers
expect_equal "nbdcopy into kiln-nbd" "$(file_hash disk.raw)" "$(file_hash target.raw)"

# qemu-img and qemu-io as clients.
start_server k.sock "$KILN_NBD" -f raw -t -k "$TEST_DIR/k.sock" disk.raw
qemu-img convert -O raw "$(uri k.sock)" converted.raw
expect_equal "qemu-img convert from kiln-nbd" "$(file_hash disk.raw)" "$(file_hash converted.raw)"
check "qemu-img compare with kiln-nbd" qemu-img compare -q -f raw -F raw disk.raw "$(uri k.sock)"
out=$(qemu-io -f raw -c 'write -P 0x44 8M 64k' -c 'read -P 0x44 8M 64k' -c 'read -P 0x22 1M 3M' -c 'write -z 1M 4k' -c 'read -P 0 1M 4k' -c 'flush' "$(uri k.sock)" 2>&1)
check "qemu-io through kiln-nbd" bash -c "! grep -qiE 'fail|error|pattern' <<<'$out'"
stop_servers
check "qemu-io writes reached the image" qemu-io -f raw -c 'read -P 0x44 8M 64k' -c 'read -P 0 1M 4k' disk.raw

# A qcow2 image is served through the block layer's format driver.
qemu-img create -q -f qcow2 disk.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x66 64k 128k' disk.qcow2 >/dev/null
start_server k.sock "$KILN_NBD" -f qcow2 -r -k "$TEST_DIR/k.sock" disk.qcow2
qemu-img convert -O raw "$(uri k.sock)" from_qcow2.raw
stop_servers
qemu-img convert -O raw disk.qcow2 expected_qcow2.raw
expect_equal "qcow2 served as its guest view" "$(file_hash expected_qcow2.raw)" "$(file_hash from_qcow2.raw)"

# A backing chain: base:allocation and qemu:allocation-depth as qemu-nbd reports them.
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -z 3M 512k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c 'write -P 2 512k 1M' top.qcow2 >/dev/null
chain_maps() { nbdinfo --map=qemu:allocation-depth "$(uri "$1")"; nbdinfo --map "$(uri "$1")"; }
start_server k.sock "$KILN_NBD" -f qcow2 -r -A -t -k "$TEST_DIR/k.sock" top.qcow2
kiln_chain=$(chain_maps k.sock)
stop_servers
start_server q.sock qemu-nbd -f qcow2 -r -A -t -k "$TEST_DIR/q.sock" top.qcow2
qemu_chain=$(chain_maps q.sock)
stop_servers
expect_equal "backing chain maps match qemu-nbd" "$qemu_chain" "$kiln_chain"

# -B: persistent dirty bitmaps made and updated by qemu, then by kiln; the
# qemu:dirty-bitmap contexts read the same through kiln-nbd and qemu-nbd.
qemu-img create -q -f qcow2 bitmaps.qcow2 64M
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 1M bitmaps.qcow2 coarse
qemu-io -c 'write 1M 64k' -c 'write 10M 4k' -c 'discard 20M 128k' bitmaps.qcow2 >/dev/null
"$KILN_BIN/kiln-io" -c 'write 30M 4k' -c 'write -z 40M 64k' bitmaps.qcow2 >/dev/null
check "qemu-img check after kiln kept the bitmaps" qemu-img check -q bitmaps.qcow2
bitmap_maps() {
  nbdinfo --map=qemu:dirty-bitmap:b0 "$(uri "$1")"
  nbdinfo --map=qemu:dirty-bitmap:coarse "$(uri "$1")"
}
start_server k.sock "$KILN_NBD" -f qcow2 -r -t -B b0 -B coarse -k "$TEST_DIR/k.sock" bitmaps.qcow2
kiln_bitmaps=$(bitmap_maps k.sock)
stop_servers
start_server q.sock qemu-nbd -f qcow2 -r -t -B b0 -B coarse -k "$TEST_DIR/q.sock" bitmaps.qcow2
qemu_bitmaps=$(bitmap_maps q.sock)
stop_servers
expect_equal "dirty bitmap maps match qemu-nbd" "$qemu_bitmaps" "$kiln_bitmaps"
check "the kiln-written ranges are dirty" bash -c "grep -qE '^ *31457280 +65536 +1 +dirty' <<<'$kiln_bitmaps'"
# A writable export tracks the client's writes in the bitmap; qemu sees them after.
start_server k.sock "$KILN_NBD" -f qcow2 -t -B b0 -k "$TEST_DIR/k.sock" bitmaps.qcow2
qemu-io -f raw -c 'write 50M 4k' "$(uri k.sock)" >/dev/null
live=$(nbdinfo --map=qemu:dirty-bitmap:b0 "$(uri k.sock)")
stop_servers
check "a write through kiln-nbd is dirty at once" bash -c "grep -qE '^ *52428800 +65536 +1 +dirty' <<<'$live'"
start_server q.sock qemu-nbd -f qcow2 -r -t -B b0 -k "$TEST_DIR/q.sock" bitmaps.qcow2
stored=$(nbdinfo --map=qemu:dirty-bitmap:b0 "$(uri q.sock)")
stop_servers
expect_equal "qemu-nbd reads the bitmap kiln-nbd stored" "$live" "$stored"
out=$("$KILN_NBD" -r -B missing -k "$TEST_DIR/x.sock" bitmaps.qcow2 2>&1 || true)
expect_equal "-B of a missing bitmap" "kiln-nbd: Bitmap 'missing' is not found" "$out"

finish
