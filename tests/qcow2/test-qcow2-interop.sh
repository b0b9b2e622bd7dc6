#!/usr/bin/env bash
# test-qcow2-interop.sh - nvtpm's qcow2 driver against Debian's qemu-img and
# qemu-io: data both ways on v2 and v3 images of several cluster sizes and
# refcount widths, images nvtpm creates, seeded random workloads compared with
# a raw reference, internal snapshots, compressed images, resize, and the
# images nvtpm must refuse, untouched.
# Usage: test-qcow2-interop.sh BUILD_TOOLS_DIR
set -u
. "$(dirname "$0")/../lib.sh"
TOOLS=$1
IO=$TOOLS/nvtpm-io
require qemu-img qemu-io md5sum python3
T=$TEST_TMP

qio() { qemu-io "$@" >"$T/qio.out" 2>&1 && ! grep -q "failed\|verification" "$T/qio.out"; }
clean() { qemu-img check -q "$1" >"$T/check.out" 2>&1; }

# --- data both ways -------------------------------------------------------------
for compat in 0.10 1.1; do
    for cs in 512 4096 65536 2097152; do
        img=$T/x-$compat-$cs.qcow2
        qemu-img create -q -f qcow2 -o "compat=$compat,cluster_size=$cs" "$img" 16M
        name="compat $compat, cluster $cs"
        "$IO" -c 'write -P 0x5a 0 4k' -c 'write -P 0x6b 70000 200000' -c 'write -P 0x7c 15M 1M' \
            -c flush "$img" >/dev/null 2>"$T/err" && pass "$name: nvtpm writes" || fail "$name: nvtpm writes" "$(cat "$T/err")"
        qio -c 'read -P 0x5a 0 4k' -c 'read -P 0x6b 70000 200000' -c 'read -P 0 4k 65904' \
            -c 'read -P 0x7c 15M 1M' "$img" && pass "$name: qemu-io reads nvtpm's patterns" \
            || fail "$name: qemu-io reads nvtpm's patterns" "$(cat "$T/qio.out")"
        qio -c 'write -P 0xa1 1M 300k' -c 'write -z 2M 128k' -c 'write -P 0xb2 3000 100' "$img" \
            && pass "$name: qemu-io writes" || fail "$name: qemu-io writes" "$(cat "$T/qio.out")"
        "$IO" -r -c 'read -P 0xa1 1M 300k' -c 'read -P 0 2M 128k' -c 'read -P 0xb2 3000 100' \
            -c 'read -P 0x5a 0 3000' -c 'read -P 0x7c 15M 1M' "$img" >/dev/null 2>"$T/err" \
            && pass "$name: nvtpm reads qemu's patterns" || fail "$name: nvtpm reads qemu's patterns" "$(cat "$T/err")"
        clean "$img" && pass "$name: qemu-img check clean" || fail "$name: qemu-img check clean" "$(cat "$T/check.out")"
    done
done

# --- seeded random workloads against a raw reference -----------------------------
seed=${NVTPM_SEED:-1000}
for spec in "1.1 65536 16" "0.10 65536 16" "1.1 512 16" "1.1 2097152 16" "1.1 4096 1" "1.1 4096 8" \
    "1.1 4096 64"; do
    set -- $spec
    seed=$((seed + 1))
    img=$T/w.qcow2 ref=$T/w.raw name="workload: compat $1, cluster $2, refcount bits $3"
    rm -f "$img" "$ref"
    qemu-img create -q -f qcow2 -o "compat=$1,cluster_size=$2,refcount_bits=$3" "$img" 32M
    truncate -s 32M "$ref"
    "$TOOLS/qcow2-workload" "$img" "$ref" "$seed" 2500 >"$T/wl" 2>&1 \
        && pass "$name, seed $seed: every read matched ($(cat "$T/wl"))" \
        || fail "$name, seed $seed: every read matched" "$(cat "$T/wl")"
    qemu-img compare -q -f raw -F qcow2 "$ref" "$img" && pass "$name: qemu-img compare equal" \
        || fail "$name: qemu-img compare equal"
    clean "$img" && pass "$name: qemu-img check clean" || fail "$name: qemu-img check clean" "$(cat "$T/check.out")"
done

