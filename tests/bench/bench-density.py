#!/usr/bin/env python3
"""bench-density.py - the density benchmark of issue 19: many TPM servers on
one host, as libvirt runs them (one process and one state per VM, UNIX data
and control sockets), nvtpm socket against swtpm socket in the same run.

For each N (10, 50, 100, 200) and each state (fresh: no state yet; existing:
the state the fresh round left), nvtpm and swtpm alternately: N servers are
started at once; the time until every one has answered GET_CAPABILITY on its
control socket, and then a TPM2_GetRandom on its data socket (connections are
retried with a short back-off until a deadline, which fails loudly with the
server's log); the CPU time the servers used until then, per server
(/proc/PID/task/*/schedstat); the proportional set size (PSS, /proc/PID/smaps_rollup: shared library pages
counted once over all processes) in total and per process, once all answered
and again after the round-robin; the rate of one TPM2_GetRandom(8) per TPM in
turn over one connection each, for a few seconds; then CMD_SHUTDOWN on every
control socket and the time until all have exited. Each figure is the median
of --rounds runs.

After the table: where one server's PSS goes (/proc/PID/smaps, by mapping),
the shared libraries mapped into each process (/proc/PID/maps), and for
nvtpm (lazily bound) the libraries none of whose symbols were called during
start, GetRandom and shutdown (LD_DEBUG=bindings).

Usage: bench-density.py [--nvtpm PATH] [--counts 10,50,100,200] [--rounds 3]
                        [--seconds 3] [--dir DIR]
Needs: swtpm (Debian's 0.7), Python 3 (standard library only)."""
import argparse
import errno
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

GET_CAPABILITY = (1).to_bytes(4, 'big')
SHUTDOWN = (3).to_bytes(4, 'big')
GETRANDOM_8 = bytes.fromhex('8001' '0000000c' '0000017b' '0008')
DEADLINE = 120.0  # seconds for N servers to answer, or to exit
# Connection attempts per server: again after 0.5 ms, doubling to at most 4 ms,
# so that 200 servers not listening yet do not keep a CPU busy with retries.
RETRY_FIRST, RETRY_MAX = 0.0005, 0.004


def fail(msg, server=None):
    if server is not None:
        try:
            with open(server.log, errors='replace') as f:
                msg += f'\n--- {server.log} (last lines):\n' + ''.join(f.readlines()[-20:])
        except OSError:
            pass
    sys.exit('bench-density: ' + msg)


class Server:
    """One TPM server: its folder holds its state, its sockets and its log."""

    def __init__(self, kind, folder, nvtpm):
        self.kind, self.dir = kind, folder
        self.ctrl_path = os.path.join(folder, 'ctrl')
        self.data_path = os.path.join(folder, 'data')
        self.log = os.path.join(folder, 'log')
        if kind == 'nvtpm':
            state = [nvtpm, 'socket', '--tpm2', '--tpmstate', 'file=' + os.path.join(folder, 'tpm.qcow2')]
        else:
            state = ['swtpm', 'socket', '--tpm2', '--tpmstate', 'dir=' + folder]
        self.argv = state + ['--ctrl', 'type=unixio,path=' + self.ctrl_path,
                             '--server', 'type=unixio,path=' + self.data_path,
                             '--flags', 'not-need-init,startup-clear']
        self.proc = self.ctrl = self.data = None

    def start(self, env=None):
        for p in (self.ctrl_path, self.data_path):
            if os.path.exists(p):
                os.unlink(p)
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        self.stage, self.buf = 'ctrl', b''
        self.ctrl_at = self.ready_at = None
        self.next_try, self.backoff = 0.0, RETRY_FIRST

    def try_connect(self, path):
        """A connected non-blocking socket, or None while the server is not listening."""
        if not os.path.exists(path):  # a stat is cheaper than a socket and a connect
            return None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(path)
        if err == 0:
            return s
        s.close()
        if err in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            return None
        fail(f'connect {path}: {os.strerror(err)}', self)

    def cpu_ms(self):
        """On-CPU time of all the process's threads so far (ns exact)."""
        total = 0
        task = f'/proc/{self.proc.pid}/task'
        for t in os.listdir(task):
            try:
                with open(f'{task}/{t}/schedstat') as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass  # a thread that has just gone
        return total / 1e6

    def pss(self):
        """(PSS, PSS anonymous) in KiB."""
        fields = {}
        with open(f'/proc/{self.proc.pid}/smaps_rollup') as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == 'kB':
                    fields[parts[0].rstrip(':')] = int(parts[1])
        return fields['Pss'], fields.get('Pss_Anon', 0)


