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

# For the tests that run nvtpm and swtpm side by side on ports P..P+3 (nvtpm
# data/control, swtpm data/control), with their logs in $T.
# serve_nvtpm IMG ARGS...: nvtpm on P and P+1
serve_nvtpm() {
    local img=$1
    shift
    start_nvtpm "$T/nvtpm.log" --tpm2 --tpmstate "file=$img" --server "type=tcp,port=$P" \
        --ctrl "type=tcp,port=$((P + 1))" "$@"
    wait_port $((P + 1))
}
# serve_swtpm DIR ARGS...: swtpm on P+2 and P+3; SWTPM_PID is set
serve_swtpm() {
    local dir=$1
    shift
    mkdir -p "$dir"
    swtpm socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$((P + 2))" \
        --ctrl "type=tcp,port=$((P + 3))" "$@" >"$T/swtpm.log" 2>&1 &
    SWTPM_PID=$!
    wait_port $((P + 3))
}
# nv PORT TPM2-TOOLS-COMMAND...: through the swtpm TCTI on PORT
nv() { TPM2TOOLS_TCTI=swtpm:port=$1 "${@:2}"; }
