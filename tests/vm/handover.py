#!/usr/bin/env python3
"""handover.py - the management side of seed 004: create the control socket,
hand it to nvtpm as a descriptor, and start QEMU at once, with no wait for
nvtpm to be ready and no retry loop.

  listen: a listening UNIX socket at PATH, given to nvtpm as
          --ctrl type=unixio,fd=N; QEMU connects to PATH once.
  pair:   a connected socket pair, one end given to nvtpm as
          --ctrl type=unixio,clientfd=N, the other to QEMU as
          -chardev socket,id=chrtpm,fd=M.

Usage: handover.py listen|pair PATH NVTPM-ARGS... -- QEMU-ARGS...
(nvtpm's --ctrl and QEMU's -chardev for the TPM are added here). Waits for
QEMU, then for nvtpm; prints "qemu=RC nvtpm=RC"."""
import os
import socket
import subprocess
import sys


def main():
    mode, path = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    split = rest.index('--')
    nvtpm_args, qemu_args = rest[:split], rest[split + 1:]
    if mode == 'listen':
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(1)
        nv_fd, qemu_fd = s.detach(), None
        nv_ctrl = f'type=unixio,fd={nv_fd}'
        chardev = f'socket,id=chrtpm,path={path}'
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        nv_fd, qemu_fd = a.detach(), b.detach()
        nv_ctrl = f'type=unixio,clientfd={nv_fd}'
        chardev = f'socket,id=chrtpm,fd={qemu_fd}'
    nvtpm = subprocess.Popen(nvtpm_args + ['--ctrl', nv_ctrl], pass_fds=[nv_fd])
    qemu = subprocess.Popen(qemu_args + ['-chardev', chardev],
                            pass_fds=[qemu_fd] if qemu_fd is not None else [])
    os.close(nv_fd)
    if qemu_fd is not None:
        os.close(qemu_fd)
    q = qemu.wait()
    try:
        n = nvtpm.wait(timeout=30)
    except subprocess.TimeoutExpired:
        nvtpm.kill()
        n = 'hung'
    print(f'qemu={q} nvtpm={n}')


if __name__ == '__main__':
    main()