def recv_exact(s, n):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError('connection closed')
        data += chunk
    return data


def wait_ready(servers, t0):
    """Drive every server through GET_CAPABILITY on ctrl, then GetRandom on data,
    as the answers come; connection attempts retried every millisecond."""
    sel = selectors.DefaultSelector()
    connecting = list(servers)
    pending = len(servers)
    while pending:
        now = time.monotonic()
        if now - t0 > DEADLINE:
            late = [s for s in servers if s.ready_at is None]
            fail(f'{len(late)} of {len(servers)} {servers[0].kind} servers did not answer '
                 f'within {DEADLINE:.0f} s', late[0])
        still = []
        for s in connecting:
            if s.next_try > now:
                still.append(s)
                continue
            if s.proc.poll() is not None:
                fail(f'{s.kind} exited with {s.proc.returncode} before answering', s)
            path = s.ctrl_path if s.stage == 'ctrl' else s.data_path
            sock = s.try_connect(path)
            if sock is None:
                s.next_try, s.backoff = now + s.backoff, min(2 * s.backoff, RETRY_MAX)
                still.append(s)
                continue
            sock.setblocking(True)
            sock.sendall(GET_CAPABILITY if s.stage == 'ctrl' else GETRANDOM_8)
            sock.setblocking(False)
            if s.stage == 'ctrl':
                s.ctrl = sock
            else:
                s.data = sock
            sel.register(sock, selectors.EVENT_READ, s)
        connecting = still
        wait = min((s.next_try for s in connecting), default=now + 1.0) - time.monotonic()
        for key, _ in sel.select(timeout=max(wait, 0.0001)):
            s, sock = key.data, key.fileobj
            try:
                chunk = sock.recv(4096)
            except ConnectionError:
                chunk = b''
            if not chunk:
                fail(f'{s.kind} closed its {s.stage} connection', s)
            s.buf += chunk
            want = 8 if s.stage == 'ctrl' else 20  # ptm_res + caps; header + size + 8 bytes
            if len(s.buf) < want:
                continue
            sel.unregister(sock)
            sock.setblocking(True)
            if s.stage == 'ctrl':
                if s.buf[:4] != bytes(4):
                    fail(f'GET_CAPABILITY answered {s.buf[:4].hex()}', s)
                s.ctrl_at = time.monotonic() - t0
                s.stage, s.buf = 'data', b''
                s.next_try, s.backoff = 0.0, RETRY_FIRST
                connecting.append(s)
            else:
                if s.buf[6:10] != bytes(4):
                    fail(f'GetRandom answered 0x{s.buf[6:10].hex()}', s)
                s.ready_at = time.monotonic() - t0
                pending -= 1
    sel.close()


def round_robin(servers, seconds):
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for s in servers:
            s.data.sendall(GETRANDOM_8)
            r = recv_exact(s.data, 20)
            if r[6:10] != bytes(4):
                fail(f'GetRandom answered 0x{r[6:10].hex()}', s)
        n += len(servers)
    return n / (time.monotonic() - t0)


