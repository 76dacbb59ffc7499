#!/bin/bash
# The conversion matrix: every ordered pair among raw, qcow2 (v2, v3,
# compressed), vdi (dynamic, static) and vmdk (every subformat Kiln writes).
# - kiln-img converts each variant into every other; qemu-img compare finds the
#   guest-visible content identical to the source (qemu reads Kiln's output),
#   and the output uses no more disk than qemu-img's own conversion of the
#   same pair (sparse wherever the target format allows).
# - qemu-img makes each variant from the raw source; kiln-img compare finds
#   it identical (Kiln reads qemu-img's output).
source "$KILN_INTEROP_LIB"

variants=(raw qcow2v2 qcow2v3 qcow2c vdi vdistatic vmdksparse vmdkstream vmdk2gsparse vmdkflat vmdk2gflat)
# convert_args VARIANT: the -O/-o/-c arguments that write it.
convert_args() {
  case $1 in
    raw) echo "-O raw" ;;
    qcow2v2) echo "-O qcow2 -o compat=0.10" ;;
    qcow2v3) echo "-O qcow2 -o compat=1.1" ;;
    qcow2c) echo "-O qcow2 -c" ;;
    vdi) echo "-O vdi" ;;
    vdistatic) echo "-O vdi -o static=on" ;;
    vmdksparse) echo "-O vmdk -o subformat=monolithicSparse" ;;
    vmdkstream) echo "-O vmdk -o subformat=streamOptimized" ;;
    vmdk2gsparse) echo "-O vmdk -o subformat=twoGbMaxExtentSparse" ;;
    vmdkflat) echo "-O vmdk -o subformat=monolithicFlat" ;;
    vmdk2gflat) echo "-O vmdk -o subformat=twoGbMaxExtentFlat" ;;
  esac
}
format_of() { case $1 in raw) echo raw ;; qcow2*) echo qcow2 ;; vdi*) echo vdi ;; vmdk*) echo vmdk ;; esac; }
# Disk use in KiB of an image and its extent files (each output has its own folder).
disk_use() { du -k -s "$1" | cut -f1; }

# Source: 24 MiB with holes, zero-filled data, a pattern, random bytes and
# unaligned small writes, so every cluster/grain/block kind occurs.
qemu-img create -q -f raw source.raw 24M
qemu-io -f raw \
  -c "write -P 0x5a 0 1M" -c "write -z 3M 2M" -c "write -P 0xc3 7M 64k" \
  -c "write -P 0x11 9M 3M" -c "write -P 0x77 12345 1000" -c "write -P 0x99 20M 512" \
  source.raw >/dev/null
head -c 2M /dev/urandom | dd of=source.raw bs=1M seek=15 conv=notrunc status=none

# Each variant made from the raw source by both tools.
for v in "${variants[@]}"; do
  f=$(format_of "$v")
  mkdir -p "kiln-$v" "qemu-$v"
  # shellcheck disable=SC2046
  check "kiln-img convert raw → $v" "$KILN_IMG" convert -f raw $(convert_args "$v") source.raw "kiln-$v/img.$f"
  # shellcheck disable=SC2046
  qemu-img convert -f raw $(convert_args "$v") source.raw "qemu-$v/img.$f"
  expect_status "qemu-img reads kiln's $v identically" 0 qemu-img compare -f raw -F "$f" source.raw "kiln-$v/img.$f"
  expect_status "kiln-img reads qemu-img's $v identically" 0 "$KILN_IMG" compare -f raw -F "$f" source.raw "qemu-$v/img.$f"
  status=0
  qemu-img check -q -f "$f" "kiln-$v/img.$f" >/dev/null 2>&1 || status=$?
  # 63: the format has no checks (raw).
  check "qemu-img check of kiln's $v is clean" test "$status" = 0 -o "$status" = 63
done

# Every ordered pair, converted by both tools from Kiln's copy of the source variant.
for a in "${variants[@]}"; do
  fa=$(format_of "$a")
  for b in "${variants[@]}"; do
    [ "$a" = "$b" ] && continue
    fb=$(format_of "$b")
    mkdir -p "pair-kiln-$a-$b" "pair-qemu-$a-$b"
    out="pair-kiln-$a-$b/img.$fb"
    # shellcheck disable=SC2046
    if ! "$KILN_IMG" convert -f "$fa" $(convert_args "$b") "kiln-$a/img.$fa" "$out" 2>err.txt; then
      fail "kiln-img convert $a → $b: $(cat err.txt)"
      continue
    fi
    # shellcheck disable=SC2046
    qemu-img convert -f "$fa" $(convert_args "$b") "kiln-$a/img.$fa" "pair-qemu-$a-$b/img.$fb"
    expect_status "$a → $b: qemu-img finds the content identical" 0 qemu-img compare -f raw -F "$fb" source.raw "$out"
    kiln_kib=$(disk_use "pair-kiln-$a-$b")
    qemu_kib=$(disk_use "pair-qemu-$a-$b")
    # Allow one VDI block / qcow2 cluster of difference in allocation order.
    check "$a → $b: as sparse as qemu-img's ($kiln_kib KiB vs $qemu_kib KiB)" test "$kiln_kib" -le $((qemu_kib + 1024))
    rm -rf "pair-kiln-$a-$b" "pair-qemu-$a-$b"
  done
done

finish
