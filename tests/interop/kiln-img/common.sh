# Shared set-up for kiln-img interop scripts.
source "$KILN_INTEROP_LIB"

# make_mixed_image FILE SIZE: data, zero-written data, holes and random bytes.
make_mixed_image() {
  local file=$1 size=$2
  qemu-img create -q -f raw "$file" "$size"
  qemu-io -f raw \
    -c "write -P 0xab 1M 64k" \
    -c "write -P 0 4M 64k" \
    -c "write -P 0x11 5M 12k" \
    -c "write -P 0x22 8M 512" \
    -c "write -P 0x33 12M 2M" \
    "$file" >/dev/null
  dd if=/dev/urandom of="$file" bs=64k seek=40 count=16 conv=notrunc status=none
}

# run_both OUTFILE_PREFIX ARGS...: runs qemu-img and kiln-img with the same
# arguments; stdout+stderr (tool names masked) and exit codes go to
# PREFIX.qemu / PREFIX.kiln.
run_both() {
  local prefix=$1; shift
  local status=0
  qemu-img "$@" >"$prefix.qemu.out" 2>&1 || status=$?
  echo "exit $status" >>"$prefix.qemu.out"
  status=0
  "$KILN_IMG" "$@" >"$prefix.kiln.out" 2>&1 || status=$?
  echo "exit $status" >>"$prefix.kiln.out"
  mask_tool_names <"$prefix.qemu.out" >"$prefix.qemu"
  mask_tool_names <"$prefix.kiln.out" >"$prefix.kiln"
}

# same_output DESCRIPTION PREFIX: the two tools printed the same thing.
same_output() {
  if cmp -s "$2.qemu" "$2.kiln"; then
    pass
  else
    fail "$1"
    diff "$2.qemu" "$2.kiln" >&2 || true
  fi
}

# identical A B: qemu-img compare says the images have the same contents.
identical() { qemu-img compare -q -f raw -F raw "$1" "$2"; }

disk_usage() { du -k "$1" | cut -f1; }
