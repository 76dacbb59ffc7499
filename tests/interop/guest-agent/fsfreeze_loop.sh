#!/bin/bash
# Real FIFREEZE/FITHAW on a loop-mounted ext4 file system the test creates;
# kiln-ga only sees that mount (--mountinfo), so nothing else is frozen.
# Needs root and loop devices; reports a skip (and passes) without them.
source "$KILN_INTEROP_LIB"
source "$(dirname "$0")/common.sh"

if [ "$(id -u)" != 0 ] || ! command -v mkfs.ext4 >/dev/null; then
  echo "SKIP: needs root and mkfs.ext4"; finish; exit
fi
truncate -s 32M fs.img
mkfs.ext4 -q fs.img
mkdir mnt
if ! mount -o loop fs.img mnt 2>/dev/null; then
  echo "SKIP: cannot loop-mount here"; finish; exit
fi
# Never leave the file system frozen or mounted, whatever happened.
unmount() {
  fsfreeze -u "$TEST_DIR/mnt" 2>/dev/null || true
  stop_agents_only
  umount "$TEST_DIR/mnt" || umount -l "$TEST_DIR/mnt"
  cleanup_test_dir
}
trap unmount EXIT
grep " $TEST_DIR/mnt " /proc/self/mountinfo > mountinfo
cat > hook <<SCRIPT
#!/bin/sh
echo "\$1" >> "$TEST_DIR/hook.log"
SCRIPT
chmod +x hook
start_kiln_ga "$TEST_DIR/kiln.sock" --mountinfo "$TEST_DIR/mountinfo" -F"$TEST_DIR/hook"

expect_equal "freeze all (only the loop mount is visible)" "frozen 1 file system(s)" "$("$KILN_GA_CLIENT" -s kiln.sock fsfreeze freeze)"
expect_equal "status frozen" frozen "$("$KILN_GA_CLIENT" -s kiln.sock fsfreeze status)"
# A write blocks (uninterruptibly) until the thaw, so it runs in the background.
touch mnt/while-frozen &
writer=$!
sleep 0.5
check "writes block while frozen" kill -0 "$writer"
check "nothing written while frozen" test ! -e mnt/while-frozen
expect_equal "file commands refused while frozen" \
  "kiln-ga-client: GenericError: Command guest-file-open has been disabled: the agent is in frozen state" \
  "$("$KILN_GA_CLIENT" -s kiln.sock command guest-file-open "{\"path\": \"$TEST_DIR/x\", \"mode\": \"w\"}" 2>&1)"
expect_equal "thaw" "thawed 1 file system(s)" "$("$KILN_GA_CLIENT" -s kiln.sock fsfreeze thaw)"
check "blocked write completes after thaw" wait "$writer"
check "blocked write landed" test -e mnt/while-frozen
check "writes work after thaw" timeout 5 touch mnt/after-thaw
expect_equal "freeze-list" "frozen 1 file system(s)" "$("$KILN_GA_CLIENT" -s kiln.sock fsfreeze freeze "$TEST_DIR/mnt")"
expect_equal "thaw again" "thawed 1 file system(s)" "$("$KILN_GA_CLIENT" -s kiln.sock fsfreeze thaw)"
expect_equal "hook calls" "$(printf 'freeze\nthaw\nfreeze\nthaw')" "$(cat hook.log)"
fsinfo=$("$KILN_GA_CLIENT" -s kiln.sock command guest-get-fsinfo)
expect_equal "fsinfo of the loop mount" "$TEST_DIR/mnt ext4" "$(jq -r '.[0] | "\(.mountpoint) \(.type)"' <<<"$fsinfo")"
trim=$("$KILN_GA_CLIENT" -s kiln.sock command guest-fstrim '{"minimum": 0}')
expect_equal "fstrim of the loop mount" "$TEST_DIR/mnt" "$(jq -r '.paths[0].path' <<<"$trim")"

# Freezing, then stopping the agent thaws on the way out.
"$KILN_GA_CLIENT" -s kiln.sock fsfreeze freeze >/dev/null
kill "${agent_pids[-1]}"; wait "${agent_pids[-1]}" 2>/dev/null || true
touch mnt/after-exit &
writer=$!
sleep 0.5
if kill -0 "$writer" 2>/dev/null; then fail "agent exit thaws"; fsfreeze -u mnt; else pass; fi
wait "$writer"

finish
