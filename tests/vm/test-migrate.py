#!/usr/bin/env python3
"""test-migrate.py - live migration of a VM with its vTPM, through two real
QEMUs (TCG): the guest (tests/vm/guest-init, mode migrate) writes an NV index
and extends PCR 8 on the source, the VM migrates, and the guest, resumed on
the destination, reads the same NV data and PCR 8. Cases: each side with its
own image; one image on shared storage with the lock hand-off; the same
with the destination killed mid-migration, after the source handed the image
over (the source resumes, takes its image back and keeps writing NV); on
shared storage a sampler watches both servers' locks throughout: at no
moment do both own the image, so at no moment can both write; the seed's
case (the destination's nvtpm has a wrong key: it fails at start, the
migration fails, the source VM keeps its working TPM, the image is
unchanged; the same with no key, and with a corrupt image); a VM on swtpm
migrating to nvtpm, and one on nvtpm to swtpm.

Usage: test-migrate.py NVTPM GUEST_DIR"""
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish, free_ports  # noqa: E402

NVTPM, GUEST = sys.argv[1], sys.argv[2]
T = tempfile.mkdtemp()
KERNEL_ARGS = 'console=ttyS0 panic=-1 quiet nvtpm.mode=migrate nvtpm.data=vm-migr8'


def wait_for(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def console(name):
    try:
        return open(f'{T}/{name}.console', errors='replace').read().replace('\r', '')
    except FileNotFoundError:
        return ''


def said(name, what, after=None):
    text = console(name)
    if after:
        text = text.split(after, 1)[1] if after in text else ''
    m = re.search(rf'^NVTPM-{what}: (.*)$', text, re.M)
    return m.group(1) if m else None


def start_tpm(kind, name, img, extra=(), refused=False):
    sock = f'{T}/{name}.ctrl'
    if kind == 'swtpm':
        os.makedirs(img, exist_ok=True)
        argv = ['swtpm', 'socket', '--tpm2', '--tpmstate', f'dir={img}']
    else:
        argv = [NVTPM, 'socket', '--tpm2', '--tpmstate', f'file={img}']
    log = open(f'{T}/{name}.tpm.log', 'w')
    # The control socket is made here and passed in: QEMU may connect at once
    # (the kernel queues it until the server accepts), nothing waits or guesses.
    listener = listening_unix(sock)
    fd = listener.fileno()
    p = subprocess.Popen(argv + ['--ctrl', f'type=unixio,fd={fd}'] + list(extra),
                         stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,))
    listener.close()
    # Its answer to GET_CAPABILITY says it is up (its image opened, made or
    # formatted), which the other server on a shared image must not precede.
    # A start meant to be refused is checked by its exit status instead.
    if refused:
        return p, sock
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(120)
            c.connect(sock)
            c.sendall(b'\0\0\0\1')
            answer = c.recv(8)
    except OSError as e:
        answer = str(e).encode()
    if len(answer) != 8 or answer[:4] != b'\0\0\0\0':
        check(False, f'{name}: {kind} starts and answers GET_CAPABILITY', f'{answer!r}: ' +
              open(f'{T}/{name}.tpm.log').read()[-2000:])
    return p, sock


