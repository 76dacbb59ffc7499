#!/bin/bash
# The randomised differential test with many more batches per configuration (slow).
export KILN_DIFF_BATCHES=${KILN_DIFF_BATCHES:-200}
exec bash "$(dirname "$0")/qcow2_differential.sh"
