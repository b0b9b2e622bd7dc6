#!/usr/bin/env bash
# make-qcow2-corpus.sh - (re)create the seed corpus of the qcow2 fuzz target
# in tests/fuzz/corpus/qcow2 with qemu-img and qemu-io: small images (512-byte
# clusters) of each kind the driver reads. The result is committed.
set -eu
out=$(cd "$(dirname "$0")" && pwd)/corpus/qcow2
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
rm -rf "$out"
mkdir -p "$out"
cp "$tmp"/*.qcow2 "$out/"
ls -l "$out"
