#!/usr/bin/env python3
"""test-ctrl-trickle.py - a control client that trickles its request holds
nothing else up, side by side with swtpm 0.7: a SET_STATEBLOB header that
announces 100000 bytes, then one byte every 2 s from a thread. Meanwhile a
data client is answered at once and SIGTERM ends the server at once (exit 0);
the trickling request is cut off at its overall deadline (nvtpm: 10 s from its
first byte, however often bytes come; swtpm: 500 ms), the connection dropped
without an answer, one line on nvtpm's log, and the server serves on.
UNIX sockets for both channels. nvtpm's own MS simulator platform port
(--platform, TCP) gets the same: a client that sends half a command beside
the trickle holds nothing up and is dropped at the same deadline.
Usage: test-ctrl-trickle.py NVTPM"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, free_ports  # noqa: E402

nvtpm = sys.argv[1]
EVERY = 2.0           # seconds between trickled bytes: far below a per-piece timeout of 10 s
DEADLINE = {'nvtpm': (9.5, 12.5), 'swtpm': (0.3, 2.0)}  # when the request is cut off
SET_STATEBLOB_100000 = struct.pack('>IIII', 0x0d, 0, 1, 100000)
GET_CAPABILITY = struct.pack('>I', 1)
GETRANDOM = struct.pack('>HIIH', 0x8001, 12, 0x17b, 8)
POWER_ON = struct.pack('>I', 1)


def unix(path, timeout=3):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def connect(where, timeout=3):
    """A UNIX socket's path, or a TCP address."""
    if isinstance(where, str):
        return unix(where, timeout)
    return socket.create_connection(where, timeout=timeout)


def half_platform_command(srv):
    """nvtpm's platform port: the first byte of a 4-byte command, no more."""
    s = connect(('127.0.0.1', srv.platform))
    s.sendall(POWER_ON[:1])
    return s, time.monotonic()


class Server:
    """nvtpm or swtpm on UNIX data and control sockets, TPM 2, running from the start."""

    def __init__(self, kind, tmp, run):
        base = os.path.join(tmp, f'{kind}-{run}')
        os.mkdir(base)
        self.kind = kind
        self.ctrl, self.data = base + '/ctrl.sock', base + '/data.sock'
        self.log, self.out = base + '/server.log', base + '/server.out'
        state = ['dir=' + base] if kind == 'swtpm' else ['file=' + base + '/tpm.qcow2']
        argv = ['swtpm' if kind == 'swtpm' else nvtpm, 'socket', '--tpm2', '--tpmstate', *state,
                '--server', 'type=unixio,path=' + self.data,
                '--ctrl', 'type=unixio,path=' + self.ctrl,
                '--flags', 'not-need-init,startup-clear', '--log', 'file=' + self.log]
        self.platform = None
        if kind == 'nvtpm':
            self.platform = free_ports(1)
            argv += ['--platform', f'port={self.platform}']
        with open(self.out, 'w') as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out)
        self.wait_socket(self.ctrl)
        self.wait_socket(self.data)
        if self.platform:
            self.wait_socket(('127.0.0.1', self.platform))

    def logs(self):
        text = ''
        for f in (self.out, self.log):
            if os.path.exists(f):
                text += open(f, errors='replace').read()
        return text

    def wait_socket(self, where, limit=10):
        """Until the socket (a path, or a TCP address) takes a connection; the
        server's exit or the limit ends the run with its log."""
        end = time.monotonic() + limit
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                connect(where).close()
                return
            except OSError:
                time.sleep(0.05)
        name = os.path.basename(where) if isinstance(where, str) else f'port {where[1]}'
        check(False, f'{self.kind}: {name} takes connections',
              f'exit {self.proc.poll()}; log:\n' + self.logs())
        self.stop()
        finish()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Trickle:
    """A control connection: SET_STATEBLOB's header announcing 100000 bytes,
    then a byte every EVERY seconds until the server ends the connection.
    Records when that happened (seconds after the header) and what came back."""

    def __init__(self, path):
        self.sock = unix(path)
        self.sock.sendall(SET_STATEBLOB_100000)
        self.t0 = time.monotonic()
        self.ended = None
        self.answer = b''
        self.sent = 0
        self.quit = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.quit:
            ready, _, _ = select.select([self.sock], [], [], EVERY)
            try:
                if ready:
                    got = self.sock.recv(4096)
                    if got:
                        self.answer += got
                        continue
                    raise ConnectionResetError
                self.sock.send(b'\x01')
                self.sent += 1
            except OSError:
                self.ended = time.monotonic() - self.t0
                return

    def wait_end(self, limit):
        self.thread.join(limit)
        return self.ended

    def close(self):
        self.quit = True
        self.thread.join(EVERY + 1)
        self.sock.close()


def getrandom(path):
    """The data channel's answer to TPM2_GetRandom(8), and the seconds it took."""
    t = time.monotonic()
    try:
        with unix(path, timeout=5) as s:
            s.sendall(GETRANDOM)
            rsp = b''
            while len(rsp) < 10 or len(rsp) < struct.unpack('>I', rsp[2:6])[0]:
                more = s.recv(4096)
                if not more:
                    break
                rsp += more
    except OSError:
        rsp = b''
    return rsp, time.monotonic() - t


