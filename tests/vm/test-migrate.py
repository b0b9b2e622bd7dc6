#!/usr/bin/env python3
"""test-migrate.py - live migration of a VM with its vTPM, through two real
QEMUs (TCG): the guest (tests/vm/guest-init, mode migrate) writes an NV index
and extends PCR 8 on the source, the VM migrates, and the guest, resumed on
the destination, reads the same NV data and PCR 8. Cases: each side with its
own image; one image on shared storage with the lock hand-off; the seed's
case (the destination's nvtpm has a wrong key: it fails at start, the
migration fails, the source VM keeps its working TPM, the image is
unchanged); a VM on swtpm migrating to nvtpm, and one on nvtpm to swtpm.

Usage: test-migrate.py NVTPM GUEST_DIR"""
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish  # noqa: E402

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


def start_tpm(kind, name, img, extra=()):
    sock = f'{T}/{name}.ctrl'
    if kind == 'swtpm':
        os.makedirs(img, exist_ok=True)
        argv = ['swtpm', 'socket', '--tpm2', '--tpmstate', f'dir={img}']
    else:
        argv = [NVTPM, 'socket', '--tpm2', '--tpmstate', f'file={img}']
    log = open(f'{T}/{name}.tpm.log', 'w')
    p = subprocess.Popen(argv + ['--ctrl', f'type=unixio,path={sock}'] + list(extra),
                         stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 10)
    return p, sock


def start_qemu(name, ctrl, incoming=None):
    argv = ['qemu-system-x86_64', '-accel', 'tcg', '-m', '512', '-nodefaults', '-display', 'none',
            '-kernel', f'{GUEST}/vmlinuz', '-initrd', f'{GUEST}/initrd.gz', '-append', KERNEL_ARGS,
            '-serial', f'file:{T}/{name}.console',
            '-serial', f'unix:{T}/{name}.ttyS1,server=on,wait=off',
            '-monitor', f'unix:{T}/{name}.monitor,server=on,wait=off',
            '-chardev', f'socket,id=chrtpm,path={ctrl}',
            '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0']
    if incoming:
        argv += ['-incoming', f'unix:{incoming}']
    err = open(f'{T}/{name}.qemu.err', 'w')
    env = {k: v for k, v in os.environ.items() if k != 'MALLOC_PERTURB_'}  # see test-vm.sh
    p = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: os.path.exists(f'{T}/{name}.monitor') or p.poll() is not None, 10)
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
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(f'{T}/{name}.ttyS1')
    s.sendall(b'go\n')
    s.close()


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
    finally:
        stop(src, dst, s_tpm, d_tpm)
    for n in ('src', 'dst'):
        for suffix in ('console', 'ttyS1', 'monitor', 'mig', 'ctrl'):
            try:
                os.unlink(f'{T}/{n}.{suffix}')
            except FileNotFoundError:
                pass


def validate(img, *args):
    return subprocess.run([NVTPM, 'validate', img, *args], capture_output=True, text=True)


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


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

    # 3. swtpm -> nvtpm and nvtpm -> swtpm: swtpm's blob format on the wire
    live('swtpm to nvtpm', 'swtpm', 'nvtpm', f'{T}/sw-src', f'{T}/c-dst.qcow2')
    live('nvtpm to swtpm', 'nvtpm', 'swtpm', f'{T}/c-src.qcow2', f'{T}/sw-dst')

    # 4. the seed's case: the destination's key is wrong
    pw, wrong = f'{T}/pw', f'{T}/pw-wrong'
    open(pw, 'w').write('destination key\n')
    open(wrong, 'w').write('not the key\n')
    dst_img = f'{T}/enc-dst.qcow2'
    subprocess.run([NVTPM, 'create', dst_img, '--key', f'pwdfile={pw}'], check=True,
                   capture_output=True)
    r = validate(dst_img, '--key', f'pwdfile={wrong}')
    check(r.returncode == 5, 'the dry run on the destination says: key wrong (exit 5)',
          r.stdout + r.stderr)
    before = sha(dst_img)
    s_tpm, s_ctrl = start_tpm('nvtpm', 'src', f'{T}/d-src.qcow2')
    d_tpm, d_ctrl = start_tpm('nvtpm', 'dst', dst_img, ('--key', f'pwdfile={wrong}'))
    d_tpm.wait(timeout=30)
    check(d_tpm.returncode == 5, "a wrong key: the destination's nvtpm exits 5 at start",
          diagnostics('dst'))
    src = start_qemu('src', s_ctrl)
    dst = start_qemu('dst', d_ctrl, incoming=f'{T}/dst.mig')
    try:
        dst.wait(timeout=60)
        check(dst.returncode != 0, 'so the destination QEMU cannot start',
              open(f'{T}/dst.qemu.err').read())
        pcr8 = source_ready('src', 'wrong key')
        try:
            status = migrate('src', 'dst', 'wrong key')
        except OSError as e:
            status = f'refused ({e})'
        check(status != 'completed', "the source's migration does not complete", status)
        resume_guest('src')
        ok = wait_for(lambda: said('src', 'PCR8', after='NVTPM-RESUMED') is not None, 60)
        check(ok and said('src', 'NVREAD', after='NVTPM-RESUMED') == 'vm-migr8' and
              said('src', 'PCR8', after='NVTPM-RESUMED') == pcr8,
              'the source VM keeps running with a working TPM (NV and PCR 8 as before)',
              diagnostics('src'))
    finally:
        stop(src, dst, s_tpm)
    check(sha(dst_img) == before, "the destination's image is unchanged")
    finish()


if __name__ == '__main__':
    main()
