#!/usr/bin/env python3
"""listen-exec.py - run a server on listening sockets the test made first.

    listen-exec.py [--ready FIFO] SOCKET... -- COMMAND [ARGS...]

Each SOCKET (tcp:PORT on 127.0.0.1, or unix:PATH) is bound and listening
before COMMAND starts; the first becomes descriptor 3 of COMMAND, the next 4,
and so on (COMMAND's arguments name them: --server type=tcp,fd=3). A client
may connect as soon as this program has exec'd: the kernel queues the
connection until the server accepts it, so no test waits for a server to come
up or guesses how long that takes (seed 004: sockets passed in at start-up).
The process is COMMAND itself (exec), so its pid and exit status are the
server's. Started in the background by a shell, it says through FIFO (one
line, "listening" or the error) when the sockets exist: the shell reads it."""
import os
import socket
import sys


def listener(spec):
    kind, _, where = spec.partition(':')
    if kind == 'tcp':
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', int(where)))
    elif kind == 'unix':
        if os.path.exists(where):
            os.unlink(where)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where)
    else:
        sys.exit(f'listen-exec: {spec}: tcp:PORT or unix:PATH')
    s.listen(16)
    return s


def main():
    if '--' not in sys.argv[1:]:
        sys.exit(__doc__)
    cut = sys.argv.index('--')
    specs, command = sys.argv[1:cut], sys.argv[cut + 1:]
    ready = None
    if specs[:1] == ['--ready']:
        ready, specs = specs[1], specs[2:]
    if not command:
        sys.exit(__doc__)
    try:
        socks = [listener(s) for s in specs]
        said = 'listening'
    except OSError as e:
        said = f'listen-exec: {e}'
    if ready:
        with open(ready, 'w') as f:  # the reader's open returns once this one does
            f.write(said + '\n')
    if said != 'listening':
        sys.exit(said)
    # Out of the way first, so that placing one never closes another.
    high = [os.dup(s.fileno()) for s in socks]
    for s in socks:
        s.close()
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
    for fd in high:
        if fd >= 3 + len(high):
            os.close(fd)
    os.execvp(command[0], command)


main()
