#!/usr/bin/env python3
"""test-lifecycle.py - a TPM's volatile state across server restarts, as a
VM's life drives it, differentially against swtpm 0.7: every scenario runs on
a fresh swtpm (state folder) and a fresh nvtpm (image) with the same requests,
restarts and stops, and every answer must be the same. The answers that make
a VM work are also checked against their known values: a cold boot (a new
server, CMD_INIT with flags 0) answers TPM2_Startup(CLEAR) with 0 and reads PCR 8
as zero, every time; the volatile state is stored only by STORE_VOLATILE,
nothing else (not GET_STATEBLOB, not a stop), and INIT resumes from it (flag 1
then deletes it).
Usage: test-lifecycle.py NVTPM"""
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, unix_listening  # noqa: E402

NVTPM = sys.argv[1]
ZERO = bytes(32)
EXTEND_DIGEST = bytes(range(32))
EXTENDED = hashlib.sha256(ZERO + EXTEND_DIGEST).digest()  # a zero PCR extended once

# control commands (swtpm's protocol)
INIT0, INIT1 = '0000000200000000', '0000000200000001'
SHUTDOWN, STORE_VOLATILE, STOP = '00000003', '0000000a', '0000000e'
GET_VOLATILE = '0000000c000000000000000200000000'


def startup_clear():
    return bytes.fromhex('80010000000c000001440000')


def shutdown_clear():
    return bytes.fromhex('80010000000c000001450000')


