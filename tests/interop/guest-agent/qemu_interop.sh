#!/bin/bash
# The same requests against Debian's qemu-ga and kiln-ga (both on unix
# sockets, read-only and scratch-file commands only) must give structurally
# equal replies; kiln-ga-client must drive qemu-ga as well as kiln-ga.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

start_qemu_ga "$TEST_DIR/qemu.sock"
start_kiln_ga "$TEST_DIR/kiln.sock"

# ask SOCKET COMMAND [JSON]: the reply (or the error line) of one command.
ask() {
  local socket=$1; shift
  "$KILN_GA_CLIENT" -s "$socket" command "$@" 2>&1 | sed -E 's/^kiln-ga-client: //'
}

# same_shape DESCRIPTION COMMAND [JSON]
same_shape() {
  local description=$1; shift
  expect_equal "$description" "$(ask "$TEST_DIR/qemu.sock" "$@" | shape)" "$(ask "$TEST_DIR/kiln.sock" "$@" | shape)"
}
# same_text DESCRIPTION COMMAND [JSON]: identical replies (values too).
same_text() {
  local description=$1; shift
  expect_equal "$description" "$(ask "$TEST_DIR/qemu.sock" "$@")" "$(ask "$TEST_DIR/kiln.sock" "$@")"
}
# covers DESCRIPTION COMMAND: kiln-ga's reply has at least qemu-ga's structure
# (newer schemas add optional members such as total-bytes-privileged).
covers() {
  local description=$1; shift
  local qemu kiln
  qemu=$(ask "$TEST_DIR/qemu.sock" "$@" | shape)
  kiln=$(ask "$TEST_DIR/kiln.sock" "$@" | shape)
  if jq -en --argjson q "$qemu" --argjson k "$kiln" \
      'def cov($a; $b): if ($a|type) == "object" then ($b|type) == "object" and all($a|to_entries[]; . as $e | ($b|has($e.key)) and cov($e.value; $b[$e.key]))
        elif ($a|type) == "array" then ($b|type) == "array" and all($a[]; . as $e | any($b[]; cov($e; .)))
        else $a == $b end; cov($q; $k)' >/dev/null; then
    pass
  else
    fail "$description"; echo "qemu-ga: $qemu" >&2; echo "kiln-ga: $kiln" >&2
  fi
}

same_text "guest-sync" guest-sync '{"id": 12345}'
same_text "guest-ping" guest-ping
same_text "guest-get-osinfo" guest-get-osinfo
same_text "guest-get-host-name" guest-get-host-name
same_text "guest-get-timezone" guest-get-timezone
same_text "guest-get-users" guest-get-users
expect_equal "guest-get-vcpus" "$(ask "$TEST_DIR/qemu.sock" guest-get-vcpus | jq -cS 'sort_by(."logical-id")')" \
  "$(ask "$TEST_DIR/kiln.sock" guest-get-vcpus | jq -cS 'sort_by(."logical-id")')"
same_text "guest-fsfreeze-status" guest-fsfreeze-status
same_text "guest-get-memory-block-info" guest-get-memory-block-info
same_shape "guest-get-time" guest-get-time
same_shape "guest-get-memory-blocks" guest-get-memory-blocks
same_shape "guest-get-disks" guest-get-disks
covers "guest-get-fsinfo" guest-get-fsinfo
covers "guest-network-get-interfaces" guest-network-get-interfaces
covers "guest-info" guest-info
covers "guest-get-cpustats" guest-get-cpustats

# Errors: same class and text.
same_text "unknown command" guest-no-such-command
same_text "missing argument" guest-sync '{}'
same_text "wrong argument type" guest-sync '{"id": "x"}'
same_text "unexpected argument" guest-ping '{"extra": 1}'
same_text "unknown file handle" guest-file-close '{"handle": 4242}'
same_text "bad open mode" guest-file-open '{"path": "/nonexistent", "mode": "zz"}'
same_text "missing file" guest-file-open '{"path": "/nonexistent/file"}'
same_text "bad shutdown mode" guest-shutdown '{"mode": "bogus"}'
same_text "unknown exec pid" guest-exec-status '{"pid": 1}'
same_text "failing exec" guest-exec '{"path": "/nonexistent"}'
same_text "negative set-time" guest-set-time '{"time": -5}'