def listening_unix(path):
    """A listening UNIX socket at path, to pass to the process that serves it:
    clients may connect before that process runs (the kernel queues them)."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    return listener


def start_qemu(name, ctrl, incoming=None, append=''):
    monitor = listening_unix(f'{T}/{name}.monitor')  # passed in: nothing waits for QEMU
    mfd = monitor.fileno()
    argv = ['qemu-system-x86_64', '-accel', 'tcg', '-m', '512', '-nodefaults', '-display', 'none',
            '-kernel', f'{GUEST}/vmlinuz', '-initrd', f'{GUEST}/initrd.gz',
            '-append', KERNEL_ARGS + append,
            '-serial', f'file:{T}/{name}.console',
            '-chardev', f'socket,id=mon,fd={mfd},server=on,wait=off',
            '-mon', 'chardev=mon,mode=readline',
            '-chardev', f'socket,id=chrtpm,path={ctrl}',
            '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0']
    if incoming:
        argv += ['-incoming', f'unix:{incoming}']
    err = open(f'{T}/{name}.qemu.err', 'w')
    env = {k: v for k, v in os.environ.items() if k != 'MALLOC_PERTURB_'}  # see test-vm.sh
    p = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT, env=env, pass_fds=(mfd,))
    monitor.close()
    return p


def hmp(name, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(f'{T}/{name}.monitor')
    s.settimeout(10)
    out = b''
    while not out.endswith(b'(qemu) '):
        out += s.recv(4096)
    s.sendall(command.encode() + b'\n')
    out = b''
    while not out.endswith(b'(qemu) '):
        more = s.recv(4096)
        if not more:  # quit: QEMU closes the monitor
            break
        out += more
    s.close()
    return out.decode(errors='replace')


def migration_status(name):
    m = re.search(r'Migration status: (\S+)', hmp(name, 'info migrate'))
    return m.group(1) if m else 'unknown'


def resume_guest(name):
    """Let the guest go on: it waits for an NMI (guest-init says why not a
    line on a serial port)."""
    hmp(name, 'nmi')


def stop(*procs):
    for p in procs:
        if p and p.poll() is None:
            p.terminate()
    for p in procs:
        if p:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def diagnostics(*names):
    out = []
    for n in names:
        out.append(f'--- {n} console:\n' + console(n)[-1500:])
        for suffix in ('tpm.log', 'qemu.err'):
            try:
                out.append(f'--- {n} {suffix}:\n' + open(f'{T}/{n}.{suffix}').read()[-800:])
            except FileNotFoundError:
                pass
    return '\n'.join(out)


class OwnershipWatch:
    """Samples, every few ms, which of two TPM servers owns an image: the
    owner holds QEMU's "write" permission lock byte (101), which is what the
    block layer checks before any write, so "owns" is "can write". Read from
    /proc/PID/fdinfo, independently of nvtpm's own code. A moment where both
    own is counted only when the first is seen owning before and after the
    second (no false alarm from a hand-off between two reads); the timeline
    follows the same rule."""

    def __init__(self, img, pids):
        self.img, self.pids = os.path.realpath(img), pids
        self.timeline, self.both = [], []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def owns(self, pid):
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink(f'/proc/{pid}/fd/{fd}') != self.img:
                    continue
                info = open(f'/proc/{pid}/fdinfo/{fd}').read()
            except OSError:
                continue
            for m in re.finditer(r'^lock:.*\s(\d+)\s+(\d+|EOF)$', info, re.M):
                end = m.group(2)
                if int(m.group(1)) <= 101 and (end == 'EOF' or int(end) >= 101):
                    return True
        return False

    def run(self):
        while not self.done.is_set():
            a = self.owns(self.pids[0])
            b = self.owns(self.pids[1])
            if a and b:
                # Seen owning by the first, then the second: both at once only
                # if the first still owns now; else it handed over in between.
                a = self.owns(self.pids[0])
                if a:
                    self.both.append(time.time())
            state = ('src' if a else '') + ('dst' if b else '') or 'none'
            if not self.timeline or self.timeline[-1] != state:
                self.timeline.append(state)
            time.sleep(0.005)

    def stop(self):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        return self.timeline


class StallingProxy:
    """Carries the migration stream from the source to the destination but
    holds back the destination's return path, so the source waits for the
    destination's final word after it has sent its TPM state (and handed
    over the image). close() then cuts both sides, as a dead host would."""

    def __init__(self, listen_path, target_path):
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(listen_path)
        self.srv.listen(1)
        self.target_path, self.conns = target_path, []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        try:
            src, _ = self.srv.accept()
            dst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            dst.connect(self.target_path)
        except OSError:
            return
        self.conns += [src, dst]
        threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()
        threading.Thread(target=self.pump, args=(dst, None), daemon=True).start()

    @staticmethod
    def pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if b:
                    b.sendall(data)
        except OSError:
            pass

    def close(self):
        for c in self.conns + [self.srv]:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def owner_order(timeline):
    """The owners in order, without the moments nobody owned."""
    return [t for t in timeline if t != 'none']


def source_ready(name, what):
    ok = wait_for(lambda: said(name, 'READY') is not None, 120)
    check(ok and said(name, 'NVWRITE') == 'ok', f'{what}: the source guest wrote NV and extended PCR 8',
          diagnostics(name))
    return said(name, 'PCR8')


def migrate(src, dst, what):
    out = hmp(src, f'migrate -d unix:{T}/{dst}.mig')
    if 'rror' in out or 'ailed' in out:
        return 'failed at once: ' + out.strip().splitlines()[-2 if len(out.splitlines()) > 1 else -1]
    wait_for(lambda: migration_status(src) in ('completed', 'failed', 'cancelled'), 120)
    status = migration_status(src)
    return status


def live(what, src_kind, dst_kind, src_img, dst_img, src_extra=(), dst_extra=()):
    """Migrate a running guest from one TPM server to another; returns the
    destination's TPM process (still running) for further checks."""
    s_tpm, s_ctrl = start_tpm(src_kind, 'src', src_img, src_extra)
    d_tpm, d_ctrl = start_tpm(dst_kind, 'dst', dst_img, dst_extra)
    src = start_qemu('src', s_ctrl)
    dst = start_qemu('dst', d_ctrl, incoming=f'{T}/dst.mig')
    watch = OwnershipWatch(src_img, (s_tpm.pid, d_tpm.pid)) if src_img == dst_img else None
    try:
        pcr8 = source_ready('src', what)
        status = migrate('src', 'dst', what)
        check(status == 'completed', f'{what}: QEMU reports the migration completed', status +
              diagnostics('src', 'dst'))
        hmp('src', 'quit')
        resume_guest('dst')
        ok = wait_for(lambda: said('dst', 'PCR8', after='NVTPM-RESUMED') is not None, 60)
        check(ok and said('dst', 'NVREAD', after='NVTPM-RESUMED') == 'vm-migr8',
              f'{what}: on the destination the guest reads the NV data written on the source',
              diagnostics('dst'))
        check(said('dst', 'PCR8', after='NVTPM-RESUMED') == pcr8 and pcr8 and set(pcr8) != {'0'},
              f'{what}: and PCR 8 is what the source extended it to ({(pcr8 or "")[:16]}...)',
              f'{said("dst", "PCR8", after="NVTPM-RESUMED")} vs {pcr8}')
        wait_for(lambda: dst.poll() is not None, 60)
        wait_for(lambda: d_tpm.poll() is not None, 30)
        check(d_tpm.returncode == 0, f'{what}: the destination TPM stops with its QEMU, status 0',
              diagnostics('dst'))
        if watch:
            timeline = watch.stop()
            check(not watch.both, f'{what}: at no moment did both servers own (could write) the image',
                  f'both at {len(watch.both)} sample(s); timeline {timeline}')
            check(owner_order(timeline)[:2] == ['src', 'dst'],
                  f'{what}: the source owned it, then the destination', str(timeline))
    finally:
        if watch:
            watch.stop()
        stop(src, dst, s_tpm, d_tpm)
    clean_run_files()


