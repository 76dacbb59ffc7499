#!/bin/bash
# aio_read / aio_write / aio_flush: same results as qemu-io, requests really
# in flight on worker threads, aio_flush waits for all of them.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

make_image base.img 4M

# One request per aio_flush keeps the output order deterministic for both tools.
compare_io "aio basics" base.img -f raw \
  -c 'aio_write -P 9 0 4k' -c aio_flush -c 'aio_write -P 10 4k 4k 4k' -c aio_flush \
  -c 'aio_read -P 9 0 4k' -c aio_flush -c 'aio_read -P 10 4k 1k 7k' -c aio_flush -c 'aio_read -v 0 20' -c aio_flush \
  -c 'aio_read -C 0 4k' -c aio_flush -c 'aio_read -q 0 4k' -c aio_flush -c 'aio_read -P 5 0 1' -c aio_flush \
  -c 'aio_write -z 0 4k' -c aio_flush -c 'aio_write -z -u 4k 4k' -c aio_flush -c 'aio_write -f -P 3 8k 512' -c aio_flush \
  -c 'aio_write -C -P 4 9k 512' -c aio_flush -c 'aio_write -q -P 4 10k 512' -c aio_flush \
  -c 'aio_write 5M 1' -c aio_flush -c 'aio_read 5M 1' -c aio_flush -c 'read -P 0 0 8k' -c 'read -P 3 8k 512' -c 'read -P 4 9k 1k'

compare_io "aio option errors" base.img -f raw -c 'aio_write -u 0 4k' -c 'aio_write -i 0 4k' -c 'aio_read -i 0 4k' \
  -c 'aio_write -z 0 4k 4k' -c 'aio_read 0 abc' -c 'aio_write 0 abc' -c 'aio_write -z 0 abc' -c 'aio_read 0' \
  -c 'aio_read -x 0 1' -c 'aio_read 0 3G' -c 'aio_write -P 300 0 1'

# Many requests at once: the set of completion lines matches (their order may not).
commands=()
for i in $(seq 0 15); do commands+=(-c "aio_write -P $((i + 1)) $((i * 64))k 64k"); done
commands+=(-c aio_flush)
for i in $(seq 0 15); do commands+=(-c "aio_read -P $((i + 1)) $((i * 64))k 64k"); done
commands+=(-c aio_flush -c 'read -P 16 960k 64k')
cp base.img q.img
cp base.img k.img
"$QEMU_IO" -f raw "${commands[@]}" q.img > q.out 2>&1
"$KILN_IO" -f raw "${commands[@]}" k.img > k.out 2>&1
expect_equal "parallel aio: completion lines" "$(mask_io_output < q.out | sort)" "$(mask_io_output < k.out | sort)"
expect_equal "parallel aio: image contents" "$(file_hash q.img)" "$(file_hash k.img)"

# A long aio_read is still in flight when the next command runs: `length`
# prints before the read's completion lines, and aio_flush waits for it.
truncate -s 256M big.img
"$KILN_IO" -f raw -c 'aio_read 0 256M' -c length -c aio_flush big.img > async.out || true
expect_equal "aio_read runs asynchronously" "256 MiB" "$(head -1 async.out)"
expect_equal "aio_flush waited for the read" "read 268435456/268435456 bytes at offset 0" "$(sed -n 2p async.out)"

# Without aio_flush the requests still complete before the tool exits.
cp base.img k.img
"$KILN_IO" -f raw -c 'aio_write -P 0x42 0 1M' k.img > exit.out
check "aio_write completes before exit" "$QEMU_IO" -f raw -c 'read -q -P 0x42 0 1M' k.img
expect_equal "completion printed before exit" "wrote 1048576/1048576 bytes at offset 0" "$(head -1 exit.out)"

finish
