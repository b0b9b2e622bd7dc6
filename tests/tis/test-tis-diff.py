#!/usr/bin/env python3
"""test-tis-diff.py - nvtpm's TIS device against QEMU's own tpm-tis, read for
read. QEMU runs with its qtest protocol (CPU stopped) and -tpmdev emulator on an nvtpm socket
server; nvtpm's device runs in tis-shell (tis_new_libtpms), which speaks the
same register commands. Both get the same sequences: register reads of every
size at every offset, locality handshakes and seizes, whole commands,
aborts, and seeded random sequences. Every read must match, except the
differences docs/tis.md lists (each allowed here by name, and only where it
applies).

Usage: test-tis-diff.py NVTPM TIS_SHELL"""
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish  # noqa: E402

BASE = 0xfed40000
ACCESS, INT_ENABLE, INT_VECTOR, INT_STATUS, CAP, STS, FIFO, IFACE = 0, 8, 0xc, 0x10, 0x14, 0x18, 0x24, 0x30
XFIFO, DID_VID, RID = 0x80, 0xf00, 0xf04
REGISTERS = [ACCESS, INT_ENABLE, INT_VECTOR, INT_STATUS, CAP, STS, FIFO, IFACE, DID_VID, RID]
SIZES = {1: 'b', 2: 'w', 4: 'l'}


