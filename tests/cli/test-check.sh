#!/usr/bin/env bash
# test-check.sh - `nvtpm check`: qemu-img check's verdicts and exit codes on
# clean, leaky and corrupt images, --repair, --json, and bad usage.
# Usage: test-check.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
NVTPM=$1
require qemu-img qemu-io python3
T=$TEST_TMP
# refcount IMG CLUSTER VALUE: set a 16-bit refcount in the first refcount block
refcount() {
    python3 - "$@" <<'PY'
import struct, sys
p, cl, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(p, 'r+b') as f:
    h = f.read(64)
    rt = struct.unpack('>Q', h[48:56])[0]
    f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
    f.seek(rb + 2 * cl); f.write(struct.pack('>H', val))
PY
}
qemu-img create -q -f qcow2 "$T/clean.qcow2" 4M
qemu-io -c 'write -P 1 0 1M' "$T/clean.qcow2" >/dev/null
expect_exit 0 "a clean image: exit 0" -- "$NVTPM" check "$T/clean.qcow2"
expect_output "No errors were found on the image" "it says so"
expect_output "Image end offset: [0-9]+" "and gives the image end offset"
qemu_end=$(qemu-img check --output=json "$T/clean.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image-end-offset"])')
expect_exit 0 "--json" -- "$NVTPM" check --json "$T/clean.qcow2"
ours=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image-end-offset"])' "$T/out")
[ "$ours" = "$qemu_end" ] && pass "the image end offset equals qemu-img's ($ours)" || fail "the image end offset equals qemu-img's" "$ours vs $qemu_end"

cp "$T/clean.qcow2" "$T/leaky.qcow2"
refcount "$T/leaky.qcow2" 60 1 # a cluster nothing uses
qemu-img check -q "$T/leaky.qcow2" >/dev/null 2>&1; q=$?
expect_exit 3 "a leaked cluster: exit 3, like qemu-img ($q)" -- "$NVTPM" check "$T/leaky.qcow2"
expect_output "1 leaked clusters were found" "it counts the leak"
expect_exit 0 "--repair removes the leak" -- "$NVTPM" check --repair "$T/leaky.qcow2"
expect_output "Repaired 1 leaked clusters" "it says what it repaired"
expect_exit 0 "qemu-img agrees afterwards" -- qemu-img check "$T/leaky.qcow2"

cp "$T/clean.qcow2" "$T/corrupt.qcow2"
refcount "$T/corrupt.qcow2" 3 0 # the L1 table's cluster
qemu-img check -q "$T/corrupt.qcow2" >/dev/null 2>&1; q=$?
expect_exit 2 "a refcount too low: exit 2, like qemu-img ($q)" -- "$NVTPM" check "$T/corrupt.qcow2"
expect_output "errors were found on the image \\(first: cluster 3 has refcount 0 but 1 references\\)" "it names the first problem"
expect_exit 2 "--repair does not touch corruption" -- "$NVTPM" check --repair "$T/corrupt.qcow2"

# A refcount table entry far out, on a block of its own past the data: the
# check must look at it once, quickly, not count 2^30 clusters one by one.
cp "$T/clean.qcow2" "$T/far.qcow2"
python3 - "$T/far.qcow2" <<'PY'
import os, struct, sys
p = sys.argv[1]
size = os.path.getsize(p)
block = (size + 65535) // 65536 * 65536
with open(p, 'r+b') as f:
    f.seek(block); f.write(b'\0' * 65534 + b'\0\1')   # a refcount block, its last entry 1
    rt = struct.unpack('>Q', (f.seek(48), f.read(8))[1])[0]
    f.seek(rt + 8 * 8000); f.write(struct.pack('>Q', block))
    rb0 = struct.unpack('>Q', (f.seek(rt), f.read(8))[1])[0]
    f.seek(rb0 + 2 * (block // 65536)); f.write(struct.pack('>H', 1))  # the block's own refcount
PY
start=$(date +%s)
timeout 60 "$NVTPM" check "$T/far.qcow2" >"$T/out" 2>&1; rc=$?
[ $rc -eq 3 ] && [ $(( $(date +%s) - start )) -lt 15 ] && pass "a far refcount block: leaks found quickly" \
    || fail "a far refcount block: leaks found quickly" "rc $rc after $(( $(date +%s) - start ))s: $(tail -3 "$T/out")"

expect_exit 1 "a missing image: exit 1" -- "$NVTPM" check "$T/none.qcow2"
expect_output "none.qcow2: cannot open read-only: No such file" "the error names the file"
expect_exit 1 "an unknown option: exit 1" -- "$NVTPM" check --frobnicate "$T/clean.qcow2"
expect_output "unknown or malformed option '--frobnicate'" "the option is named"
expect_exit 1 "no image: exit 1" -- "$NVTPM" check
expect_exit 0 "check --help" -- "$NVTPM" check --help
expect_output "Exit codes: 0 clean, 1 the check could not run, 2 corruption found" "--help documents the exit codes"
finish
