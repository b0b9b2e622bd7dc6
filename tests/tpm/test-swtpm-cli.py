#!/usr/bin/env python3
"""test-swtpm-cli.py - swtpm 0.7's command line and channels, side by side:
each case runs Debian's swtpm and nvtpm the same way and requires the same
observable result, and the result swtpm's own test suite expects:
  - TPM_PATH names the state folder when --tpmstate is missing;
  - -p PORT, --server port=P and --server fd=N without type= (tcp), --fd N
    with a pty as the data channel;
  - --key ...,remove=true|false; --ctrl ...,uid=NAME,gid=NAME;
  - --flags startup-clear without not-need-init starts the TPM at once;
  - datagram socket pairs for --ctrl clientfd= and for CMD_SET_DATAFD;
  - the --pid file (file= and fd=) removed at SHUTDOWN and at SIGTERM;
  - --log level=20 writes libtpms' indented lines, and an unknown control
    command is logged at the default level;
  - GET_STATEBLOB with a --key: the blob encrypted with it unless the client
    asks for it decrypted;
  - --print-states prints swtpm's text.
Usage: test-swtpm-cli.py NVTPM"""
import array
import grp
import os
import pty
import pwd
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, free_ports, unix_listening  # noqa: E402

NVTPM = sys.argv[1]
GET_CAPS = bytes.fromhex('00000001')
TPM2_GETRANDOM = bytes.fromhex('80010000000c0000017b0008')
TPM2_STARTUP = bytes.fromhex('80010000000c000001440000')


def exe(kind):
    return [NVTPM, 'socket'] if kind == 'nvtpm' else ['swtpm', 'socket']


def wait(cond, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def start(kind, args, env=None, pass_fds=(), ready=None):
    """kind's server with args; ready(): its readiness (a socket file, a port)."""
    log = tempfile.TemporaryFile()
    p = subprocess.Popen(exe(kind) + args, stdout=log, stderr=log, env=env, pass_fds=pass_fds)
    ok = wait(lambda: p.poll() is not None or (ready() if ready else True))
    if not ok or p.poll() is not None:
        log.seek(0)
        p.kill()
        raise SystemExit(f'{kind} {args} did not start: {log.read().decode(errors="replace")}')
    return p


def unix_ask(path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        s.sendall(request)
        return s.recv(4096)


def tcp_ask(port, request):
    with socket.create_connection(('127.0.0.1', port), timeout=20) as s:
        s.sendall(request)
        return s.recv(4096)


def port_open(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
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


# --- TPM_PATH --------------------------------------------------------------------------------
def tpm_path(kind, d):
    ctrl = os.path.join(d, 'ctrl')
    p = start(kind, ['--tpm2', '--ctrl', f'type=unixio,path={ctrl}'],
              env=dict(os.environ, TPM_PATH=d), ready=lambda: unix_listening(ctrl))
    r = unix_ask(ctrl, bytes.fromhex('0000000200000000')).hex()  # INIT
    stop(p)
    return r, bool(os.listdir(d))


same('TPM_PATH without --tpmstate: INIT answers, the state lands in that folder', both(tpm_path),
     ('00000000', True))


# --- the data channel's other spellings --------------------------------------------------------
def data_spelling(spelling):
    def case(kind, d):
        port = free_ports(1)
        args = {'-p': ['-p', str(port)], 'port=': ['--server', f'port={port}']}[spelling]
        p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--flags', 'not-need-init'] + args,
                  ready=lambda: port_open(port))
        r = tcp_ask(port, TPM2_STARTUP)
        stop(p)
        return r[6:10].hex()
    return case


same('-p PORT: the data channel on TCP', both(data_spelling('-p')), '00000000')
same('--server port=P without type=: TCP', both(data_spelling('port=')), '00000000')


def server_fd(kind, d):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ctrl = os.path.join(d, 'ctrl')
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--flags', 'not-need-init',
                     '--server', f'fd={b.fileno()}', '--ctrl', f'type=unixio,path={ctrl}'],
              pass_fds=[b.fileno()], ready=lambda: unix_listening(ctrl))
    b.close()
    a.settimeout(20)
    a.sendall(TPM2_STARTUP)
    r = a.recv(4096)
    a.close()
    stop(p)
    return r[6:10].hex()


same('--server fd=N without type=: a connected socket', both(server_fd), '00000000')


