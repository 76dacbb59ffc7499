#!/bin/bash
# vmdk images of every subformat: written by kiln and checked/read by qemu,
# written by qemu and read by kiln; info, map, convert and delta links.
source "$KILN_INTEROP_LIB"

source "$KILN_SOURCE_DIR/tests/interop/vmdk/suite.sh"

# A 3 GiB source with data, holes and unaligned runs.
make_source src.raw 3G 2147450880 3221159936

# Same "Formatting ..." summary and -o help as qemu-img.
expect_equal "-o help" "$(qemu-img create -f vmdk -o help x 2>&1 | sed -n 2,13p)" "$("$KILN_IMG" create -f vmdk -o help x 2>&1 | sed -n 2,13p)"
for opts in "" "subformat=twoGbMaxExtentFlat,adapter_type=lsilogic,hwversion=7" "compat6=on,zeroed_grain=on,toolsversion=5" \
  "subformat=monolithicFlat,preallocation=falloc,adapter_type=buslogic"; do
  k=$("$KILN_IMG" create -f vmdk ${opts:+-o $opts} k.vmdk 100M 2>&1 | sed 's/k.vmdk/X/')
  q=$(qemu-img create -f vmdk ${opts:+-o $opts} q.vmdk 100M 2>&1 | sed 's/q.vmdk/X/')
  expect_equal "create summary ($opts)" "$q" "$k"
  # Same descriptor text apart from the random CID and file names.
  desc() { if [ "$(head -c 4 "$1")" == "KDMV" ]; then dd if="$1" bs=512 skip=1 count=20 status=none | tr -d '\0'; else cat "$1"; fi; }
  expect_equal "descriptor ($opts)" "$(desc q.vmdk | sed -e '/^CID=/d' -e 's/"q/"X/')" "$(desc k.vmdk | sed -e '/^CID=/d' -e 's/"k/"X/')"
  rm -f k*.vmdk q*.vmdk
done
for bad in "subformat=foo" "adapter_type=scsi" "compat6=on,hwversion=7"; do
  expect_equal "create error ($bad)" "$(qemu-img create -f vmdk -o $bad q.vmdk 1M 2>&1 | tail -1 | mask_tool_names | sed 's/q.vmdk/X/')" \
    "$("$KILN_IMG" create -f vmdk -o $bad k.vmdk 1M 2>&1 | tail -1 | mask_tool_names | sed 's/k.vmdk/X/')"
done

# Sparse subformats on the 3 GiB source (twoGbMaxExtentSparse: two extents);
# the flat ones are in vmdk_flat.sh (64 MiB) and vmdk_flat_large.sh (3 GiB, slow).
subformat_suite src.raw 2147450880 3221159936 monolithicSparse twoGbMaxExtentSparse streamOptimized

# Parallel, out-of-order conversion: 16 threads allocating grains at once.
qemu-img create -q -f raw many.raw 256M
writes=()
for i in $(seq 0 199); do writes+=(-c "write -P $((i % 250 + 1)) $((i * 1200000 + i * 7)) 50000"); done
qemu-io -f raw "${writes[@]}" many.raw >/dev/null
for sf in monolithicSparse twoGbMaxExtentSparse; do
  check "parallel convert -> $sf" "$KILN_IMG" convert -W -m 16 -f raw -O vmdk -o subformat=$sf many.raw par-$sf.vmdk
  check "parallel $sf clean" qemu-img check -q par-$sf.vmdk
  check "parallel $sf identical" qemu-img compare -q -f raw -F vmdk many.raw par-$sf.vmdk
done
rm -f many.raw par-*

# Sparse output: only grains with data are allocated (same as qemu-img convert).
"$KILN_IMG" convert -f raw -O vmdk src.raw ks.vmdk
qemu-img convert -f raw -O vmdk src.raw qs.vmdk
expect_equal "sparse output size" "$(stat -c %s qs.vmdk)" "$(stat -c %s ks.vmdk)"
# qemu leaves a whole grain of room after the last compressed grain; kiln ends
# the file after its sector-padded data, so its stream is at most qemu's size.
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw qso.vmdk
check "streamOptimized output no larger than qemu's" test "$(stat -c %s k-streamOptimized.vmdk)" -le "$(stat -c %s qso.vmdk)"
check "streamOptimized output within a grain of qemu's" test "$(( $(stat -c %s qso.vmdk) - $(stat -c %s k-streamOptimized.vmdk) ))" -lt 65536

