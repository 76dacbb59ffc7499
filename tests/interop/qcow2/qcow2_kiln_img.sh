#!/bin/bash
# qcow2 images written by kiln-img are read by qemu and the other way round.
source "$KILN_INTEROP_LIB"

# create: same summary and same file layout as qemu-img.
for opts in "" "compat=0.10" "cluster_size=4k,refcount_bits=8,lazy_refcounts=on" "extended_l2=on" "compression_type=zstd"; do
  k=$("$KILN_IMG" create -f qcow2 ${opts:+-o $opts} k.qcow2 64M 2>&1 | sed 's/k.qcow2/X/')
  q=$(qemu-img create -f qcow2 ${opts:+-o $opts} q.qcow2 64M 2>&1 | sed 's/q.qcow2/X/')
  expect_equal "create summary ($opts)" "$q" "$k"
  expect_equal "create layout ($opts)" "$(qemu-img check q.qcow2 | tail -1)" "$(qemu-img check k.qcow2 | tail -1)"
done

# Data written by qemu-io, converted by kiln-img (plain and compressed), compared by qemu-img.
qemu-img create -q -f qcow2 src.qcow2 32M
qemu-io -f qcow2 -c "write -P 0x11 0 3M" -c "write -z 4M 1M" -c "write -P 0x22 10M 64k" src.qcow2 >/dev/null
check "convert to qcow2" "$KILN_IMG" convert -O qcow2 src.qcow2 dst.qcow2
check "converted image identical" qemu-img compare -q src.qcow2 dst.qcow2
check "converted image clean" qemu-img check -q dst.qcow2
check "convert compressed" "$KILN_IMG" convert -c -O qcow2 src.qcow2 dstc.qcow2
check "compressed image identical" qemu-img compare -q src.qcow2 dstc.qcow2
check "compressed image clean" qemu-img check -q dstc.qcow2
expect_equal "compressed clusters counted" "49" "$(qemu-img check --output=json dstc.qcow2 | sed -n 's/.*"compressed-clusters": \([0-9]*\).*/\1/p')"

# check output identical, also for a leak.
expect_equal "check clean" "$(qemu-img check src.qcow2 2>&1 | mask_tool_names)" "$("$KILN_IMG" check src.qcow2 2>&1 | mask_tool_names)"

# Snapshots made by kiln-img are listed and applied by qemu-img.
check "snapshot create" "$KILN_IMG" snapshot -c before dst.qcow2
qemu-io -f qcow2 -c "write -P 0x33 0 1M" dst.qcow2 >/dev/null
check "snapshot listed by qemu" bash -c "qemu-img snapshot -l dst.qcow2 | grep -q before"
check "qemu applies kiln snapshot" qemu-img snapshot -a before dst.qcow2
check "snapshot contents" bash -c 'qemu-io -f qcow2 -r -c "read -P 0x11 0 1M" dst.qcow2 >/dev/null'
check "image clean after snapshots" qemu-img check -q dst.qcow2

# Reading through a backing chain.
qemu-img create -q -f qcow2 -b src.qcow2 -F qcow2 top.qcow2
check "convert through backing chain" "$KILN_IMG" convert -O qcow2 top.qcow2 flat.qcow2
check "flattened identical" qemu-img compare -q src.qcow2 flat.qcow2

# Persistent bitmaps in info (text and JSON), incl. the in-use flag a crashed writer leaves.
qemu-img create -q -f qcow2 bitmaps.qcow2 16M
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 1M --disable bitmaps.qcow2 b1
expect_equal "info lists bitmaps as qemu-img" "$(qemu-img info bitmaps.qcow2)" "$("$KILN_IMG" info bitmaps.qcow2)"
expect_equal "info --output=json lists bitmaps as qemu-img" "$(qemu-img info --output=json bitmaps.qcow2)" "$("$KILN_IMG" info --output=json bitmaps.qcow2)"
"$KILN_BIN/kiln-io" -c 'write 0 4k' bitmaps.qcow2 >/dev/null
expect_equal "info after a kiln write" "$(qemu-img info bitmaps.qcow2)" "$("$KILN_IMG" info bitmaps.qcow2)"
check "the bitmaps are not left in use" bash -c "! qemu-img info bitmaps.qcow2 | grep -q in-use"

finish
