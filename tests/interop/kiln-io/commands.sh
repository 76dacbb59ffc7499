#!/bin/bash
# kiln-io and qemu-io run the same command scripts on copies of one raw
# image and must print the same (timing masked), exit alike and leave the
# same bytes behind. Covers every command and program option.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

make_image base.img 4M
printf 'source-pattern' > pattern.bin

compare_io "read and verify" base.img -f raw \
  -c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k' -c 'read -P 0xac 0 4k' -c 'read -P 0 8k 4k' \
  -c 'read -P 0x48 -s 100 -l 1 0 512' -c 'read -P 0x48 -s 101 -l 3 0 512' -c 'read -P 0 -s 600 0 512' \
  -c 'read -P 0 -l 600 0 512' -c 'read -s 1 0 512' -c 'read -C 0 64k' -c 'read -q 0 1' -c 'read -p 0 1' \
  -c 'r 0 1' -c 'read 0 0' -c 'read -b 0 512' -c 'read -b 1 512' -c 'read -b 0 100' -c 'write -b 0 512' -c 'read 4095 2' -c 'read 0x10 512b' -c 'read 0 1.5k' -c 'read 0 1.3k' -c 'read 1 0x10k'

compare_io "hex dumps" base.img -f raw -c 'read -v 90 50' -c 'read -v 1 17' -c 'read -v 128k 300' \
  -c 'read -v -P 0 0 16' -c 'readv -v 96 16 20'

compare_io "write variants" base.img -f raw \
  -c 'write 0 512' -c 'write -P 1 512 1536' -c 'write -z 8k 8k' -c 'write -z -u 16k 4k' -c 'write -z -n 20k 4k' \
  -c 'write -f -P 7 24k 4k' -c 'write -z -f 28k 512' -c 'write -s pattern.bin 32k 40' -c 'write -C -P 9 40k 1k' \
  -c 'write -q -P 10 44k 1k' -c 'write -p 48k 1' -c 'w 0 1' -c 'write 0 0' -c 'write -c 0 64k' -c 'write -c 1 512' \
  -c 'write -c 0 100' -c 'write -b -z 0 512' -c 'write -f -c 0 512' -c 'write -u 0 512' -c 'write -n 0 512' \
  -c 'write -z -P 1 0 1' -c 'write -s pattern.bin -P 1 0 7' -c 'write -P 1 5M' -c 'read -v 32k 48'

compare_io "vectors" base.img -f raw \
  -c 'writev -P 5 0 512 1k 3' -c 'readv -P 5 0 512 1k 3' -c 'readv -P 6 0 512 1k' -c 'writev -f -C 4k 1k 1k' \
  -c 'writev -q 8k 1' -c 'readv -C 0 1 2 3' -c 'readv -q 0 4k' -c 'readv 0 0' -c 'readv 0 3G' -c 'writev 0 2G 2G' \
  -c 'readv 0 abc' -c 'readv 4M 1' -c 'writev 4M 1'

compare_io "discard flush length info" base.img -f raw \
  -c 'discard 0 64k' -c 'discard -C 64k 64k' -c 'discard -q 128k 4k' -c 'd 256k 512' -c 'discard 0 5M' \
  -c 'discard 0 3G' -c 'discard 0' -c 'discard -x 0 1' -c flush -c f -c length -c l -c info -c i \
  -c 'read -P 0 0 64k'

compare_io "map and alloc" base.img -f raw -c map -c 'alloc 0' -c 'alloc 64k 128k' -c 'a 0 4M' -c 'alloc 3M 2M' \
  -c 'alloc 5M' -c 'alloc 1 1' -c 'alloc 0 0' -c 'alloc 4194000 1000' -c 'alloc 0 abc' -c 'alloc -1'

compare_io "truncate" base.img -f raw -c 'truncate 8M' -c length -c 'read -P 0 6M 1M' -c 'truncate -m full 9M' \
  -c length -c 'truncate -m falloc 10M' -c 't 1M' -c length -c map -c 'truncate -m bogus 1M' -c 'truncate abc' \
  -c 'truncate -1' -c 'truncate 1 2 3 4'

compare_io "help and session commands" base.img -f raw -c help -c 'help read' -c 'help r' -c 'help map' \
  -c 'help quit' -c 'help nosuch' -c '?' -c 'sleep 10' -c 'sleep abc' -c 'sleep -5' -c 'sleep 1 2' \
  -c 'nosuch' -c 'length 1' -c 'map -x' -c 'close' -c 'length' -c 'quit' -c 'length'