def nv_on_image(img, index):
    """What NV index holds on img, read by tpm2_nvread from a fresh nvtpm."""
    port = free_ports(2)
    log = open(f'{T}/reader.log', 'w')
    p = subprocess.Popen([NVTPM, 'socket', '--tpm2', '--tpmstate', f'file={img}', '--server',
                          f'type=tcp,port={port}', '--ctrl', f'type=tcp,port={port + 1}',
                          '--flags', 'not-need-init,startup-clear'], stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port + 1), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        r = subprocess.run(['tpm2_nvread', index, '-C', 'o'], capture_output=True,
                           env=dict(os.environ, TPM2TOOLS_TCTI=f'swtpm:port={port}'))
        return r.stdout.decode(errors='replace') if r.returncode == 0 else r.stderr.decode()
    finally:
        stop(p)


def permall_sequence(img):
    """The sequence number of the image's current permall (nvtpm info reads
    beside an owner); each commit raises it by one."""
    out = subprocess.run([NVTPM, 'info', img], capture_output=True, text=True).stdout
    m = re.search(r'^blob permall .*sequence (\d+)', out, re.M)
    return int(m.group(1)) if m else -1


def shared_storage_failure():
    """One image, the lock hand-off under way, then the destination host
    dies: the destination's guest ran and committed NV (twice at least)
    before, the source's migration fails, QEMU resumes the source VM and its
    nvtpm takes the image back (LOCK_STORAGE), and the guest keeps writing NV:
    its later write must win over the destination's, though the destination
    committed last before the hand-back."""
    what = 'shared storage, destination killed'
    img = f'{T}/fail.qcow2'
    s_tpm, s_ctrl = start_tpm('nvtpm', 'src', img, ('--migration', 'release-lock-outgoing'))
    d_tpm, d_ctrl = start_tpm('nvtpm', 'dst', img, ('--migration', 'incoming'))
    src = start_qemu('src', s_ctrl, append=' nvtpm.word=after-kill nvtpm.word3=src-late')
    dst = start_qemu('dst', d_ctrl, incoming=f'{T}/dst.mig')
    watch = OwnershipWatch(img, (s_tpm.pid, d_tpm.pid))
    proxy = None
    try:
        pcr8 = source_ready('src', what)
        for side in ('src', 'dst'):  # the source waits for the destination's last word
            hmp(side, 'migrate_set_capability return-path on')
        proxy = StallingProxy(f'{T}/proxy.mig', f'{T}/dst.mig')
        hmp('src', f'migrate -d unix:{T}/proxy.mig')
        handed = wait_for(lambda: watch.owns(d_tpm.pid), 120)
        status = migration_status('src')
        check(handed and status not in ('completed', 'failed'),
              f'{what}: mid-migration, the destination holds the image (its TPM state arrived)',
              f'status {status}, owners {watch.timeline}' + diagnostics('src', 'dst'))
        before = permall_sequence(img)
        resume_guest('dst')  # the destination's guest runs: it defines and writes 0x1500017
        wrote = wait_for(lambda: said('dst', 'NVREAD2', after='NVTPM-RESUMED') is not None, 60)
        after = permall_sequence(img)
        check(wrote and before > 0 and after >= before + 2,
              f"{what}: the destination's guest commits NV twice or more before it dies",
              f'permall sequence {before} -> {after}' + diagnostics('dst'))
        for p in (dst, d_tpm):  # the destination host dies
            p.kill()
            p.wait()
        proxy.close()
        wait_for(lambda: migration_status('src') in ('completed', 'failed', 'cancelled'), 60)
        status = migration_status('src')
        check(status == 'failed', f'{what}: the source sees the migration fail', status)
        back = wait_for(lambda: watch.owns(s_tpm.pid), 30)
        check(back, f"{what}: the source's nvtpm takes its image back (QEMU's LOCK_STORAGE)",
              diagnostics('src'))
        check('running' in hmp('src', 'info status'), f'{what}: the source VM runs again')
        resume_guest('src')
        ok = wait_for(lambda: said('src', 'NVREAD2', after='NVTPM-RESUMED') is not None, 60)
        check(ok and said('src', 'NVREAD', after='NVTPM-RESUMED') == 'vm-migr8' and
              said('src', 'PCR8', after='NVTPM-RESUMED') == pcr8,
              f'{what}: the source guest reads its NV data and PCR 8 as before', diagnostics('src'))
        check(said('src', 'NVWRITE2', after='NVTPM-RESUMED') == 'ok' and
              said('src', 'NVREAD2', after='NVTPM-RESUMED') == 'after-kill',
              f'{what}: and keeps writing NV (a new index, written and read back)',
              diagnostics('src'))
        wait_for(lambda: said('src', 'WAIT', after='NVTPM-RESUMED') is not None, 30)
        resume_guest('src')  # one more NMI: the source alone writes 0x1500018
        ok = wait_for(lambda: said('src', 'NVWRITE3') is not None, 60)
        check(ok and said('src', 'NVWRITE3') == 'ok', f'{what}: the source writes one more index',
              diagnostics('src'))
        wait_for(lambda: src.poll() is not None, 60)
        wait_for(lambda: s_tpm.poll() is not None, 30)
        check(s_tpm.returncode == 0, f'{what}: the source TPM stops with its QEMU, status 0',
              diagnostics('src'))
        timeline = watch.stop()
        check(not watch.both, f'{what}: at no moment did both servers own (could write) the image',
              f'both at {len(watch.both)} sample(s); timeline {timeline}')
        check(owner_order(timeline)[:3] == ['src', 'dst', 'src'],
              f'{what}: the image went source -> destination -> source', str(timeline))
    finally:
        watch.stop()
        if proxy:
            proxy.close()
        stop(src, dst, s_tpm, d_tpm)
    check(nv_on_image(img, '0x1500017') == 'after-kill',
          f"{what}: what the guest wrote after the resume is on the image", open(f'{T}/reader.log').read())
    check(nv_on_image(img, '0x1500018') == 'src-late',
          f"{what}: and the source's last write, though the destination had committed later "
          f"sequence numbers before it died", open(f'{T}/reader.log').read())
    r = validate(img)
    check(r.returncode == 0, f'{what}: the image validates', r.stdout + r.stderr)
    clean_run_files()


