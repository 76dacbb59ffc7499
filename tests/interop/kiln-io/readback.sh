#!/bin/bash
# Data written by one tool reads back identically with the other, cached and
# with cache=none (O_DIRECT) on misaligned offsets and lengths.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

for cache in "" "-n"; do
  label=${cache:-cached}
  make_image kiln.img 4M
  make_image qemu.img 4M
  cp kiln.img qemu.img
  pattern=16
  for request in "0 4k" "4097 1000" "65535 3" "1048576 65536" "2097153 513" "3145727 4097"; do
    pattern=$((pattern + 1))
    # shellcheck disable=SC2086
    check "$label: kiln-io writes $request" "$KILN_IO" -f raw $cache -c "write -q -P $pattern $request" kiln.img
    # shellcheck disable=SC2086
    check "$label: qemu-io reads kiln-io's $request" "$QEMU_IO" -f raw $cache -c "read -q -P $pattern $request" kiln.img
    # shellcheck disable=SC2086
    check "$label: qemu-io writes $request" "$QEMU_IO" -f raw $cache -c "write -q -P $pattern $request" qemu.img
    # shellcheck disable=SC2086
    check "$label: kiln-io reads qemu-io's $request" "$KILN_IO" -f raw $cache -c "read -q -P $pattern $request" qemu.img
  done
  expect_equal "$label: both images identical" "$(file_hash qemu.img)" "$(file_hash kiln.img)"
  # Vectored and zero writes too.
  # shellcheck disable=SC2086
  "$KILN_IO" -f raw $cache -c 'writev -q -P 0x71 5000 100 200 300' -c 'write -q -z 70001 9000' kiln.img
  # shellcheck disable=SC2086
  "$QEMU_IO" -f raw $cache -c 'writev -q -P 0x71 5000 100 200 300' -c 'write -q -z 70001 9000' qemu.img
  expect_equal "$label: vectored and zero writes identical" "$(file_hash qemu.img)" "$(file_hash kiln.img)"
  # shellcheck disable=SC2086
  check "$label: qemu-io verifies kiln-io's zeroes" "$QEMU_IO" -f raw $cache -c 'read -q -P 0 70001 9000' -c 'read -q -P 0x71 5000 600' kiln.img
done

# A misaligned dump through O_DIRECT shows the same bytes as a cached one.
make_image dump.img 1M
expect_equal "cache=none dump equals cached dump" \
  "$("$KILN_IO" -f raw -c 'read -v 99 333' dump.img | head -21)" "$("$KILN_IO" -f raw -n -m -c 'read -v 99 333' dump.img | head -21)"

finish
