#!/usr/bin/env bash
# test-daemon.sh - how management software starts nvtpm: --daemon with --pid
# (the process that keeps running owns the image), --tpmstate dir=, and a
# control socket the manager created and hands over (--ctrl ...,fd=N, seed
# 004): it connects once, with no retry loop, even before nvtpm is ready.
# Usage: test-daemon.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm_ioctl python3
T=$TEST_TMP
P=$(free_ports 1)
expect_exit 0 "--daemon returns at once, status 0" -- "$NVTPM" socket --tpm2 --daemon --pid "file=$T/pid" \
    --tpmstate "dir=$T" --server "type=tcp,port=$P" --ctrl "type=unixio,path=$T/ctrl" --flags not-need-init
for _ in $(seq 100); do [ -s "$T/pid" ] && [ -S "$T/ctrl" ] && break; sleep 0.05; done
pid=$(cat "$T/pid" 2>/dev/null)
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && pass "the pid file names the running daemon" || fail "the pid file names the running daemon"
[ -e "$T/tpm-00.qcow2" ] && pass "--tpmstate dir= made DIR/tpm-00.qcow2" || fail "--tpmstate dir= made DIR/tpm-00.qcow2"
expect_exit 0 "nvtpm info beside it" -- "$NVTPM" info "$T/tpm-00.qcow2"
expect_output "lock holder: pid $pid \\(nvtpm\\), owner" "the daemon (the pid in the file) owns the image"
expect_exit 0 "SHUTDOWN through swtpm_ioctl" -- swtpm_ioctl --unix "$T/ctrl" -s
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null && pass "the daemon exited" || fail "the daemon exited"

python3 - "$NVTPM" "$T" >"$T/seed" 2>&1 <<'PY'
import os, socket, struct, subprocess, sys
nvtpm, t = sys.argv[1], sys.argv[2]
path = os.path.join(t, 'ctrl2')
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
fd = srv.fileno()
os.set_inheritable(fd, True)
proc = subprocess.Popen([nvtpm, 'socket', '--tpm2', '--tpmstate', 'file=' + os.path.join(t, 'b.qcow2'),
                         '--ctrl', f'type=unixio,fd={fd}', '--flags', 'not-need-init'], pass_fds=[fd])
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(path)  # once: the socket listens already, whether nvtpm is ready or not
c.settimeout(20)
c.sendall(struct.pack('>I', 1))
caps = c.recv(8)
c.sendall(struct.pack('>I', 3))
down = c.recv(4)
c.close()
print('caps', caps.hex(), 'shutdown', down.hex(), 'exit', proc.wait(20))
PY
grep -q "caps 000000000000ffff shutdown 00000000 exit 0" "$T/seed" \
    && pass "a handed-over control socket: one connect, answers, clean SHUTDOWN" \
    || fail "a handed-over control socket: one connect, answers, clean SHUTDOWN" "$(cat "$T/seed")"
expect_exit 1 "--ctrl fd= of a descriptor that is not a socket is refused" -- "$NVTPM" socket --tpm2 \
    --tpmstate "file=$T/c.qcow2" --ctrl type=unixio,fd=0 0</dev/null
expect_output "descriptor 0 is not a listening socket" "the message names the descriptor"
finish