def validate(img, *args):
    return subprocess.run([NVTPM, 'validate', img, *args], capture_output=True, text=True)


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()

def seed_case(what, dst_img, key_args, want):
    """The seed's case: the destination's nvtpm cannot load its image (a
    wrong or missing key, a corrupt image). The dry run says so, the server
    exits at start with that code, the destination QEMU cannot start, the
    migration fails, the source VM keeps a working TPM, and the destination's
    image is unchanged."""
    r = validate(dst_img, *key_args)
    check(r.returncode == want, f'{what}: the dry run on the destination says exit {want}',
          r.stdout + r.stderr)
    before = sha(dst_img)
    s_tpm, s_ctrl = start_tpm('nvtpm', 'src', f'{T}/d-src.qcow2')
    d_tpm, d_ctrl = start_tpm('nvtpm', 'dst', dst_img, key_args, refused=True)
    d_tpm.wait(timeout=30)
    check(d_tpm.returncode == want, f"{what}: the destination's nvtpm exits {want} at start",
          diagnostics('dst'))
    src = start_qemu('src', s_ctrl)
    dst = start_qemu('dst', d_ctrl, incoming=f'{T}/dst.mig')
    try:
        dst.wait(timeout=60)
        check(dst.returncode != 0, f'{what}: so the destination QEMU cannot start',
              open(f'{T}/dst.qemu.err').read())
        pcr8 = source_ready('src', what)
        try:
            status = migrate('src', 'dst', what)
        except OSError as e:
            status = f'refused ({e})'
        check(status != 'completed', f"{what}: the source's migration does not complete", status)
        resume_guest('src')
        ok = wait_for(lambda: said('src', 'PCR8', after='NVTPM-RESUMED') is not None, 60)
        check(ok and said('src', 'NVREAD', after='NVTPM-RESUMED') == 'vm-migr8' and
              said('src', 'PCR8', after='NVTPM-RESUMED') == pcr8,
              f'{what}: the source VM keeps running with a working TPM (NV and PCR 8 as before)',
              diagnostics('src'))
    finally:
        stop(src, dst, s_tpm)
    check(sha(dst_img) == before, f"{what}: the destination's image is unchanged")
    os.unlink(f'{T}/d-src.qcow2')
    clean_run_files()