# The open commands name their own image, restored before each tool runs.
RESET_FILES="base.img:opened.img"
compare_io "open and close commands" - -c 'open -r -o driver=raw opened.img' -c length \
  -c 'write 0 1' -c close -c 'open -o driver=raw,file.filename=opened.img' -c info -c 'open opened.img' -c close \
  -c 'open -f raw opened.img' -c 'open -t bogus opened.img' -c 'open -i bogus opened.img' -c 'open -d bogus opened.img' \
  -c 'open -n -t none -i threads -d unmap -U -r -o driver=raw opened.img' -c 'read -P 0 1M 4k' -c c \
  -c 'o -o driver=raw opened.img' -c 'w -P 0x61 0 1' -c 'open nosuch.img' -c 'open -o driver=bogus opened.img' -c 'open' \
  -c 'close' -c 'open -o driver=raw' -c 'open -o file.filename=nosuch' -c 'open -o driver=raw nosuch'
compare_io "image-opts naming a missing file" - --image-opts -c length driver=raw,file.filename=nosuch
compare_io "reopen, signals and breakpoints" base.img -f raw -c 'reopen -r' -c 'write 0 1' -c 'reopen -w' \
  -c 'write -q 0 1' -c 'reopen -c none' -c 'read -P 0 1M 1' -c 'reopen -c bogus' -c 'reopen -o foo=bar' -c 'reopen -r -w' \
  -c 'reopen x' -c 'sigraise 99' -c 'sigraise abc' -c 'break a b' -c 'remove_break a' -c 'resume a' \
  -c 'help sigraise' -c 'help reopen' -c 'help open' -c 'help aio_read' -c 'help discard' -c 'help readv' \
  -c 'help writev' -c 'help truncate' -c 'help alloc'
compare_io "sigraise terminates" base.img -f raw -c 'write -q 0 1' -c 'sigraise 15' -c 'write 0 1'
compare_io "abort crashes" base.img -f raw -c 'write -q 0 1' -c 'abort' -c 'write 0 1'

compare_io "image-opts" - --image-opts -c length -c 'read -P 0 1M 4k' -c info driver=raw,file.filename=opened.img
compare_io "image-opts with -f" - --image-opts -f raw -c length driver=raw,file.filename=opened.img
compare_io_stdin "interactive without image" - $'length\nopen -o driver=raw opened.img\nlength\nclose\nopen opened.img\nwrite -P 0x62 0 1\n'
RESET_FILES=

compare_io "cache=none with misaligned requests" base.img -f raw -n \
  -c 'write -P 0x11 1 1000' -c 'read -P 0x11 1 1000' -c 'read -v 0 17' -c 'write -P 0x22 4095 3' \
  -c 'readv -P 0x22 4095 1 2' -c 'read -P 0x11 1001 1' -c 'writev -P 0x33 513 7 9' -c 'read -v 508 24'

for options in '-t none' '-t writeback' '-t writethrough' '-t directsync' '-t unsafe' '-i threads' \
  '-i io_uring' '-n -i native' '-d ignore' '-d unmap' '-m' '-C' '-U -r' '-r' '--cache=none --aio=threads'; do
  # shellcheck disable=SC2086
  compare_io "program options $options" base.img -f raw $options -c 'write -P 0x5a 1k 3k' -c 'read -P 0x5a 1k 3k' \
    -c 'discard 64k 64k' -c 'read -v 64k 16'
done

compare_io "options after file name" base.img -c 'read -q 0 1' -f raw -c 'length'
compare_io "probed raw warning" base.img -c 'write -P 3 4k 4k' -c 'read -P 3 4k 4k'

# Output captured with 2>&1: stdout is buffered like qemu-io's, so errors
# land where they land with qemu-io.
for tool in QEMU_IO KILN_IO; do
  cp base.img combined.img
  "${!tool}" -f raw -c 'read -q 0 1' -c length -c bogus -c length -c 'write -P 1 0 1' -c 'read 5M 1' \
    combined.img > "combined.$tool" 2>&1 || true
  printf 'length\nbogus\nlength\n' | "${!tool}" -f raw combined.img > "combined-interactive.$tool" 2>&1 || true
done
expect_equal "stdout and stderr interleave as with qemu-io" "$(mask_io_output < combined.QEMU_IO)" "$(mask_io_output < combined.KILN_IO)"
expect_equal "interactive interleaving as with qemu-io" "$(mask_io_output < combined-interactive.QEMU_IO)" \
  "$(mask_io_output < combined-interactive.KILN_IO)"

compare_io_stdin "interactive mode" base.img $'read 0 1\nlength\n\n  \nbogus\nwrite -P 1 0 1\nread -P 1 0 1' -f raw
compare_io_stdin "interactive quit" base.img $'length\nquit\nlength\n' -f raw

finish