# A file session, step by step on each agent (handles start at 1000 on both).
file_session() {
  local socket=$1 path=$2 handle
  handle=$(ask "$socket" guest-file-open "{\"path\": \"$path\", \"mode\": \"w+\"}")
  echo "open: $handle"
  echo "write: $(ask "$socket" guest-file-write "{\"handle\": $handle, \"buf-b64\": \"aGVsbG8gd29ybGQK\"}")"
  echo "seek: $(ask "$socket" guest-file-seek "{\"handle\": $handle, \"offset\": 6, \"whence\": \"set\"}")"
  echo "read: $(ask "$socket" guest-file-read "{\"handle\": $handle, \"count\": 3}")"
  echo "read: $(ask "$socket" guest-file-read "{\"handle\": $handle}")"
  echo "seek: $(ask "$socket" guest-file-seek "{\"handle\": $handle, \"offset\": -2, \"whence\": 2}")"
  echo "flush: $(ask "$socket" guest-file-flush "{\"handle\": $handle}")"
  echo "close: $(ask "$socket" guest-file-close "{\"handle\": $handle}")"
  echo "closed: $(ask "$socket" guest-file-read "{\"handle\": $handle}")"
}
expect_equal "file session" "$(file_session "$TEST_DIR/qemu.sock" "$TEST_DIR/q.txt")" \
  "$(file_session "$TEST_DIR/kiln.sock" "$TEST_DIR/k.txt")"
expect_equal "file contents" "$(cat "$TEST_DIR/q.txt")" "$(cat "$TEST_DIR/k.txt")"

# guest-exec + guest-exec-status with input, environment and captured output.
exec_session() {
  local socket=$1 pid reply
  pid=$(ask "$socket" guest-exec '{"path": "/bin/sh", "arg": ["-c", "cat; echo $V; echo e >&2; exit 3"], "env": ["V=x"], "input-data": "aW4K", "capture-output": true}' | jq .pid)
  for _ in $(seq 100); do
    reply=$(ask "$socket" guest-exec-status "{\"pid\": $pid}")
    [ "$(jq .exited <<<"$reply")" == true ] && break
    sleep 0.05
  done
  jq -cS . <<<"$reply"
}
expect_equal "guest-exec" "$(exec_session "$TEST_DIR/qemu.sock")" "$(exec_session "$TEST_DIR/kiln.sock")"
signal_session() {
  local socket=$1 pid reply
  pid=$(ask "$socket" guest-exec '{"path": "/bin/sh", "arg": ["-c", "kill -9 $$"]}' | jq .pid)
  for _ in $(seq 100); do
    reply=$(ask "$socket" guest-exec-status "{\"pid\": $pid}")
    [ "$(jq .exited <<<"$reply")" == true ] && break
    sleep 0.05
  done
  jq -cS . <<<"$reply"
}
expect_equal "guest-exec killed by a signal" "$(signal_session "$TEST_DIR/qemu.sock")" "$(signal_session "$TEST_DIR/kiln.sock")"

# kiln-ga-client's convenience commands give the same results on both agents.
for agent in qemu kiln; do
  socket="$TEST_DIR/$agent.sock"
  check "$agent: ping" "$KILN_GA_CLIENT" -s "$socket" ping
  check "$agent: info lists guest-sync" grep -qx guest-sync <("$KILN_GA_CLIENT" -s "$socket" info)
  out=$("$KILN_GA_CLIENT" -s "$socket" exec -- /bin/sh -c 'echo out; echo err >&2; exit 5' 2>"$TEST_DIR/err") && status=0 || status=$?
  expect_equal "$agent: exec output" "out" "$out"
  expect_equal "$agent: exec stderr" "err" "$(cat "$TEST_DIR/err")"
  expect_equal "$agent: exec exit code" 5 "$status"
  head -c 3000000 /dev/urandom > "$TEST_DIR/blob"
  check "$agent: file put" "$KILN_GA_CLIENT" -s "$socket" file put "$TEST_DIR/blob" "$TEST_DIR/$agent.blob"
  check "$agent: file get" "$KILN_GA_CLIENT" -s "$socket" file get "$TEST_DIR/$agent.blob" "$TEST_DIR/$agent.back"
  expect_equal "$agent: file round trip" "$(file_hash "$TEST_DIR/blob")" "$(file_hash "$TEST_DIR/$agent.back")"
  expect_equal "$agent: fsfreeze status" thawed "$("$KILN_GA_CLIENT" -s "$socket" fsfreeze status)"
done

finish
