# Shared by the kiln-io interop scripts: run the same qemu-io command line
# with qemu-io and kiln-io on copies of one image and compare what they print.

QEMU_IO=${QEMU_IO:-qemu-io}

# Masks what legitimately differs between runs: the timing figures of the
# throughput lines (normal and -C forms) and the tool names.
mask_io_output() {
  sed -E \
    -e 's/ops; ([0-9]+:)?[0-9:.]+( sec)? \([^)]*\)$/ops; TIME (RATE)/' \
    -e 's/^([0-9]+,[0-9]+,)[0-9:.]+,[0-9.]+,[0-9.]+$/\1TIME,RATE,RATE/' \
    -e 's/(qemu-io|kiln-io)/TOOL/g'
}

# make_image NAME SIZE: a sparse raw image with some recognisable data.
make_image() {
  rm -f "$1"
  truncate -s "$2" "$1"
  printf 'Hello, world! \x01\x7f\x80 test' | dd of="$1" bs=1 seek=100 conv=notrunc status=none
  head -c 65536 /dev/urandom | dd of="$1" bs=65536 seek=2 conv=notrunc status=none
}

# Before each tool runs, RESET_FILES (if set) lists "source:copy" pairs to
# restore, for scripts whose commands name an image themselves.
reset_files() {
  local pair
  for pair in ${RESET_FILES:-}; do cp "${pair%%:*}" "${pair##*:}"; done
}
# Keeps qemu-io's version of each RESET_FILES copy, then compares kiln-io's.
keep_reset_files() {
  local pair
  for pair in ${RESET_FILES:-}; do cp "${pair##*:}" "${pair##*:}.qemu"; done
}
compare_reset_files() {
  local pair
  for pair in ${RESET_FILES:-}; do
    expect_equal "$1: ${pair##*:} contents" "$(file_hash "${pair##*:}.qemu")" "$(file_hash "${pair##*:}")"
  done
}

# compare_io DESCRIPTION IMAGE ARGS...: runs "<tool> ARGS... copy-of-IMAGE"
# (no image argument when IMAGE is "-") with both tools and expects equal
# stdout, stderr, exit status and final image.
compare_io() {
  local description=$1 image=$2; shift 2
  local q_image=(q.img) k_image=(k.img)
  if [ "$image" == - ]; then
    q_image=() k_image=()
    : > q.img
    : > k.img
  else
    cp "$image" q.img
    cp "$image" k.img
  fi
  local q_status=0 k_status=0
  reset_files
  "$QEMU_IO" "$@" "${q_image[@]}" > q.out 2> q.err || q_status=$?
  keep_reset_files
  reset_files
  "$KILN_IO" "$@" "${k_image[@]}" > k.out 2> k.err || k_status=$?
  expect_equal "$description: stdout" "$(sed 's/q\.img/IMG/g' q.out | mask_io_output)" "$(sed 's/k\.img/IMG/g' k.out | mask_io_output)"
  expect_equal "$description: stderr" "$(sed 's/q\.img/IMG/g' q.err | mask_io_output)" "$(sed 's/k\.img/IMG/g' k.err | mask_io_output)"
  expect_equal "$description: exit status" "$q_status" "$k_status"
  expect_equal "$description: image contents" "$(file_hash q.img)" "$(file_hash k.img)"
  compare_reset_files "$description"
}

# compare_io_stdin DESCRIPTION IMAGE INPUT ARGS...: interactive mode fed by INPUT.
compare_io_stdin() {
  local description=$1 image=$2 input=$3; shift 3
  local q_image=(q.img) k_image=(k.img)
  if [ "$image" == - ]; then
    q_image=() k_image=()
    : > q.img
    : > k.img
  else
    cp "$image" q.img
    cp "$image" k.img
  fi
  local q_status=0 k_status=0
  reset_files
  printf '%s' "$input" | "$QEMU_IO" "$@" "${q_image[@]}" > q.out 2> q.err || q_status=$?
  keep_reset_files
  reset_files
  printf '%s' "$input" | "$KILN_IO" "$@" "${k_image[@]}" > k.out 2> k.err || k_status=$?
  expect_equal "$description: stdout" "$(mask_io_output < q.out)" "$(mask_io_output < k.out)"
  expect_equal "$description: stderr" "$(mask_io_output < q.err)" "$(mask_io_output < k.err)"
  expect_equal "$description: exit status" "$q_status" "$k_status"
  expect_equal "$description: image contents" "$(file_hash q.img)" "$(file_hash k.img)"
  compare_reset_files "$description"
}
