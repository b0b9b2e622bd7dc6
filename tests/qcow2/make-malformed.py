#!/usr/bin/env python3
"""make-malformed.py - one broken qcow2 image per defence of the driver.

Usage: make-malformed.py TEMPLATE OUTDIR
TEMPLATE is a fresh `qemu-img create -f qcow2 -o cluster_size=4096` image of
1 MiB with data written at offset 0 (so that it has an L2 table). Writes
OUTDIR/NAME.qcow2 for each case and OUTDIR/cases.txt with lines
"NAME<TAB>WHEN<TAB>PATTERN": WHEN is 'open' (the open must fail) or 'read'
(the open succeeds, reading offset 0 must fail) or 'write' (the open and a
read succeed, a write at offset 0 must fail), PATTERN a regular expression
the error message must match."""
import os
import struct
import sys

template, outdir = sys.argv[1], sys.argv[2]
base = bytearray(open(template, 'rb').read())
CS = 4096


def be(fmt, off, data=None):
    if data is None:
        return struct.unpack_from('>' + fmt, base, off)[0]
    return data


L1 = be('Q', 40)
RT = be('Q', 48)
L2 = be('Q', L1) & 0x00fffffffffffe00
cases = []


def case(name, when, pattern, edits):
    img = bytearray(base)
    for off, fmt, value in edits:
        if fmt == 'cut':
            del img[off:]
        elif fmt == 'raw':
            img[off:off + len(value)] = value
        else:
            struct.pack_into('>' + fmt, img, off, value)
    with open(os.path.join(outdir, name + '.qcow2'), 'wb') as f:
        f.write(img)
    cases.append((name, when, pattern))


case('too-short', 'open', 'shorter than a header', [(40, 'cut', None)])
case('bad-magic', 'open', 'bad magic', [(0, 'I', 0x514649fa)])
case('version-4', 'open', 'version 4 is not supported', [(4, 'I', 4)])
case('cluster-bits-8', 'open', 'cluster_bits 8 is outside', [(20, 'I', 8)])
case('cluster-bits-22', 'open', 'cluster_bits 22 is outside', [(20, 'I', 22)])
case('header-length-small', 'open', 'header_length 100', [(100, 'I', 100)])
case('header-length-large', 'open', 'header_length 8192', [(100, 'I', 8192)])
case('refcount-order-7', 'open', 'refcount_order 7', [(96, 'I', 7)])
case('crypt-method', 'open', 'encrypted qcow2', [(32, 'I', 1)])
case('unknown-incompatible', 'open', 'unknown incompatible features', [(72, 'Q', 1 << 40)])
case('data-file-bit', 'open', 'external data file', [(72, 'Q', 1 << 2)])
case('extended-l2-bit', 'open', 'extended L2', [(72, 'Q', 1 << 4)])
case('compression-type-2', 'open', 'compression type 2',
     [(72, 'Q', 1 << 3), (104, 'raw', b'\x02')])
case('compression-bit-mismatch', 'open', 'disagrees', [(104, 'raw', b'\x01')])
case('absurd-size', 'open', 'virtual size .* is absurd', [(24, 'Q', 1 << 63)])
case('l1-too-small', 'open', 'l1_size 0 is too small', [(36, 'I', 0)])
case('l1-size-huge', 'open', 'l1_size .* is too large', [(36, 'I', 0x10000000)])
case('l1-unaligned', 'open', 'L1 table offset .* not aligned', [(40, 'Q', L1 + 8)])
case('l1-at-zero', 'open', 'L1 table offset is 0', [(40, 'Q', 0)])
case('l1-past-eof', 'open', 'L1 table .* past the end', [(40, 'Q', 1 << 40)])
case('l1-overflow', 'open', 'L1 table .* past the end', [(40, 'Q', 0xfffffffffffff000)])
case('reftable-zero-clusters', 'open', 'refcount_table_clusters is 0', [(56, 'I', 0)])
case('reftable-huge', 'open', 'refcount table of .* too large', [(56, 'I', 0x100000)])
case('reftable-unaligned', 'open', 'refcount table offset .* not aligned', [(48, 'Q', RT + 512)])
case('reftable-past-eof', 'open', 'refcount table .* past the end', [(48, 'Q', 1 << 30)])
case('l1-overlaps-reftable', 'open', 'overlap', [(40, 'Q', RT)])
case('snapshots-too-many', 'open', 'snapshots is too many', [(60, 'I', 0x7fffffff)])
case('snapshots-past-eof', 'open', 'snapshot table .* past the end',
     [(60, 'I', 1), (64, 'Q', 1 << 30)])
case('backing-name-huge', 'open', 'backing file name', [(8, 'Q', 512), (16, 'I', 2000)])
case('backing-name-outside', 'open', 'backing file name', [(8, 'Q', 1 << 20), (16, 'I', 10)])
case('backing-protocol', 'open', 'not a plain file name',
     [(8, 'Q', 2048), (16, 'I', 13), (2048, 'raw', b'nbd:evil:1234')])
case('extension-overrun', 'open', 'header extension .* overruns',
     [(112, 'I', 0x12345678), (116, 'I', 0x7fffffff)])
case('l1-entry-reserved', 'open', 'L1 entry 0 has reserved bits', [(L1, 'Q', L2 | 1)])
case('l1-entry-past-eof', 'open', 'L1 entry 0: offset .* outside the file',
     [(L1, 'Q', (1 << 40) | (1 << 63))])
case('reftable-entry-unaligned', 'open', 'refcount table entry 0: offset .* not cluster aligned',
     [(RT, 'Q', be('Q', RT) + 1024)])
case('l2-entry-reserved', 'read', 'L2 entry .* malformed', [(L2, 'Q', be('Q', L2) | 0x02)])
case('l2-entry-unaligned', 'read', 'L2 entry .* malformed', [(L2, 'Q', be('Q', L2) + 512)])
case('compressed-past-eof', 'read', 'compressed L2 entry .* malformed',
     [(L2, 'Q', (1 << 62) | (3 << 52) | (CS * 3 + 17))])
case('compressed-garbage', 'read', 'does not decompress', [(L2, 'Q', (1 << 62) | (CS * 2 + 17))])
case('l2-entry-at-refblock', 'write', 'points at metadata',
     [(L2, 'Q', (be('Q', RT) & ~0x1ff) | (1 << 63))])
case('l2-entry-at-l1', 'write', 'points at metadata', [(L2, 'Q', L1 | (1 << 63))])
case('l1-entry-at-refblock', 'open', 'overlaps', [(L1, 'Q', be('Q', RT) | (1 << 63))])
case('l1-entry-at-l1', 'open', 'overlaps', [(L1, 'Q', L1 | (1 << 63))])
case('l1-entry-at-reftable', 'open', 'overlaps', [(L1, 'Q', RT | (1 << 63))])
case('refblock-at-l2', 'open', 'overlaps', [(RT, 'Q', L2)])
case('corrupt-bit', 'open', 'marked corrupt', [(72, 'Q', 1 << 1)])
case('dirty-bit', 'open', 'marked dirty', [(72, 'Q', 1 << 0)])

with open(os.path.join(outdir, 'cases.txt'), 'w') as f:
    for name, when, pattern in cases:
        f.write(f'{name}\t{when}\t{pattern}\n')
print(len(cases))