def stop_all(servers):
    t0 = time.monotonic()
    for s in servers:
        s.data.close()
        s.ctrl.sendall(SHUTDOWN)
    for s in servers:
        if recv_exact(s.ctrl, 4) != bytes(4):
            fail('CMD_SHUTDOWN failed', s)
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, DEADLINE - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for t in servers:
                if t.proc.poll() is None:
                    t.proc.kill()
                    t.proc.wait()
            fail(f'{s.kind} did not exit after CMD_SHUTDOWN', s)
        s.ctrl.close()
        if s.proc.returncode != 0:
            fail(f'{s.kind} exited with {s.proc.returncode} after CMD_SHUTDOWN', s)
    return time.monotonic() - t0


def run(kind, folders, nvtpm, seconds, keep=None):
    """N servers started at once; the figures of one run. keep: a list that
    receives the running servers (then they are not stopped here)."""
    servers = [Server(kind, d, nvtpm) for d in folders]
    t0 = time.monotonic()
    for s in servers:
        s.start()
    try:
        wait_ready(servers, t0)
        r = {'ctrl_ms': max(s.ctrl_at for s in servers) * 1000,
             'ready_ms': max(s.ready_at for s in servers) * 1000,
             'cpu_ms': statistics.mean(s.cpu_ms() for s in servers)}
        pss = [s.pss() for s in servers]
        r['pss_kib'] = sum(p for p, _ in pss)
        r['anon_kib'] = sum(a for _, a in pss)
        r['rate'] = round_robin(servers, seconds)
        r['pss_after_kib'] = sum(s.pss()[0] for s in servers)
        if keep is not None:
            keep.extend(servers)
            return r
        r['stop_ms'] = stop_all(servers) * 1000
        return r
    finally:
        if keep is None:
            for s in servers:
                if s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait()


# ---- where the memory goes, and which libraries ----------------------------------------


def pss_by_mapping(pid):
    """{mapping name: PSS KiB} from /proc/PID/smaps; libraries by file name."""
    out, name = {}, None
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            parts = line.split()
            if '-' in parts[0] and len(parts) >= 5 and not parts[0].endswith(':'):
                path = parts[5] if len(parts) > 5 else '[anonymous]'
                name = os.path.basename(path) if path.startswith('/') else path
            elif parts[0] == 'Pss:':
                out[name] = out.get(name, 0) + int(parts[1])
    return out


def libraries(pid):
    libs = set()
    with open(f'/proc/{pid}/maps') as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and '.so' in os.path.basename(parts[5]):
                libs.add(parts[5])
    return sorted(libs)


def used_libraries(kind, folder, nvtpm):
    """The libraries some other object bound a symbol from during start,
    GetRandom and shutdown (LD_DEBUG=bindings; with lazy binding that is a
    function called, with BIND_NOW every symbol referenced)."""
    out = os.path.join(folder, 'ld-debug')
    env = dict(os.environ, LD_DEBUG='bindings', LD_DEBUG_OUTPUT=out)
    s = Server(kind, folder, nvtpm)
    s.start(env)
    wait_ready([s], time.monotonic())
    mapped = libraries(s.proc.pid)
    round_robin([s], 0.2)
    stop_all([s])
    bound = {}
    for name in os.listdir(folder):
        if not name.startswith('ld-debug'):
            continue
        with open(os.path.join(folder, name), errors='replace') as f:
            for line in f:
                # "binding file A [0] to B [0]: normal symbol `sym' [VER]"
                if 'binding file' not in line:
                    continue
                try:
                    src = line.split('binding file ', 1)[1].split(' [', 1)[0]
                    dst = line.split(' to ', 1)[1].split(' [', 1)[0]
                except IndexError:
                    continue
                if os.path.realpath(src) != os.path.realpath(dst):
                    bound[os.path.realpath(dst)] = bound.get(os.path.realpath(dst), 0) + 1
    return mapped, bound


