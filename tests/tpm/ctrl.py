#!/usr/bin/env python3
"""ctrl.py - a raw client for swtpm's control channel, for tests: sends one
request per connection (or several on one) and prints the response in hex.

Usage: ctrl.py unix:PATH|tcp:PORT HEX [HEX ...]
Each HEX is a whole request (command code and body); the response of each is
printed on its own line."""
import socket
import sys


def connect(where):
    kind, _, addr = where.partition(':')
    if kind == 'unix':
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
    else:
        s = socket.create_connection(('127.0.0.1', int(addr)))
    s.settimeout(10)
    return s


def exchange(s, request):
    s.sendall(request)
    data = b''
    try:
        data = s.recv(1 << 20)
        s.settimeout(0.2)
        while True:
            more = s.recv(1 << 20)
            if not more:
                break
            data += more
    except (socket.timeout, ConnectionResetError):
        pass
    s.settimeout(10)
    return data


def main():
    s = connect(sys.argv[1])
    for h in sys.argv[2:]:
        print(exchange(s, bytes.fromhex(h)).hex())
    s.close()


if __name__ == '__main__':
    main()
