#!/bin/bash
# kiln-io drives any format through the Image/Node API: the same commands
# on qcow2 images made by qemu-img give the same output and the same guest
# data as qemu-io, and `info` prints the same format specific information.
KILN_IO_TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$KILN_INTEROP_LIB"
source "$KILN_IO_TEST_DIR/common.sh"

probe=$("$KILN_IO" -f qcow2 -c length /dev/null 2>&1) || true
if [[ "$probe" == *"Unknown driver"* ]]; then
  echo "qcow2 is not in the block layer yet"
  finish
  exit
fi

qemu-img create -q -f qcow2 base.qcow2 4M
compare_io "qcow2 data and allocation" base.qcow2 -f qcow2 \
  -c 'write -P 1 64k 64k' -c 'write -c 128k 64k' -c 'write -z 1M 64k' -c 'write -P 3 3000 5000' \
  -c map -c 'alloc 0 4M' -c 'alloc 64k 64k' -c length -c 'read -P 1 64k 64k' -c 'read -P 0xcd 128k 64k' \
  -c 'read -v 2990 30' -c info -c 'aio_write -P 4 3M 4k' -c aio_flush -c 'read -P 4 3M 4k'
check "images written by both tools compare equal" qemu-img compare -q q.img k.img

qemu-img create -q -f qcow2 -o lazy_refcounts=on,extended_l2=on,cluster_size=128k extended.qcow2 3G
compare_io "qcow2 info with extended L2" extended.qcow2 -c info -c length -c 'write -P 6 1G 4k' -c 'alloc 1G 256k' -c map

compare_io "qcow2 snapshot mode" base.qcow2 -f qcow2 -s -c 'write -P 5 0 64k' -c 'read -P 5 0 64k' -c map
expect_equal "qcow2 -s left the image alone" "$(file_hash base.qcow2)" "$(file_hash k.img)"

finish
