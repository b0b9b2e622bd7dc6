#!/usr/bin/env bash
# make-nvram-corpus.sh - (re)create the seed corpus of the nvram fuzz target:
# real superblocks (plain, encrypted with a raw key and with a passphrase)
# each followed by a real slot, cut from images nvtpm made, and the same
# truncated: inside the superblock, inside the slot's header, inside its
# payload. Needs a build in build/. The result is committed.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
NVTPM=$top/build/cli/nvtpm IO=$top/build/tests/tools/nvram-io
out=$top/tests/fuzz/corpus/nvram
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 32 /dev/urandom | xxd -p -c 64 >"$tmp/k"
printf 'pass' >"$tmp/pw"
cut() { # IMG SLOT_OFFSET SLOT_BYTES NAME
    qemu-img convert -O raw "$1" "$tmp/raw"
    python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); o = int(sys.argv[2]); n = int(sys.argv[3])
open(sys.argv[4], 'wb').write(d[:4096] + d[o:o + n])" "$tmp/raw" "$2" "$3" "$out/$4"
}
rm -rf "$out"
mkdir -p "$out"
"$NVTPM" create "$tmp/p.qcow2" >/dev/null
"$IO" -c 'store permall -P 0x11 300' -c 'store volatilestate -P 0x22 40' "$tmp/p.qcow2"
cut "$tmp/p.qcow2" 65536 4396 plain-permall
cut "$tmp/p.qcow2" $((1216 * 1024)) 4136 plain-volatile
cut "$tmp/p.qcow2" $((640 * 1024)) 4096 plain-deleted-marker
"$NVTPM" create --key "file=$tmp/k" "$tmp/e.qcow2" >/dev/null
"$IO" --key "file=$tmp/k" -c 'store permall -P 0x33 200' "$tmp/e.qcow2"
cut "$tmp/e.qcow2" 65536 4296 encrypted-permall
"$NVTPM" create --key "pwdfile=$tmp/pw,iterations=1000" "$tmp/w.qcow2" >/dev/null
cut "$tmp/w.qcow2" $((640 * 1024)) 4096 passphrase-marker
for seed in plain-permall encrypted-permall; do
    head -c 2000 "$out/$seed" >"$out/truncated-super-$seed"
    head -c $((4096 + 60)) "$out/$seed" >"$out/truncated-header-$seed"
    head -c $((4096 + 4096 + 150)) "$out/$seed" >"$out/truncated-payload-$seed"
done
ls -l "$out"
