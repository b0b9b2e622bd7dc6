#!/usr/bin/env bash
# test-qcow2-malformed.sh - one broken image per defence of the qcow2 driver:
# each is refused with a message naming what is wrong, no crash (the
# sanitized build runs this too), and the file is left byte for byte as it was;
# and persistent bitmaps nvtpm cannot follow, which check calls corruption.
# Usage: test-qcow2-malformed.sh BUILD_TOOLS_DIR
set -u
. "$(dirname "$0")/../lib.sh"
TOOLS=$1
IO=$TOOLS/nvtpm-io
require qemu-img qemu-io python3 md5sum
T=$TEST_TMP
qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/template.qcow2" 1M
qemu-io -c 'write -P 0x42 0 8k' "$T/template.qcow2" >/dev/null
mkdir "$T/corpus"
n=$(python3 "$(dirname "$0")/make-malformed.py" "$T/template.qcow2" "$T/corpus")
[ "$n" -ge 35 ] && pass "the corpus has $n cases" || fail "the corpus has $n cases"

while IFS=$'\t' read -r name when pattern; do
    img=$T/corpus/$name.qcow2
    before=$(md5sum <"$img")
    if [ "$when" = open ]; then
        expect_exit 1 "$name: refused read-write" -- "$IO" -f qcow2 -c 'read 0 512' "$img"
        expect_output "$pattern" "$name: the message names the problem"
        [ "$name" = corrupt-bit ] || [ "$name" = dirty-bit ] \
            || expect_exit 1 "$name: refused read-only too" -- "$IO" -r -f qcow2 -c 'read 0 512' "$img"
    elif [ "$when" = read ]; then
        expect_exit 1 "$name: the read fails" -- "$IO" -r -f qcow2 -c 'read 0 4k' "$img"
        expect_output "$pattern" "$name: the message names the problem"
        expect_exit 1 "$name: a write there fails" -- "$IO" -f qcow2 -c 'write 0 4k' "$img"
    else
        expect_exit 1 "$name: a write there is refused" -- "$IO" -f qcow2 -c 'write 0 4k' "$img"
        expect_output "$pattern" "$name: the message names the problem"
        expect_exit 1 "$name: a zero write there is refused" -- "$IO" -f qcow2 -c 'write -z 0 4k' "$img"
    fi
    [ "$(md5sum <"$img")" = "$before" ] && pass "$name: file unchanged" || fail "$name: file unchanged"
done <"$T/corpus/cases.txt"

# Persistent bitmaps nvtpm cannot follow: check calls them corruption, naming
# the structure and its offset, and repairs no leak (it could be a bitmap's).
qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/bitmap.qcow2" 1M
qemu-img bitmap --add "$T/bitmap.qcow2" b0
qemu-io -c 'write -P 0x42 0 8k' "$T/bitmap.qcow2" >/dev/null
expect_exit 0 "bitmaps: the well-formed template checks clean" -- "$IO" -r -c check "$T/bitmap.qcow2"
python3 - "$T/bitmap.qcow2" "$T" <<'PY'
import struct, sys
src, out = sys.argv[1], sys.argv[2]
base = bytearray(open(src, 'rb').read())
pos = struct.unpack_from('>I', base, 100)[0]
while struct.unpack_from('>I', base, pos)[0] != 0x23852875:
    pos += 8 + (struct.unpack_from('>I', base, pos + 4)[0] + 7) // 8 * 8
nb, _, dsize, doff = struct.unpack_from('>IIQQ', base, pos + 8)
toff, tsize = struct.unpack_from('>QI', base, doff)
cases = {
    'ext-length': [(pos + 4, 'I', 16)],
    'dir-unaligned': [(pos + 24, 'Q', doff + 512)],
    'dir-past-eof': [(pos + 24, 'Q', 1 << 40)],
    'one-bitmap-too-many': [(pos + 8, 'I', nb + 1)],
    'entry-overruns-dir': [(doff + 18, 'H', 0xffff)],
    'table-past-eof': [(doff, 'Q', 1 << 40)],
    'table-entry-reserved': [(toff, 'Q', struct.unpack_from('>Q', base, toff)[0] | 2)],
    'data-past-eof': [(toff, 'Q', 1 << 40)],
}
for name, edits in cases.items():
    img = bytearray(base)
    for off, fmt, val in edits:
        struct.pack_into('>' + fmt, img, off, val)
    open(f'{out}/bitmap-{name}.qcow2', 'wb').write(img)
PY
for name in ext-length:"bitmaps header extension" dir-unaligned:"bitmaps header extension" \
    dir-past-eof:"bitmaps header extension" one-bitmap-too-many:"bitmap directory entry" \
    entry-overruns-dir:"bitmap directory entry" table-past-eof:"bitmap table" \
    table-entry-reserved:"bitmap table entry" data-past-eof:"bitmap table entry"; do
    img=$T/bitmap-${name%%:*}.qcow2
    before=$(md5sum <"$img")
    expect_exit 1 "bitmaps, ${name%%:*}: check finds corruption" -- "$IO" -r -c check "$img"
    expect_output "${name#*:} at offset [0-9]+ is malformed" "bitmaps, ${name%%:*}: the message names it"
    "$IO" -c 'check -r' "$img" >"$T/out" 2>&1
    grep -q " 0 leaks fixed" "$T/out" && [ "$(md5sum <"$img")" = "$before" ] &&
        pass "bitmaps, ${name%%:*}: check -r repairs nothing, the file unchanged" ||
        fail "bitmaps, ${name%%:*}: check -r repairs nothing, the file unchanged" "$(cat "$T/out")"
done
finish
