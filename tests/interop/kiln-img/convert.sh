# kiln-img convert against qemu-img: identical contents, sparseness kept, options honoured.
source "$(dirname "$0")/common.sh"

make_mixed_image src.raw 64M

# Plain conversion: same contents, same map as qemu-img's own conversion.
"$KILN_IMG" convert -f raw -O raw src.raw k.raw
qemu-img convert -f raw -O raw src.raw q.raw
check "convert keeps contents" identical src.raw k.raw
expect_equal "convert map equals qemu-img's" "$(qemu-img map --output=json -f raw q.raw)" "$(qemu-img map --output=json -f raw k.raw)"
check "convert output is sparse" test "$(disk_usage k.raw)" -le "$(( $(disk_usage src.raw) + 64 ))"

# Zero-filled data becomes holes with the default -S 4k, stays data with -S 0.
"$KILN_IMG" convert -O raw -S 0 src.raw full.raw
check "-S 0 contents" identical src.raw full.raw
check "-S 0 allocates everything" test "$(disk_usage full.raw)" -ge 65536
dd if=/dev/zero of=zeros.raw bs=1M count=8 status=none
"$KILN_IMG" convert -f raw -O raw zeros.raw zs.raw
check "zero data written as holes" test "$(disk_usage zs.raw)" -le 8
"$KILN_IMG" convert -f raw -O raw -S 64k src.raw s64.raw
check "-S 64k contents" identical src.raw s64.raw

# Several sources are concatenated, as with qemu-img.
qemu-img create -q -f raw small.raw 3M
qemu-io -f raw -c "write -P 0x5a 1M 1M" small.raw >/dev/null
"$KILN_IMG" convert -f raw -O raw src.raw small.raw src.raw cat-k.raw
qemu-img convert -f raw -O raw src.raw small.raw src.raw cat-q.raw
check "concatenated sources" identical cat-q.raw cat-k.raw

# -n writes into an existing image; stale data there is overwritten by zeroes.
qemu-img create -q -f raw target.raw 64M
qemu-io -f raw -c "write -P 0xee 0 64M" target.raw >/dev/null
"$KILN_IMG" convert -n -f raw -O raw src.raw target.raw
check "-n overwrites stale data" identical src.raw target.raw
# --target-is-zero trusts the target: only data is written.
qemu-img create -q -f raw tz.raw 64M
"$KILN_IMG" convert -n --target-is-zero -f raw -O raw src.raw tz.raw
check "--target-is-zero" identical src.raw tz.raw
expect_status "--target-is-zero needs -n" 1 "$KILN_IMG" convert --target-is-zero -O raw src.raw x.raw

# Cache modes (O_DIRECT with a size that is not a multiple of 4k), -m, -W, -p.
head -c 1000000 /dev/urandom >odd.raw
"$KILN_IMG" convert -t none -T none -f raw -O raw odd.raw odd-k.raw
check "cache=none with an odd size" identical odd.raw odd-k.raw
for m in 1 3 16; do
  "$KILN_IMG" convert -m $m -W -f raw -O raw src.raw m$m.raw
  check "-m $m -W" identical src.raw m$m.raw
done
expect_status "-m out of range" 1 "$KILN_IMG" convert -m 17 -O raw src.raw x.raw
progress=$("$KILN_IMG" convert -p -f raw -O raw src.raw p.raw)
check "-p prints progress up to 100%" grep -q "(100.00/100%)" <<<"$progress"
check "-p output" identical src.raw p.raw
expect_equal "-q prints nothing" "" "$("$KILN_IMG" convert -q -f raw -O raw src.raw q2.raw)"

# Options qemu-img refuses for raw are refused the same way.
run_both compress convert -c -f raw -O raw src.raw c.raw
same_output "-c on raw" compress
run_both backing convert -B src.raw -f raw -O raw src.raw b.raw
expect_equal "-B on raw fails" "$(tail -1 backing.qemu)" "$(tail -1 backing.kiln)"
run_both snapshot convert -l snap1 -f raw -O raw src.raw l.raw
expect_equal "-l on raw fails" "$(tail -1 snapshot.qemu)" "$(tail -1 snapshot.kiln)"
run_both badfmt convert -O nonsense src.raw nf.raw
expect_equal "unknown output format fails" "$(tail -1 badfmt.qemu)" "$(tail -1 badfmt.kiln)"

# What kiln-img writes, qemu-img reads, and the other way round.
qemu-img convert -f raw -O raw k.raw back.raw
check "qemu-img reads kiln-img's output" identical src.raw back.raw

finish
