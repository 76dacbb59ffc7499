# Helpers for the guest agent interop scripts (sourced after lib.sh).
KILN_GA="$KILN_BIN/kiln-ga"
KILN_GA_CLIENT="$KILN_BIN/kiln-ga-client"
QEMU_GA=${QEMU_GA:-/usr/sbin/qemu-ga}

agent_pids=()
stop_agents_only() {
  for pid in "${agent_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  agent_pids=()
}
stop_agents() { stop_agents_only; cleanup_test_dir; }
trap stop_agents EXIT

# wait_for_socket PATH: waits up to 5 s for a unix socket to appear.
wait_for_socket() {
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "socket $1 did not appear" >&2
  return 1
}

# start_qemu_ga SOCKET [ARGS...]
start_qemu_ga() {
  local socket=$1; shift
  mkdir -p "$TEST_DIR/qemu-state"
  "$QEMU_GA" -m unix-listen -p "$socket" -t "$TEST_DIR/qemu-state" "$@" 2>>"$TEST_DIR/qemu-ga.log" &
  agent_pids+=($!)
  wait_for_socket "$socket"
}

# start_kiln_ga SOCKET [ARGS...]
start_kiln_ga() {
  local socket=$1; shift
  mkdir -p "$TEST_DIR/kiln-state"
  "$KILN_GA" -c /dev/null -m unix-listen -p "$socket" -t "$TEST_DIR/kiln-state" "$@" 2>>"$TEST_DIR/kiln-ga.log" &
  agent_pids+=($!)
  wait_for_socket "$socket"
}

# The structure of a JSON value: member names and value types, arrays as the
# set of their element structures.
JQ_SHAPE='def shape: if type == "object" then with_entries(.value |= shape)
  elif type == "array" then (map(shape) | unique)
  elif type == "number" then "number"
  else type end; shape'
shape() { jq -cS "$JQ_SHAPE"; }