# check output identical, also in JSON and for a grain past the end of the file.
expect_equal "check output" "$(qemu-img check qs.vmdk 2>&1)" "$("$KILN_IMG" check qs.vmdk 2>&1)"
expect_equal "check json" "$(qemu-img check --output=json qs.vmdk 2>&1)" "$("$KILN_IMG" check --output=json qs.vmdk 2>&1)"
qemu-img create -q -f vmdk corrupt.vmdk 4M
qemu-io -f vmdk -c "write -P 1 0 128k" corrupt.vmdk >/dev/null
gd=$(od -An -t u8 -j 56 -N 8 corrupt.vmdk | tr -d ' ')
gt=$(od -An -t u4 -j $((gd * 512)) -N 4 corrupt.vmdk | tr -d ' ')
printf '\x00\x00\x00\x40' | dd of=corrupt.vmdk bs=1 seek=$((gt * 512 + 4)) conv=notrunc status=none
expect_equal "check corrupt" "$(qemu-img check corrupt.vmdk 2>&1 | mask_tool_names; echo "exit ${PIPESTATUS[0]}")" \
  "$("$KILN_IMG" check corrupt.vmdk 2>&1 | mask_tool_names; echo "exit ${PIPESTATUS[0]}")"

# Delta links: qemu parent, kiln child, and the other way round.
qemu-img create -q -f vmdk base.vmdk 64M
qemu-io -f vmdk -c "write -P 0xa1 0 2M" base.vmdk >/dev/null
expect_equal "create with backing summary" "$(qemu-img create -f vmdk -b base.vmdk -F vmdk qchild.vmdk 2>&1 | sed 's/qchild/X/')" \
  "$("$KILN_IMG" create -f vmdk -b base.vmdk -F vmdk kchild.vmdk 2>&1 | sed 's/kchild/X/')"
"$KILN_IO" -f vmdk -c "write -P 0xb2 1M 4k" kchild.vmdk >/dev/null
check "qemu reads kiln delta" bash -c "qemu-io -f vmdk -r -c 'read -P 0xa1 0 1M' -c 'read -P 0xb2 1M 4k' -c 'read -P 0xa1 1052672 61440' kchild.vmdk | grep -vq 'verification failed'"
check "kiln delta clean" qemu-img check -q kchild.vmdk
qemu-io -f vmdk -c "write -P 0xc3 100k 8k" qchild.vmdk >/dev/null
check "kiln reads qemu delta" bash -c "'$KILN_IO' -f vmdk -r -c 'read -P 0xa1 0 100k' -c 'read -P 0xc3 100k 8k' -c 'read -P 0xa1 108k 1M' qchild.vmdk | grep -vq 'verification failed'"
compare_info "delta" qchild.vmdk
expect_equal "info --backing-chain" "$(qemu-img info --backing-chain --output=json qchild.vmdk)" \
  "$("$KILN_IMG" info --backing-chain --output=json qchild.vmdk)"
expect_equal "delta map" "$(qemu-img map --output=json qchild.vmdk)" "$("$KILN_IMG" map --output=json qchild.vmdk)"
check "convert delta chain" "$KILN_IMG" convert -O vmdk qchild.vmdk flat.vmdk
check "flattened delta identical" qemu-img compare -q qchild.vmdk flat.vmdk

# Bad descriptors: one-line errors, exit 1.
printf 'version=1\ncreateType="monolithicFlat"\nRW 8 FLAT "../secret" 0\n' > escape.vmdk
expect_status "escaping extent refused" 1 "$KILN_IMG" info escape.vmdk
expect_equal "escaping extent error" "1" "$("$KILN_IMG" info escape.vmdk 2>&1 | wc -l)"
printf 'version=1\ncreateType="monolithicFlat"\nRW 8 FLAT "x" \n' > bad.vmdk
expect_status "malformed extent line" 1 "$KILN_IMG" info bad.vmdk

finish
