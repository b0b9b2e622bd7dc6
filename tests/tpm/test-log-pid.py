#!/usr/bin/env python3
"""test-log-pid.py - the files --pid file= and --log file= name, side by side
with Debian's swtpm 0.7: each case runs both the same way and requires the
same observable result.
  - a symbolic link planted at either path is refused (exit 1, swtpm's
    status) and its target is left untouched; nvtpm says so in one line
    naming the file; also with --daemon;
  - a stale pid file of an earlier run does not stop a restart: overwritten
    with the new pid, removed at the end;
  - --log appends to an existing file, and empties it first with truncate;
  - prefix= stands before every line of the log: libtpms' (then four
    spaces), and the server's own (swtpm's, nvtpm's), at level 20 and at
    the default level.
Usage: test-log-pid.py NVTPM"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, free_ports  # noqa: E402

NVTPM = sys.argv[1]
TPM12_INIT = bytes.fromhex('0000000200000000')
TPM12_STARTUP = bytes.fromhex('00c10000000c000000990001')  # TPM_Startup(ST_CLEAR)
TPM12_GETRANDOM = bytes.fromhex('00c10000000e0000004600000008')
UNKNOWN_CTRL = bytes.fromhex('0000ffff')
SHUTDOWN = bytes.fromhex('00000003')


def exe(kind):
    return [NVTPM, 'socket'] if kind == 'nvtpm' else ['swtpm', 'socket']


def wait(cond, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def start(kind, args, ready):
    """kind's server; waits for ready() (its socket file), else ends the run
    with the server's output."""
    out = tempfile.TemporaryFile()
    p = subprocess.Popen(exe(kind) + args, stdout=out, stderr=out)
    if not wait(lambda: p.poll() is not None or ready()) or p.poll() is not None:
        p.kill()
        p.wait()
        out.seek(0)
        raise SystemExit(f'{kind} {args} did not start: {out.read().decode(errors="replace")}')
    return p


def ask(path_or_port, request):
    if isinstance(path_or_port, int):
        s = socket.create_connection(('127.0.0.1', path_or_port), timeout=20)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(path_or_port)
    with s:
        s.sendall(request)
        return s.recv(4096)


def stop(p, ctrl):
    """SHUTDOWN on the control channel; the exit status."""
    ask(ctrl, SHUTDOWN)
    try:
        return p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        return 'hung'


def both(case):
    """case(kind, folder) -> a comparable result, for swtpm then nvtpm."""
    out = {}
    for kind in ('swtpm', 'nvtpm'):
        with tempfile.TemporaryDirectory() as d:
            os.chmod(d, 0o755)
            out[kind] = case(kind, d)
    return out['swtpm'], out['nvtpm']


def same(name, results, want=None):
    sw, nv = results
    check(sw == nv, f'{name}: as swtpm ({nv})', f'swtpm {sw}, nvtpm {nv}')
    if want is not None:
        check(nv == want, f'{name}: {want}', f'nvtpm {nv}')


# --- a symbolic link at the path: refused, its target untouched ------------------------------------
nvtpm_messages = {}


