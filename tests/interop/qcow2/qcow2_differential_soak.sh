#!/bin/bash
# The randomised differential test with more batches per configuration (slow; KILN_DIFF_BATCHES=N for longer).
export KILN_DIFF_BATCHES=${KILN_DIFF_BATCHES:-20}
exec bash "$(dirname "$0")/qcow2_differential.sh"