def clean_run_files():
    """The sockets and consoles of one run, so that the next starts afresh."""
    for n in ('src', 'dst', 'proxy'):
        for suffix in ('console', 'monitor', 'mig', 'ctrl'):
            try:
                os.unlink(f'{T}/{n}.{suffix}')
            except FileNotFoundError:
                pass


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    made = subprocess.run([os.path.join(here, 'make-guest.sh'), GUEST], capture_output=True,
                          text=True)
    check(made.returncode == 0, 'the guest (make-guest.sh)', made.stderr)
    # 1. each side its own image (no shared storage)
    live('own images', 'nvtpm', 'nvtpm', f'{T}/a-src.qcow2', f'{T}/a-dst.qcow2')
    r = validate(f'{T}/a-dst.qcow2')
    check(r.returncode == 0, 'the destination image holds the migrated state and validates',
          r.stdout + r.stderr)

    # 2. shared storage: one image, the lock handed over
    live('shared storage', 'nvtpm', 'nvtpm', f'{T}/shared.qcow2', f'{T}/shared.qcow2',
         src_extra=('--migration', 'release-lock-outgoing'), dst_extra=('--migration', 'incoming'))
    r = validate(f'{T}/shared.qcow2')
    check(r.returncode == 0, 'shared storage: the image validates afterwards', r.stdout + r.stderr)
    shared_storage_failure()

    # 3. swtpm -> nvtpm and nvtpm -> swtpm: swtpm's blob format on the wire
    live('swtpm to nvtpm', 'swtpm', 'nvtpm', f'{T}/sw-src', f'{T}/c-dst.qcow2')
    live('nvtpm to swtpm', 'nvtpm', 'swtpm', f'{T}/c-src.qcow2', f'{T}/sw-dst')

    # 4. the seed's case: the destination cannot load the state
    pw, wrong = f'{T}/pw', f'{T}/pw-wrong'
    open(pw, 'w').write('destination key\n')
    open(wrong, 'w').write('not the key\n')
    enc, bad = f'{T}/enc-dst.qcow2', f'{T}/bad-dst.qcow2'
    subprocess.run([NVTPM, 'create', enc, '--key', f'pwdfile={pw}'], check=True, capture_output=True)
    subprocess.run([NVTPM, 'create', bad], check=True, capture_output=True)
    subprocess.run(['qemu-io', '-c', 'write -P 0x5a 0 8k', bad], check=True, capture_output=True)
    seed_case('wrong key', enc, ('--key', f'pwdfile={wrong}'), 5)
    seed_case('missing key', enc, (), 4)
    seed_case('corrupt image (both superblocks)', bad, (), 2)
    finish()


if __name__ == '__main__':
    main()
