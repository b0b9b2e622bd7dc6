#!/usr/bin/env bash
# test-example.sh - tis-example as docs/tis.md shows it: on a new image it
# prints 16 hex digits and exits 0, again on the same image, the image checks
# clean; and the source in docs/tis.md is the source that was built.
# Usage: test-example.sh TIS_EXAMPLE SOURCE DOC
set -u
. "$(dirname "$0")/../lib.sh"
EXAMPLE=$1 SOURCE=$2 DOC=$3
require qemu-img python3
for run in first second; do
    expect_exit 0 "tis-example IMG, $run run, exits 0" -- "$EXAMPLE" "$TEST_TMP/tpm.qcow2"
    grep -Eqx '[0-9a-f]{16}' "$TEST_TMP/out" && pass "and prints 16 hex digits on one line" ||
        fail "and prints 16 hex digits on one line" "$(cat "$TEST_TMP/out")"
    cp "$TEST_TMP/out" "$TEST_TMP/$run"
done
! cmp -s "$TEST_TMP/first" "$TEST_TMP/second" && pass "two runs print different random bytes" ||
    fail "two runs print different random bytes"
expect_exit 0 "the image checks clean" -- qemu-img check "$TEST_TMP/tpm.qcow2"
expect_exit 1 "without IMG: usage, exit 1" -- "$EXAMPLE"
python3 - "$SOURCE" "$DOC" <<'PY' && pass "docs/tis.md shows the example's source verbatim" || fail "docs/tis.md shows the example's source verbatim"
import sys
src = open(sys.argv[1]).read()
sys.exit(0 if src in open(sys.argv[2]).read() else 1)
PY
finish
