#!/bin/bash
# VDI images written by kiln are read by qemu and the other way round; info,
# map, check, measure and convert agree with qemu-img.
source "$KILN_INTEROP_LIB"

# vdi_field FILE OFFSET: the little-endian u32 at OFFSET.
vdi_field() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
# qemu_reads FILE QEMU-IO-ARGS...: qemu-io succeeds and every pattern matches.
qemu_reads() {
  local file=$1 out; shift
  out=$(qemu-io -f vdi -r "$@" "$file" 2>&1) || return 1
  ! grep -q "Pattern verification failed" <<<"$out"
}

# create: same summary, same layout (apart from the random UUIDs), clean for qemu.
for opts in "" "static=on" "preallocation=full" "static=on,nocow=off,preallocation=off,extent_size_hint=1M"; do
  k=$("$KILN_IMG" create -f vdi ${opts:+-o $opts} k.vdi 10000000 2>&1 | sed 's/k.vdi/X/')
  q=$(qemu-img create -f vdi ${opts:+-o $opts} q.vdi 10000000 2>&1 | sed 's/q.vdi/X/')
  expect_equal "create summary ($opts)" "$q" "$k"
  expect_equal "create size ($opts)" "$(stat -c %s q.vdi)" "$(stat -c %s k.vdi)"
  expect_equal "create header ($opts)" "$(od -An -tx1 -j 64 -N 328 q.vdi)" "$(od -An -tx1 -j 64 -N 328 k.vdi)"
  check "created image clean ($opts)" qemu-img check -q k.vdi
done
expect_equal "create error" "$(qemu-img create -f vdi -o preallocation=metadata q.vdi 1M 2>&1 | mask_tool_names | sed 's/q.vdi/X/')" \
  "$("$KILN_IMG" create -f vdi -o preallocation=metadata k.vdi 1M 2>&1 | mask_tool_names | sed 's/k.vdi/X/')"
expect_equal "create too big" "$(qemu-img create -f vdi q.vdi 5000T 2>&1 | mask_tool_names | sed 's/q.vdi/X/')" \
  "$("$KILN_IMG" create -f vdi k.vdi 5000T 2>&1 | mask_tool_names | sed 's/k.vdi/X/')"

# qemu writes, kiln reads.
qemu-img create -q -f vdi q.vdi 12M
qemu-io -f vdi -c "write -P 0x11 0 3M" -c "write -P 0x22 5M 64k" -c "write -z 7M 1M" -c "write -P 0x33 11M 512" q.vdi >/dev/null
check "kiln reads qemu's data" "$KILN_IO" -f vdi -r -c "read -P 0x11 0 3M" -c "read -P 0 3M 2M" -c "read -P 0x22 5M 64k" \
  -c "read -P 0 7M 1M" -c "read -P 0x33 11M 512" q.vdi
check "kiln converts qemu's image" "$KILN_IMG" convert -O raw q.vdi q.raw
check "converted content" qemu-img compare -q -f vdi -F raw q.vdi q.raw

# kiln writes, qemu reads.
"$KILN_IMG" create -q -f vdi k.vdi 12M
"$KILN_IO" -f vdi -c "write -P 0x44 1M 2M" -c "write -P 0x55 6M 4k" -c "write -z 8M 1M" -c "write -P 0x66 12582400 512" \
  -c "write -P 0x77 2M 1M" k.vdi >/dev/null
check "qemu check of kiln's writes" qemu-img check -q k.vdi
check "qemu reads kiln's data" qemu_reads k.vdi -c "read -P 0 0 1M" -c "read -P 0x44 1M 1M" -c "read -P 0x77 2M 1M" \
  -c "read -P 0 3M 3M" -c "read -P 0x55 6M 4k" -c "read -P 0 8M 1M" -c "read -P 0x66 12582400 512"
expect_equal "blocks allocated" "4" "$(vdi_field k.vdi $((0x184)))"

# info and map identical, human and json, on images from both tools (dynamic and static).
qemu-img create -q -f vdi -o static=on qs.vdi 5M
qemu-io -f vdi -c "write -P 0x12 1M 8k" qs.vdi >/dev/null
"$KILN_IMG" create -q -f vdi -o static=on ks.vdi 5M
"$KILN_IO" -f vdi -c "write -P 0x12 1M 8k" ks.vdi >/dev/null
for image in q.vdi k.vdi qs.vdi ks.vdi; do
  for output in human json; do
    expect_equal "info $image $output" "$(qemu-img info --output=$output "$image")" "$("$KILN_IMG" info --output=$output "$image")"
    expect_equal "map $image $output" "$(qemu-img map --output=$output "$image")" "$("$KILN_IMG" map --output=$output "$image")"
  done
done

# check: same findings, output and exit code; kiln also repairs.
expect_equal "check clean" "$(qemu-img check k.vdi 2>&1)" "$("$KILN_IMG" check k.vdi 2>&1)"
expect_equal "check json" "$(qemu-img check --output=json k.vdi 2>&1)" "$("$KILN_IMG" check --output=json k.vdi 2>&1)"
cp k.vdi bad.vdi
bmap=$(vdi_field bad.vdi $((0x154)))
printf '\x00\x00\x00\x00' | dd of=bad.vdi bs=1 seek=$((bmap + 4 * 4)) conv=notrunc status=none  # block 4 shares data block 0
printf '\x64\x00\x00\x00' | dd of=bad.vdi bs=1 seek=$((bmap + 5 * 4)) conv=notrunc status=none  # block 5 -> 100
qs=0; q_out=$(qemu-img check bad.vdi 2>&1) || qs=$?
ks=0; k_out=$("$KILN_IMG" check bad.vdi 2>&1) || ks=$?
expect_equal "check corrupt output" "$q_out" "$k_out"
expect_equal "check corrupt exit" "$qs" "$ks"
expect_equal "check corrupt json" "$(qemu-img check --output=json bad.vdi 2>/dev/null)" "$("$KILN_IMG" check --output=json bad.vdi 2>/dev/null)"
check "kiln repairs" "$KILN_IMG" check -q -r all bad.vdi
check "repaired image clean for qemu" qemu-img check -q bad.vdi
check "repaired data" qemu_reads bad.vdi -c "read -P 0x44 4M 1M" -c "read -P 0 5M 1M" -c "read -P 0x44 1M 1M"

