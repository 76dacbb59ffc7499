#!/bin/bash
# kiln-nbd throughput against qemu-nbd and nbdkit file: nbdcopy from the
# export to null: and to a file, over a UNIX socket and TCP loopback, with 1
# and 4 connections, on a raw image. Prints MiB/s, ratios and peak RSS.
# Usage: bench/nbd.sh [BUILD_BIN_DIR] [SIZE_MIB]
set -euo pipefail
BIN=${1:-$(dirname "$0")/../build/default/bin}
SIZE_MIB=${2:-1024}
KILN_NBD=$(realpath "$BIN/kiln-nbd")
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nbd-bench.XXXXXX")
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
cd "$DIR"

# Mostly data with some holes, written once.
qemu-img create -q -f raw disk.raw "${SIZE_MIB}M"
qemu-io -f raw -c "write -P 0x5a 0 $((SIZE_MIB * 3 / 4))M" disk.raw >/dev/null

port=$((30000 + RANDOM % 20000))
start() {  # NAME TRANSPORT
  local name=$1 transport=$2 listen
  if [ "$transport" = unix ]; then listen=(-k "$DIR/s.sock"); else listen=(-b 127.0.0.1 -p $port); fi
  rm -f s.sock
  case $name in
    kiln-nbd) "$KILN_NBD" -f raw -r -t -e 8 "${listen[@]}" disk.raw & ;;
    qemu-nbd) qemu-nbd -f raw -r -t -e 8 "${listen[@]}" disk.raw & ;;
    nbdkit)
      if [ "$transport" = unix ]; then nbdkit -f -r -U "$DIR/s.sock" file disk.raw &
      else nbdkit -f -r -i 127.0.0.1 -p $port file disk.raw & fi ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do nbdinfo --size "$(uri "$transport")" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "$name did not start" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }
uri() { if [ "$1" = unix ]; then echo "nbd+unix:///?socket=$DIR/s.sock"; else echo "nbd://127.0.0.1:$port"; fi; }
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$server_pid/status"; }

declare -A results rss
for transport in unix tcp; do
  for target in null file; do
    for conns in 1 4; do
      for name in kiln-nbd qemu-nbd nbdkit; do
        start $name $transport
        dest=null:
        [ "$target" = file ] && dest=$DIR/out.raw && rm -f out.raw
        t0=$(date +%s.%N)
        nbdcopy --connections=$conns "$(uri $transport)" "$dest"
        t1=$(date +%s.%N)
        key="$transport $target $conns $name"
        results[$key]=$(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l)
        rss[$key]=$(peak_rss)
        stop
      done
    done
  done
done

printf '%-6s %-5s %-3s %12s %12s %12s %9s %9s %10s\n' transport dest C kiln-MiB/s qemu-MiB/s nbdkit-MiB/s kiln/qemu kiln/nbdkit kiln-RSS-KiB
for transport in unix tcp; do
  for target in null file; do
    for conns in 1 4; do
      k=${results["$transport $target $conns kiln-nbd"]}
      q=${results["$transport $target $conns qemu-nbd"]}
      n=${results["$transport $target $conns nbdkit"]}
      printf '%-6s %-5s %-3s %12.0f %12.0f %12.0f %9.2f %9.2f %10s\n' $transport $target $conns "$k" "$q" "$n" \
        "$(echo "$k / $q" | bc -l)" "$(echo "$k / $n" | bc -l)" "${rss["$transport $target $conns kiln-nbd"]}"
    done
  done
done
