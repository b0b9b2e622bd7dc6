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

# lock_held FILE BYTE: some process holds an OFD/POSIX lock on BYTE of FILE.
# Looks without taking anything, so it cannot disturb the holder's start.
lock_held() {
    python3 - "$1" "$2" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
F_OFD_GETLK = 36
res = fcntl.fcntl(fd, F_OFD_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, int(sys.argv[2]), 1, 0))
sys.exit(0 if struct.unpack('hhqqi', res)[0] != fcntl.F_UNLCK else 1)
PY
}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

TEST_TMP=$(mktemp -d)
trap 'rm -rf "$TEST_TMP"' EXIT
