# Bad input: one line naming the file and the cause, qemu-img's exit code, image unchanged.
source "$(dirname "$0")/common.sh"
chmod 755 "$TEST_DIR"

make_mixed_image img.raw 16M
hash=$(file_hash img.raw)

# one_line_error DESCRIPTION EXPECTED_TEXT COMMAND...: fails with exit 1 and one stderr line containing the text.
one_line_error() {
  local description=$1 text=$2; shift 2
  local status=0
  "$@" >out.txt 2>err.txt || status=$?
  if [ "$status" = 1 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -qF -- "$text" err.txt; then
    pass
  else
    fail "$description (exit $status): $(cat err.txt)"
  fi
}

one_line_error "missing file" "Could not open 'missing.raw': No such file or directory" "$KILN_IMG" info missing.raw
one_line_error "unknown format" "Unknown driver 'nonsense'" "$KILN_IMG" info -f nonsense img.raw
one_line_error "invalid size" "Invalid image size specified" "$KILN_IMG" create -f raw new.raw 12Q
check "invalid size creates nothing" test ! -e new.raw
one_line_error "negative size" "Invalid image size specified" "$KILN_IMG" create -f raw new.raw -- -5
one_line_error "directory as image" "Is a directory" "$KILN_IMG" info .
one_line_error "raw window beyond the file" "offset" "$KILN_IMG" info --image-opts "driver=raw,file.filename=img.raw,offset=15M,size=2M"
one_line_error "dd skip beyond the end" "Cannot skip" "$KILN_IMG" dd bs=1M skip=17 if=img.raw of=dd.raw
one_line_error "bench past the end" "past the end" "$KILN_IMG" bench -c 1 -o 16M -f raw img.raw
one_line_error "invalid cache mode" "Invalid cache option" "$KILN_IMG" convert -t sometimes -O raw img.raw c.raw
one_line_error "unknown -o option" "Invalid parameter 'colour'" "$KILN_IMG" create -f raw -o colour=red new.raw 1M
one_line_error "bad --output" "--output must be used with human or json" "$KILN_IMG" info --output=xml img.raw
one_line_error "bad resize size" "Invalid size" "$KILN_IMG" resize -f raw img.raw 12Q

# As an unprivileged user: a file without write permission, and one without read permission.
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
cp img.raw readonly.raw && chmod 444 readonly.raw
cp img.raw secret.raw && chmod 600 secret.raw
one_line_error "read-only file written" "Could not open 'readonly.raw': Permission denied" as_nobody "$KILN_IMG" resize -f raw readonly.raw 32M
expect_status "read-only file can be read" 0 as_nobody "$KILN_IMG" info -f raw readonly.raw
one_line_error "permission denied" "Could not open 'secret.raw': Permission denied" as_nobody "$KILN_IMG" info -f raw secret.raw

# Misaligned I/O with cache=none works through bounce buffers (and gives right data).
head -c 777777 /dev/urandom >odd.raw
"$KILN_IMG" convert -t none -T none -f raw -O raw odd.raw odd-copy.raw
check "misaligned cache=none copy is exact up to the sector-rounded size" cmp -n 777777 odd.raw odd-copy.raw

expect_equal "no failed command touched the image" "$hash" "$(file_hash img.raw)"
expect_equal "read-only image unchanged" "$hash" "$(file_hash readonly.raw)"
finish
