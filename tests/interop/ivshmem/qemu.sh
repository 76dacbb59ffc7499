#!/bin/bash
# Interop with QEMU's ivshmem-doorbell device.
# Part 1 (no guest): QEMU accepts the server's handshake, joins as a peer, maps
#   the shared memory as BAR2 and reports its peer ID in IVPosition (read through
#   the monitor's port and physical-memory commands), then leaves cleanly.
# Part 2 (a 64 KiB firmware assembled with nasm, see doorbell_guest.asm): the
#   device rings our client's vector 1, and our client's interrupt on QEMU's
#   vector 0 arrives in the guest as an MSI-X write.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "SKIP: qemu-system-x86_64 not installed"
  finish
  exit 0
fi

start_server -l 1M -n 2
start_client a
send a id
wait_for a.out '^0$'

# QMP on the QEMU process's stdin/stdout.
coproc QEMU {
  exec timeout 30 qemu-system-x86_64 -machine pc -m 32 -nodefaults -display none -no-reboot -S \
    -chardev socket,path="$SOCK",id=iv -device ivshmem-doorbell,chardev=iv,vectors=2 \
    -chardev stdio,id=qmp -mon chardev=qmp,mode=control 2>qemu.err
}
qemu_pid=$QEMU_PID
started_pids+=("$qemu_pid")
qemu_in=${QEMU[1]}
qemu_out=${QEMU[0]}

# qmp JSON: sends a command, prints its reply (skipping events).
qmp() {
  local line
  echo "$1" >&"$qemu_in"
  while read -t 10 -r line <&"$qemu_out"; do
    case "$line" in *'"return"'* | *'"error"'*) echo "$line"; return 0 ;; esac
  done
  echo "no QMP reply to $1" >&2
  return 1
}
hmp() { qmp "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"$1\"}}"; }

read -t 10 -r greeting <&"$qemu_out"
check "QMP greeting" grep -q '"QMP"' <<<"$greeting"
check "QMP capabilities" grep -q '"return": {}' <<<"$(qmp '{"execute":"qmp_capabilities"}')"
wait_for a.out 'peer 1 joined'
wait_for server.log 'peer 1 connected'
pci=$(qmp '{"execute":"query-pci"}')
check "ivshmem device present (1af4:1110)" grep -q '"device": 4368, "subsystem-vendor": 6900, "vendor": 6900' <<<"$pci"
check "BAR2 has the server's memory size" grep -q '"bar": 2, "size": 1048576' <<<"$pci"

# Map BAR0 and BAR2 of slot 2 through config space, then read the registers.
for setting in "0x80001010 0xfe000000" "0x80001018 0xfd000000" "0x8000101c 0" "0x80001004 6"; do
  hmp "o /w 0xcf8 ${setting% *}" >/dev/null
  hmp "o /w 0xcfc ${setting#* }" >/dev/null
done
ivposition=$(hmp "xp /1wx 0xfe000008")
check "IVPosition holds QEMU's peer ID 1" grep -q "fe000008: 0x00000001" <<<"$ivposition"
send a 'write 32 kiln'
sync_client a
check "QEMU sees our writes in BAR2" \
  grep -q 'fd000020: 0x6b 0x69 0x6c 0x6e' <<<"$(hmp 'xp /4bx 0xfd000020')"
send a 'int 1 0'
send a 'int 1 all'
send a dump
wait_for a.out '^peer 1: 2 vectors'
check "no error ringing QEMU's vectors" test "$(grep -c 'kiln-ivshmem-client:' a.out)" = 0

qmp '{"execute":"quit"}' >/dev/null
wait "$qemu_pid"
expect_equal "QEMU exit status" 0 $?
wait_for a.out 'peer 1 left'
wait_for server.log 'peer 1 disconnected'

if ! command -v nasm >/dev/null; then
  echo "SKIP: nasm not installed, no firmware for part 2"
else
  nasm -f bin "$(dirname "$0")/doorbell_guest.asm" -o guest.bin
  printf '\x01\x00\x00\x00' >request.bin   # Doorbell value: peer 0, vector 1
  send a 'load 0 request.bin'
  sync_client a
  timeout 30 qemu-system-x86_64 -machine pc -m 32 -nodefaults -display none -no-reboot -bios guest.bin \
    -chardev socket,path="$SOCK",id=iv -device ivshmem-doorbell,chardev=iv,vectors=2 2>qemu2.err &
  qemu_pid=$!
  started_pids+=("$qemu_pid")
  wait_for a.out 'peer 2 joined'
  wait_for a.out 'received interrupt on vector 1' 30
  check "QEMU's doorbell rang vector 1 only" test "$(grep -c 'received interrupt on vector 0' a.out)" = 0
  send a 'write 20 ACK!'
  send a 'wait-text 12 KILN'
  send a 'int 2 0'
  send a 'wait-text 16 MSIX'
  send a 'read 8 16'
  wait_for a.out '^00000008: ' 30
  expect_equal "IVPosition 2, KILN marker, MSI-X write of our interrupt" \
    "00000008: 02 00 00 00 4b 49 4c 4e 4d 53 49 58 41 43 4b 21" "$(grep '^00000008: ' a.out)"
  grep -q "^00000008: .*4d 53 49 58" a.out || cat a.out >&2
  kill "$qemu_pid"
  wait "$qemu_pid" || true
  wait_for a.out 'peer 2 left'
fi

send a quit
wait "$pid_a"
kill -TERM "$server_pid"
wait "$server_pid"
check "clean after QEMU interop" test ! -e "/dev/shm/$SHM_NAME" -a ! -e "$SOCK"
finish
