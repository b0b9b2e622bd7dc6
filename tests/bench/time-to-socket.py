#!/usr/bin/env python3
"""time-to-socket.py - how soon a TPM server started as libvirt starts it can
be used: the time from exec to its UNIX control socket existing (libvirt waits
1 s for that file), and to the first control answer (GET_CAPABILITY; a
connection refused because the socket is not listening yet is retried). The
command is given with --ctrl left out; it is added here. Prints the medians
of ROUNDS starts in milliseconds: "SOCKET_MS ANSWER_MS".

Usage: time-to-socket.py ROUNDS COMMAND..."""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

rounds, argv = int(sys.argv[1]), sys.argv[2:]
to_socket, to_answer = [], []
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'ctrl')
    for _ in range(rounds):
        start = time.monotonic()
        proc = subprocess.Popen(argv + ['--ctrl', 'type=unixio,path=' + path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() - start > 30:
                sys.exit('the server did not make its socket: ' + ' '.join(argv))
            time.sleep(0.0005)
        to_socket.append(time.monotonic() - start)
        while True:  # swtpm binds before it listens: a moment of "refused"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            try:
                s.connect(path)
                break
            except ConnectionRefusedError:
                s.close()
                if time.monotonic() - start > 30:
                    raise
                time.sleep(0.0005)
        s.sendall(bytes.fromhex('00000001'))
        if len(s.recv(64)) != 8:
            sys.exit('no GET_CAPABILITY answer: ' + ' '.join(argv))
        to_answer.append(time.monotonic() - start)
        s.close()
        proc.terminate()
        proc.wait()
print(f'{statistics.median(to_socket) * 1000:.1f} {statistics.median(to_answer) * 1000:.1f}')