# measure: qemu refuses, kiln too with the same words.
expect_equal "measure" "$(qemu-img measure -O vdi --size 1G 2>&1 | mask_tool_names)" "$("$KILN_IMG" measure -O vdi --size 1G 2>&1 | mask_tool_names)"
expect_status "measure exit" 1 "$KILN_IMG" measure -O vdi --size 1G

# resize: qemu cannot; kiln grows (moving data blocks when the map needs room) and qemu reads the result.
"$KILN_IMG" resize k.vdi 600M >/dev/null
check "grown image clean" qemu-img check -q k.vdi
expect_equal "grown size" "629145600" "$(qemu-img info --output=json k.vdi | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')"
check "grown data" qemu_reads k.vdi -c "read -P 0x44 1M 1M" -c "read -P 0x66 12582400 512" -c "read -P 0 12M 4M" -c "read -P 0 599M 1M"
expect_status "no shrinking" 1 "$KILN_IMG" resize --shrink k.vdi 100M

# convert raw <-> vdi (dynamic, static) <-> qcow2: identical content, sparse output like qemu-img's.
qemu-img create -q -f raw src.raw 20M
qemu-io -f raw -c "write -P 0x21 0 1536k" -c "write -P 0x22 9M 4k" -c "write -P 0x23 19M 1M" src.raw >/dev/null
for opts in "" "static=on"; do
  "$KILN_IMG" convert -O vdi ${opts:+-o $opts} src.raw k.vdi
  qemu-img convert -O vdi ${opts:+-o $opts} src.raw q.vdi
  check "raw->vdi ($opts) content" qemu-img compare -q -f raw -F vdi src.raw k.vdi
  check "raw->vdi ($opts) clean" qemu-img check -q k.vdi
  expect_equal "raw->vdi ($opts) as sparse as qemu's" "$(stat -c %s q.vdi)" "$(stat -c %s k.vdi)"
  expect_equal "raw->vdi ($opts) blocks" "$(vdi_field q.vdi $((0x184)))" "$(vdi_field k.vdi $((0x184)))"
  expect_equal "raw->vdi ($opts) map" "$(qemu-img map --output=json q.vdi | sed 's/"offset": [0-9]*//')" \
    "$(qemu-img map --output=json k.vdi | sed 's/"offset": [0-9]*//')"
  "$KILN_IMG" convert -O qcow2 k.vdi k.qcow2
  check "vdi->qcow2 ($opts) content" qemu-img compare -q -f raw -F qcow2 src.raw k.qcow2
  expect_equal "vdi->qcow2 ($opts) sparse" "$(qemu-img map --output=json src.raw | grep -c '"data": true')" \
    "$(qemu-img map --output=json k.qcow2 | grep -c '"data": true')"
  "$KILN_IMG" convert -O vdi k.qcow2 k2.vdi
  check "qcow2->vdi content" qemu-img compare -q -f raw -F vdi src.raw k2.vdi
  expect_equal "qcow2->vdi blocks" "4" "$(vdi_field k2.vdi $((0x184)))"
  "$KILN_IMG" convert -O raw k.vdi back.raw
  check "vdi->raw ($opts) content" cmp -s src.raw back.raw
  expect_equal "vdi->raw ($opts) sparse" "$(qemu-img map --output=json src.raw)" "$(qemu-img map --output=json back.raw)"
done

# Out-of-order parallel conversion: many writers allocate blocks at once.
qemu-img create -q -f raw many.raw 40M
args=(); for i in $(seq 0 39); do [ $((i % 5)) == 3 ] || args+=(-c "write -P $((i + 1)) $((i * 1048576 + 4096)) 1020k"); done
qemu-io -f raw "${args[@]}" many.raw >/dev/null
for opts in "" "static=on"; do
  "$KILN_IMG" convert -W -m 8 -O vdi ${opts:+-o $opts} many.raw par.vdi
  check "parallel convert ($opts) clean" qemu-img check -q par.vdi
  check "parallel convert ($opts) content" qemu-img compare -q -f raw -F vdi many.raw par.vdi
  if [ -z "$opts" ]; then expect_equal "parallel convert blocks" "32" "$(vdi_field par.vdi $((0x184)))"; fi
done

# A VirtualBox-style header (0x190 bytes with LCHS geometry, blocks cut short by the file end).
cp "$KILN_SOURCE_DIR/tests/fuzz/vdi/corpus/vdi_open/vbox.vdi" vbox.vdi
for output in human json; do
  expect_equal "vbox info $output" "$(qemu-img info --output=$output vbox.vdi)" "$("$KILN_IMG" info --output=$output vbox.vdi)"
  expect_equal "vbox map $output" "$(qemu-img map --output=$output vbox.vdi)" "$("$KILN_IMG" map --output=$output vbox.vdi)"
done
qemu-img convert -O raw vbox.vdi vbox-q.raw
"$KILN_IMG" convert -O raw vbox.vdi vbox-k.raw
check "vbox content" cmp -s vbox-q.raw vbox-k.raw

# Probing: the format is found without -f.
expect_equal "probe" "vdi" "$("$KILN_IMG" info --output=json k.vdi | sed -n 's/.*"format": "\(.*\)".*/\1/p')"

finish
