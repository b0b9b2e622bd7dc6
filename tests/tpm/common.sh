# common.sh - helpers for the server tests: free ports, starting nvtpm or
# swtpm in the background and waiting until it answers, stopping it.
# Sourced after ../lib.sh.

# free_ports N: the first of N consecutive free TCP ports on 127.0.0.1
free_ports() {
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(dirname "${BASH_SOURCE[0]}")/.." \
        python3 -c 'import sys; from tap import free_ports; print(free_ports(int(sys.argv[1])))' "$1"
}

# wait_port PORT: until something listens (5 s at most)
wait_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

# wait_unix PATH: until the socket file exists
wait_unix() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
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
