# lib.sh - a tiny harness for shell tests: each check counts, and the script
# ends with the plain "N passed, N failed" line and a matching exit status.
# A missing peer program is a failure, never a skip.
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "not ok - $1"; [ -n "${2:-}" ] && echo "  $2" | head -20; return 0; }

# expect_exit CODE NAME -- COMMAND...: run COMMAND, check its exit status.
expect_exit() {
    local want=$1 name=$2 got
    shift 3
    "$@" >"$TEST_TMP/out" 2>"$TEST_TMP/err" && got=0 || got=$?
    if [ "$got" = "$want" ]; then pass "$name"; else fail "$name" "exit $got, wanted $want: $(cat "$TEST_TMP/err")"; fi
}

# expect_output PATTERN NAME: the last command's stdout+stderr matches the ERE.
expect_output() {
    if cat "$TEST_TMP/out" "$TEST_TMP/err" | grep -Eq -- "$1"; then pass "$2"; else fail "$2" "no /$1/ in: $(cat "$TEST_TMP/out" "$TEST_TMP/err")"; fi
}

require() {
    for p in "$@"; do
        command -v "$p" >/dev/null || { fail "peer '$p' is installed (run ./dev deps)"; }
    done
}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

TEST_TMP=$(mktemp -d)
trap 'rm -rf "$TEST_TMP"' EXIT
