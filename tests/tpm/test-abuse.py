#!/usr/bin/env python3
"""test-abuse.py - hostile clients against nvtpm socket: oversize, truncated,
zero-length and garbage commands on the data channel, garbage and oversize
requests on the control channel, a data client that connects and stalls.
Every case ends in a TPM error response or a clean disconnect, never a crash
or a hang; the control channel answers throughout; the server still works.
Usage: test-abuse.py NVTPM"""
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, free_ports  # noqa: E402

nvtpm = sys.argv[1]


def connect(port, timeout=5):
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_all(s, limit=1 << 16):
    data = b''
    try:
        while len(data) < limit:
            chunk = s.recv(limit)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, OSError):
        pass
    return data


def getrandom_cmd(n=8):
    return struct.pack('>HII', 0x8001, 12, 0x17b) + struct.pack('>H', n)


def exchange(port, payload):
    """Send, close our side, read what comes back. The server may close first
    (it answers some garbage by disconnecting): that is fine."""
    s = connect(port)
    try:
        if payload:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    data = recv_all(s)
    s.close()
    return data


def data_exchange(port, payload):
    return exchange(port, payload)


def ctrl(port, payload):
    return exchange(port, payload)


def alive(port):
    r = data_exchange(port, getrandom_cmd())
    return len(r) == 20 and struct.unpack('>I', r[6:10])[0] == 0


with tempfile.TemporaryDirectory() as tmp:
    p = free_ports(2)
    log = open(os.path.join(tmp, 'server.log'), 'w')
    server = subprocess.Popen([nvtpm, 'socket', '--tpm2', '--tpmstate',
                               'file=' + os.path.join(tmp, 'a.qcow2'), '--server',
                               f'type=tcp,port={p}', '--ctrl', f'type=tcp,port={p + 1}',
                               '--flags', 'not-need-init,startup-clear'], stdout=log, stderr=log)
    deadline = time.monotonic() + 60  # until it listens, or ends: a failed start fails here
    while time.monotonic() < deadline and server.poll() is None:
        try:
            connect(p + 1).close()
            break
        except OSError:
            time.sleep(0.02)
    else:
        log.flush()
        sys.exit('nvtpm did not start: ' + open(os.path.join(tmp, 'server.log')).read()[-2000:])
    check(alive(p), 'a well-formed command works')

    # --- data channel --------------------------------------------------------------------
    r = data_exchange(p, struct.pack('>HII', 0x8001, 100000, 0x17b) + b'\0' * 64)
    check(len(r) == 10 and struct.unpack('>I', r[6:10])[0] == 0x142,
          'a command larger than the buffer: TPM_RC_COMMAND_SIZE, then disconnect', r.hex())
    r = data_exchange(p, struct.pack('>HII', 0x8001, 6, 0x17b))
    check(len(r) == 10 and struct.unpack('>I', r[6:10])[0] == 0x142,
          'a header claiming fewer than 10 bytes: TPM_RC_COMMAND_SIZE', r.hex())
    r = data_exchange(p, struct.pack('>HII', 0x8001, 64, 0x17b) + b'\1' * 10)
    check(r == b'', 'a command cut short, then EOF: a clean disconnect', r.hex())
    r = data_exchange(p, b'')
    check(r == b'', 'connect and close without a byte')
    r = data_exchange(p, b'\x80')
    check(r == b'', 'one byte, then EOF')
    random.seed(7)
    bad = 0
    for i in range(200):
        junk = bytes(random.randrange(256) for _ in range(random.randrange(1, 300)))
        r = data_exchange(p, junk)
        if r and (len(r) < 10 or struct.unpack('>I', r[2:6])[0] != len(r)):
            bad += 1
    check(bad == 0, '200 garbage commands: each a well-formed response or a disconnect')
    r = data_exchange(p, struct.pack('>IBI', 8, 7, 12) + getrandom_cmd()[:12])
    check(len(r) >= 8, 'the send-command prefix with locality 7: answered', r.hex())
    check(alive(p), 'the server still works after the garbage')

    # --- a stalled data client does not block the control channel -------------------------
    stall = connect(p)
    stall.sendall(b'\x80\x01\x00')
    t0 = time.time()
    r = ctrl(p + 1, struct.pack('>I', 1))
    check(r[:4] == b'\0\0\0\0' and time.time() - t0 < 2,
          'GET_CAPABILITY answers while a data client stalls', r.hex())
    r = ctrl(p + 1, struct.pack('>IB', 5, 3))
    check(r == b'\0\0\0\0', 'SET_LOCALITY answers too', r.hex())
    stall.close()
    time.sleep(0.2)
    check(alive(p), 'after the stalled client leaves, the next one is served')

    # --- control channel ------------------------------------------------------------------
    check(ctrl(p + 1, struct.pack('>I', 0x55)) == struct.pack('>I', 0x0a),
          'an unknown control command: TPM_BAD_ORDINAL')
    check(ctrl(p + 1, b'\0\0') == b'', 'two bytes, then EOF: a clean disconnect')
    check(ctrl(p + 1, struct.pack('>II', 7, 1 << 30)) == struct.pack('>I', 3),
          'HASH_DATA claiming 1 GiB: TPM_BAD_PARAMETER')
    check(ctrl(p + 1, struct.pack('>IIII', 0x0d, 0, 1, 1 << 30)) == struct.pack('>I', 3),
          'SET_STATEBLOB claiming 1 GiB: TPM_BAD_PARAMETER')
    check(ctrl(p + 1, struct.pack('>IB', 5, 9)) == struct.pack('>I', 0x3d),
          'SET_LOCALITY 9: TPM_BAD_LOCALITY')
    r = ctrl(p + 1, struct.pack('>I', 0x0e))  # STOP
    blob = b'\2\1\0\x0a\0\0\0\0\0\x20' + b'\xff' * 22
    r = ctrl(p + 1, struct.pack('>IIII', 0x0d, 0, 1, len(blob)) + blob)
    check(r == struct.pack('>I', 3), 'SET_STATEBLOB with a garbage blob: TPM_BAD_PARAMETER', r.hex())
    r = ctrl(p + 1, struct.pack('>II', 2, 0))  # INIT
    check(r == b'\0\0\0\0', 'INIT after all that', r.hex())
    check(alive(p), 'and the TPM still answers')
    bad = 0
    for i in range(200):
        junk = struct.pack('>I', random.randrange(0, 0x16)) + bytes(random.randrange(256) for _ in range(random.randrange(0, 40)))
        if junk[3] in (0x02, 0x03, 0x0e, 0x0d, 0x10):
            continue  # INIT, SHUTDOWN, STOP, SET_STATEBLOB, SET_DATAFD change the TPM's life
        r = ctrl(p + 1, junk)
        if r and len(r) < 4:
            bad += 1
    check(bad == 0, '200 garbage control requests: each a result code or a disconnect')
    check(server.poll() is None, 'the server never died')
    check(alive(p), 'and still works at the end')
    server.terminate()
    check(server.wait(10) == 0, 'SIGTERM: a clean exit')
    log.close()
    check('AddressSanitizer' not in open(os.path.join(tmp, 'server.log')).read(),
          'no sanitizer report in the server log')

finish()
