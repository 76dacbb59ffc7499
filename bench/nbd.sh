#!/bin/bash
# kiln-nbd against qemu-nbd and `nbdkit file`, all in one run:
#  - throughput: nbdcopy from the export to null: and to a file, over a UNIX
#    socket and TCP loopback, with 1 and 4 connections, on a raw and a qcow2
#    image (nbdkit's file plugin serves raw only: "n/a" for qcow2), with each
#    server's peak RSS and CPU time (user + system) for the copy; medians of
#    REPS runs (default 3), a different server going first in each run, the
#    image read into the page cache before every copy;
#  - memory: each server's peak RSS with 64 clients connected at once, every
#    one of them having read 1 MiB.
# Usage: [REPS=N] bench/nbd.sh [BUILD_BIN_DIR] [SIZE_MIB]
# Run it on an idle machine; a small SIZE_MIB (e.g. 8) only checks the script.
set -euo pipefail
BIN=${1:-$(dirname "$0")/../build/default/bin}
SIZE_MIB=${2:-1024}
REPS=${REPS:-3}
CLIENTS=64
KILN_NBD=$(realpath "$BIN/kiln-nbd")
for tool in qemu-nbd qemu-img qemu-io nbdkit nbdcopy nbdinfo python3 bc; do
  command -v $tool >/dev/null || { echo "nbd.sh: $tool is needed" >&2; exit 1; }
done
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nbd-bench.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR"

# Mostly data with some holes, written once; the qcow2 copy has the same contents.
qemu-img create -q -f raw disk.raw "${SIZE_MIB}M"
qemu-io -f raw -c "write -P 0x5a 0 $((SIZE_MIB * 3 / 4))M" disk.raw >/dev/null
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2

port=$((30000 + RANDOM % 20000))
uri() { if [ "$1" = unix ]; then echo "nbd+unix:///?socket=$DIR/s.sock"; else echo "nbd://127.0.0.1:$port"; fi; }
start() {  # NAME FORMAT TRANSPORT [SHARED]
  local name=$1 format=$2 transport=$3 shared=${4:-8} listen
  if [ "$transport" = unix ]; then listen=(-k "$DIR/s.sock"); else listen=(-b 127.0.0.1 -p $port); fi
  rm -f s.sock
  case $name in
    kiln-nbd) "$KILN_NBD" -f "$format" -r -t -e "$shared" "${listen[@]}" "disk.$format" & ;;
    qemu-nbd) qemu-nbd -f "$format" -r -t -e "$shared" "${listen[@]}" "disk.$format" & ;;
    nbdkit)  # raw only; serves any number of clients
      if [ "$transport" = unix ]; then nbdkit -f -r -U "$DIR/s.sock" file disk.raw &
      else nbdkit -f -r -i 127.0.0.1 -p $port file disk.raw & fi ;;
  esac
  server_pid=$!
  for _ in $(seq 200); do nbdinfo --size "$(uri "$transport")" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "nbd.sh: $name did not start" >&2
  exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$server_pid/status"; }
