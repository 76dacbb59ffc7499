#!/usr/bin/env bash
# Builds the libFuzzer targets (preset "fuzz": clang, ASan + UBSan) and runs
# each for a bounded time on a copy of its seed corpus.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20, or $KILN_FUZZ_SECONDS)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${KILN_FUZZ_SECONDS:-20}}
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${KILN_JOBS:-2}" --target kiln_fuzz_all >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passes=0
for target in build/fuzz/fuzz/*; do
  [ -x "$target" ] || continue
  name=$(basename "$target")
  corpus=$(find tests/fuzz -type d -path "*/corpus/$name" | head -1)
  mkdir -p "$work/$name"
  if [ -n "$corpus" ]; then cp -r "$corpus/." "$work/$name/"; fi
  if "$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=0 \
       "$work/$name" >"$work/$name.log" 2>&1; then
    echo "fuzz $name: ok ($(grep -c . <(ls "$work/$name")) corpus entries)"
    passes=$((passes + 1))
  else
    echo "fuzz $name: FAILED"
    tail -40 "$work/$name.log"
    failures=$((failures + 1))
  fi
done
echo "$passes passed, $failures failed"
[ "$failures" == 0 ]
