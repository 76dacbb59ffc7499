#!/usr/bin/env bash
# Configures and builds Kiln with a preset (default: "default") on two jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-default}
bash scripts/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "${KILN_JOBS:-2}"
