# kiln-img compare and map against qemu-img: same messages, same exit codes.
source "$(dirname "$0")/common.sh"

make_mixed_image a.raw 32M
cp --sparse=always a.raw same.raw
cp --sparse=always a.raw differs.raw
qemu-io -f raw -c "write -P 1 8M 512" -c "write -P 2 20M 1k" differs.raw >/dev/null
qemu-img convert -f raw -O raw a.raw sparse.raw          # same contents, zero data now a hole
qemu-img create -q -f raw bigger.raw 40M
qemu-img convert -n -f raw -O raw a.raw bigger.raw      # same contents, larger
cp --sparse=always bigger.raw bigger-tail.raw
qemu-io -f raw -c "write -P 7 36M 4k" bigger-tail.raw >/dev/null

for pair in "a.raw same.raw" "a.raw differs.raw" "differs.raw a.raw" "a.raw sparse.raw" "a.raw bigger.raw" \
            "bigger.raw a.raw" "a.raw bigger-tail.raw"; do
  for flags in "" "-s" "-q" "-f raw -F raw"; do
    run_both cmp compare $flags $pair
    same_output "compare $flags $pair" cmp
  done
done
run_both missing compare a.raw missing.raw
expect_equal "compare with a missing file exits 2" "exit 2" "$(tail -1 missing.kiln)"
expect_equal "compare error exit code as qemu-img" "$(tail -1 missing.qemu)" "$(tail -1 missing.kiln)"

# map, human and json, whole and in windows.
for file in a.raw sparse.raw differs.raw bigger.raw; do
  for flags in "" "--output=json" "-f raw --output=json" "--start-offset=1M --max-length=5M --output=json" "--start-offset=4097"; do
    run_both map map $flags $file
    same_output "map $flags $file" map
  done
done
qemu-img create -q -f raw empty.raw 0
run_both map-empty map --output=json empty.raw
same_output "map of an empty image" map-empty

finish