def pcr_read(pcr):
    select = bytearray(3)
    select[pcr // 8] = 1 << (pcr % 8)
    body = struct.pack('>IHB', 1, 0x000b, 3) + bytes(select)
    return struct.pack('>HII', 0x8001, 10 + len(body), 0x17e) + body


def pcr_extend(pcr):
    auth = struct.pack('>IHBH', 0x40000009, 0, 0, 0)
    body = struct.pack('>II', pcr, len(auth)) + auth + struct.pack('>IH', 1, 0x000b) + EXTEND_DIGEST
    return struct.pack('>HII', 0x8002, 10 + len(body), 0x182) + body


def rc(resp):
    return struct.unpack('>I', resp[6:10])[0] if len(resp) >= 10 else None


def pcr_value(resp):
    """The digest of a PCR_Read response, or None when it failed."""
    return resp[-32:] if rc(resp) == 0 and len(resp) >= 10 + 32 else None


class Server:
    """One swtpm or nvtpm on UNIX sockets in a folder of its own; kind is
    'swtpm' or 'nvtpm'. The state stays across start()s."""

    def __init__(self, kind, top):
        self.kind, self.dir = kind, os.path.join(top, kind)
        os.makedirs(self.dir)
        self.ctrl, self.data = os.path.join(self.dir, 'ctrl'), os.path.join(self.dir, 'data')
        self.log = os.path.join(self.dir, 'log')
        self.proc = None

    def start(self, flags=None):
        state = ('dir=' + self.dir if self.kind == 'swtpm'
                 else 'file=' + os.path.join(self.dir, 'tpm.qcow2'))
        argv = ([NVTPM, 'socket'] if self.kind == 'nvtpm' else ['swtpm', 'socket']) + [
            '--tpm2', '--tpmstate', state, '--ctrl', 'type=unixio,path=' + self.ctrl,
            '--server', 'type=unixio,path=' + self.data]
        if flags:
            argv += ['--flags', flags]
        for p in (self.ctrl, self.data):
            if os.path.exists(p):
                os.unlink(p)
        with open(self.log, 'a') as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if unix_listening(self.ctrl) and unix_listening(self.data):
                return True
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        raise SystemExit(f'{self.kind} did not start: ' + open(self.log).read()[-2000:])

    def _talk(self, path, request, whole):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        s.sendall(request)
        data = s.recv(1 << 16)
        if whole:  # a TPM response says its size
            while len(data) < 6 or len(data) < struct.unpack('>I', data[2:6])[0]:
                more = s.recv(1 << 16)
                if not more:
                    break
                data += more
        s.close()
        return data

    def ctl(self, hexreq):
        return self._talk(self.ctrl, bytes.fromhex(hexreq), False)

    def tpm(self, command):
        return self._talk(self.data, command, True)

    def stop(self, how):
        """'shutdown' (CMD_SHUTDOWN), 'term' (SIGTERM) or 'kill' (SIGKILL)."""
        if how == 'shutdown':
            self.ctl(SHUTDOWN)
        else:
            self.proc.send_signal(signal.SIGTERM if how == 'term' else signal.SIGKILL)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return 'hung'


def run(scenario, top):
    """The scenario on both servers; returns {kind: [(step, answer), ...]}."""
    out = {}
    for kind in ('swtpm', 'nvtpm'):
        srv = Server(kind, os.path.join(top, scenario.__name__))
        steps = []
        scenario(srv, lambda name, value: steps.append((name, value)))
        if srv.proc and srv.proc.poll() is None:
            srv.stop('kill')
        out[kind] = steps
    return out


def cold_boots(srv, note):
    """Three VM runs on one state: a new server, INIT(0), Startup(CLEAR), PCR 8
    read, extend, Shutdown(CLEAR), CMD_SHUTDOWN - as QEMU and a guest do."""
    for boot in (1, 2, 3):
        srv.start()
        note(f'run {boot}: INIT(0)', srv.ctl(INIT0).hex())
        note(f'run {boot}: Startup(CLEAR)', rc(srv.tpm(startup_clear())))
        note(f'run {boot}: PCR 8', pcr_value(srv.tpm(pcr_read(8))))
        note(f'run {boot}: PCR_Extend(8)', rc(srv.tpm(pcr_extend(8))))
        note(f'run {boot}: PCR 8 extended', pcr_value(srv.tpm(pcr_read(8))))
        note(f'run {boot}: Shutdown(CLEAR)', rc(srv.tpm(shutdown_clear())))
        note(f'run {boot}: CMD_SHUTDOWN, exit status', srv.stop('shutdown'))


def stops_without_guest_shutdown(srv, note):
    """The guest sends no TPM2_Shutdown; the server is stopped by SIGTERM, by
    CMD_SHUTDOWN, by STOP then SIGTERM: each next start is still a cold boot."""
    for boot, how in enumerate(('term', 'shutdown', 'term', 'kill')):
        srv.start()
        note(f'start {boot}: INIT(0)', srv.ctl(INIT0).hex())
        note(f'start {boot}: Startup(CLEAR)', rc(srv.tpm(startup_clear())))
        note(f'start {boot}: PCR 8', pcr_value(srv.tpm(pcr_read(8))))
        note(f'start {boot}: PCR_Extend(8)', rc(srv.tpm(pcr_extend(8))))
        note(f'start {boot}: stopped by {how}, exit status',
             srv.stop(how) if how != 'kill' else (srv.stop(how), 'killed')[1])


def store_volatile_then_init(srv, note):
    """STORE_VOLATILE, then INIT in the same server: libtpms resumes from it."""
    srv.start()
    note('INIT(0)', srv.ctl(INIT0).hex())
    note('Startup(CLEAR)', rc(srv.tpm(startup_clear())))
    note('PCR_Extend(10)', rc(srv.tpm(pcr_extend(10))))
    note('STORE_VOLATILE', srv.ctl(STORE_VOLATILE).hex())
    note('INIT(0) again', srv.ctl(INIT0).hex())
    note('PCR 10 without a Startup (resumed)', pcr_value(srv.tpm(pcr_read(10))))
    note('Startup(CLEAR) after the resume', rc(srv.tpm(startup_clear())))
    note('CMD_SHUTDOWN, exit status', srv.stop('shutdown'))
    srv.start()
    note('restarted: INIT(0)', srv.ctl(INIT0).hex())
    note('restarted: PCR 10 (the stored state stays until INIT with flag 1)',
         pcr_value(srv.tpm(pcr_read(10))))
    note('restarted: INIT(1), resume and delete', srv.ctl(INIT1).hex())
    note('restarted: PCR 10 after INIT(1)', pcr_value(srv.tpm(pcr_read(10))))
    note('SIGTERM, exit status', srv.stop('term'))
    srv.start()
    note('once more: INIT(0)', srv.ctl(INIT0).hex())
    note('once more: Startup(CLEAR) (deleted: a cold boot)', rc(srv.tpm(startup_clear())))
    note('once more: PCR 10', pcr_value(srv.tpm(pcr_read(10))))


def get_stateblob_stores(srv, note):
    """GET_STATEBLOB volatile of a running TPM (a migration, a savevm) returns
    the live volatile state and does not store it (swtpm 0.7.1, measured):
    the next INIT(0) is a cold boot."""
    srv.start()
    note('INIT(0)', srv.ctl(INIT0).hex())
    note('Startup(CLEAR)', rc(srv.tpm(startup_clear())))
    note('PCR_Extend(8)', rc(srv.tpm(pcr_extend(8))))
    resp = srv.ctl(GET_VOLATILE)
    note('GET_STATEBLOB volatile: result', resp[:4].hex())
    note('CMD_SHUTDOWN, exit status', srv.stop('shutdown'))
    srv.start()
    note('restarted: INIT(0)', srv.ctl(INIT0).hex())
    note('restarted: PCR 8 (not resumed)', pcr_value(srv.tpm(pcr_read(8))))
    note('restarted: Startup(CLEAR)', rc(srv.tpm(startup_clear())))


def not_need_init(srv, note):
    """--flags not-need-init,startup-clear (swtpm_setup, tests): a start
    after a stop is a cold boot; after STORE_VOLATILE it resumes, also after
    a SIGKILL (the stored state stays)."""
    flags = 'not-need-init,startup-clear'
    srv.start(flags)
    note('PCR_Extend(8)', rc(srv.tpm(pcr_extend(8))))
    note('SIGTERM, exit status', srv.stop('term'))
    srv.start(flags)
    note('restarted: PCR 8 (cold boot)', pcr_value(srv.tpm(pcr_read(8))))
    note('PCR_Extend(8)', rc(srv.tpm(pcr_extend(8))))
    note('STORE_VOLATILE', srv.ctl(STORE_VOLATILE).hex())
    note('SIGKILL', (srv.stop('kill'), 'killed')[1])
    srv.start(flags)
    note('restarted: PCR 8 (resumed from the stored state)', pcr_value(srv.tpm(pcr_read(8))))
    note('SIGTERM, exit status', srv.stop('term'))
    srv.start(flags)
    note('restarted again: PCR 8 (still stored)', pcr_value(srv.tpm(pcr_read(8))))


def answer(steps, name):
    return dict(steps).get(name, 'missing')


with tempfile.TemporaryDirectory() as top:
    for scenario in (cold_boots, stops_without_guest_shutdown, store_volatile_then_init,
                     get_stateblob_stores, not_need_init):
        out = run(scenario, top)
        sw, nv = out['swtpm'], out['nvtpm']
        for (name, a), (_, b) in zip(sw, nv):
            shown = lambda v: v.hex() if isinstance(v, bytes) else repr(v)  # noqa: E731
            check(a == b, f'{scenario.__name__}: {name}: as swtpm ({shown(b)})',
                  f'swtpm {shown(a)}, nvtpm {shown(b)}')
        check(len(sw) == len(nv), f'{scenario.__name__}: as many steps as swtpm')
        if scenario is cold_boots:
            for boot in (1, 2, 3):
                check(answer(nv, f'run {boot}: Startup(CLEAR)') == 0 and
                      answer(nv, f'run {boot}: PCR 8') == ZERO,
                      f'cold boot {boot}: Startup(CLEAR) answers 0 and PCR 8 is zero')
        if scenario is stops_without_guest_shutdown:
            check(all(answer(nv, f'start {b}: Startup(CLEAR)') == 0 and
                      answer(nv, f'start {b}: PCR 8') == ZERO for b in range(4)),
                  'after SIGTERM, CMD_SHUTDOWN or SIGKILL the next start is a cold boot')
        if scenario is store_volatile_then_init:
            check(answer(nv, 'PCR 10 without a Startup (resumed)') == EXTENDED and
                  answer(nv, 'restarted: PCR 10 after INIT(1)') == EXTENDED and
                  answer(nv, 'once more: Startup(CLEAR) (deleted: a cold boot)') == 0,
                  'STORE_VOLATILE: INIT resumes; INIT(1) resumes and deletes')
        if scenario is get_stateblob_stores:
            check(answer(nv, 'restarted: PCR 8 (not resumed)') is None and
                  answer(nv, 'restarted: Startup(CLEAR)') == 0,
                  'GET_STATEBLOB volatile stores nothing: the next INIT is a cold boot')
finish()
