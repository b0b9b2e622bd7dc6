#!/usr/bin/env bash
# make-qcow2-corpus.sh - (re)create the seed corpus of the qcow2 fuzz target
# in tests/fuzz/corpus/qcow2 with qemu-img and qemu-io: small images (512-byte
# clusters) of each kind the driver reads, and truncated ones, cut inside
# each structure a cut can hit (the header, the L1 table, the refcount table,
# a refcount block, an L2 table, a data cluster; and an nvtpm image inside a
# blob slot, which needs a build in build/). The seeds (*.qcow2) are made
# anew; what fuzzing found (named by hash) stays. The result is committed.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
out=$top/tests/fuzz/corpus/qcow2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mk() { qemu-img create -q -f qcow2 -o "cluster_size=512,$1" "$tmp/$2" 64k; }
mk compat=1.1 v3-empty.qcow2
mk compat=0.10 v2-empty.qcow2
mk compat=1.1 v3-data.qcow2
qemu-io -c 'write -P 0x11 0 2k' -c 'write -P 0x22 40k 1k' -c 'write -z 8k 1k' "$tmp/v3-data.qcow2" >/dev/null
mk compat=0.10 v2-data.qcow2
qemu-io -c 'write -P 0x33 1k 3k' "$tmp/v2-data.qcow2" >/dev/null
mk compat=1.1,refcount_bits=1 refcount1.qcow2
qemu-io -c 'write -P 0x44 0 1k' "$tmp/refcount1.qcow2" >/dev/null
mk compat=1.1,refcount_bits=64 refcount64.qcow2
qemu-io -c 'write -P 0x55 0 1k' "$tmp/refcount64.qcow2" >/dev/null
cp "$tmp/v3-data.qcow2" "$tmp/snapshot.qcow2"
qemu-img snapshot -c s1 "$tmp/snapshot.qcow2"
qemu-io -c 'write -P 0x66 0 1k' "$tmp/snapshot.qcow2" >/dev/null
for c in zlib zstd; do
    qemu-img convert -c -O qcow2 -o "cluster_size=512,compression_type=$c" "$tmp/v3-data.qcow2" "$tmp/compressed-$c.qcow2"
done
mk compat=1.1 bitmap.qcow2
qemu-img bitmap --add "$tmp/bitmap.qcow2" b0
qemu-io -c 'write -P 0x77 0 4k' "$tmp/bitmap.qcow2" >/dev/null # a bitmap data cluster
# truncate_in IMG WHERE NAME: a copy of IMG cut a few bytes into WHERE
# (header, l1, reftable, refblock, l2, data), found through the header.
truncate_in() {
    python3 - "$@" <<'PY'
import struct, sys
src, where, dst = sys.argv[1:4]
d = open(src, 'rb').read()
be64 = lambda o: struct.unpack('>Q', d[o:o + 8])[0]
be32 = lambda o: struct.unpack('>I', d[o:o + 4])[0]
l1, reftable = be64(40), be64(48)
mask = 0x00fffffffffffe00
refblock = be64(reftable) & mask
l2 = be64(l1) & mask
# the data cluster furthest into the file, so that every table lies before the cut
data = max(be64(t + 8 * i) & mask for t in (be64(l1 + 8 * j) & mask for j in range(be32(36)))
           if t for i in range(64))
cut = {'header': 50, 'l1': l1 + 4, 'reftable': reftable + 4, 'refblock': refblock + 100,
       'l2': l2 + 100, 'data': data + 100}[where]
open(dst, 'wb').write(d[:cut])
PY
}
for w in header l1 reftable refblock l2 data; do
    truncate_in "$tmp/v3-data.qcow2" $w "$tmp/truncated-$w.qcow2"
done
# An NVRAM image cut inside permall's slot A, past its header (8 KiB
# clusters: one L2 table, before the data, so the cut reaches the reads).
"$top/build/cli/nvtpm" create --cluster-size 8192 "$tmp/nvram.qcow2" >/dev/null
"$top/build/tests/tools/nvram-io" -c 'store permall -P 0x77 300' "$tmp/nvram.qcow2"
host=$(qemu-img map --output=json "$tmp/nvram.qcow2" | python3 -c '
import json, sys
g = 65536 + 4096
print(next(m["offset"] + g - m["start"] for m in json.load(sys.stdin)
           if m["start"] <= g < m["start"] + m["length"] and m.get("offset") is not None))')
head -c $((host + 100)) "$tmp/nvram.qcow2" >"$tmp/truncated-slot.qcow2"
rm "$tmp/nvram.qcow2"
mkdir -p "$out"
rm -f "$out"/*.qcow2
cp "$tmp"/*.qcow2 "$out/"
ls -l "$out"
