# Helpers for interop test scripts. Source with:  source "$KILN_INTEROP_LIB"
set -euo pipefail

: "${KILN_BIN:?KILN_BIN must point at the folder with the built binaries}"
KILN_IMG="$KILN_BIN/kiln-img"
KILN_IO="$KILN_BIN/kiln-io"

TEST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-interop.XXXXXX")
cleanup_test_dir() { rm -rf "$TEST_DIR"; }
trap cleanup_test_dir EXIT
cd "$TEST_DIR"

failures=0
passes=0

fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { passes=$((passes + 1)); }

# check DESCRIPTION COMMAND...: runs the command, counts a pass or failure.
check() {
  local description=$1; shift
  if "$@"; then pass; else fail "$description"; fi
}

# expect_equal DESCRIPTION EXPECTED ACTUAL
expect_equal() {
  if [ "$2" == "$3" ]; then
    pass
  else
    fail "$1"
    diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") >&2 || true
  fi
}

# expect_status DESCRIPTION EXPECTED_CODE COMMAND...: runs COMMAND, compares its exit code.
expect_status() {
  local description=$1 expected=$2; shift 2
  local status=0
  "$@" >/dev/null 2>&1 || status=$?
  if [ "$status" == "$expected" ]; then pass; else fail "$description (exit $status, expected $expected)"; fi
}

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

# Replaces the tool name at the start of error lines so outputs compare.
mask_tool_names() { sed -E 's/^(qemu-img|kiln-img|qemu-io|kiln-io|qemu-nbd|kiln-nbd):/TOOL:/'; }

# Ends the script with the closing line ctest logs show.
finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" == 0 ]
}