# --- images nvtpm creates ------------------------------------------------------------
for spec in "qcow2:1M" "qcow2:4M:512:2" "qcow2:100M:65536:3" "qcow2:1G:2M:3" "qcow2:300M:512:3" "qcow2:0"; do
    img=$T/created-${spec//:/-}.qcow2
    size=$(echo "$spec" | cut -d: -f2)
    if "$IO" --create "$spec" -c 'write -P 0x42 0 4k' -c flush "$img" >/dev/null 2>"$T/err" \
        || { [ "$size" = 0 ] && "$IO" --create "$spec" -c length "$img.0" >/dev/null 2>"$T/err" && img=$img.0; }; then
        pass "nvtpm creates $spec"
    else
        fail "nvtpm creates $spec" "$(cat "$T/err")"
        continue
    fi
    clean "$img" && pass "$spec: qemu-img check clean" || fail "$spec: qemu-img check clean" "$(cat "$T/check.out")"
    want=$(numfmt --from=iec "$size")
    got=$(qemu-img info --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$got" = "$want" ] && pass "$spec: qemu-img info reads virtual size $want" || fail "$spec: qemu-img info reads virtual size $want" "got $got"
done
expect_exit 1 "nvtpm never overwrites an existing file on create" -- "$IO" --create qcow2:1M -c length "$T/x-1.1-512.qcow2"
expect_output "refusing to overwrite" "the refusal says so"
expect_exit 1 "a bad cluster size is refused" -- "$IO" --create qcow2:1M:1000 -c length "$T/badcs.qcow2"

# --- internal snapshots: copy-on-write ----------------------------------------------
S=$T/snap.qcow2
qemu-img create -q -f qcow2 "$S" 8M
qio -c 'write -P 0xaa 0 3M' "$S"
qemu-img snapshot -c s1 "$S" && clean "$S" && pass "snapshot s1 taken, image clean" || fail "snapshot s1 taken, image clean"
"$IO" -c 'write -P 0xbb 4k 8k' -c 'write -P 0xcc 1M 64k' -c 'write -P 0xdd 5M 64k' -c 'write -z 2M 128k' \
    -c flush "$S" >/dev/null 2>"$T/err" && pass "nvtpm writes over the snapshot" || fail "nvtpm writes over the snapshot" "$(cat "$T/err")"
clean "$S" && pass "clean after nvtpm's copy-on-write" || fail "clean after nvtpm's copy-on-write" "$(cat "$T/check.out")"
"$IO" -r -c 'check' "$S" >/dev/null 2>"$T/err" && pass "nvtpm's check agrees" || fail "nvtpm's check agrees" "$(cat "$T/err")"
qio -c 'read -P 0xbb 4k 8k' -c 'read -P 0xaa 0 4k' -c 'read -P 0xcc 1M 64k' -c 'read -P 0 2M 128k' "$S" \
    && pass "qemu-io sees nvtpm's writes" || fail "qemu-io sees nvtpm's writes" "$(cat "$T/qio.out")"
qemu-img snapshot -c s2 "$S"
"$IO" -c 'write -P 0xee 4k 4k' "$S" >/dev/null && clean "$S" && pass "a second snapshot, more writes, clean" || fail "a second snapshot, more writes, clean"
qemu-img snapshot -a s1 "$S" && clean "$S" && pass "snapshot -a s1, clean" || fail "snapshot -a s1, clean"
qio -c 'read -P 0xaa 0 3M' -c 'read -P 0 3M 5M' "$S" && pass "the content of s1 is back byte for byte" \
    || fail "the content of s1 is back byte for byte" "$(cat "$T/qio.out")"
"$IO" -r -c 'read -P 0xaa 0 3M' "$S" >/dev/null && pass "nvtpm reads s1's content too" || fail "nvtpm reads s1's content too"
qemu-img snapshot -d s2 "$S" && clean "$S" && pass "snapshot -d s2, clean" || fail "snapshot -d s2, clean"

# --- compressed images --------------------------------------------------------------------
for c in zlib zstd; do
    C=$T/c-$c.qcow2
    qemu-img convert -c -O qcow2 -o "compression_type=$c" -l s1 "$S" "$C" 2>/dev/null \
        || qemu-img convert -c -O qcow2 -o "compression_type=$c" "$S" "$C"
    qemu-img info "$C" | grep -q "compression type: $c" && pass "$c: qemu-img convert -c made a $c image" || fail "$c: qemu-img convert -c made a $c image"
    "$IO" -r -c 'read -P 0xaa 0 3M' -c 'read -P 0 3M 5M' "$C" >/dev/null 2>"$T/err" \
        && pass "$c: nvtpm reads the compressed clusters" || fail "$c: nvtpm reads the compressed clusters" "$(cat "$T/err")"
    "$IO" -c 'write -P 0x77 100k 4k' -c flush "$C" >/dev/null 2>&1
    qio -c 'read -P 0xaa 96k 4k' -c 'read -P 0x77 100k 4k' -c 'read -P 0xaa 104k 20k' "$C" \
        && pass "$c: a write into a compressed cluster keeps its neighbours" || fail "$c: a write into a compressed cluster keeps its neighbours" "$(cat "$T/qio.out")"
    clean "$C" && pass "$c: clean after the write" || fail "$c: clean after the write" "$(cat "$T/check.out")"
done

# --- resize -------------------------------------------------------------------------
R=$T/resize.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$R" 1M
expect_exit 0 "nvtpm grows the image (the L1 table moves)" -- "$IO" -c 'truncate 1G' -c 'write -P 0x31 1000M 64k' "$R"
[ "$(qemu-img info --output=json "$R" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 1073741824 ] \
    && pass "qemu-img info reads the new size" || fail "qemu-img info reads the new size"
clean "$R" && pass "clean after the resize" || fail "clean after the resize" "$(cat "$T/check.out")"
qio -c 'read -P 0x31 1000M 64k' "$R" && pass "qemu-io reads past the old end" || fail "qemu-io reads past the old end"
expect_exit 1 "shrinking is refused" -- "$IO" -c 'truncate 1M' "$R"
expect_output "shrinking" "the refusal says why"

# --- directsync and reopen keep the metadata honest -------------------------------
D2=$T/dsync.qcow2
qemu-img create -q -f qcow2 "$D2" 4M
"$IO" --cache directsync -c 'write -P 0x5a 0 64k' -c 'echo written' -c 'sleep 20000' "$D2" >"$T/ds" 2>&1 &
ds=$!
for _ in $(seq 100); do grep -q written "$T/ds" && break; sleep 0.05; done
kill -9 $ds; wait $ds 2>/dev/null
qio -r -c 'read -P 0x5a 0 64k' "$D2" && pass "directsync: a write is there after kill -9, metadata included" \
    || fail "directsync: a write is there after kill -9, metadata included" "$(cat "$T/qio.out")"
clean "$D2" && pass "directsync: clean after kill -9" || fail "directsync: clean after kill -9" "$(cat "$T/check.out")"
R2=$T/reopen.qcow2
qemu-img create -q -f qcow2 "$R2" 4M
expect_exit 0 "write, then reopen read-only" -- "$IO" -c 'write -P 0x6b 0 64k' -c 'reopen -r' -c 'read -P 0x6b 0 64k' "$R2"
qio -r -c 'read -P 0x6b 0 64k' "$R2" && pass "the write survived the reopen to read-only" || fail "the write survived the reopen to read-only"
clean "$R2" && pass "clean after the reopen" || fail "clean after the reopen" "$(cat "$T/check.out")"
expect_exit 0 "read-only, then reopen read-write and write" -- "$IO" -r -c 'reopen -w' -c 'write -P 0x7c 64k 4k' "$R2"
clean "$R2" && pass "clean after writing through a reopen" || fail "clean after writing through a reopen" "$(cat "$T/check.out")"
G=$T/grow512.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 "$G" 1M
start=$(date +%s)
timeout 60 "$IO" -c 'truncate 600M' "$G" >"$T/out" 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q "use larger clusters" "$T/err" && [ $(( $(date +%s) - start )) -lt 20 ] \
    && pass "a resize that needs an L1 table longer than a refcount block's range fails at once, saying why" \
    || fail "a resize that needs an L1 table longer than a refcount block's range fails at once, saying why" "rc $rc: $(cat "$T/err")"
clean "$G" && pass "and leaves the image clean" || fail "and leaves the image clean" "$(cat "$T/check.out")"
expect_exit 0 "a resize that fits works (512-byte clusters, 100M)" -- "$IO" -c 'truncate 100M' -c 'write -P 1 99M 4k' "$G"
clean "$G" && pass "clean after it" || fail "clean after it" "$(cat "$T/check.out")"

# --- extensions nvtpm does not use: persistent bitmaps ------------------------------------
# autoclear IMG: the header's autoclear_features
autoclear() { python3 -c 'import sys; print(int.from_bytes(open(sys.argv[1],"rb").read(96)[88:96],"big"))' "$1"; }
bitmap_listed() { qemu-img info "$1" >"$T/info" 2>&1 && grep -q "name: b0" "$T/info" && ! grep -q "lacking bitmap" "$T/info"; }
BM=$T/bitmap.qcow2
qemu-img create -q -f qcow2 "$BM" 4M && qemu-img bitmap --add "$BM" b0
qio -c 'write -P 0x21 0 1M' "$BM" # sets bits: the bitmap gets a data cluster
before=$(md5sum <"$BM")
expect_exit 0 "bitmaps: an owning open that only reads" -- "$IO" -c 'read -P 0x21 0 1M' "$BM"
[ "$(md5sum <"$BM")" = "$before" ] && pass "bitmaps: it writes nothing (the autoclear bit too)" \
    || fail "bitmaps: it writes nothing (the autoclear bit too)" "autoclear $(autoclear "$BM")"
expect_exit 0 "bitmaps: check counts the directory, table and data cluster (no leaks)" -- "$IO" -r -c check "$BM"
expect_exit 0 "bitmaps: check -r finds nothing to repair" -- "$IO" -c 'check -r' "$BM"
[ "$(md5sum <"$BM")" = "$before" ] && bitmap_listed "$BM" && pass "bitmaps: check -r keeps them" \
    || fail "bitmaps: check -r keeps them" "$(cat "$T/info")"
cp "$BM" "$T/bitmap-rw.qcow2"
expect_exit 0 "bitmaps: a write" -- "$IO" -c 'write -P 0x22 1M 4k' "$BM"
[ "$(autoclear "$BM")" = 0 ] && pass "bitmaps: the write cleared the autoclear bit first" \
    || fail "bitmaps: the write cleared the autoclear bit first" "autoclear $(autoclear "$BM")"
qemu-img check "$BM" >"$T/check.out" 2>&1; q=$?
[ $q = 3 ] && grep -q "3 leaked clusters" "$T/check.out" && pass "bitmaps: qemu-img now sees the stale bitmap's clusters as leaks, no corruption" \
    || fail "bitmaps: qemu-img now sees the stale bitmap's clusters as leaks, no corruption" "exit $q: $(cat "$T/check.out")"
"$IO" -r -c check "$BM" >"$T/out" 2>&1
grep -q "0 corruptions, 3 leaks" "$T/out" && pass "bitmaps: so does nvtpm's check" || fail "bitmaps: so does nvtpm's check" "$(cat "$T/out")"
expect_exit 0 "bitmaps: check -r frees them" -- "$IO" -c 'check -r' "$BM"
clean "$BM" && pass "bitmaps: clean afterwards" || fail "bitmaps: clean afterwards" "$(cat "$T/check.out")"
qio -r -c 'read -P 0x21 0 1M' -c 'read -P 0x22 1M 4k' "$BM" && pass "bitmaps: the data reads back" \
    || fail "bitmaps: the data reads back" "$(cat "$T/qio.out")"
cp "$T/bitmap-rw.qcow2" "$T/bitmap-eio.qcow2"
before=$(md5sum <"$T/bitmap-eio.qcow2")
expect_exit 1 "bitmaps: a write whose header update fails fails" -- \
    "$IO" -c 'write -P 0x22 1M 4k' "faults:write=qcow2-header-update:EIO:$T/bitmap-eio.qcow2"
[ "$(md5sum <"$T/bitmap-eio.qcow2")" = "$before" ] && pass "bitmaps: and writes nothing, the bit still set" \
    || fail "bitmaps: and writes nothing, the bit still set" "autoclear $(autoclear "$T/bitmap-eio.qcow2")"
# The order on the file: the header (the bit cleared) and a flush come before
# anything else the write changes (faults' write log: kind, length, offset).
cp "$T/bitmap-eio.qcow2" "$T/bitmap-order.qcow2" # untouched: its bit is set
[ "$(autoclear "$T/bitmap-order.qcow2")" = 1 ] || fail "bitmaps: a copy with the bit set" "$(autoclear "$T/bitmap-order.qcow2")"
"$IO" -c 'write -P 0x23 2M 4k' "faults:log=$T/order.wlog:$T/bitmap-order.qcow2" >/dev/null 2>&1
python3 - "$T/order.wlog" <<'PY' && pass "bitmaps: the header (bit cleared) and a flush reach the file before the write" \
    || fail "bitmaps: the header (bit cleared) and a flush reach the file before the write" "$(cat "$T/order.txt")"
import struct, sys
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'NVTWLOG1'
recs, off = [], 8
while off + 16 <= len(d):
    kind, length, where = struct.unpack('=IIQ', d[off:off + 16])
    recs.append((kind, length, where, d[off + 16:off + 16 + length] if kind == 1 else b''))
    off += 16 + (length if kind == 1 else 0)
open(sys.argv[1].replace('order.wlog', 'order.txt'), 'w').write(repr([r[:3] for r in recs]))
assert len(recs) >= 3, recs
(k0, _, o0, h), (k1, _, _, _) = recs[0], recs[1]
assert k0 == 1 and o0 == 0 and len(h) >= 96 and struct.unpack('>Q', h[88:96])[0] & 1 == 0, recs[0][:3]
assert k1 == 2, recs[1][:3]
PY
expect_exit 0 "bitmaps: a resize" -- "$IO" -c 'truncate 8M' "$T/bitmap-rw.qcow2"
[ "$(autoclear "$T/bitmap-rw.qcow2")" = 0 ] && pass "bitmaps: the resize cleared the autoclear bit first" \
    || fail "bitmaps: the resize cleared the autoclear bit first" "autoclear $(autoclear "$T/bitmap-rw.qcow2")"

# --- refusals, the file untouched ---------------------------------------------------------
refused() { # NAME PATTERN IMG [nvtpm-io options]
    local name=$1 pattern=$2 img=$3 before after
    shift 3
    before=$(md5sum <"$img")
    expect_exit 1 "$name: refused" -- "$IO" "$@" -c 'read 0 512' "$img"
    expect_output "$pattern" "$name: the message says why"
    after=$(md5sum <"$img")
    [ "$before" = "$after" ] && pass "$name: the file is unchanged" || fail "$name: the file is unchanged"
}
setbit() { # IMG OFFSET BYTE-VALUE-OR
    python3 - "$@" <<'PY'
import sys
p, off, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
with open(p, 'r+b') as f:
    f.seek(off); b = f.read(1)[0]; f.seek(off); f.write(bytes([b | val]))
PY
}
for fmt in aes luks; do
    E=$T/enc-$fmt.qcow2
    # LUKS times its key derivation, which qemu-img can fail to do on a busy machine.
    opts="encrypt.format=$fmt,encrypt.key-secret=s0"
    [ "$fmt" = luks ] && opts="$opts,encrypt.iter-time=50"
    for _ in 1 2 3 4 5; do
        rm -f "$E"
        qemu-img create -q -f qcow2 --object secret,id=s0,data=secret -o "$opts" "$E" 1M 2>/dev/null && break
        sleep 1
    done
    refused "encrypted qcow2 ($fmt)" "encrypted qcow2 images" "$E"
done
D=$T/datafile.qcow2
qemu-img create -q -f qcow2 -o "data_file=$T/data.raw" "$D" 1M
refused "external data file" "external data file" "$D"
X=$T/extl2.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on "$X" 1M
refused "extended L2" "extended L2" "$X"
U=$T/unknown.qcow2
qemu-img create -q -f qcow2 "$U" 1M && setbit "$U" 76 0x80 # incompatible bit 31
refused "unknown incompatible feature" "unknown incompatible features 0x80000000" "$U"
refused "unknown incompatible feature, read-only" "unknown incompatible features" "$U" -r
K=$T/corrupt.qcow2
qemu-img create -q -f qcow2 "$K" 1M && setbit "$K" 79 0x02
refused "marked corrupt, read-write" "marked corrupt" "$K"
expect_exit 0 "marked corrupt: read-only still works" -- "$IO" -r -c 'read 0 512' "$K"
refused "marked corrupt: reopen read-write" "marked corrupt" "$K" -r -c 'reopen -w' 
Y=$T/dirty.qcow2
qemu-img create -q -f qcow2 "$Y" 1M && setbit "$Y" 79 0x01
refused "marked dirty, read-write" "marked dirty" "$Y"
expect_exit 0 "marked dirty: read-only still works" -- "$IO" -r -c 'read 0 512' "$Y"

B=$T/base.qcow2 O=$T/overlay.qcow2 BR=$T/base.raw OR=$T/overlay-raw.qcow2
qemu-img create -q -f qcow2 "$B" 4M && qio -c 'write -P 0x99 0 1M' "$B"
qemu-img create -q -f qcow2 -b "$B" -F qcow2 "$O" && qio -c 'write -P 0x55 512k 4k' "$O"
refused "writes with a backing file" "backing file" "$O"
refused "reopening an overlay read-write" "backing file" "$O" -r -c 'reopen -w' -c 'write 0 512' 
expect_exit 0 "a qcow2 backing file is read through" -- "$IO" -r -c 'read -P 0x99 0 512k' -c 'read -P 0x55 512k 4k' -c 'read -P 0 1M 3M' "$O"
qemu-img create -q -f raw "$BR" 4M && qio -f raw -c 'write -P 0x88 1M 1M' "$BR"
qemu-img create -q -f qcow2 -b "$BR" -F raw "$OR"
expect_exit 0 "a raw backing file is read through" -- "$IO" -r -c 'read -P 0x88 1M 1M' -c 'read -P 0 0 1M' "$OR"
finish
