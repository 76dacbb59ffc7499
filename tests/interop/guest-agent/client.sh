#!/bin/bash
# kiln-ga-client against kiln-ga: shutdown through a fake helper, timeouts and
# clear errors when nothing (or something silent) is on the other end.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

mkdir -p helpers
cat > helpers/shutdown <<SCRIPT
#!/bin/sh
echo "\$*" > "$TEST_DIR/shutdown.args"
SCRIPT
chmod +x helpers/shutdown
start_kiln_ga "$TEST_DIR/kiln.sock" --helper-dir "$TEST_DIR/helpers"

check "shutdown" "$KILN_GA_CLIENT" -s kiln.sock shutdown --mode halt
expect_equal "shutdown helper arguments" "-H +0 hypervisor initiated shutdown" "$(cat shutdown.args)"
expect_equal "command with arguments" '{"host-name": "'"$(hostname)"'"}' "$("$KILN_GA_CLIENT" -s kiln.sock command guest-get-host-name)"
expect_equal "command error" "kiln-ga-client: CommandNotFound: The command guest-nope has not been found" \
  "$("$KILN_GA_CLIENT" -s kiln.sock command guest-nope 2>&1)"
expect_status "command error exit code" 1 "$KILN_GA_CLIENT" -s kiln.sock command guest-nope
expect_equal "bad JSON arguments" "kiln-ga-client: arguments are not valid JSON: {oops" \
  "$("$KILN_GA_CLIENT" -s kiln.sock command guest-ping '{oops' 2>&1)"
expect_equal "exec input" "piped" "$(echo piped | "$KILN_GA_CLIENT" -s kiln.sock exec --input - -- cat)"

# No agent at all.
expect_equal "no socket" "kiln-ga-client: failed to connect to agent socket 'missing.sock': No such file or directory" \
  "$("$KILN_GA_CLIENT" -s missing.sock ping 2>&1)"
# A socket whose agent never answers (like a QEMU chardev with no agent
# running in the guest): a kiln-ga stopped with SIGSTOP still accepts connections.
start_kiln_ga "$TEST_DIR/silent.sock"
silent_pid=${agent_pids[-1]}
kill -STOP "$silent_pid"
start=$(date +%s%N)
message=$("$KILN_GA_CLIENT" -s silent.sock -t 0.5 ping 2>&1) && status=0 || status=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
kill -CONT "$silent_pid"
expect_equal "silent agent message" "kiln-ga-client: no guest agent answered on 'silent.sock' within 500 ms" "$message"
expect_equal "silent agent exit code" 1 "$status"
check "timeout honoured (${elapsed_ms} ms)" test "$elapsed_ms" -lt 3000

# Daemon mode: detaches, writes and locks the PID file, removes it on exit.
"$KILN_GA" -c /dev/null -d -f "$TEST_DIR/ga.pid" -m unix-listen -p "$TEST_DIR/daemon.sock" -t "$TEST_DIR"
wait_for_socket "$TEST_DIR/daemon.sock"
daemon_pid=$(cat ga.pid)
check "daemon is running" kill -0 "$daemon_pid"
check "daemon answers" "$KILN_GA_CLIENT" -s daemon.sock ping
expect_status "second instance refused (PID file locked)" 1 \
  "$KILN_GA" -c /dev/null -f "$TEST_DIR/ga.pid" -m unix-listen -p "$TEST_DIR/other.sock" -t "$TEST_DIR"
kill "$daemon_pid"
for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
check "PID file removed" test ! -e ga.pid

finish
