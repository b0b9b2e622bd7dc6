#!/usr/bin/env python3
"""test-key-memory.py - a running server's key material stays out of core
dumps and out of its memory once used (issue 17 item 7):
  - a server holding a key (--key, --migration-key) is not dumpable: run as
    an unprivileged user, the files in its /proc/PID belong to root (so no core
    dump, no ptrace or /proc/PID/mem by that user); a server without a key
    stays dumpable (those files are the user's);
  - a core dump taken as root (gcore) of a running encrypted server, after
    it served GET_STATEBLOB (which uses the key), holds neither the raw
    --key (its bytes or its hex text) nor a passphrase (--key pwdfile=,
    --migration-key pwdfile=);
  - its memory read as root through /proc/PID/mem holds no passphrase at
    all, and the raw key only in pages kept out of core dumps (MADV_DONTDUMP:
    swtpm's blob format encrypts with the raw --key itself, so the server
    needs it while it runs).
Usage: test-key-memory.py NVTPM (as root: it starts servers as nobody and
reads their memory)"""
import os
import mmap
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish  # noqa: E402

NVTPM = os.path.abspath(sys.argv[1])
NOBODY = 65534
CHUNK = 64 << 20  # bytes of another process's memory read at a time
GET_STATEBLOB_PERMALL = bytes.fromhex('0000000c' '00000000' '00000001' '00000000')
TPM2_GETRANDOM = bytes.fromhex('80010000000c0000017b0008')
SHUTDOWN = bytes.fromhex('00000003')

for tool in ('gcore', 'setpriv'):
    check(shutil.which(tool) is not None, f'peer {tool} is installed (run ./dev deps)')
check(os.geteuid() == 0, 'runs as root (it reads other processes\' memory)')


def wait(cond, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def ask(path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(request)
        return s.recv(65536)


def serve(d, name, key_args):
    """nvtpm as nobody on a new image in d, with key_args; ready once a
    command is answered (the key derived, libtpms started)."""
    ctrl, data, out = (os.path.join(d, f'{name}.{x}') for x in ('ctrl', 'data', 'out'))
    args = ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', NVTPM,
            'socket', '--tpm2', '--tpmstate', f'file={os.path.join(d, name)}.qcow2', '--ctrl',
            f'type=unixio,path={ctrl}', '--server', f'type=unixio,path={data}', '--flags',
            'not-need-init,startup-clear'] + key_args
    p = subprocess.Popen(args, stdout=open(out, 'w'), stderr=subprocess.STDOUT)
    if not wait(lambda: p.poll() is not None or os.path.exists(data)) or p.poll() is not None:
        p.kill()
        p.wait()
        raise SystemExit(f'nvtpm {key_args} did not start: {open(out).read()}')
    answer = ask(data, TPM2_GETRANDOM)  # after the key's derivation and libtpms' start
    if answer[6:10] != b'\0\0\0\0':
        raise SystemExit(f'nvtpm {key_args}: GetRandom {answer.hex()}: {open(out).read()}')
    return p, ctrl, out


def stop(p, ctrl):
    ask(ctrl, SHUTDOWN)
    try:
        return p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        return 'hung'


def regions(pid):
    """(start, end, readable, dontdump, name) of each mapping."""
    out, cur = [], None
    for line in open(f'/proc/{pid}/smaps'):
        m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+)\s+\S+\s+\S+\s+\S+\s*(.*)$', line)
        if m:
            cur = [int(m[1], 16), int(m[2], 16), m[3].startswith('r'), False, m[4]]
            out.append(cur)
        elif line.startswith('VmFlags:') and cur:
            cur[3] = 'dd' in line.split()[1:]
    return out


def memory_hits(pid, needles):
    """{needle name: [(dontdump, mapping name)] for each copy} over the whole
    readable memory."""
    hits = {name: [] for name in needles}
    longest = max(len(n) for n in needles.values())
    with open(f'/proc/{pid}/mem', 'rb', 0) as mem:
        for start, end, readable, dd, what in regions(pid):
            # Mappings of terabytes are AddressSanitizer's shadow (the
            # sanitized build's run): nvtpm maps nothing near that size.
            if not readable or what in ('[vvar]', '[vsyscall]') or end - start > 1 << 32:
                continue
            for at in range(start, end, CHUNK):  # a copy is counted in the piece it starts in
                try:
                    mem.seek(at)
                    data = mem.read(min(CHUNK + longest - 1, end - at))
                except OSError:
                    break
                for name, needle in needles.items():
                    i = data.find(needle)
                    while 0 <= i < CHUNK:
                        hits[name].append((dd, what))
                        i = data.find(needle, i + 1)
    return hits


