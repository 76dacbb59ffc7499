#!/bin/bash
# kiln-ga-static is a self-contained binary (no dynamic loader, no shared
# libraries) and serves the same commands as kiln-ga.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

static="$KILN_BIN/kiln-ga-static"
check "kiln-ga-static exists" test -x "$static"
check "no program interpreter" bash -c "! LC_ALL=C readelf -l '$static' | grep -q 'Requesting program interpreter'"
check "no shared libraries" bash -c "! LC_ALL=C readelf -d '$static' 2>/dev/null | grep -q NEEDED"

KILN_GA=$static start_kiln_ga "$TEST_DIR/static.sock"
"$KILN_GA" -c /dev/null -m unix-listen -p "$TEST_DIR/dynamic.sock" -t "$TEST_DIR" 2>/dev/null &
agent_pids+=($!)
wait_for_socket "$TEST_DIR/dynamic.sock"
check "ping" "$KILN_GA_CLIENT" -s static.sock ping
for command in guest-get-osinfo guest-get-host-name guest-get-timezone guest-get-vcpus; do
  expect_equal "$command" "$("$KILN_GA_CLIENT" -s dynamic.sock command $command)" "$("$KILN_GA_CLIENT" -s static.sock command $command)"
done
expect_equal "network interfaces (names)" "$("$KILN_GA_CLIENT" -s dynamic.sock command guest-network-get-interfaces | jq -c 'map(.name)')" \
  "$("$KILN_GA_CLIENT" -s static.sock command guest-network-get-interfaces | jq -c 'map(.name)')"
expect_equal "user lookup (root's keys)" "$("$KILN_GA_CLIENT" -s dynamic.sock command guest-ssh-get-authorized-keys '{"username": "root"}' 2>&1)" \
  "$("$KILN_GA_CLIENT" -s static.sock command guest-ssh-get-authorized-keys '{"username": "root"}' 2>&1)"
expect_equal "exec" "static" "$("$KILN_GA_CLIENT" -s static.sock exec -- echo static)"
finish
