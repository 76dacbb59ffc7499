#!/bin/bash
# A server and three clients: IDs, peer notices, interrupts on the right
# vector, shared memory, a client leaving, the peer limit, the server going away
# and a restarted server.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

start_server -l 1M -n 4 --max-peers 4

start_client a
send a id
wait_for a.out '^0$'
start_client b
wait_for a.out 'peer 1 joined'
start_client c
wait_for a.out 'peer 2 joined'
wait_for b.out 'peer 0 joined'
wait_for b.out 'peer 2 joined'
wait_for c.out 'peer 0 joined'
wait_for c.out 'peer 1 joined'
send b id
send c id
wait_for b.out '^1$'
wait_for c.out '^2$'
check "server log names the three peers" grep -q 'peer 2 connected' server.log

send a dump
wait_for a.out '^peer 2: 4 vectors'
check "dump lists peer 1 with 4 vectors" grep -q '^peer 1: 4 vectors' a.out
check "dump shows the memory size" grep -q '^shared memory size: 1048576' a.out

# Interrupts reach exactly the vector rung.
send c 'int 0 2'
wait_for a.out 'received interrupt on vector 2 \(count 1\)'
check "no other vector of peer 0 rang" \
  test "$(grep -c 'received interrupt' a.out)" = 1
send b 'int 2 all'
wait_count c.out 'received interrupt on vector' 4
expect_equal "peer 2 got all four vectors" "0 1 2 3" \
  "$(grep -o 'received interrupt on vector [0-9]' c.out | awk '{print $5}' | sort | xargs)"
check "peer 0 was not rung by 'int 2 all'" test "$(grep -c 'received interrupt' a.out)" = 1
send a 'int all'
wait_count b.out 'received interrupt on vector' 4
wait_count c.out 'received interrupt on vector' 8
sync_client a
check "int all reached peer 1's four vectors" test "$(grep -c 'received interrupt' b.out)" = 4
# A scripted client interrupts too, and errors are one line.
"$CLIENT" -S "$SOCK" -c 'int 0 3' 2>script.err
wait_for a.out 'received interrupt on vector 3'
expect_status "interrupting an unknown peer fails" 1 "$CLIENT" -S "$SOCK" -c 'int 99 0'
"$CLIENT" -S "$SOCK" -c 'int 0 9' 2>bad_vector.err || true
expect_equal "unknown vector error" "kiln-ivshmem-client: peer 0 has no vector 9 (it has 4)" "$(cat bad_vector.err)"

# A waiting scripted client gets the interrupt aimed at its ID.
"$CLIENT" -S "$SOCK" -t 5 -c id -c 'wait-int 1' >waiter.out 2>&1 &
waiter=$!
started_pids+=("$waiter")
wait_for waiter.out '^[0-9]+$'
waiter_id=$(head -1 waiter.out)
send a "int $waiter_id 1"
wait "$waiter"
expect_equal "wait-int reports vector 1" "vector 1 count 1" "$(sed -n 2p waiter.out)"
"$CLIENT" -S "$SOCK" -c 'wait-int any 0.3' 2>timeout.err && fail "wait-int without an interrupt succeeded"
expect_equal "wait-int timeout message" "kiln-ivshmem-client: timed out waiting for an interrupt" "$(cat timeout.err)"

# Memory written by one peer is seen by the others and by the host.
send a 'fill 0 64k 0xab'
send a 'write 100 kiln shared memory'
sync_client a # commands are handled in order: fill and write are done
send b 'save 0 64k b.bin'
send b 'read 100 18'
wait_for b.out '^00000064: 6b 69 6c 6e 20 73 68 61 72 65 64 20 6d 65 6d 6f$'
wait_for b.out '^00000074: 72 79$'
{ head -c 100 /dev/zero | tr '\0' '\253'; printf 'kiln shared memory'; head -c $((65536 - 118)) /dev/zero | tr '\0' '\253'; } >expected.bin
expect_equal "peer 1 sees peer 0's bytes" "$(file_hash expected.bin)" "$(file_hash b.bin)"
head -c 65536 "/dev/shm/$SHM_NAME" >host.bin
expect_equal "the host sees them in /dev/shm" "$(file_hash expected.bin)" "$(file_hash host.bin)"
"$CLIENT" -S "$SOCK" -c 'load 1000 expected.bin' -c 'save 1000 64k again.bin'
expect_equal "load/save round trip" "$(file_hash expected.bin)" "$(file_hash again.bin)"
"$CLIENT" -S "$SOCK" -c 'read 1M 1' 2>range.err && fail "reading past the end succeeded"
check "out-of-range read is one line" test "$(wc -l <range.err)" = 1

# A client leaving: its descriptors are closed everywhere, the others are told.
server_fds=$(fd_count "$server_pid")
a_fds=$(fd_count "$pid_a")
send b quit
wait_for a.out 'peer 1 left'
wait_for c.out 'peer 1 left'
sleep 0.1
expect_equal "server closed the socket and 4 eventfds of peer 1" $((server_fds - 5)) "$(fd_count "$server_pid")"
expect_equal "peer 0 closed peer 1's 4 eventfds" $((a_fds - 4)) "$(fd_count "$pid_a")"
send a 'echo last-dump'
send a dump
sync_client a
check "peer 1 gone from the dump" test "$(sed -n '/^last-dump$/,$p' a.out | grep -c '^peer 1:')" = 0
check "the others still in the dump" test "$(sed -n '/^last-dump$/,$p' a.out | grep -c '^peer 2:')" = 1

# The peer limit (4): a, c, d, e fill it; the fifth is refused cleanly.
start_client d
start_client e
sync_client d
sync_client e
"$CLIENT" -S "$SOCK" -c id 2>refused.err && fail "a fifth peer was admitted"
expect_equal "refused client error" \
  "kiln-ivshmem-client: ivshmem server at '$SOCK' closed the connection before the handshake (too many peers?)" \
  "$(cat refused.err)"
wait_for server.log 'refusing a new client: too many peers \(the maximum is 4\)'

# The server going away: clients keep working with each other.
kill -TERM "$server_pid"
wait "$server_pid"
expect_equal "server exit status on SIGTERM" 0 $?
wait_for a.out 'ivshmem server closed the connection; peers stay usable'
check "shared memory unlinked" test ! -e "/dev/shm/$SHM_NAME"
check "socket removed" test ! -e "$SOCK"
rung=$(grep -c 'received interrupt on vector 0' c.out)
send a 'int 2 0'
wait_count c.out 'received interrupt on vector 0' $((rung + 1))
send c 'read 100 4'
wait_for c.out '^00000064: 6b 69 6c 6e$'

# A restarted server hands out IDs from 0 again; the old peers are not part of it.
start_server -l 1M -n 2
"$CLIENT" -S "$SOCK" -c id -c dump >restart.out
expect_equal "fresh server, fresh IDs and memory" "0
own id: 0
shared memory size: 1048576
own vectors: 2" "$(cat restart.out)"
check "old peers do not see the new one" \
  test "$(sed -n '/ivshmem server closed/,$p' c.out | grep -c joined)" = 0

for name in a c d e; do send "$name" quit; done
for pid in "$pid_a" "$pid_c" "$pid_d" "$pid_e"; do wait "$pid"; done
kill -INT "$server_pid"
wait "$server_pid"
expect_equal "server exit status on SIGINT" 0 $?
check "nothing left in /dev/shm after SIGINT" test ! -e "/dev/shm/$SHM_NAME"
check "no socket left after SIGINT" test ! -e "$SOCK"
finish