def pty_data(kind, d):
    master, slave = pty.openpty()
    os.close(slave)
    ctrl = os.path.join(d, 'ctrl')
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--fd', str(master),
                     '--ctrl', f'type=unixio,path={ctrl}'],
              pass_fds=[master], ready=lambda: unix_listening(ctrl))
    os.close(master)
    r = unix_ask(ctrl, GET_CAPS).hex()
    code = stop(p)
    return r, code


same('--fd N, a pty as the data channel: the server runs, control answers', both(pty_data),
     ('000000000000ffff', 0))


# --- key file removal, socket owner names -------------------------------------------------------
def key_remove(flag):
    def case(kind, d):
        key = os.path.join(d, 'key')
        with open(key, 'w') as f:
            f.write('0123456789abcdef0123456789abcdef')
        state = os.path.join(d, 'state')
        os.mkdir(state)
        ctrl = os.path.join(d, 'ctrl')
        p = start(kind, ['--tpm2', '--tpmstate', f'dir={state}', '--ctrl',
                         f'type=unixio,path={ctrl}', '--key',
                         f'file={key},format=hex,mode=aes-cbc,remove={flag}'],
                  ready=lambda: unix_listening(ctrl))
        unix_ask(ctrl, GET_CAPS)
        stop(p)
        return os.path.exists(key)
    return case


same('--key file=...,remove=true: the key file is gone', both(key_remove('true')), False)
same('--key file=...,remove=false: it stays', both(key_remove('false')), True)


def ctrl_owner(kind, d):
    ctrl = os.path.join(d, 'ctrl')
    group = grp.getgrgid(pwd.getpwnam('nobody').pw_gid).gr_name
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--ctrl',
                     f'type=unixio,path={ctrl},uid=nobody,gid={group}'],
              ready=lambda: unix_listening(ctrl))
    st = os.stat(ctrl)
    stop(p)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


if os.geteuid() == 0:
    same('--ctrl ...,uid=NAME,gid=NAME: the socket belongs to them', both(ctrl_owner))


# --- startup flags without not-need-init ------------------------------------------------------------
def startup_clear(kind, d):
    port = free_ports(1)
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--flags', 'startup-clear',
                     '--server', f'type=tcp,port={port}'], ready=lambda: port_open(port))
    r1 = tcp_ask(port, TPM2_GETRANDOM)[6:10].hex()
    r2 = tcp_ask(port, TPM2_STARTUP)[6:10].hex()
    stop(p)
    return r1, r2


same('--flags startup-clear alone: started at once (GetRandom 0, a second Startup 0x100)',
     both(startup_clear), ('00000000', '00000100'))