def planted_link(option, daemon=False):
    def case(kind, d):
        target, link = os.path.join(d, 'target'), os.path.join(d, 'link')
        with open(target, 'w') as f:
            f.write('precious\n')
        os.symlink(target, link)
        state = os.path.join(d, 'state')
        os.mkdir(state)
        ctrl = os.path.join(d, 'ctrl')
        args = ['--tpm2', '--tpmstate', f'dir={state}', '--ctrl', f'type=unixio,path={ctrl}',
                option, f'file={link}'] + (['--daemon'] if daemon else [])
        p = subprocess.Popen(exe(kind) + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            out, err = p.communicate(timeout=10)  # a refusal is at once
            code = p.returncode
        except subprocess.TimeoutExpired:
            p.terminate()
            out, err = p.communicate()
            code = 'still running'
        left = os.path.exists(ctrl)
        try:  # it serves (a --daemon's child, too): stop it
            ask(ctrl, SHUTDOWN) if left else None
            wait(lambda: not os.path.exists(ctrl))
        except OSError:
            pass
        if kind == 'nvtpm':
            nvtpm_messages[(option, daemon)] = (err, link)
        return code, open(target).read(), left
    return case


for option, daemon in (('--log', False), ('--pid', False), ('--pid', True)):
    name = f'{option} file= a symbolic link' + (' with --daemon' if daemon else '')
    same(f'{name}: refused, the target untouched, no socket left',
         both(planted_link(option, daemon)), (1, 'precious\n', False))
    err, link = nvtpm_messages[(option, daemon)]
    lines = err.strip().splitlines()
    check(len(lines) == 1 and link in lines[0] and 'symbolic links' in lines[0],
          f'{name}: nvtpm says so in one line naming the file', repr(err))


# --- a stale pid file: overwritten, then removed ---------------------------------------------------
def stale_pid(kind, d):
    pidfile, ctrl = os.path.join(d, 'pid'), os.path.join(d, 'ctrl')
    with open(pidfile, 'w') as f:
        f.write('999999999\n')  # an earlier run's, longer than any pid
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--pid', f'file={pidfile}', '--ctrl',
                     f'type=unixio,path={ctrl}'],
              ready=lambda: os.path.exists(ctrl) and open(pidfile).read().strip() != '999999999')
    written = open(pidfile).read()
    code = stop(p, ctrl)
    return written == str(p.pid), os.path.exists(pidfile), code


same('--pid file= over a stale pid file: the new pid alone, removed at the end', both(stale_pid),
     (True, False, 0))


# --- the log: appended to, or emptied first with truncate -----------------------------------------
def log_run(kind, d, log_arg, requests=()):
    """A TPM 1.2 server with --log log_arg; INIT, the requests, SHUTDOWN."""
    ctrl, port = os.path.join(d, 'ctrl'), free_ports(1)
    p = start(kind, ['--tpmstate', f'dir={d}', '--ctrl', f'type=unixio,path={ctrl}', '--server',
                     f'type=tcp,port={port}', '--log', log_arg], ready=lambda: os.path.exists(ctrl))
    ask(ctrl, TPM12_INIT)
    for to, request in requests:
        ask(ctrl if to == 'ctrl' else port, request)
    return stop(p, ctrl)


def old_line_kept(truncate):
    def case(kind, d):
        log = os.path.join(d, 'log')
        with open(log, 'w') as f:
            f.write('OLD LINE\n')
        code = log_run(kind, d, f'file={log},level=20' + (',truncate' if truncate else ''))
        lines = open(log, errors='replace').read().splitlines()
        return code, lines[:1] == ['OLD LINE'], 'OLD LINE' in lines, len(lines) > 1
    return case


same('--log without truncate: appended to (the old line first, new lines after)',
     both(old_line_kept(False)), (0, True, True, True))
same('--log truncate: emptied first (the old line gone, new lines there)',
     both(old_line_kept(True)), (0, False, False, True))

# --- prefix= before every line -------------------------------------------------------------------
own_lines = {}


def prefixed(level):
    def case(kind, d):
        log = os.path.join(d, 'log')
        code = log_run(kind, d, f'file={log},prefix=XX' + (f',level={level}' if level else ''),
                       [('data', TPM12_STARTUP), ('data', TPM12_GETRANDOM),
                        ('ctrl', UNKNOWN_CTRL)])
        lines = [x for x in open(log, errors='replace').read().splitlines() if x]
        own_lines[(kind, level)] = [x for x in lines if not x.startswith('XX    ')]
        return (code, len(lines) > 0, all(x.startswith('XX') for x in lines),
                any(x.startswith('XX    ') for x in lines))
    return case


same('--log prefix=XX,level=20: every line after XX, libtpms\' after XX and four spaces',
     both(prefixed(20)), (0, True, True, True))
same('--log prefix=XX at the default level: every line after XX', both(prefixed(None)),
     (0, True, True, False))
for level in (20, None):
    mine = own_lines[('nvtpm', level)]
    check(mine and all(x.startswith('XXnvtpm: ') for x in mine),
          f'--log prefix=XX,level={level}: nvtpm\'s own lines too ("XXnvtpm: ...", as swtpm\'s '
          '"XXError: ...")', repr(mine[:5]))

finish()
