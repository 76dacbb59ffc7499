#!/bin/bash
# Error paths: messages, streams and exit codes must match qemu-io's.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

make_image base.img 1M

compare_io "missing file" - -c 'read 0 1' nosuch.img
compare_io "unknown format" base.img -f bogus -c 'read 0 1'
compare_io "no file open" - -c 'read 0 1' -c length
compare_io "read-only image written" base.img -f raw -r -c 'write 0 1' -c 'write -z 0 1' -c 'discard 0 1' \
  -c 'truncate 2M' -c 'aio_write 0 1' -c aio_flush -c 'writev 0 1' -c flush -c 'read -P 0 0 64k'
compare_io "force share needs read-only" base.img -f raw -U -c length
compare_io "native aio needs cache=none" base.img -f raw -i native -c length
compare_io "native aio flag needs cache=none" base.img -f raw -k -c length
compare_io "bad cache mode" base.img -t bogus -c length
compare_io "bad aio mode" base.img -i bogus -c length
compare_io "bad discard mode" base.img -d bogus -c length
compare_io "image-opts with -f" base.img --image-opts -f raw -c length

compare_io "offsets beyond the end" base.img -f raw -c 'read 1M 1' -c 'read 1023k 2k' -c 'write 1M 1' \
  -c 'write -z 1023k 2k' -c 'writev 1M 1' -c 'readv 1M 1 1' -c 'discard 1023k 2k' -c 'read 1M 0' -c 'read 2M 0'

# All spellings in one run per tool (one process each keeps the test fast).
size_commands=()
for size in abc 1.5 0x10k 0x1.8k 1e3 1.5b 1kB 1KiB 0x 00010 0X10 1.0 1.k .5k 0x8000000000000000 \
  9223372036854775807 9223372036854775808 18446744073709551616 0.5k 1.25M 1.3k 7E 8E 1P 3G 1.5E -1 -0; do
  size_commands+=(-c "read -q 0 $size" -c "write -q -P 1 $size 1")
done
compare_io "size arguments" base.img -f raw "${size_commands[@]}"
pattern_commands=()
for pattern in 300 abc -1 0x1ff 010 0x0 ''; do
  pattern_commands+=(-c "write -P $pattern 0 1" -c "read -P $pattern 0 1")
done
compare_io "pattern arguments" base.img -f raw "${pattern_commands[@]}"

compare_io "argument counts and options" base.img -f raw -c 'read 0' -c read -c 'read 0 1 2' -c 'read -x 0 1' \
  -c 'write' -c 'write -P 0 0' -c 'alloc' -c 'alloc 1 2 3' -c 'truncate' -c 'sleep' -c 'sigraise' -c 'quit 1 2' -c length

compare_io "last command fails" base.img -f raw -c 'read 0 1' -c 'read 2M 1'
compare_io "first command fails" base.img -f raw -c 'read 2M 1' -c 'read 0 1'
compare_io "pattern mismatch fails" base.img -f raw -c 'read -P 0x77 0 1'
compare_io "everything succeeds" base.img -f raw -c 'read 0 1' -c 'write 0 1' -c map

# Program option errors print the usage text, which names each tool's own
# project, so compare the first lines and the exit codes only.
for args in "-x" "base.img base.img" "--bogus"; do
  q_status=0 k_status=0
  # shellcheck disable=SC2086
  q_first=$("$QEMU_IO" $args 2>&1 | grep -iv exerciser | head -2 | mask_io_output) || true
  # shellcheck disable=SC2086
  k_first=$("$KILN_IO" $args 2>&1 | grep -iv exerciser | head -2 | mask_io_output) || true
  # shellcheck disable=SC2086
  "$QEMU_IO" $args > /dev/null 2>&1 || q_status=$?
  # shellcheck disable=SC2086
  "$KILN_IO" $args > /dev/null 2>&1 || k_status=$?
  expect_equal "program options '$args': first lines" "$q_first" "$k_first"
  expect_equal "program options '$args': exit status" "$q_status" "$k_status"
done
expect_status "-h exits 0" 0 "$KILN_IO" -h
expect_status "-V exits 0" 0 "$KILN_IO" -V
check "-V names the tool" bash -c "'$KILN_IO' -V | grep -q '^kiln-io version '"

# Features Kiln refuses must say so on one line and fail.
for args in "-T foo" "--object secret,id=s0,data=x"; do
  status=0
  # shellcheck disable=SC2086
  message=$("$KILN_IO" $args -c length base.img 2>&1 >/dev/null) || status=$?
  expect_equal "refused '$args': exit status" 1 "$status"
  expect_equal "refused '$args': one line" 1 "$(printf '%s\n' "$message" | wc -l)"
done

finish
