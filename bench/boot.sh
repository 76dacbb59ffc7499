#!/usr/bin/env bash
# boot.sh: time to run a compute-bound Multiboot kernel (emulator/guest_compute.asm)
# on kiln-system-x86_64 and on qemu-system-x86_64 -accel tcg, in the same run,
# alternating which goes first. Boot overhead (qemu's SeaBIOS, process start) is
# measured with the smallest guest (tests/guest/hello.asm) and subtracted to
# give guest instructions per second (the kernel's instruction count is known).
# Usage: bench/boot.sh [BUILD_BIN_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/default/bin}
runs=${2:-3}
work=$(mktemp -d /tmp/kiln-boot-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

instructions=$(( 40000000 * 6 + 40 * 65536 * 70 ))  # see guest_compute.asm
nasm -f bin -I tests/guest/lib -o "$work/compute.bin" bench/emulator/guest_compute.asm
nasm -f bin -I tests/guest/lib -o "$work/hello.bin" tests/guest/hello.asm

args=(-nographic -no-reboot -display none -monitor none -serial "file:$work/serial.txt"
      -device isa-debug-exit,iobase=0xf4,iosize=0x4 -m 128M)
# run_one EMULATOR KERNEL: prints the wall time; fails unless the guest passed.
run_one() {
  local start=$EPOCHREALTIME status=0
  "$1" -accel tcg "${args[@]}" -kernel "$2" >/dev/null 2>&1 || status=$?
  local end=$EPOCHREALTIME
  [ "$status" = 1 ] || { echo "$1 $2: exit status $status, serial output:" >&2; cat "$work/serial.txt" >&2; exit 1; }
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A times
for kernel in hello compute; do
  for tool in kiln qemu; do : >"$work/$tool-$kernel"; done
  for ((i = 0; i < runs; i++)); do
    order=(kiln qemu); ((i % 2)) && order=(qemu kiln)
    for tool in "${order[@]}"; do
      exe="$bin/kiln-system-x86_64"; [ "$tool" = qemu ] && exe=qemu-system-x86_64
      run_one "$exe" "$work/$kernel.bin" >>"$work/$tool-$kernel"
    done
  done
  for tool in kiln qemu; do times[$tool-$kernel]=$(median <"$work/$tool-$kernel"); done
done

echo "Compute-bound Multiboot kernel ($instructions guest instructions), median of $runs runs"
printf '| emulator | boot s | total s | compute s | guest MIPS |\n|---|---|---|---|---|\n'
for tool in kiln qemu; do
  boot=${times[$tool-hello]} total=${times[$tool-compute]}
  awk -v t="$tool" -v b="$boot" -v a="$total" -v n="$instructions" \
    'BEGIN { c = a - b; if (c <= 0) c = 0.001; printf "| %s | %.3f | %.3f | %.3f | %.0f |\n", t == "kiln" ? "kiln-system-x86_64 (interpreter)" : "qemu-system-x86_64 -accel tcg", b, a, c, n / c / 1e6 }'
done
