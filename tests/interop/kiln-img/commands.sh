# measure, resize, dd, bench, check and the snapshot/amend/rebase/commit family on raw.
source "$(dirname "$0")/common.sh"

make_mixed_image a.raw 32M

# measure: the same figures, human and json.
for args in "--size 1G -O raw" "--size 1G -O raw --output=json" "-O raw a.raw" "-O raw --output=json a.raw" "-f raw a.raw"; do
  run_both measure measure $args
  same_output "measure $args" measure
done
run_both measure-both measure --size 1G a.raw
same_output "measure with --size and a file" measure-both
run_both measure-none measure -O raw
same_output "measure with nothing to measure" measure-none

# resize: grow, relative, shrink needs --shrink; same sizes and messages.
for args in "+1M" "2G" "--shrink -f raw X -- -1M" "-f raw X 100M"; do
  cp --sparse=always a.raw q.raw
  cp --sparse=always a.raw k.raw
  if [[ $args == *X* ]]; then qargs=${args/X/q.raw}; kargs=${args/X/k.raw}; else qargs="-f raw q.raw $args"; kargs="-f raw k.raw $args"; fi
  qemu-img resize $qargs >q.out 2>&1 || true
  "$KILN_IMG" resize $kargs >k.out 2>&1 || true
  expect_equal "resize $args output" "$(mask_tool_names <q.out)" "$(mask_tool_names <k.out)"
  expect_equal "resize $args size" "$(stat -c %s q.raw)" "$(stat -c %s k.raw)"
  check "resize $args contents" identical q.raw k.raw
done
cp --sparse=always a.raw k.raw
expect_status "shrink without --shrink" 1 "$KILN_IMG" resize -f raw k.raw 1M
expect_equal "refused shrink leaves the size" "$(stat -c %s a.raw)" "$(stat -c %s k.raw)"

# dd: bs/count/skip select the same bytes as dd(1).
"$KILN_IMG" dd -f raw -O raw bs=64k count=20 if=a.raw of=d1.raw
dd if=a.raw of=r1.raw bs=64k count=20 status=none
check "dd bs count" cmp d1.raw r1.raw
"$KILN_IMG" dd -f raw bs=1M skip=3 count=5 if=a.raw of=d2.raw
dd if=a.raw of=r2.raw bs=1M skip=3 count=5 status=none
check "dd bs skip count" cmp d2.raw r2.raw
"$KILN_IMG" dd if=a.raw of=d3.raw
check "dd default bs, whole image" cmp a.raw d3.raw
run_both dd-bs dd bs=0 if=a.raw of=x.raw
same_output "dd bs=0" dd-bs
run_both dd-missing dd if=a.raw
same_output "dd without of=" dd-missing

# bench: same announcement lines; writes really land.
for args in "-c 1000 -f raw" "-c 100 -d 4 -s 4k -S 8k -o 0 -f raw" "-c 200 -t none -i threads -f raw" "-w -c 100 -d 2 --flush-interval=10 --pattern=7 -f raw"; do
  cp --sparse=always a.raw q.raw
  cp --sparse=always a.raw k.raw
  qemu-img bench $args q.raw 2>&1 | sed 's/[0-9.]* seconds/N seconds/' >q.out
  "$KILN_IMG" bench $args k.raw 2>&1 | sed 's/[0-9.]* seconds/N seconds/' >k.out
  expect_equal "bench $args" "$(cat q.out)" "$(cat k.out)"
  check "bench $args leaves the same image" identical q.raw k.raw
done

run_both bench-flush bench -w -c 100 --flush-interval=10 -f raw a.raw
same_output "flush interval below the depth" bench-flush

# check: raw has no checks (exit 63), in both output formats.
run_both check check a.raw
same_output "check raw" check
run_both check-json check --output=json -f raw a.raw
same_output "check --output=json raw" check-json

# Operations raw cannot do fail like qemu-img's (exit code), leaving the image alone.
before=$(file_hash a.raw)
for args in "snapshot -c s1 -f raw a.raw" "snapshot -a s1 -f raw a.raw" "snapshot -d s1 -f raw a.raw" "amend -f raw -o size=1G a.raw" \
            "commit -f raw a.raw" "rebase -f raw -b same.raw a.raw" "convert -c -O raw a.raw c.raw"; do
  run_both op $args
  expect_equal "$args exit code" "$(tail -1 op.qemu)" "$(tail -1 op.kiln)"
done
run_both snap-list snapshot -l a.raw
same_output "snapshot -l raw" snap-list
expect_equal "refused operations leave the image unchanged" "$before" "$(file_hash a.raw)"

finish
