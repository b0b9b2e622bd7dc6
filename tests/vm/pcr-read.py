#!/usr/bin/env python3
"""pcr-read.py - read one SHA-256 PCR over nvtpm's raw data channel (TCP), a
second channel beside the one QEMU used. Prints the value in hex.

Usage: pcr-read.py PORT PCR"""
import socket
import struct
import sys


def pcr_read(port, pcr):
    select = bytearray(3)
    select[pcr // 8] |= 1 << (pcr % 8)
    body = struct.pack('>IHB', 1, 0x000B, 3) + bytes(select)  # one bank: SHA-256
    cmd = struct.pack('>HII', 0x8001, 10 + len(body), 0x0000017E) + body  # TPM2_PCR_Read
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(cmd)
        rsp = b''
        while len(rsp) < 10 or len(rsp) < struct.unpack('>I', rsp[2:6])[0]:
            more = s.recv(4096)
            if not more:
                break
            rsp += more
    tag, size, rc = struct.unpack('>HII', rsp[:10])
    if rc != 0:
        sys.exit(f'TPM2_PCR_Read: response code 0x{rc:x}')
    # updateCounter(4) TPML_PCR_SELECTION(4 + 6) TPML_DIGEST: count(4) size(2) digest
    off = 10 + 4 + 4 + 6
    count, = struct.unpack('>I', rsp[off:off + 4])
    if count != 1:
        sys.exit(f'TPM2_PCR_Read: {count} digests')
    dsize, = struct.unpack('>H', rsp[off + 4:off + 6])
    return rsp[off + 6:off + 6 + dsize].hex()


if __name__ == '__main__':
    print(pcr_read(int(sys.argv[1]), int(sys.argv[2])))
