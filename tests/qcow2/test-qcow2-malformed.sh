#!/usr/bin/env bash
# test-qcow2-malformed.sh - one broken image per defence of the qcow2 driver:
# each is refused with a message naming what is wrong, no crash (the
# sanitized build runs this too), and the file is left byte for byte as it was.
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
finish
