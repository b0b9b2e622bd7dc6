# common.sh - helpers for the server tests: free ports, starting nvtpm or
# swtpm in the background and waiting until it answers, stopping it.
# Sourced after ../lib.sh.

# free_ports N: the first of N consecutive free TCP ports on 127.0.0.1
free_ports() {
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(dirname "${BASH_SOURCE[0]}")/.." \
        python3 -c 'import sys; from tap import free_ports; print(free_ports(int(sys.argv[1])))' "$1"
}

# wait_port PORT [PID]: until something accepts connections on PORT; gives up
# when PID (the server) has ended, or after 60 s. Only for what cannot be
# given its socket (listen_start is the way otherwise); a caller that gets 1
# fails its check with the server's log.
wait_port() {
    python3 - "$1" "${2:-}" <<'PY'
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2] or 0)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection(('127.0.0.1', port), timeout=5).close(); sys.exit(0)
    except OSError:
        pass
    if pid:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)
    time.sleep(0.02)
sys.exit(1)
PY
}

# wait_unix PATH [PID]: until a UNIX socket listens at PATH (not merely
# exists: bind comes before listen), seen without connecting (a server with
# terminate would end with that connection); as wait_port otherwise.
wait_unix() {
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(dirname "${BASH_SOURCE[0]}")/.." python3 - "$1" "${2:-}" <<'PY'
import os, sys, time
from tap import unix_listening
path, pid = os.path.abspath(sys.argv[1]), int(sys.argv[2] or 0)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if unix_listening(path):
        sys.exit(0)
    if pid:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)
    time.sleep(0.02)
sys.exit(1)
PY
}

LISTEN_EXEC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)/listen-exec.py"
# listen_start LOG SOCKET... -- COMMAND...: COMMAND in the background, its
# output in LOG, on listening sockets made before it starts (tcp:PORT or
# unix:PATH, its descriptors 3, 4, ...: see tests/tools/listen-exec.py).
# Returns once they exist, so a client may connect at once: no wait for the
# server, no guess. SERVER_PID is COMMAND's pid. 1 (and a failed check) if
# the sockets could not be made.
listen_start() {
    local log=$1 fifo said
    shift
    fifo=$(mktemp -u "$TEST_TMP/ready.XXXXXX")
    mkfifo "$fifo"
    "$LISTEN_EXEC" --ready "$fifo" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    said=$(timeout 60 cat "$fifo")
    rm -f "$fifo"
    [ "$said" = listening ] && return 0
    fail "the server's sockets are made ($*)" "$said $(cat "$log")"
    return 1
}

# start_nvtpm LOG ARGS...: nvtpm socket in the background; SERVER_PID is set
start_nvtpm() {
    local log=$1
    shift
    "$NVTPM" socket "$@" >"$log" 2>&1 &
    SERVER_PID=$!
}

# stop_server SIGNAL: send it and wait; the exit status is in SERVER_STATUS
stop_server() {
    kill "-$1" "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_STATUS=$?
}

# For the tests that run nvtpm and swtpm side by side on ports P..P+3 (nvtpm
# data/control, swtpm data/control), with their logs in $T.
# serve_nvtpm IMG ARGS...: nvtpm on P and P+1 (sockets passed in)
serve_nvtpm() {
    local img=$1
    shift
    listen_start "$T/nvtpm.log" "tcp:$P" "tcp:$((P + 1))" -- "$NVTPM" socket --tpm2 \
        --tpmstate "file=$img" --server type=tcp,fd=3 --ctrl type=tcp,fd=4 "$@"
}
# serve_swtpm DIR ARGS...: swtpm on P+2 and P+3; SWTPM_PID is set. swtpm binds
# its own ports (0.7 ends once a client of a passed-in TCP socket leaves), so
# this waits for its control port; a failed wait fails the check with its log.
serve_swtpm() {
    local dir=$1
    shift
    mkdir -p "$dir"
    swtpm socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$((P + 2))" \
        --ctrl "type=tcp,port=$((P + 3))" "$@" >"$T/swtpm.log" 2>&1 &
    SWTPM_PID=$!
    wait_port $((P + 3)) "$SWTPM_PID" || fail "swtpm serves $dir" "$(cat "$T/swtpm.log")"
}
# nv PORT TPM2-TOOLS-COMMAND...: through the swtpm TCTI on PORT
nv() { TPM2TOOLS_TCTI=swtpm:port=$1 "${@:2}"; }
