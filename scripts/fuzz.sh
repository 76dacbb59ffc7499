#!/usr/bin/env bash
# Builds the libFuzzer targets (preset "fuzz": clang, ASan + UBSan) and runs
# each for a bounded time on a copy of its seed corpus, $KILN_JOBS (default 2)
# targets at a time.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 15, or $KILN_FUZZ_SECONDS)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${KILN_FUZZ_SECONDS:-15}}
jobs=${KILN_JOBS:-2}
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" --target kiln_fuzz_all >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# run_target TARGET: fuzzes it; leaves NAME.ok or NAME.failed (with the log) in $work.
run_target() {
  local target=$1 name corpus
  name=$(basename "$target")
  corpus=$(find tests/fuzz -type d -path "*/corpus/$name" | head -1)
  mkdir -p "$work/$name"
  if [ -n "$corpus" ]; then cp -r "$corpus/." "$work/$name/"; fi
  if "$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=0 \
       "$work/$name" >"$work/$name.log" 2>&1; then
    echo "fuzz $name: ok ($(find "$work/$name" -type f | wc -l) corpus entries)" >"$work/$name.ok"
  else
    { echo "fuzz $name: FAILED"; tail -40 "$work/$name.log"; } >"$work/$name.failed"
  fi
}

running=0
for target in build/fuzz/fuzz/*; do
  [ -x "$target" ] || continue
  run_target "$target" &
  running=$((running + 1))
  if ((running >= jobs)); then wait -n; running=$((running - 1)); fi
done
wait

passes=0
failures=0
for result in "$work"/*.ok; do [ -e "$result" ] && cat "$result" && passes=$((passes + 1)); done
for result in "$work"/*.failed; do [ -e "$result" ] && cat "$result" && failures=$((failures + 1)); done
echo "$passes passed, $failures failed"
((passes > 0 && failures == 0))
