# Helpers shared by the ivshmem interop scripts (sourced after lib.sh).
SERVER="$KILN_BIN/kiln-ivshmem-server"
CLIENT="$KILN_BIN/kiln-ivshmem-client"
SHM_NAME="kiln-interop-$$"
SOCK="$TEST_DIR/sock"
started_pids=()

# Kills everything this script started, even on failure.
stop_started() {
  local pid
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "/dev/shm/$SHM_NAME"
  cleanup_test_dir
}
trap stop_started EXIT

# wait_for FILE REGEX [SECONDS]: polls until FILE has a line matching REGEX.
wait_for() {
  local file=$1 pattern=$2 limit=${3:-20} waited=0  # generous: CI machines are loaded
  while ! grep -Eq -- "$pattern" "$file" 2>/dev/null; do
    sleep 0.05
    waited=$((waited + 1))
    if [ "$waited" -ge $((limit * 20)) ]; then
      echo "timed out waiting for '$pattern' in $file:" >&2
      cat "$file" >&2 || true
      return 1
    fi
  done
}

# wait_count FILE REGEX COUNT [SECONDS]: polls until COUNT lines of FILE match REGEX.
wait_count() {
  local file=$1 pattern=$2 count=$3 limit=${4:-5} waited=0
  while [ "$(count_matches "$file" "$pattern")" -lt "$count" ]; do
    sleep 0.05
    waited=$((waited + 1))
    if [ "$waited" -ge $((limit * 20)) ]; then
      echo "timed out waiting for $count lines '$pattern' in $file:" >&2
      cat "$file" >&2 || true
      return 1
    fi
  done
}

# wait_gone PATH [SECONDS]: polls until PATH no longer exists.
wait_gone() {
  local waited=0
  while [ -e "$1" ]; do
    sleep 0.05
    waited=$((waited + 1))
    [ "$waited" -lt $((${2:-5} * 20)) ] || return 1
  done
}

# start_server ARGS...: foreground server logging to server.log; waits until it
# listens (the log keeps earlier servers' lines: wait for one more).
count_matches() { if [ -e "$1" ]; then grep -Ec -- "$2" "$1" || true; else echo 0; fi; }

start_server() {
  local before
  before=$(count_matches server.log "listening on")
  "$SERVER" -F -v -S "$SOCK" -M "$SHM_NAME" "$@" >>server.log 2>&1 &
  server_pid=$!
  started_pids+=("$server_pid")
  local waited=0
  while [ "$(count_matches server.log "listening on")" -le "$before" ]; do
    sleep 0.05
    waited=$((waited + 1))
    if [ "$waited" -ge 100 ]; then
      echo "server did not start:" >&2
      cat server.log >&2
      return 1
    fi
  done
}

# start_client NAME: interactive client fed by the fifo NAME.in, output in NAME.out.
# The fifo stays open on a file descriptor stored in fd_NAME.
start_client() {
  local name=$1
  mkfifo "$name.in"
  "$CLIENT" -S "$SOCK" <"$name.in" >"$name.out" 2>&1 &
  started_pids+=("$!")
  eval "pid_$name=$!"
  local fd
  exec {fd}>"$name.in"
  eval "fd_$name=$fd"
}

# send NAME COMMAND: types a command into an interactive client.
send() {
  local fd_var="fd_$1"
  echo "$2" >&"${!fd_var}"
}

# sync_client NAME: returns once the client has handled every command sent so far.
sync_counter=0
sync_client() {
  sync_counter=$((sync_counter + 1))
  send "$1" "echo sync-$sync_counter"
  wait_for "$1.out" "^sync-$sync_counter\$" "${2:-5}"
}

fd_count() { ls "/proc/$1/fd" | wc -l; }
