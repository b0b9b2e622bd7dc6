#!/usr/bin/env bash
# test-options.sh - the server options that change its life, not its TPM:
# -t/--terminate (exit when the data client leaves), --ctrl ...,terminate
# (exit when the control client leaves), --log file=,level= (commands and
# responses in hex from level 5, nothing below), and --runas (the process
# drops to that user once the image and the sockets are open).
# Usage: test-options.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm_ioctl python3
T=$TEST_TMP
P=$(free_ports 1)

# one_command PORT: one TPM2_GetRandom(8) on a fresh data connection, then
# close; it connects once the port listens (no probe connection: with -t a
# probe would be the client whose leaving ends the server)
one_command() {
    python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
s.sendall(bytes.fromhex('80010000000c0000017b0008'))
r = s.recv(4096)
s.close()
print(r.hex())
PY
}

# exits_within PID SECONDS: whether the process is gone by then
exits_within() {
    for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}

start() { # start NAME ARGS...: nvtpm socket in the background, its pid in $pid
    local name=$1
    shift
    "$NVTPM" socket --tpm2 --tpmstate "file=$T/$name.qcow2" --flags not-need-init,startup-clear "$@" \
        >"$T/$name.out" 2>&1 &
    pid=$!
}

start term --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl-term" -t
wait_unix "$T/ctrl-term" "$pid" && pass "-t: the server starts" || fail "-t: the server starts" "$(cat "$T/term.out")"
resp=$(one_command "$P")
[ "${resp:0:20}" = "80010000001400000000" ] && pass "-t: GetRandom answered" || fail "-t: GetRandom answered" "$resp"
exits_within "$pid" 10 && pass "-t: the server exits once the data client closes" \
    || { fail "-t: the server exits once the data client closes"; kill "$pid"; }
wait "$pid"
rc=$?
[ "$rc" = 0 ] && pass "-t: exit status 0" || fail "-t: exit status 0" "status $rc: $(cat "$T/term.out")"

start cterm --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl-cterm,terminate"
wait_unix "$T/ctrl-cterm" "$pid" || fail "terminate: the server starts" "$(cat "$T/cterm.out")"
expect_exit 0 "--ctrl ...,terminate: a control client asks for the capabilities" -- \
    swtpm_ioctl --unix "$T/ctrl-cterm" -g
exits_within "$pid" 10 && pass "--ctrl ...,terminate: the server exits once the control client closes" \
    || { fail "--ctrl ...,terminate: the server exits once the control client closes"; kill "$pid"; }
wait "$pid"

start nolog --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl-nolog" --log "file=$T/quiet.log,level=4"
wait_port "$P" "$pid" || fail "--log level=4: the server starts" "$(cat "$T/nolog.out")"
one_command "$P" >/dev/null
expect_exit 0 "--log level=4: the server stops" -- swtpm_ioctl --unix "$T/ctrl-nolog" -s
wait "$pid"
[ -e "$T/quiet.log" ] && ! grep -q "command" "$T/quiet.log" \
    && pass "--log level=4: the log file exists and holds no command" \
    || fail "--log level=4: the log file exists and holds no command" "$(cat "$T/quiet.log" 2>&1)"

start log --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl-log" --log "file=$T/loud.log,level=5"
wait_port "$P" "$pid" || fail "--log level=5: the server starts" "$(cat "$T/log.out")"
one_command "$P" >/dev/null
expect_exit 0 "--log level=5: the server stops" -- swtpm_ioctl --unix "$T/ctrl-log" -s
wait "$pid"
grep -q "command (12 bytes): 80 01 00 00 00 0c 00 00 01 7b 00 08" "$T/loud.log" \
    && pass "--log level=5: the command is logged in hex" \
    || fail "--log level=5: the command is logged in hex" "$(cat "$T/loud.log" 2>&1)"
grep -Eq "response \(20 bytes\): 80 01 00 00 00 14 00 00 00 00 00 08( [0-9a-f]{2}){8}$" "$T/loud.log" \
    && pass "--log level=5: the response is logged in hex" \
    || fail "--log level=5: the response is logged in hex" "$(cat "$T/loud.log" 2>&1)"

expect_exit 1 "--runas of a user that does not exist is a usage error" -- "$NVTPM" socket --tpm2 \
    --tpmstate "file=$T/nouser.qcow2" --server "type=tcp,port=$P" --runas no-such-user-nvtpm
expect_output "--runas no-such-user-nvtpm: no such user" "the message names the user"
[ ! -e "$T/nouser.qcow2" ] && pass "nothing is created" || fail "nothing is created"

if [ "$(id -u)" = 0 ]; then
    start runas --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl-runas" --runas nobody
    wait_port "$P" "$pid" || fail "--runas: the server starts" "$(cat "$T/runas.out")"
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ "$uid" = "$(id -u nobody)" ] && pass "--runas nobody: the server runs as nobody" \
        || fail "--runas nobody: the server runs as nobody" "uid ${uid:-?}: $(cat "$T/runas.out")"
    resp=$(one_command "$P")
    [ "${resp:0:20}" = "80010000001400000000" ] && pass "--runas nobody: GetRandom answered" \
        || fail "--runas nobody: GetRandom answered" "$resp"
    expect_exit 0 "--runas nobody: SHUTDOWN" -- swtpm_ioctl --unix "$T/ctrl-runas" -s
    wait "$pid"
    rc=$?
    [ "$rc" = 0 ] && pass "--runas nobody: SHUTDOWN stops the TPM and the server exits 0" \
        || fail "--runas nobody: SHUTDOWN stops the TPM and the server exits 0" "status $rc: $(cat "$T/runas.out")"
else
    # Not root: dropping to another user must fail clearly, before serving
    # (exit 9: the image is open by then; docs/nvtpm-socket.md).
    expect_exit 9 "--runas root as a normal user is refused" -- "$NVTPM" socket --tpm2 \
        --tpmstate "file=$T/runas.qcow2" --server "type=tcp,port=$P" --runas root
    expect_output "--runas root: cannot become that user" "the message names the user"
fi
finish
