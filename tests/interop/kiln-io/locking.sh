#!/bin/bash
# Image locking against the real qemu-io, both ways: a writer holding the
# image keeps the other tool from opening it for writing.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

holder=
stop_holder() {
  exec 3>&- 2>/dev/null || true
  if [ -n "$holder" ]; then
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    holder=
  fi
}
trap 'stop_holder; cleanup_test_dir' EXIT

# start_holder TOOL ARGS...: TOOL in interactive mode, fed by a fifo, with the image open.
start_holder() {
  rm -f holder.fifo
  mkfifo holder.fifo
  "$@" < holder.fifo > holder.out 2>&1 &
  holder=$!
  exec 3> holder.fifo
  echo 'length' >&3
  # Wait until the holder has opened the image and answered.
  for _ in $(seq 50); do grep -q 'MiB' holder.out && return 0; sleep 0.1; done
  echo "holder did not start" >&2
  return 1
}

make_image image.img 1M

# qemu-io holds the image for writing: kiln-io may not write it.
start_holder "$QEMU_IO" -f raw image.img
status=0
"$KILN_IO" -f raw -c 'write 0 1' image.img > kiln.out 2> kiln.err || status=$?
expect_equal "kiln-io refused while qemu-io writes: exit status" 1 "$status"
expect_equal "kiln-io refused: one-line error" 1 "$(wc -l < kiln.err)"
check "kiln-io refused: the error names the lock" grep -q 'lock' kiln.err
check "kiln-io refused: the error names the image" grep -q "image.img" kiln.err
check "kiln-io -U -r may still read" "$KILN_IO" -f raw -U -r -c 'read -q 0 1' image.img
echo 'quit' >&3
stop_holder

# kiln-io holds the image for writing: qemu-io may not write it.
start_holder "$KILN_IO" -f raw image.img
status=0
"$QEMU_IO" -f raw -c 'write 0 1' image.img > qemu.out 2> qemu.err || status=$?
expect_equal "qemu-io refused while kiln-io writes: exit status" 1 "$status"
check "qemu-io refused: lock error" grep -q 'lock' qemu.err
check "qemu-io -r may still read" "$QEMU_IO" -f raw -r -c 'read -q 0 1' image.img
status=0
"$KILN_IO" -f raw -c 'write 0 1' image.img > /dev/null 2>&1 || status=$?
expect_equal "a second kiln-io is refused too" 1 "$status"
echo 'write -q -P 0x42 0 4k' >&3
echo 'quit' >&3
wait "$holder"
holder=
exec 3>&-
check "the holder's write landed" "$QEMU_IO" -f raw -c 'read -q -P 0x42 0 4k' image.img

# Once the holder is gone the image opens normally.
check "kiln-io writes after the holder quit" "$KILN_IO" -f raw -c 'write -q 0 1' image.img

finish