# ---- the table ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description='the density benchmark (issue 19)')
    ap.add_argument('--nvtpm', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     '../../build/cli/nvtpm'))
    ap.add_argument('--counts', default='10,50,100,200')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=float, default=3.0, help='of the GetRandom round-robin')
    ap.add_argument('--dir', help='where the states go (default: a temporary folder)')
    a = ap.parse_args()
    nvtpm = os.path.abspath(a.nvtpm)
    counts = [int(c) for c in a.counts.split(',')]
    if not shutil.which('swtpm'):
        sys.exit('bench-density: swtpm is missing (./dev deps)')
    if not os.access(nvtpm, os.X_OK):
        sys.exit(f'bench-density: no {nvtpm} (build first)')
    top = tempfile.mkdtemp(prefix='bench-density-', dir=a.dir)
    sw_version = subprocess.run(['swtpm', '--version'], capture_output=True, text=True).stdout.split()
    print(f'density: N servers started at once, UNIX sockets; nvtpm vs swtpm '
          f'{sw_version[3].rstrip(",") if len(sw_version) > 3 else "?"}; median of {a.rounds} rounds; '
          f'GetRandom round-robin {a.seconds:g} s; {os.cpu_count()} CPUs')
    results = {}  # (n, state, kind) -> [run figures]
    try:
        for rnd in range(a.rounds):
            for n in counts:
                order = ('nvtpm', 'swtpm') if (rnd + counts.index(n)) % 2 == 0 else ('swtpm', 'nvtpm')
                folders = {}
                for kind in order:
                    folders[kind] = [os.path.join(top, f'{kind}-{n}-{i}') for i in range(n)]
                    for d in folders[kind]:
                        shutil.rmtree(d, ignore_errors=True)
                        os.makedirs(d)
                for state in ('fresh', 'existing'):
                    for kind in order:
                        r = run(kind, folders[kind], nvtpm, a.seconds)
                        results.setdefault((n, state, kind), []).append(r)
                        print(f'  round {rnd + 1}, N={n}, {state}, {kind}: ready {r["ready_ms"]:.0f} ms, '
                              f'PSS {r["pss_kib"] / n:.0f} KiB/TPM, {r["rate"]:.0f} GetRandom/s',
                              file=sys.stderr, flush=True)
                for kind in order:
                    for d in folders[kind]:
                        shutil.rmtree(d, ignore_errors=True)
        print_table(results, counts)
        breakdown(top, nvtpm, 100 if 100 in counts else counts[-1], a.seconds)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def med(results, key, field):
    return statistics.median(r[field] for r in results[key])


def print_table(results, counts):
    rows = [  # label, field, per-TPM, unit, ratio swtpm/nvtpm (True) or nvtpm/swtpm
        ('all answered GET_CAPABILITY', 'ctrl_ms', False, 'ms', True),
        ('all answered GetRandom', 'ready_ms', False, 'ms', True),
        ('CPU per server to ready', 'cpu_ms', False, 'ms', True),
        ('PSS total, all ready', 'pss_kib', False, 'KiB', True),
        ('PSS per TPM, all ready', 'pss_kib', True, 'KiB', True),
        ('PSS anon per TPM, all ready', 'anon_kib', True, 'KiB', True),
        ('PSS per TPM, after round-robin', 'pss_after_kib', True, 'KiB', True),
        ('GetRandom round-robin', 'rate', False, '/s', False),
        ('all exited after CMD_SHUTDOWN', 'stop_ms', False, 'ms', True),
    ]
    print()
    print('| N   | state    | measure                        | nvtpm      | swtpm      | ratio   |')
    print('|-----|----------|--------------------------------|------------|------------|---------|')
    for n in counts:
        for state in ('fresh', 'existing'):
            for label, field, per_tpm, unit, sw_over_nv in rows:
                nv = med(results, (n, state, 'nvtpm'), field)
                sw = med(results, (n, state, 'swtpm'), field)
                if per_tpm:
                    nv, sw = nv / n, sw / n
                ratio = sw / nv if sw_over_nv else nv / sw
                d = 1 if field == 'cpu_ms' else 0
                print(f'| {n:<3} | {state:<8} | {label:<30} | {nv:>7.{d}f} {unit:<3}| {sw:>7.{d}f} {unit:<3}'
                      f'| {ratio:>6.2f}x |')
    print()
    print('ratio: swtpm over nvtpm for times and memory (above 1: nvtpm faster or smaller),')
    print('nvtpm over swtpm for the GetRandom rate (above 1: nvtpm faster).')
    if 100 in counts:
        print()
        print('targets (issue 19), N=100:')
        for label, field, state in (('fresh-state start-up >= 1.0x swtpm', 'ready_ms', 'fresh'),
                                    ('existing-state start-up >= 1.0x swtpm', 'ready_ms', 'existing'),
                                    ('PSS per TPM <= swtpm', 'pss_kib', 'fresh')):
            nv = med(results, (100, state, 'nvtpm'), field)
            sw = med(results, (100, state, 'swtpm'), field)
            status = 'met' if sw / nv >= 1.0 else f'NOT met (by {(1 - sw / nv) * 100:.0f}%)'
            print(f'  {label:<40} {sw / nv:5.2f}x  {status}')


