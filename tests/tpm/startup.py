#!/usr/bin/env python3
"""startup.py - as QEMU and the firmware start a VM's TPM: CMD_INIT with
flags 0 on the control channel, then TPM2_Startup(CLEAR) on the data channel.
Prints the two results in hex, "INIT STARTUP" (a cold boot: "0 0").

Usage: startup.py unix:CTRL_PATH|tcp:CTRL_PORT DATA_PORT"""
import socket
import struct
import sys

sys.dont_write_bytecode = True


def control(where, request):
    kind, _, addr = where.partition(':')
    if kind == 'unix':
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(addr)
    else:
        s = socket.create_connection(('127.0.0.1', int(addr)), timeout=30)
    with s:
        s.sendall(request)
        return s.recv(64)


def command(port, cmd):
    with socket.create_connection(('127.0.0.1', port), timeout=30) as s:
        s.sendall(cmd)
        rsp = b''
        while len(rsp) < 10 or len(rsp) < struct.unpack('>I', rsp[2:6])[0]:
            more = s.recv(4096)
            if not more:
                break
            rsp += more
        return rsp


init = control(sys.argv[1], bytes.fromhex('0000000200000000'))
rsp = command(int(sys.argv[2]), bytes.fromhex('80010000000c000001440000'))
print(f'{struct.unpack(">I", init[:4])[0]:x} {struct.unpack(">I", rsp[6:10])[0]:x}')