class Qtest:
    """QEMU's qtest protocol on a UNIX socket QEMU connects to."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b''

    def cmd(self, line):
        self.sock.sendall(line.encode() + b'\n')
        while True:
            while b'\n' not in self.buf:
                more = self.sock.recv(4096)
                if not more:
                    raise RuntimeError('qtest: QEMU closed the connection')
                self.buf += more
            reply, self.buf = self.buf.split(b'\n', 1)
            reply = reply.decode()
            if not reply.startswith('IRQ'):
                return reply


class Shell:
    def __init__(self, proc):
        self.proc = proc

    def cmd(self, line):
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


class Pair:
    """The two devices, driven together; reads are compared."""

    def __init__(self, qemu, shell):
        self.devs = (qemu, shell)
        self.mismatches = []
        self.allowed = {}
        self.context = ''

    def read(self, loc, reg, size, allow=None):
        line = f'read{SIZES[size]} 0x{BASE + (loc << 12) + reg:x}'
        q, n = (int(d.cmd(line).split()[1], 16) for d in self.devs)
        if q != n:
            if allow:
                self.allowed[allow] = self.allowed.get(allow, 0) + 1
            else:
                self.mismatches.append(f'{self.context}: {line}: QEMU 0x{q:x}, nvtpm 0x{n:x}')
        return q

    def write(self, loc, reg, val, size):
        line = f'write{SIZES[size]} 0x{BASE + (loc << 12) + reg:x} 0x{val:x}'
        for d in self.devs:
            assert d.cmd(line) == 'OK', line

    def settle(self, loc):
        """Wait until neither device is executing a command for loc."""
        for _ in range(400):
            stss = [int(d.cmd(f'readl 0x{BASE + (loc << 12) + STS:x}').split()[1], 16)
                    for d in self.devs]
            # EXECUTION shows stsValid without dataAvail, Expect or commandReady
            if all(s == 0xffffffff or s & 0xd8 != 0x80 or s & 0x10 for s in stss):
                return
            time.sleep(0.005)


def all_registers(p, name):
    p.context = name
    for loc in range(5):
        for reg in REGISTERS:
            for size in (1, 2, 4):
                for k in range(0, 4 - size + 1):
                    if reg in (FIFO,):
                        continue  # reads consume data; the sequences read the FIFO
                    allow = 'burstCount read at 0x19' if reg == STS and k == 1 else None
                    p.read(loc, reg + k, size, allow)


def transmit(p, loc, cmd, name):
    """A Linux-style transmit with every status read compared."""
    p.context = name
    p.write(loc, ACCESS, 0x02, 1)
    p.read(loc, ACCESS, 1)
    p.write(loc, STS, 0x40, 1)
    p.read(loc, STS, 4)
    for i, b in enumerate(cmd):
        p.write(loc, FIFO, b, 1)
        if i % 5 == 0 or i == len(cmd) - 1:
            p.read(loc, STS, 4)
    p.write(loc, STS, 0x20, 1)
    p.settle(loc)
    sts = p.read(loc, STS, 4)
    n = (sts >> 8) & 0xffff
    for _ in range(n):
        p.read(loc, FIFO, 1)
    p.read(loc, STS, 4)
    p.read(loc, FIFO, 1)
    p.write(loc, STS, 0x40, 1)
    p.read(loc, STS, 4)
    p.write(loc, ACCESS, 0x20, 1)
    p.read(loc, ACCESS, 1)


STARTUP = bytes.fromhex('80010000000c000001440000')
PCR_READ16 = bytes.fromhex('8001000000140000017e00000001000b03000001')
GET_CAP = bytes.fromhex('8001000000160000017a000000060000010500000001')


def handshakes(p):
    p.context = 'handshake'
    for loc in range(4):
        p.read(loc, ACCESS, 1)
    p.write(0, ACCESS, 0x02, 1)
    p.write(1, ACCESS, 0x02, 1)
    p.write(2, ACCESS, 0x02, 1)
    for loc in range(4):
        p.read(loc, ACCESS, 1)
        p.read(loc, STS, 4)
    p.write(0, ACCESS, 0x20, 1)  # release: 2 is the highest requester
    for loc in range(4):
        p.read(loc, ACCESS, 1)
    p.context = 'seize'
    p.write(1, ACCESS, 0x08, 1)  # lower than 2: ignored
    p.write(3, ACCESS, 0x08, 1)
    for loc in range(4):
        p.read(loc, ACCESS, 1)
    p.write(2, ACCESS, 0x10, 1)  # clear beenSeized
    p.read(2, ACCESS, 1)
    p.write(1, ACCESS, 0x20, 1)  # withdraw the request
    p.write(3, ACCESS, 0x20, 1)
    for loc in range(4):
        p.read(loc, ACCESS, 1)


def aborts(p):
    p.context = 'abort in reception'
    p.write(0, ACCESS, 0x02, 1)
    p.write(0, STS, 0x40, 1)
    for b in PCR_READ16[:8]:
        p.write(0, FIFO, b, 1)
    p.read(0, STS, 4)
    p.write(0, STS, 0x40, 1)
    p.read(0, STS, 4)
    p.context = 'tpmGo with Expect set'
    for b in PCR_READ16[:8]:
        p.write(0, FIFO, b, 1)
    p.write(0, STS, 0x20, 1)
    p.read(0, STS, 4)
    p.write(0, STS, 0x40, 1)
    p.write(0, ACCESS, 0x20, 1)
    p.read(0, ACCESS, 1)


def interrupts(p):
    p.context = 'interrupts'
    p.write(0, ACCESS, 0x02, 1)
    p.write(0, INT_ENABLE, 0x8000009f, 4)
    p.read(0, INT_ENABLE, 4)
    p.write(0, STS, 0x40, 1)
    p.read(0, INT_STATUS, 4)
    p.write(0, INT_STATUS, 0xff, 4)
    p.read(0, INT_STATUS, 4)
    p.write(0, INT_ENABLE, 0x00000008, 4)
    p.write(0, STS, 0x40, 1)
    p.write(0, ACCESS, 0x20, 1)


def random_sequence(p, seed, steps):
    """Random accesses to localities 0-3 (locality 4 writes are a listed
    difference); FIFO bytes come from a real command so that a tpmGo
    sends something the TPM answers the same way in both. Reads of
    burstCount at 0x19 are a listed difference (QEMU splits the unaligned
    2-byte read into byte reads and caps each)."""
    rng = random.Random(seed)
    p.context = f'random seed {seed}'
    cmd, pos = PCR_READ16, 0
    for step in range(steps):
        loc = rng.randrange(4)
        op = rng.randrange(10)
        if op < 3:
            reg = rng.choice(REGISTERS + [XFIFO])
            size = rng.choice((1, 2, 4))
            k = rng.randrange(0, 4 - size + 1)
            allow = 'burstCount read at 0x19' if reg == STS and k == 1 else None
            p.read(loc, reg + k, size, allow)
        elif op < 5:
            # The active locality first goes back to ready: what a locality
            # change does to a pending command is a listed difference.
            active = [l for l in range(5) if p.read(l, ACCESS, 1) & 0x20]
            if active:
                p.settle(active[0])
                p.write(active[0], STS, 0x40, 1)
            p.write(loc, ACCESS, rng.choice((0x02, 0x20, 0x08, 0x10)), 1)
        elif op < 7:
            p.write(loc, STS, rng.choice((0x40, 0x20, 0x02, 0x40)), 1)
            p.settle(loc)
        elif op < 9:
            p.write(loc, FIFO, cmd[pos % len(cmd)], 1)
            pos += 1
        else:
            p.write(loc, INT_ENABLE, rng.choice((0x80000087, 0, 0x8000001f)), 4)


def differs_by_isolation(p):
    """Listed difference: a locality that lost the locality with a response
    pending keeps it in QEMU; nvtpm drops it. Seen here, then stopped."""
    p.context = 'isolation (listed difference)'
    p.write(0, ACCESS, 0x02, 1)
    p.write(0, STS, 0x40, 1)
    for b in PCR_READ16:
        p.write(0, FIFO, b, 1)
    p.write(0, STS, 0x20, 1)
    p.settle(0)
    p.write(2, ACCESS, 0x08, 1)  # seize
    p.write(2, ACCESS, 0x20, 1)  # and give it back
    p.write(0, ACCESS, 0x02, 1)
    p.read(0, STS, 4, allow='locality isolation')
    p.write(0, STS, 0x40, 1)
    p.read(0, STS, 4)
    p.write(0, ACCESS, 0x20, 1)


def main():
    nvtpm, shell_exe = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp()
    ctrl, qsock = os.path.join(tmp, 'ctrl.sock'), os.path.join(tmp, 'qtest.sock')
    server = subprocess.Popen([nvtpm, 'socket', '--tpm2', '--tpmstate', f'file={tmp}/q.qcow2',
                               '--ctrl', f'type=unixio,path={ctrl}'])
    for _ in range(100):
        if os.path.exists(ctrl):
            break
        time.sleep(0.05)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(qsock)
    listener.listen(1)
    # Debian's QEMU has no qtest accelerator: TCG with the CPU stopped (-S),
    # so only the qtest commands touch the devices.
    qemu = subprocess.Popen(['qemu-system-x86_64', '-machine', 'pc', '-accel', 'tcg', '-S',
                             '-qtest', f'unix:{qsock}', '-qtest-log', '/dev/null',
                             '-display', 'none', '-nodefaults',
                             '-chardev', f'socket,id=chrtpm,path={ctrl}',
                             '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm',
                             '-device', 'tpm-tis,tpmdev=tpm0'],
                            env={k: v for k, v in os.environ.items() if k != 'MALLOC_PERTURB_'})
    listener.settimeout(30)
    conn, _ = listener.accept()
    shell = subprocess.Popen([shell_exe, f'{tmp}/s.qcow2'], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    p = Pair(Qtest(conn), Shell(shell))
    try:
        all_registers(p, 'every register at reset')
        check(not p.mismatches, 'every register, size and offset reads the same at reset',
              '\n'.join(p.mismatches[:20]))
        count = len(p.mismatches)
        handshakes(p)
        check(len(p.mismatches) == count, 'locality requests, release and seize read the same',
              '\n'.join(p.mismatches[count:count + 20]))
        count = len(p.mismatches)
        for name, cmd in (('TPM2_Startup', STARTUP), ('TPM2_PCR_Read', PCR_READ16),
                          ('TPM2_GetCapability', GET_CAP)):
            transmit(p, 0, cmd, name)
        transmit(p, 3, PCR_READ16, 'PCR_Read at locality 3')
        check(len(p.mismatches) == count, 'whole commands: every status and response byte the same',
              '\n'.join(p.mismatches[count:count + 20]))
        count = len(p.mismatches)
        aborts(p)
        interrupts(p)
        check(len(p.mismatches) == count, 'aborts and interrupt registers read the same',
              '\n'.join(p.mismatches[count:count + 20]))
        count = len(p.mismatches)
        differs_by_isolation(p)
        check(len(p.mismatches) == count and p.allowed.get('locality isolation') == 1,
              'the listed isolation difference shows exactly where docs/tis.md says',
              '\n'.join(p.mismatches[count:count + 20]) + f' allowed: {p.allowed}')
        count = len(p.mismatches)
        for seed in range(1, 6):
            random_sequence(p, seed, 300)
        all_registers(p, 'every register after the random sequences')
        check(len(p.mismatches) == count, 'seeded random sequences (5 x 300 steps) read the same',
              '\n'.join(p.mismatches[count:count + 20]) + f' allowed: {p.allowed}')
    finally:
        shell.stdin.close()
        shell.wait(timeout=30)
        qemu.terminate()
        qemu.wait(timeout=30)
        server.wait(timeout=30)
    check(server.returncode == 0, 'nvtpm exits 0 when QEMU goes', str(server.returncode))
    finish()


if __name__ == '__main__':
    main()