def breakdown(top, nvtpm, n, seconds):
    print()
    print(f'where the PSS of one server goes (KiB, /proc/PID/smaps; server 0 of {n} started '
          'at once, fresh state, after the round-robin):')
    tables, libs = {}, {}
    for kind in ('nvtpm', 'swtpm'):
        folders = [os.path.join(top, f'bd-{kind}-{i}') for i in range(n)]
        for d in folders:
            os.makedirs(d)
        keep = []
        try:
            run(kind, folders, nvtpm, min(seconds, 1.0), keep)
            tables[kind] = pss_by_mapping(keep[0].proc.pid)
            libs[kind] = libraries(keep[0].proc.pid)
            stop_all(keep)
        finally:
            for s in keep:
                if s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait()
        for d in folders:
            shutil.rmtree(d, ignore_errors=True)
    names = sorted(set(tables['nvtpm']) | set(tables['swtpm']),
                   key=lambda k: -(tables['nvtpm'].get(k, 0) + tables['swtpm'].get(k, 0)))
    print('| mapping                          | nvtpm KiB | swtpm KiB |')
    print('|----------------------------------|-----------|-----------|')
    for k in names:
        a, b = tables['nvtpm'].get(k, 0), tables['swtpm'].get(k, 0)
        if a or b:
            print(f'| {k[:32]:<32} | {a:>9} | {b:>9} |')
    print(f'| {"total":<32} | {sum(tables["nvtpm"].values()):>9} | {sum(tables["swtpm"].values()):>9} |')
    print()
    print('shared libraries mapped (/proc/PID/maps); "bound" = symbols other objects bound')
    print('from it during start, GetRandom and CMD_SHUTDOWN (LD_DEBUG=bindings):')
    for kind in ('nvtpm', 'swtpm'):
        d = os.path.join(top, f'ld-{kind}')
        os.makedirs(d)
        mapped, bound = used_libraries(kind, d, nvtpm)
        exe = nvtpm if kind == 'nvtpm' else shutil.which('swtpm')
        try:
            dyn = subprocess.run(['readelf', '-d', exe], capture_output=True, text=True).stdout
            how = 'BIND_NOW: every symbol referenced' if 'BIND_NOW' in dyn else 'lazy: functions called'
        except FileNotFoundError:
            how = 'binding mode unknown: no readelf'
        print(f'  {kind} ({how}):')
        unused = []
        for lib in mapped:
            k = bound.get(os.path.realpath(lib), 0)
            note = '' if k or 'ld-linux' in lib else '   <- nothing of it used'
            if note:
                unused.append(os.path.basename(lib))
            print(f'    {lib:<58} bound {k:>4}{note}')
        shutil.rmtree(d, ignore_errors=True)
        if kind == 'nvtpm':
            target = 'NOT met: ' + ', '.join(unused) if unused else 'met'
    print()
    print(f'target (issue 19): libraries not needed at run time are not linked into nvtpm socket: {target}')


if __name__ == '__main__':
    main()