def core_hits(pid, d, needles):
    """The needles found in a core dump gcore takes as root."""
    prefix = os.path.join(d, 'core')
    r = subprocess.run(['gcore', '-o', prefix, str(pid)], capture_output=True, text=True,
                       timeout=300)
    path = f'{prefix}.{pid}'
    if r.returncode != 0 or not os.path.exists(path):
        return f'gcore failed: {r.stdout}{r.stderr}'
    with open(path, 'rb') as f:  # mapped, not read: a sanitized build's core is large
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        found = sorted(name for name, needle in needles.items() if data.find(needle) >= 0)
        data.close()
    os.unlink(path)
    return found or None


def dumpable(pid):
    """Whether the process (running as nobody) is dumpable: the kernel gives
    the files in a non-dumpable process's /proc/PID to root."""
    return os.stat(f'/proc/{pid}/fd').st_uid == NOBODY


with tempfile.TemporaryDirectory() as d:
    os.chown(d, NOBODY, NOBODY)
    raw = secrets.token_bytes(32)
    passphrase = ('pass-' + secrets.token_hex(20)).encode()
    mig_passphrase = ('mig-' + secrets.token_hex(20)).encode()
    files = {'raw.key': raw.hex().encode() + b'\n', 'pass.txt': passphrase,
             'mig.txt': mig_passphrase}
    for name, content in files.items():
        with open(os.path.join(d, name), 'wb') as f:
            f.write(content)
        os.chown(os.path.join(d, name), NOBODY, NOBODY)
    raw_needles = {'the raw key': raw, 'its hex text': raw.hex().encode(),
                   'its HEX text': raw.hex().upper().encode()}
    pass_needles = {'the passphrase': passphrase, 'the migration passphrase': mig_passphrase}

    # no key: dumpable, as before
    p, ctrl, out = serve(d, 'plain', [])
    check(dumpable(p.pid), 'no key: the server stays dumpable (/proc/PID/fd is its user\'s)')
    check(stop(p, ctrl) == 0, 'no key: the server stops cleanly', open(out).read())

    cases = (('raw', ['--key', f'file={d}/raw.key', '--migration-key', f'pwdfile={d}/mig.txt']),
             ('passphrase', ['--key', f'pwdfile={d}/pass.txt']))
    for name, key_args in cases:
        needles = dict(pass_needles, **raw_needles) if name == 'raw' else pass_needles
        p, ctrl, out = serve(d, name, key_args)
        blob = ask(ctrl, GET_STATEBLOB_PERMALL)  # encrypts with the keys
        check(blob[:4] == b'\0\0\0\0', f'{name}: GET_STATEBLOB answered', blob[:16].hex())
        check(not dumpable(p.pid), f'{name}: a server holding a key is not dumpable '
              '(/proc/PID/fd is root\'s)',
              f'/proc/{p.pid}/fd uid {os.stat(f"/proc/{p.pid}/fd").st_uid}')
        found = core_hits(p.pid, d, needles)
        check(found is None, f'{name}: a core dump of the running server holds no key material',
              f'found: {found}')
        hits = memory_hits(p.pid, needles)
        for needle in pass_needles:
            check(not hits[needle], f'{name}: {needle} is nowhere in its memory', str(hits[needle]))
        for needle in raw_needles if name == 'raw' else ():
            outside = [h for h in hits[needle] if not h[0]]
            check(not outside, f'{name}: {needle} is in no page a core dump holds',
                  str(hits[needle]))
        if name == 'raw':  # and the scan can see it where it is
            check(hits['the raw key'] == [(True, '')],
                  f'{name}: the raw key held once, in a page core dumps leave out',
                  str(hits['the raw key']))
        check(stop(p, ctrl) == 0, f'{name}: the server stops cleanly', open(out).read())

finish()
