#!/usr/bin/env bash
# Runs one bare-metal guest test on an emulator (kiln-system-x86_64 or
# qemu-system-x86_64, same arguments) and checks it:
#   - the serial output after the line containing KILN-GUEST-BEGIN (the
#     firmware may print before it) equals EXPECTED, and
#   - the exit status is 1 (isa-debug-exit with 0: PASS; 3 means FAIL), or
#     the number in <name>.status beside EXPECTED (e.g. 0: a reset with -no-reboot).
# Usage: run_guest.sh EMULATOR IMAGE EXPECTED [ARGS_FILE]
# ARGS_FILE holds extra arguments, one per line (# comments, blank lines
# skipped); @GUEST_DIR@ stands for the folder of ARGS_FILE.
set -u
if [[ $# -lt 3 ]]; then
  echo "usage: $0 EMULATOR IMAGE EXPECTED [ARGS_FILE]" >&2
  exit 2
fi
emulator=$1 image=$2 expected=$3 args_file=${4:-}
timeout_seconds=${KILN_GUEST_TIMEOUT:-30}

extra=()
if [[ -n $args_file ]]; then
  guest_dir=$(cd "$(dirname "$args_file")" && pwd)
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -z $line || $line == \#* ]] && continue
    extra+=("${line//@GUEST_DIR@/$guest_dir}")
  done <"$args_file"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timeout "$timeout_seconds" "$emulator" -accel tcg -nographic -no-reboot -display none -monitor none \
  -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x4 -kernel "$image" "${extra[@]}" \
  </dev/null >"$work/out" 2>"$work/err"
status=$?
want=1
status_file=${expected%.expected}.status
[[ -f $status_file ]] && want=$(tr -d '[:space:]' <"$status_file")

tr -d '\r' <"$work/out" | awk 'found { print } !found && index($0, "KILN-GUEST-BEGIN") { found = 1 }' >"$work/actual"
failed=0
if ! grep -q KILN-GUEST-BEGIN "$work/out"; then
  echo "no KILN-GUEST-BEGIN line in the serial output" >&2
  failed=1
elif ! diff -u "$expected" "$work/actual" >"$work/diff"; then
  echo "serial output differs from $expected:" >&2
  cat "$work/diff" >&2
  failed=1
fi
if [[ $status -ne $want ]]; then
  case $status in
    3) why="the guest reported FAIL" ;;
    124) why="timed out after ${timeout_seconds} s" ;;
    *) why="expected $want" ;;
  esac
  echo "exit status $status: $why" >&2
  failed=1
fi
if [[ $failed -ne 0 ]]; then
  echo "--- emulator stderr ---" >&2
  cat "$work/err" >&2
  echo "--- serial output ---" >&2
  cat "$work/out" >&2
  exit 1
fi
exit 0
