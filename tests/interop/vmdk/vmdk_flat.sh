#!/bin/bash
# Flat subformats on a 64 MiB source (one extent each): kiln and qemu read and
# write each other's images; info, map and conversions agree.
source "$KILN_INTEROP_LIB"
source "$KILN_SOURCE_DIR/tests/interop/vmdk/suite.sh"

make_source small.raw 64M 33554432 67043328
subformat_suite small.raw 33554432 67043328 monolithicFlat twoGbMaxExtentFlat

finish