def answered(rsp):
    return len(rsp) == 20 and struct.unpack('>I', rsp[6:10])[0] == 0


def ask_ctrl(path, req):
    try:
        with unix(path) as s:
            s.sendall(req)
            return s.recv(64)
    except OSError:
        return b''


def serve_and_stop(kind, tmp):
    """(a) a data client is answered, (b) SIGTERM is acted on, both while a
    control request trickles in."""
    srv = Server(kind, tmp, 'term')
    trickle = Trickle(srv.ctrl)
    plat = half_platform_command(srv)[0] if srv.platform else None
    rsp, took = getrandom(srv.data)
    under_way = trickle.ended is None
    check(answered(rsp) and took < 3,
          f'{kind}: a data client is answered at once while a control request trickles',
          f'{took:.1f} s, response {rsp.hex()}')
    if kind == 'nvtpm':  # swtpm has dropped the request after 500 ms by now
        check(under_way, f'{kind}: ... with the trickling request still under way',
              f'dropped after {trickle.ended} s')
    under_way = trickle.ended is None
    t = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(3)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f'{kind}: SIGTERM ends the server within 3 s, exit 0',
          f'exit {rc} after {time.monotonic() - t:.1f} s; log:\n' + srv.logs())
    if kind == 'nvtpm':
        check(under_way, f'{kind}: ... with the trickling request still under way')
    srv.stop()
    trickle.close()
    if plat:
        plat.close()


def cut_off(kind, tmp):
    """(c) the trickling request is cut off at its overall deadline."""
    srv = Server(kind, tmp, 'deadline')
    trickle = Trickle(srv.ctrl)
    plat = half_platform_command(srv) if srv.platform else None
    low, high = DEADLINE[kind]
    ended = trickle.wait_end(high + EVERY)
    check(ended is not None and low <= ended <= high,
          f'{kind}: a request trickling a byte every {EVERY:.0f} s is cut off '
          f'{low}-{high} s after its first byte',
          f'ended {ended} s after the header, {trickle.sent} bytes trickled')
    check(trickle.answer == b'', f'{kind}: ... without an answer', trickle.answer.hex())
    trickle.close()
    if plat:
        platform_cut_off(srv, *plat)
    if kind == 'nvtpm':
        lines = [ln for ln in srv.logs().splitlines() if 'control request' in ln]
        check(len(lines) == 1 and 'within 10 s' in lines[0],
              f'{kind}: one line on the log says why', '\n'.join(lines) or srv.logs())
    if kind == 'nvtpm':
        lines = [ln for ln in srv.logs().splitlines() if 'platform command' in ln]
        check(len(lines) == 1, f'{kind}: one line on the log for the platform client',
              srv.logs())
    caps = ask_ctrl(srv.ctrl, GET_CAPABILITY)
    check(len(caps) == 8 and caps[:4] == b'\0\0\0\0',
          f'{kind}: the next control client is answered', caps.hex())
    rsp, took = getrandom(srv.data)
    check(answered(rsp), f'{kind}: and the data channel still is', rsp.hex())
    caps = b''
    try:  # a request in pieces, well within any deadline, is put together
        with unix(srv.ctrl) as c:
            for byte in GET_CAPABILITY:
                c.sendall(bytes([byte]))
                time.sleep(0.05)
            caps = c.recv(64)
    except OSError as e:
        caps = str(e).encode()
    check(len(caps) == 8 and caps[:4] == b'\0\0\0\0',
          f'{kind}: a control request sent a byte at a time is answered', caps.hex())
    srv.proc.terminate()
    try:
        rc = srv.proc.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f'{kind}: SIGTERM: exit 0', f'exit {rc}; log:\n' + srv.logs())
    srv.stop()
    return srv


def platform_cut_off(srv, sock, t0):
    """The platform client that sent half a command is dropped at the
    deadline, and the next one is answered."""
    low, high = DEADLINE['nvtpm']
    sock.settimeout(max(0.5, t0 + high - time.monotonic()))
    try:
        got = sock.recv(64)
    except socket.timeout:
        got = None
    except OSError:
        got = b''
    ended = time.monotonic() - t0
    sock.close()
    check(got == b'' and low <= ended <= high,
          f'nvtpm: a half platform command is dropped {low}-{high} s after its first byte',
          f'got {got!r} after {ended:.1f} s')
    try:
        with connect(('127.0.0.1', srv.platform)) as s:
            s.sendall(POWER_ON)
            got = s.recv(64)
    except OSError:
        got = b''
    check(got == b'\0' * 4, 'nvtpm: the next platform client is answered', got.hex())


with tempfile.TemporaryDirectory() as tmp:
    for kind in ('swtpm', 'nvtpm'):
        serve_and_stop(kind, tmp)
        srv = cut_off(kind, tmp)
    check('AddressSanitizer' not in srv.logs(), 'no sanitizer report in nvtpm\'s log')

finish()
