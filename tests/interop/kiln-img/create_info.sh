# kiln-img create and info against qemu-img: same messages, same facts.
source "$(dirname "$0")/common.sh"

# create prints the same Formatting line and makes the same file.
qemu-img create -f raw q.raw 64M >q.out
"$KILN_IMG" create -f raw k.raw 64M >k.out
expect_equal "create summary" "$(sed 's/q.raw/X/' q.out)" "$(sed 's/k.raw/X/' k.out)"
expect_equal "created size" "$(stat -c %s q.raw)" "$(stat -c %s k.raw)"
check "created image reads as zeroes" identical q.raw k.raw

for prealloc in off falloc full; do
  qemu-img create -f raw -o preallocation=$prealloc qp.raw 3M >qp.out
  "$KILN_IMG" create -f raw -o preallocation=$prealloc kp.raw 3M >kp.out
  expect_equal "create preallocation=$prealloc summary" "$(sed 's/qp.raw/X/' qp.out)" "$(sed 's/kp.raw/X/' kp.out)"
  expect_equal "preallocation=$prealloc disk usage" "$(disk_usage qp.raw)" "$(disk_usage kp.raw)"
done

# Sizes with every suffix and odd sizes round the same way.
for size in 0 512 1000 1k 1.5M 2G 1T; do
  qemu-img create -q -f raw s.raw $size
  "$KILN_IMG" create -q -f raw t.raw $size
  expect_equal "virtual size after create $size" "$(qemu-img info -f raw s.raw | grep '^virtual size')" \
    "$("$KILN_IMG" info -f raw t.raw | grep '^virtual size')"
  rm -f s.raw t.raw
done

# info human and json, probed and explicit, on images with data.
make_mixed_image m.raw 20M
for args in "m.raw" "-f raw m.raw" "--output=json m.raw" "--output=json -f raw m.raw" "--backing-chain m.raw" \
            "--backing-chain --output=json m.raw" "-U m.raw"; do
  run_both info info $args
  same_output "info $args" info
done

# -o help lists size; creating without a size or with it twice fails as qemu-img does.
check "-o help lists size" bash -c "\"$KILN_IMG\" create -f raw -o help | grep -q '^  size=<size> *- Virtual disk size'"
run_both nosize create -f raw n.raw
same_output "create without size" nosize
run_both twice create -f raw -o size=1M t.raw 2M
same_output "size given twice" twice
run_both badopt create -f raw -o foo=bar b.raw 1M
same_output "unknown -o option" badopt
run_both backing create -f raw -b m.raw b.raw 1M
expect_equal "raw refuses a backing file (exit code)" "$(tail -1 backing.qemu)" "$(tail -1 backing.kiln)"

finish
