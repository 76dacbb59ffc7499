#!/bin/bash
# Server command line, daemon mode and PID file, clean shutdown, stale and live
# sockets, file-backed memory (-m) and bad options: one-line errors, nothing left behind.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

nothing_left() {
  test ! -e "/dev/shm/$SHM_NAME" && test ! -e "$SOCK"
}

# -h mirrors ivshmem-server's help, with the same defaults.
"$SERVER" -h >help.txt
check "help usage line" grep -qx 'Usage: kiln-ivshmem-server \[OPTION\]...' help.txt
check "default socket" grep -qx '     default /tmp/ivshmem_socket' help.txt
check "default shm name" grep -qx '     default ivshmem' help.txt
check "default size" grep -qx '     default 4194304' help.txt
check "default vectors" grep -qx '     default 1' help.txt

# Bad options: status 1, the message, and no memory or socket created.
bad_option() {
  local expected=$1; shift
  local status=0
  "$SERVER" -S "$SOCK" -M "$SHM_NAME" "$@" >bad.out 2>bad.err || status=$?
  expect_equal "status of $*" 1 "$status"
  expect_equal "message of $*" "kiln-ivshmem-server: $expected" "$(head -1 bad.err)"
  check "nothing left by $*" nothing_left
}
bad_option "too many requested vectors (max is 64)" -F -n 65
bad_option "cannot parse n_vectors 'abc'" -F -n abc
bad_option "cannot parse shm size 'xyz'" -F -l xyz
bad_option "cannot use verbose in daemon mode" -v
touch not-a-socket
status=0
"$SERVER" -F -S not-a-socket -M "$SHM_NAME" 2>bad.err || status=$?
expect_equal "regular file as socket path" "1 kiln-ivshmem-server: 'not-a-socket' exists and is not a socket" \
  "$status $(cat bad.err)"
check "no memory left after a socket error" test ! -e "/dev/shm/$SHM_NAME"
status=0
"$SERVER" -F -S "$SOCK" -m "$TEST_DIR/missing-dir" 2>bad.err || status=$?
check "missing -m directory fails" test "$status" = 1
check "missing -m directory message" grep -q "cannot create shared memory in '$TEST_DIR/missing-dir'" bad.err
check "no socket left after a memory error" test ! -e "$SOCK"

# Default size is 4M.
start_server
expect_equal "default memory size" "shared memory size: 4194304" \
  "$("$CLIENT" -S "$SOCK" -c dump | grep '^shared memory size')"

# A second server on a live socket is refused and leaves its memory behind neither.
status=0
"$SERVER" -F -S "$SOCK" -M "$SHM_NAME-second" 2>bad.err || status=$?
expect_equal "live socket refused" "1 kiln-ivshmem-server: socket '$SOCK' is in use by another server" \
  "$status $(cat bad.err)"
check "second server's memory unlinked" test ! -e "/dev/shm/$SHM_NAME-second"
check "first server still serves" "$CLIENT" -S "$SOCK" -c id

# SIGKILL leaves a stale socket; a new server replaces it.
kill -KILL "$server_pid"
wait "$server_pid" || true
check "stale socket present after SIGKILL" test -S "$SOCK"
start_server -l 128k
expect_equal "restarted over a stale socket" "shared memory size: 131072" \
  "$("$CLIENT" -S "$SOCK" -c dump | grep '^shared memory size')"
kill -TERM "$server_pid"
wait "$server_pid"
check "clean after SIGTERM" nothing_left

# Daemon mode: returns at once, PID file names the daemon, SIGTERM cleans everything.
"$SERVER" -S "$SOCK" -M "$SHM_NAME" -p "$TEST_DIR/server.pid" -l 64k -n 3
expect_equal "daemon start status" 0 $?
daemon_pid=$(cat server.pid)
started_pids+=("$daemon_pid")
check "daemon is running" kill -0 "$daemon_pid"
check "daemon socket exists" test -S "$SOCK"
expect_equal "daemon serves 3 vectors" "own vectors: 3" "$("$CLIENT" -S "$SOCK" -c dump | grep '^own vectors')"
kill -TERM "$daemon_pid"
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
check "daemon exited" bash -c "! kill -0 $daemon_pid 2>/dev/null"
check "daemon removed its PID file" test ! -e server.pid
check "daemon removed socket and memory" nothing_left

# A daemon that cannot write its PID file fails the start and cleans up.
status=0
"$SERVER" -S "$SOCK" -M "$SHM_NAME" -p "$TEST_DIR/missing/server.pid" 2>pid.err || status=$?
expect_equal "unwritable PID file" \
  "1 kiln-ivshmem-server: cannot open pid file '$TEST_DIR/missing/server.pid': No such file or directory" \
  "$status $(cat pid.err)"
wait_gone "$SOCK"
check "nothing left by the failed daemon" nothing_left

# -m: a file in a directory, unlinked at once: nothing ever shows up there.
mkdir memdir
start_server -m "$TEST_DIR/memdir" -l 256k
"$CLIENT" -S "$SOCK" -c 'fill 0 256k 7' -c dump >m.out
check "file-backed memory size" grep -qx 'shared memory size: 262144' m.out
check "memory directory stays empty" test -z "$(ls -A memdir)"
check "no POSIX object for -m" test ! -e "/dev/shm/$SHM_NAME"
# -M after -m wins, like getopt's last-one-wins.
kill -TERM "$server_pid"
wait "$server_pid"
"$SERVER" -F -v -S "$SOCK" -m "$TEST_DIR/memdir" -M "$SHM_NAME" -l 64k >last.log 2>&1 &
server_pid=$!
started_pids+=("$server_pid")
wait_for last.log "listening on"
check "-M after -m uses POSIX memory" test -e "/dev/shm/$SHM_NAME"
kill -TERM "$server_pid"
wait "$server_pid"
check "clean at the end" nothing_left
finish
