#!/bin/bash
# kiln-ga -m vsock-listen (any CID), reached by kiln-ga-client over the vsock
# loopback (CID 1). The round trip is skipped where the kernel has no vsock
# loopback (the listener itself must still come up when AF_VSOCK exists).
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

port=$((20000 + RANDOM % 10000))
"$KILN_GA" -c /dev/null -m vsock-listen -p "-1:$port" -t "$TEST_DIR" 2>vsock.log &
agent_pids+=($!)
sleep 0.3
if ! kill -0 "${agent_pids[-1]}" 2>/dev/null; then
  if grep -q "Address family not supported" vsock.log; then
    echo "SKIP: no AF_VSOCK here: $(cat vsock.log)"; finish; exit
  fi
  fail "kiln-ga vsock-listen did not start: $(cat vsock.log)"
else
  pass
fi
if "$KILN_GA_CLIENT" -s "vsock:1:$port" -t 2 ping 2>client.log; then
  pass
  expect_equal "guest-sync over vsock" 7 "$("$KILN_GA_CLIENT" -s "vsock:1:$port" command guest-sync '{"id": 7}')"
elif grep -qE "timed out|reset by peer|No such device|unreachable" client.log; then
  echo "SKIP round trip: no vsock loopback: $(cat client.log)"
else
  fail "ping over vsock: $(cat client.log)"
fi
expect_status "bad vsock address" 1 "$KILN_GA" -c /dev/null -m vsock-listen -p nonsense
expect_equal "bad client vsock address" "kiln-ga-client: vsock address 'vsock:x' must be vsock:CID:PORT" \
  "$("$KILN_GA_CLIENT" -s vsock:x ping 2>&1)"
finish
