# Shared by the vmdk interop scripts (sourced after lib.sh).

# make_source FILE SIZE MID END: data, holes and unaligned runs; 0x44 at MID
# and 0x55 in the last 64 KiB (END = SIZE - 65536).
make_source() {
  qemu-img create -q -f raw "$1" "$2"
  qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 5M 64k" -c "write -P 0x33 10485800 100000" \
    -c "write -P 0x44 $3 65536" -c "write -P 0x55 $4 65536" "$1" >/dev/null
}

# info of one image, kiln vs qemu.
compare_info() {
  local name=$1 image=$2
  expect_equal "info json ($name)" "$(qemu-img info --output=json "$image")" "$("$KILN_IMG" info --output=json "$image")"
  expect_equal "info human ($name)" "$(qemu-img info "$image")" "$("$KILN_IMG" info "$image")"
}

# subformat_suite SOURCE MID END SUBFORMAT...: both directions for each subformat,
# and vmdk -> qcow2 -> vmdk.
subformat_suite() {
  local src=$1 mid=$2 end=$3; shift 3
  local sf
  for sf in "$@"; do
    # kiln writes, qemu checks and reads.
    check "kiln convert raw -> $sf" "$KILN_IMG" convert -f raw -O vmdk -o subformat=$sf "$src" k-$sf.vmdk
    check "qemu-img check ($sf by kiln)" qemu-img check -q k-$sf.vmdk
    check "qemu-img compare ($sf by kiln)" qemu-img compare -q -f raw -F vmdk "$src" k-$sf.vmdk
    check "qemu-io pattern ($sf by kiln)" bash -c "qemu-io -f vmdk -r -c 'read -P 0x22 5M 64k' -c 'read -P 0x55 $end 65536' k-$sf.vmdk | grep -vq 'verification failed'"
    compare_info "kiln $sf" k-$sf.vmdk
    expect_equal "map ($sf by kiln)" "$(qemu-img map --output=json k-$sf.vmdk)" "$("$KILN_IMG" map --output=json k-$sf.vmdk)"

    # qemu writes, kiln reads.
    qemu-img convert -f raw -O vmdk -o subformat=$sf "$src" q-$sf.vmdk
    check "kiln-img compare ($sf by qemu)" "$KILN_IMG" compare -q -f raw -F vmdk "$src" q-$sf.vmdk
    check "kiln-io pattern ($sf by qemu)" bash -c "'$KILN_IO' -f vmdk -r -c 'read -P 0x33 10485800 100000' -c 'read -P 0x44 $mid 65536' q-$sf.vmdk | grep -vq 'verification failed'"
    check "kiln-img check ($sf by qemu)" "$KILN_IMG" check -q q-$sf.vmdk
    compare_info "qemu $sf" q-$sf.vmdk
    expect_equal "map ($sf by qemu)" "$(qemu-img map --output=json q-$sf.vmdk)" "$("$KILN_IMG" map --output=json q-$sf.vmdk)"

    # vmdk -> qcow2 -> vmdk keeps content and sparseness.
    check "kiln convert $sf -> qcow2" "$KILN_IMG" convert -O qcow2 q-$sf.vmdk k-$sf.qcow2
    check "qcow2 from $sf identical" qemu-img compare -q -f raw -F qcow2 "$src" k-$sf.qcow2
    qemu-img convert -O qcow2 q-$sf.vmdk q-$sf.qcow2
    expect_equal "qcow2 from $sf as sparse as qemu's" "$(qemu-img map --output=json q-$sf.qcow2)" "$(qemu-img map --output=json k-$sf.qcow2)"
    check "kiln convert qcow2 -> $sf" "$KILN_IMG" convert -O vmdk -o subformat=$sf k-$sf.qcow2 back-$sf.vmdk
    check "round trip identical ($sf)" qemu-img compare -q -f raw -F vmdk "$src" back-$sf.vmdk
    rm -f q-$sf*.vmdk back-$sf*.vmdk k-$sf.qcow2 q-$sf.qcow2
  done
}