# The server's CPU seconds so far (user + system).
cpu_seconds() { awk -v tick="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / tick}' "/proc/$server_pid/stat"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# ---- Throughput --------------------------------------------------------------
declare -A results rss cpu runs cpus
for rep in $(seq "$REPS"); do
for format in raw qcow2; do
  for transport in unix tcp; do
    for target in null file; do
      for conns in 1 4; do
        # Each run starts with another server, and with the image in the page
        # cache (the machine may have reclaimed it since the last run).
        order=(kiln-nbd qemu-nbd nbdkit)
        for _ in $(seq $(( (rep - 1) % 3 ))); do order=("${order[@]:1}" "${order[0]}"); done
        for name in "${order[@]}"; do
          key="$format $transport $target $conns $name"
          if [ $name = nbdkit ] && [ $format != raw ]; then results[$key]=n/a; rss[$key]=n/a; cpu[$key]=n/a; continue; fi
          cat "disk.$format" >/dev/null
          start $name $format $transport
          dest=null:
          if [ "$target" = file ]; then dest=$DIR/out.raw; rm -f out.raw; fi
          c0=$(cpu_seconds)
          t0=$(date +%s.%N)
          nbdcopy --connections=$conns "$(uri $transport)" "$dest"
          t1=$(date +%s.%N)
          runs[$key]="${runs[$key]:-} $(echo "$SIZE_MIB / ($t1 - $t0)" | bc -l)"
          cpus[$key]="${cpus[$key]:-} $(echo "$(cpu_seconds) - $c0" | bc -l)"
          rss[$key]=$(peak_rss)
          stop
        done
      done
    done
  done
done
done
for key in "${!runs[@]}"; do
  results[$key]=$(echo "${runs[$key]}" | median)
  cpu[$key]=$(printf '%.2f' "$(echo "${cpus[$key]}" | median)")
done
rm -f out.raw

# ---- Peak RSS with many clients ---------------------------------------------
# Opens CLIENTS connections (fixed newstyle, NBD_OPT_GO, one 1 MiB READ each),
# says "ready" with all of them open, and closes them when told.
cat > hold_clients.py <<'PY'
import socket, struct, sys
path, count = sys.argv[1], int(sys.argv[2])
OPT, REPLY_MAGIC, ACK = 0x49484156454F5054, 0x3e889045565a9, 1
def exact(s, n):
    data = s.recv(n, socket.MSG_WAITALL)
    if len(data) != n: sys.exit("server closed the connection")
    return data
clients = []
for i in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    exact(s, 18)
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", OPT, 7, 6) + struct.pack(">IH", 0, 0))
    while True:
        magic, option, kind, length = struct.unpack(">QIII", exact(s, 20))
        if magic != REPLY_MAGIC: sys.exit("bad option reply")
        exact(s, length)
        if kind == ACK: break
        if kind & 0x80000000: sys.exit("NBD_OPT_GO refused")
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 0, 1 << 20))
    magic, error, _ = struct.unpack(">IIQ", exact(s, 16))
    if magic != 0x67446698 or error: sys.exit("read failed")
    exact(s, 1 << 20)
    clients.append(s)
print("ready", flush=True)
sys.stdin.readline()
for s in clients:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 0, 0, 0))
    s.close()
PY
declare -A many_rss
for name in kiln-nbd qemu-nbd nbdkit; do
  start $name raw unix $CLIENTS
  coproc HOLD { python3 hold_clients.py "$DIR/s.sock" $CLIENTS; }
  read -r line <&"${HOLD[0]}" || line=
  if [ "$line" != ready ]; then echo "nbd.sh: $name did not take $CLIENTS clients" >&2; exit 1; fi
  many_rss[$name]=$(peak_rss)
  echo done >&"${HOLD[1]}"
  wait "$HOLD_PID" || true
  stop
done

# ---- Report -------------------------------------------------------------------
ratio() { if [ "$2" = n/a ]; then echo n/a; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
rate() { if [ "$1" = n/a ]; then echo n/a; else printf '%.0f' "$1"; fi; }
echo "nbdcopy of a ${SIZE_MIB} MiB image, median of $REPS (MiB/s; server CPU s; peak server RSS in KiB)"
printf '%-6s %-6s %-5s %-2s %7s %7s %7s %9s %9s %8s %8s %8s %8s %8s %8s\n' format trans dest C \
  kiln qemu nbdkit kiln/qemu kiln/nbdk kiln-CPU qemu-CPU nbdk-CPU kiln-RSS qemu-RSS nbdk-RSS
for format in raw qcow2; do
  for transport in unix tcp; do
    for target in null file; do
      for conns in 1 4; do
        k=${results["$format $transport $target $conns kiln-nbd"]}
        q=${results["$format $transport $target $conns qemu-nbd"]}
        n=${results["$format $transport $target $conns nbdkit"]}
        printf '%-6s %-6s %-5s %-2s %7s %7s %7s %9s %9s %8s %8s %8s %8s %8s %8s\n' $format $transport $target $conns \
          "$(rate "$k")" "$(rate "$q")" "$(rate "$n")" "$(ratio "$k" "$q")" "$(ratio "$k" "$n")" \
          "${cpu["$format $transport $target $conns kiln-nbd"]}" "${cpu["$format $transport $target $conns qemu-nbd"]}" \
          "${cpu["$format $transport $target $conns nbdkit"]}" \
          "${rss["$format $transport $target $conns kiln-nbd"]}" "${rss["$format $transport $target $conns qemu-nbd"]}" \
          "${rss["$format $transport $target $conns nbdkit"]}"
      done
    done
  done
done
echo
echo "peak server RSS with $CLIENTS clients connected (raw, UNIX socket, 1 MiB read each), KiB"
printf '%-10s %10s %10s %10s\n' "" kiln-nbd qemu-nbd nbdkit
printf '%-10s %10s %10s %10s\n' VmHWM "${many_rss[kiln-nbd]}" "${many_rss[qemu-nbd]}" "${many_rss[nbdkit]}"
