#!/usr/bin/env bash
# qcow2.sh: kiln-img against qemu-img on qcow2 in the same run, alternating
# which tool goes first, median of RUNS, peak RSS from /usr/bin/time, as a
# Markdown table with the ratio kiln/qemu:
#  - convert of the mixed image (bench/make-mixed-image.sh) raw → qcow2,
#    qcow2 → raw, and compressed (-c) with compression_type=zlib and zstd;
#  - `bench` 4 KiB writes (allocating, into a fresh image) and reads on qcow2.
#    qemu-img bench has no random mode: requests stride by 1 MiB + 4 KiB,
#    wrapping, so each lands in another cluster spread over the image;
#  - `bench` 4 KiB reads striding over a 1 TiB sparse qcow2 whose L2 tables
#    (TABLES of them, 64 KiB each, default 2048 = 128 MiB) exceed the default
#    32 MiB L2 cache: peak RSS shows the cache bound.
# CPU seconds (user + system, median) are printed too: on a shared machine
# they are steadier than wall time.
# Usage: bench/qcow2.sh [BUILD_BIN_DIR] [RUNS] [SIZE_MIB]
#   env: TABLES, BENCH_COUNT, CASES (a grep -E pattern: only cases whose label matches)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/default/bin}
runs=${2:-5}
size_mib=${3:-2048}
tables=${TABLES:-2048}
count=${BENCH_COUNT:-200000}
only=${CASES:-.}
work=${KILN_BENCH_DIR:-$(mktemp -d /var/tmp/kiln-bench.XXXXXX)}
trap 'rm -rf "$work"' EXIT

bash bench/make-mixed-image.sh "$work/source.raw" "$size_mib"
qemu-img convert -f raw -O qcow2 "$work/source.raw" "$work/source.qcow2"
# 1 TiB, one 4 KiB write every 1 TiB/TABLES: one allocated L2 table each.
qemu-img create -q -f qcow2 "$work/sparse.qcow2" 1T
stride=$(( (1 << 40) / tables ))
for ((i = 0; i < tables; i += 256)); do
  commands=()
  for ((j = i; j < i + 256 && j < tables; j++)); do commands+=(-c "write -P 0x5a $((j * stride)) 4k"); done
  qemu-io -f qcow2 "${commands[@]}" "$work/sparse.qcow2" >/dev/null
done
sync

step=$(( (1 << 20) + 4096 ))
big_step=$(( (1 << 40) / (tables * 3 / 2) + 65536 ))
(( big_step > (2 << 30) - 65536 )) && big_step=$(( (2 << 30) - 65536 ))  # qemu-img bench: step below 2 GiB
# Each case: label | command run before each timing (untimed, may be empty) | arguments after the tool name.
cases=(
  "convert raw → qcow2||convert -f raw -O qcow2 SRC DST"
  "convert qcow2 → raw||convert -f qcow2 -O raw QSRC DST"
  "convert -c raw → qcow2 (zlib)||convert -c -f raw -O qcow2 -o compression_type=zlib SRC DST"
  "convert -c raw → qcow2 (zstd)||convert -c -f raw -O qcow2 -o compression_type=zstd SRC DST"
  "bench -w 4 KiB, stride 1 MiB+4 KiB, new qcow2|qemu-img create -q -f qcow2 DST ${size_mib}M|bench -w -q -f qcow2 -c $count -s 4k -S $step DST"
  "bench 4 KiB reads, stride 1 MiB+4 KiB, qcow2||bench -q -f qcow2 -c $count -s 4k -S $step QSRC"
  "bench 4 KiB reads over 1 TiB sparse qcow2 ($tables L2 tables)||bench -q -f qcow2 -c $count -s 4k -S $big_step BIG"
)

substitute() {
  local text=$1
  text=${text//QSRC/$work/source.qcow2}
  text=${text//SRC/$work/source.raw}
  text=${text//DST/$work/target}
  echo "${text//BIG/$work/sparse.qcow2}"
}

# time_one PREP TOOL ARGS: prints "seconds peak_rss_kib cpu_seconds".
time_one() {
  local prep=$1 tool=$2; shift 2
  rm -f "$work/target"
  [ -n "$prep" ] && $(substitute "$prep")
  local args
  args=$(substitute "$*")
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M %U %S" -o "$work/rss.txt" $tool $args >/dev/null
  local end=$EPOCHREALTIME
  echo "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }') $(awk '{ printf "%d %.2f", $1, $2 + $3 }' "$work/rss.txt")"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| qcow2 case ($size_mib MiB mixed image, $count bench requests) | qemu-img s | kiln-img s | ratio kiln/qemu | qemu-img CPU s | kiln-img CPU s | qemu-img peak RSS MiB | kiln-img peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
for entry in "${cases[@]}"; do
  label=${entry%%|*}
  rest=${entry#*|}
  prep=${rest%%|*}
  args=${rest#*|}
  grep -qE "$only" <<<"$label" || continue
  : >"$work/qemu.txt"; : >"$work/kiln.txt"
  for ((run = 0; run < runs; run++)); do
    if ((run % 2 == 0)); then
      time_one "$prep" qemu-img $args >>"$work/qemu.txt"
      time_one "$prep" "$bin/kiln-img" $args >>"$work/kiln.txt"
    else
      time_one "$prep" "$bin/kiln-img" $args >>"$work/kiln.txt"
      time_one "$prep" qemu-img $args >>"$work/qemu.txt"
    fi
  done
  q=$(cut -d' ' -f1 "$work/qemu.txt" | median)
  k=$(cut -d' ' -f1 "$work/kiln.txt" | median)
  qm=$(cut -d' ' -f2 "$work/qemu.txt" | sort -n | tail -1)
  km=$(cut -d' ' -f2 "$work/kiln.txt" | sort -n | tail -1)
  qc=$(cut -d' ' -f3 "$work/qemu.txt" | median)
  kc=$(cut -d' ' -f3 "$work/kiln.txt" | median)
  printf "| %s | %.3f | %.3f | %.2f | %.2f | %.2f | %d | %d |\n" "$label" "$q" "$k" "$(awk -v k="$k" -v q="$q" 'BEGIN { print (q > 0) ? k / q : 0 }')" "$qc" "$kc" $((qm / 1024)) $((km / 1024))
done
