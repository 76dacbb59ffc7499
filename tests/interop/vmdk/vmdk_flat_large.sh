#!/bin/bash
# Flat subformats on a 3 GiB source: twoGbMaxExtentFlat gets two extent files.
# Slow: the holes of flat extents are read (they report data, as in qemu).
source "$KILN_INTEROP_LIB"
source "$KILN_SOURCE_DIR/tests/interop/vmdk/suite.sh"

make_source src.raw 3G 2147450880 3221159936
subformat_suite src.raw 2147450880 3221159936 monolithicFlat twoGbMaxExtentFlat

finish
