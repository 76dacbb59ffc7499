#!/usr/bin/env bash
# convert.sh: times kiln-img convert against qemu-img convert in the same run on
# the same mixed 2 GiB raw image (raw, vmdk and vdi targets), alternating which tool goes first, and prints
# a Markdown table of median times, the ratio kiln/qemu and peak RSS.
# Usage: bench/convert.sh [BUILD_BIN_DIR] [RUNS] [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/default/bin}
runs=${2:-5}
size_mib=${3:-2048}
work=${KILN_BENCH_DIR:-$(mktemp -d /var/tmp/kiln-bench.XXXXXX)}
trap 'rm -rf "$work"' EXIT

bash bench/make-mixed-image.sh "$work/source.raw" "$size_mib"
sync

# Each case: a label and the convert arguments after the tool name.
cases=(
  "raw → raw|convert -f raw -O raw SRC DST"
  "raw → raw -S 0 (fully allocated)|convert -f raw -O raw -S 0 SRC DST"
  "raw → raw -S 64k|convert -f raw -O raw -S 64k SRC DST"
  "raw → vmdk (monolithicSparse)|convert -f raw -O vmdk SRC DST"
  "raw → vmdk (streamOptimized)|convert -f raw -O vmdk -o subformat=streamOptimized SRC DST"
  "raw → vdi|convert -f raw -O vdi SRC DST"
)

# time_one TOOL ARGS: prints "seconds peak_rss_kib".
time_one() {
  local tool=$1; shift
  rm -f "$work/target"
  local args=${*//SRC/$work/source.raw}
  args=${args//DST/$work/target}
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$work/rss.txt" $tool $args >/dev/null
  local end=$EPOCHREALTIME
  echo "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }') $(cat "$work/rss.txt")"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| conversion ($size_mib MiB mixed image) | qemu-img s | kiln-img s | ratio kiln/qemu | qemu-img peak RSS MiB | kiln-img peak RSS MiB |"
echo "|---|---|---|---|---|---|"
for entry in "${cases[@]}"; do
  label=${entry%%|*}
  args=${entry#*|}
  : >"$work/qemu.txt"; : >"$work/kiln.txt"
  for ((run = 0; run < runs; run++)); do
    if ((run % 2 == 0)); then
      time_one qemu-img $args >>"$work/qemu.txt"
      time_one "$bin/kiln-img" $args >>"$work/kiln.txt"
    else
      time_one "$bin/kiln-img" $args >>"$work/kiln.txt"
      time_one qemu-img $args >>"$work/qemu.txt"
    fi
  done
  q=$(cut -d' ' -f1 "$work/qemu.txt" | median)
  k=$(cut -d' ' -f1 "$work/kiln.txt" | median)
  qm=$(cut -d' ' -f2 "$work/qemu.txt" | sort -n | tail -1)
  km=$(cut -d' ' -f2 "$work/kiln.txt" | sort -n | tail -1)
  printf "| %s | %.3f | %.3f | %.2f | %d | %d |\n" "$label" "$q" "$k" "$(awk -v k="$k" -v q="$q" 'BEGIN { print (q > 0) ? k / q : 0 }')" $((qm / 1024)) $((km / 1024))
done