# --- datagram socket pairs ------------------------------------------------------------------------
def dgram(kind, d):
    ctrl_ours, ctrl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--flags', 'not-need-init,startup-clear',
                     '--ctrl', f'type=unixio,clientfd={ctrl_theirs.fileno()}'],
              pass_fds=[ctrl_theirs.fileno()])
    ctrl_theirs.close()
    ctrl_ours.settimeout(20)
    ctrl_ours.send(GET_CAPS)
    caps = ctrl_ours.recv(64).hex()
    data_ours, data_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fds = array.array('i', [data_theirs.fileno()])
    ctrl_ours.sendmsg([bytes.fromhex('00000010')], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    setfd = ctrl_ours.recv(64).hex()
    data_theirs.close()
    data_ours.settimeout(20)
    data_ours.send(TPM2_GETRANDOM)
    rnd = data_ours.recv(4096)[6:10].hex()
    ctrl_ours.send(bytes.fromhex('00000003'))  # SHUTDOWN
    down = ctrl_ours.recv(64).hex()
    try:  # SHUTDOWN ends the process: a SIGTERM sent while swtpm exits kills it (-15)
        p.wait(20)
    except subprocess.TimeoutExpired:
        pass
    code = stop(p)
    return caps, setfd, rnd, down, code


same('datagram socket pairs: --ctrl clientfd=, SET_DATAFD, a command, SHUTDOWN', both(dgram),
     ('000000000000ffff', '00000000', '00000000', '00000000', 0))


# --- GET_STATEBLOB with a --key ---------------------------------------------------------------------
def stateblob_flags(kind, d):
    key, ctrl = os.path.join(d, 'key'), os.path.join(d, 'ctrl')
    with open(key, 'w') as f:
        f.write('0123456789abcdef0123456789abcdef')
    state = os.path.join(d, 'state')
    os.mkdir(state)
    p = start(kind, ['--tpm2', '--tpmstate', f'dir={state}', '--ctrl', f'type=unixio,path={ctrl}',
                     '--key', f'file={key},format=hex,mode=aes-cbc', '--flags',
                     'not-need-init,startup-clear'], ready=lambda: unix_listening(ctrl))
    out = []
    for flags in (0, 1):  # 1: the client asks for it decrypted (QEMU does)
        r = unix_ask(ctrl, struct.pack('>IIII', 0x0c, flags, 1, 0))
        # result, flags, then the blob's header flags
        out.append((r[:4].hex(), r[4:8].hex(), r[16 + 4:16 + 6].hex()))
    stop(p)
    return out


same('GET_STATEBLOB with --key: encrypted with it (flags 2, header 0x01) unless asked decrypted',
     both(stateblob_flags), [('00000000', '00000002', '0005'), ('00000000', '00000000', '0004')])


# --- the pid file goes with the process ----------------------------------------------------------
def pid_removed(how, spec):
    def case(kind, d):
        pidfile, ctrl = os.path.join(d, 'pid'), os.path.join(d, 'ctrl')
        fds = []
        arg = f'file={pidfile}'
        if spec == 'fd':
            fd = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
            fds, arg = [fd], f'fd={fd}'
        p = start(kind, ['--tpm2', '--tpmstate', f'dir={d}', '--pid', arg, '--ctrl',
                         f'type=unixio,path={ctrl}'], pass_fds=fds,
                  ready=lambda: unix_listening(ctrl) and os.path.getsize(pidfile) > 0
                  if os.path.exists(pidfile) else False)
        for fd in fds:
            os.close(fd)
        written = open(pidfile).read().strip() == str(p.pid)
        if how == 'SHUTDOWN':
            unix_ask(ctrl, bytes.fromhex('00000003'))
            try:
                code = p.wait(20)
            except subprocess.TimeoutExpired:
                code = stop(p, signal.SIGKILL)
        else:
            code = stop(p)
        return written, os.path.exists(pidfile), code
    return case


for how in ('SHUTDOWN', 'SIGTERM'):
    for spec in ('file', 'fd'):
        same(f'--pid {spec}=: written, then removed at {how}', both(pid_removed(how, spec)),
             (True, False, 0))


# --- --print-states, as text --------------------------------------------------------------------
def print_states(with_state):
    def case(kind, d):
        if with_state:  # swtpm's file, as swtpm's own test writes one
            with open(os.path.join(d, 'tpm2-00.permall'), 'w') as f:
                f.write('DUMMY\n')
        r = subprocess.run(exe(kind) + ['--print-states', '--tpm2', '--tpmstate', f'dir={d}'],
                           capture_output=True, text=True)
        return r.returncode, r.stdout
    return case


same('--print-states of an empty folder: swtpm\'s text', both(print_states(False)),
     (0, '{ "type": "swtpm", "states": [] }'))
same('--print-states of a folder with swtpm\'s permall: swtpm\'s text', both(print_states(True)),
     (0, '{ "type": "swtpm", "states": [ {"name": "permall", "size": 6} ] }'))


# --- the log ---------------------------------------------------------------------------------------
def log_lines(level):
    def case(kind, d):
        log, ctrl = os.path.join(d, 'log'), os.path.join(d, 'ctrl')
        port = free_ports(1)
        args = ['--tpmstate', f'dir={d}', '--ctrl', f'type=unixio,path={ctrl}',  # a TPM 1.2
                '--server', f'type=tcp,port={port}',
                '--log', f'file={log}' + (f',level={level}' if level else '')]
        p = start(kind, args, ready=lambda: unix_listening(ctrl))
        unix_ask(ctrl, bytes.fromhex('0000000200000000'))  # INIT
        tcp_ask(port, bytes.fromhex('00c10000000c000000990001'))  # TPM_Startup(ST_CLEAR)
        tcp_ask(port, bytes.fromhex('00c10000000e0000004600000008'))  # TPM_GetRandom(8)
        unix_ask(ctrl, bytes.fromhex('0000ffff'))  # unknown
        stop(p)
        lines = open(log, errors='replace').read().splitlines()
        deepest = max((len(x) - len(x.lstrip(' ')) for x in lines if x.strip()), default=0)
        return (deepest >= 7) if level else (len([x for x in lines if x.strip()]) >= 1)
    return case


same('--log level=20 (TPM 1.2): libtpms lines indented 7 spaces and more', both(log_lines(20)),
     True)
same('an unknown control command is logged at the default level', both(log_lines(None)), True)

finish()
