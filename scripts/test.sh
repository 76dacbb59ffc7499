#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest test.
# Pass ctest arguments to narrow it, e.g. scripts/test.sh -L quick
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh default
ctest --preset default -j "${KILN_JOBS:-2}" --timeout 900 "$@"
