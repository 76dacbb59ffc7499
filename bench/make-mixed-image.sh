#!/usr/bin/env bash
# make-mixed-image.sh FILE [SIZE_MIB]: a raw image of a quarter holes, a quarter
# zero-filled data, a quarter compressible text and a quarter random bytes, in
# 64 MiB stripes — the benchmark input for conversions.
set -euo pipefail
file=$1
size_mib=${2:-2048}
stripe=64
rm -f "$file"
truncate -s "${size_mib}M" "$file"
text_stripe=$(mktemp)
trap 'rm -f "$text_stripe"' EXIT
{ yes "Kiln benchmark data: a line of compressible text, repeated many times over." || true; } | head -c "${stripe}M" >"$text_stripe"
for ((offset = 0, i = 0; offset < size_mib; offset += stripe, i++)); do
  case $((i % 4)) in
    0) ;;  # hole
    1) dd if=/dev/zero of="$file" bs=1M seek=$offset count=$stripe conv=notrunc status=none ;;
    2) dd if="$text_stripe" of="$file" bs=1M seek=$offset count=$stripe conv=notrunc status=none ;;
    3) dd if=/dev/urandom of="$file" bs=1M seek=$offset count=$stripe conv=notrunc status=none ;;
  esac
done
