# Helpers shared by the kiln-nbd interop scripts (sourced after lib.sh).
KILN_NBD="$KILN_BIN/kiln-nbd"
server_pids=()

stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${server_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  server_pids=()
}
trap 'stop_servers; cleanup_test_dir' EXIT

# wait_for_socket PATH: until a UNIX socket exists (5 s at most).
wait_for_socket() {
  local i
  for i in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "socket $1 never appeared" >&2
  return 1
}

# start_server SOCKET PROGRAM ARGS...: runs a server in the background on SOCKET.
start_server() {
  local socket=$1; shift
  rm -f "$socket"
  "$@" &
  server_pids+=($!)
  wait_for_socket "$socket"
}

uri() { echo "nbd+unix:///${2:-}?socket=$TEST_DIR/$1"; }
