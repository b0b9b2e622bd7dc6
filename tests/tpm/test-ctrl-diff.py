#!/usr/bin/env python3
"""test-ctrl-diff.py - nvtpm's control channel against swtpm's, differentially:
the same requests, in the same order, to a fresh swtpm and a fresh nvtpm
(both TPM 2, started with not-need-init,startup-clear); the answers must be
byte for byte equal, except where DIFFERENCES (below, and docs/nvtpm-socket.md)
says why not. Usage: test-ctrl-diff.py NVTPM"""
import os
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

# (name, request as hex, how to compare)
# compare: 'exact', 'blob'
# (result, flags and the blob's header; the blobs are different TPMs'),
# 'nvtpm-only' (swtpm 0.7 does not have the command).
SEQUENCE = [
    ('GET_CAPABILITY', '00000001', 'exact'),
    ('GET_TPMESTABLISHED', '00000004', 'exact'),
    ('SET_LOCALITY 5', '0000000505', 'exact'),
    ('unknown command 0x55', '00000055', 'exact'),
    ('SET_BUFFERSIZE 2048 while running', '0000001100000800', 'exact'),
    ('SET_BUFFERSIZE query', '0000001100000000', 'exact'),
    ('GET_CONFIG', '0000000f', 'exact'),
    ('SET_STATEBLOB while running', '0000000d000000000000000100000000', 'exact'),
    ('GET_STATEBLOB volatile', '0000000c000000010000000200000000', 'blob'),
    ('GET_STATEBLOB savestate (absent)', '0000000c000000010000000300000000', 'exact'),
    ('GET_STATEBLOB type 9', '0000000c000000010000000900000000', 'exact'),
    ('GET_INFO 1 (spec)', '000000120000000000000001000000000000000000', 'exact'),
    ('GET_INFO 2 (attributes)', '000000120000000000000002000000000000000000', 'exact'),
    ('HASH_START', '00000006', 'exact'),
    ('HASH_DATA', '0000000700000004deadbeef', 'exact'),
    ('HASH_DATA of 0x2000 bytes', '0000000700002000' + 'a5' * 0x2000, 'exact'),
    ('HASH_END', '00000008', 'exact'),
    ('RESET_TPMESTABLISHED locality 0', '0000000b00', 'exact'),
    ('RESET_TPMESTABLISHED locality 3', '0000000b03', 'exact'),
    ('SET_LOCALITY 4', '0000000504', 'exact'),
    ('SET_LOCALITY 0', '0000000500', 'exact'),
    ('STORE_VOLATILE', '0000000a', 'exact'),
    ('CANCEL_TPM_CMD', '00000009', 'exact'),
    ('STOP', '0000000e', 'exact'),
    ('GET_TPMESTABLISHED when stopped', '00000004', 'exact'),
    ('HASH_START when stopped', '00000006', 'exact'),
    ('STORE_VOLATILE when stopped', '0000000a', 'exact'),
    ('CANCEL when stopped', '00000009', 'exact'),
    ('GET_STATEBLOB when stopped', '0000000c000000010000000100000000', 'exact'),
    ('SET_BUFFERSIZE 2048 when stopped (clamped)', '0000001100000800', 'exact'),
    ('SET_BUFFERSIZE 4096 when stopped', '0000001100001000', 'exact'),
    ('INIT', '0000000200000000', 'exact'),
    ('INIT, deleting the volatile state', '0000000200000001', 'exact'),
    ('GET_STATEBLOB permanent', '0000000c000000010000000100000000', 'blob'),
    ('LOCK_STORAGE', '0000001300000001', 'nvtpm-only'),
]


def ask(port, request):
    s = socket.create_connection(('127.0.0.1', port), timeout=10)
    s.sendall(request)
    data = b''
    s.settimeout(3)
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            s.settimeout(0.3)
    except (socket.timeout, OSError):
        pass
    s.close()
    return data


def start(argv, port):
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    deadline = time.monotonic() + 60  # until it listens, or ends
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=5).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    log.seek(0)
    raise SystemExit('server did not start: ' + ' '.join(argv) + '\n' +
                     log.read().decode(errors='replace')[-2000:])


with tempfile.TemporaryDirectory() as tmp:
    p = free_ports(4)
    flags = ['--flags', 'not-need-init,startup-clear']
    sw = start(['swtpm', 'socket', '--tpm2', '--tpmstate', 'dir=' + tmp, '--server',
                f'type=tcp,port={p}', '--ctrl', f'type=tcp,port={p + 1}'] + flags, p + 1)
    nv = start([nvtpm, 'socket', '--tpm2', '--tpmstate', 'file=' + os.path.join(tmp, 'n.qcow2'),
                '--server', f'type=tcp,port={p + 2}', '--ctrl', f'type=tcp,port={p + 3}'] + flags,
               p + 3)
    for name, req, how in SEQUENCE:
        a, b = ask(p + 1, bytes.fromhex(req)), ask(p + 3, bytes.fromhex(req))
        if how == 'exact':
            check(a == b, f'{name}: the same answer', f'swtpm {a[:40].hex()} nvtpm {b[:40].hex()}')
        elif how == 'blob':
            same = a[:8] == b[:8] and a[16:22] == b[16:22] and len(b) > 16 and \
                struct.unpack('>I', b[8:12])[0] == len(b) - 16 and a[26:28] == b[26:28]
            check(same, f'{name}: the same result, flags and blob framing',
                  f'swtpm {a[:32].hex()} nvtpm {b[:32].hex()}')
        else:
            check(a == struct.pack('>I', 0x0a) and b == b'\0\0\0\0',
                  f'{name}: swtpm 0.7 lacks it, nvtpm answers success', f'{a.hex()} {b.hex()}')
    caps_sw = ask(p + 1, bytes.fromhex('00000001'))
    for proc in (sw, nv):
        proc.terminate()
        proc.wait(10)
    # With --migration (swtpm 0.8's hand-off), bit 16 announces LOCK_STORAGE.
    nv = start([nvtpm, 'socket', '--tpm2', '--tpmstate', 'file=' + os.path.join(tmp, 'n.qcow2'),
                '--server', f'type=tcp,port={p + 2}', '--ctrl', f'type=tcp,port={p + 3}',
                '--migration', 'release-lock-outgoing'] + flags, p + 3)
    caps_nv = ask(p + 3, bytes.fromhex('00000001'))
    a, b = struct.unpack('>Q', caps_sw)[0], struct.unpack('>Q', caps_nv)[0]
    check(b == a | (1 << 16), 'GET_CAPABILITY with --migration: swtpm 0.7\'s bits and LOCK_STORAGE',
          f'swtpm {a:#x} nvtpm {b:#x}')
    nv.terminate()
    nv.wait(10)

finish()
