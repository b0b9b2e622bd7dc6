#!/usr/bin/env bash
# test-validate.sh - `nvtpm validate`, the migration dry run: one exit code per
# outcome (ok, busy, corrupt, key missing, key wrong, key unneeded, not
# loadable here, usage), --json naming every check, never a write (checksum
# and mtime unchanged) even beside the server that owns the image, and
# incoming blobs from swtpm (--blobs, plain and under --migration-key).
# Usage: test-validate.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../tpm/common.sh"
NVTPM=$1
require qemu-img qemu-io python3 swtpm swtpm_ioctl tpm2_nvdefine
T=$TEST_TMP
P=$(free_ports 4)
stamp() { echo "$(sha256sum <"$1") $(stat -c %Y.%y "$1")"; }
validate() { expect_exit "$1" "$2" -- "$NVTPM" validate "${@:3}"; }

# --- a blank image, then one with state, beside its running server ---------------------------
"$NVTPM" create "$T/a.qcow2" >/dev/null
validate 0 "a new image: loadable (exit 0)" "$T/a.qcow2"
expect_output "no permanent state yet" "it says a new TPM would be made"
serve_nvtpm "$T/a.qcow2" --flags not-need-init,startup-clear
nv $P tpm2_nvdefine 0x1500050 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
before=$(stamp "$T/a.qcow2")
validate 0 "with TPM state, while the server owns the image: exit 0" "$T/a.qcow2"
for check in lock qcow2 writable superblock key slots tpm-version libtpms; do
    grep -Eq "^ok +$check " "$T/out" && pass "check '$check' ok" || fail "check '$check' ok" "$(cat "$T/out")"
done
expect_output "loadable here" "the verdict line"
validate 0 "--json" "$T/a.qcow2" --json
python3 - "$T/out" <<'PY' && pass "--json: loadable, exit-code 0, eight named checks with status and message" || fail "--json: loadable, exit-code 0, eight named checks with status and message" "$(cat "$T/out")"
import json, sys
d = json.load(open(sys.argv[1]))
names = [c['name'] for c in d['checks']]
assert d['loadable'] is True and d['exit-code'] == 0, d
assert names == ['lock', 'qcow2', 'writable', 'superblock', 'key', 'slots', 'tpm-version', 'libtpms'], names
assert all(c['status'] == 'ok' and c['message'] for c in d['checks'])
PY
validate 8 "--tpm1.2 on a TPM 2.0 state: not loadable here (8)" "$T/a.qcow2" --tpm1.2
printf "00112233445566778899aabbccddeeff" >"$T/k128"
validate 6 "--key for a plain image: 6" "$T/a.qcow2" --key "file=$T/k128"
[ "$(stamp "$T/a.qcow2")" = "$before" ] && pass "validate never wrote: checksum and mtime unchanged" ||
    fail "validate never wrote: checksum and mtime unchanged"
stop_server TERM

# --- busy: someone holds the access lock exclusively ----------------------------------------
python3 - "$T/a.qcow2" "$T/locked" <<'PY' &
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 300, 1, 0))  # F_OFD_SETLK
open(sys.argv[2], 'w').close()
time.sleep(10)
PY
LOCKER=$!
for _ in $(seq 50); do [ -e "$T/locked" ] && break; sleep 0.1; done
start=$(date +%s)
validate 7 "the access lock held by a committer: busy (7) after --wait" "$T/a.qcow2" --wait 1
[ $(($(date +%s) - start)) -le 5 ] && pass "within about --wait" || fail "within about --wait"
kill $LOCKER; wait $LOCKER 2>/dev/null

# --- keys ------------------------------------------------------------------------------------
printf 'validate passphrase\n' >"$T/pw"
printf 'wrong\n' >"$T/pw-wrong"
"$NVTPM" create "$T/enc.qcow2" --key "pwdfile=$T/pw" >/dev/null
serve_nvtpm "$T/enc.qcow2" --key "pwdfile=$T/pw" --flags not-need-init,startup-clear
nv $P tpm2_nvdefine 0x1500051 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
stop_server TERM
validate 0 "an encrypted image with its key: 0" "$T/enc.qcow2" --key "pwdfile=$T/pw"
validate 4 "without the key: key missing (4)" "$T/enc.qcow2"
expect_output "give --key" "the message says what to do"
validate 5 "with a wrong key: key wrong (5)" "$T/enc.qcow2" --key "pwdfile=$T/pw-wrong"

# --- corruption ------------------------------------------------------------------------------
cp "$T/enc.qcow2" "$T/slots.qcow2"
qemu-io -c 'write -P 0x5a 64k 4k' -c 'write -P 0x5a 640k 4k' "$T/slots.qcow2" >/dev/null
validate 2 "both permall slots damaged: corrupt (2)" "$T/slots.qcow2" --key "pwdfile=$T/pw"
expect_output "no usable slot" "naming the blob"
cp "$T/a.qcow2" "$T/refs.qcow2"
python3 - "$T/refs.qcow2" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(64)
    rt = struct.unpack('>Q', h[48:56])[0]
    f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
    f.seek(rb + 2 * 6); f.write(struct.pack('>H', 0))  # a data cluster's refcount to 0
PY
validate 2 "a qcow2 refcount broken: corrupt (2)" "$T/refs.qcow2"
expect_output "qcow2" "the qcow2 check names it"
printf 'not an image at all' >"$T/junk"
validate 2 "not an nvtpm image: corrupt (2)" "$T/junk"

# --- incoming blobs from swtpm -----------------------------------------------------------------
printf 'migration passphrase\n' >"$T/mk"
for mode in plain encrypted; do
    mkdir -p "$T/sw-$mode"
    extra=(); [ $mode = encrypted ] && extra=(--migration-key "pwdfile=$T/mk")
    serve_swtpm "$T/sw-$mode" --flags not-need-init,startup-clear "${extra[@]}"
    nv $((P + 2)) tpm2_nvdefine 0x1500052 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
    mkdir -p "$T/blobs-$mode"
    swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --save permanent "$T/blobs-$mode/permanent"
    swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --save volatile "$T/blobs-$mode/volatile"
    swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) -s
    wait "$SWTPM_PID" 2>/dev/null
done
"$NVTPM" create "$T/b.qcow2" >/dev/null
validate 0 "--blobs: swtpm's state files (its folder) load here" "$T/b.qcow2" --blobs "$T/sw-plain"
validate 0 "--blobs: blobs saved with GET_STATEBLOB load here" "$T/b.qcow2" --blobs "$T/blobs-plain"
validate 0 "--blobs under --migration-key, with the key: 0" "$T/b.qcow2" --blobs "$T/blobs-encrypted" \
    --migration-key "pwdfile=$T/mk"
validate 4 "without the migration key: key missing (4)" "$T/b.qcow2" --blobs "$T/blobs-encrypted"
validate 5 "with a wrong one: key wrong (5)" "$T/b.qcow2" --blobs "$T/blobs-encrypted" \
    --migration-key "pwdfile=$T/pw-wrong"
mkdir -p "$T/bad"
python3 - "$T/blobs-plain/permanent" "$T/bad/permanent" <<'PY'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
for i in range(40, len(b), 7):
    b[i] ^= 0x5a  # keep the header and TLVs, break the TPM state inside
open(sys.argv[2], 'wb').write(b)
PY
validate 8 "a blob whose TPM state libtpms refuses: not loadable (8)" "$T/b.qcow2" --blobs "$T/bad"
mkdir -p "$T/empty"
validate 1 "--blobs of a folder without blobs: usage (1)" "$T/b.qcow2" --blobs "$T/empty"

# --- usage -----------------------------------------------------------------------------------
validate 1 "no image: usage (1)"
validate 1 "an unknown option: usage (1)"  "$T/a.qcow2" --frobnicate
validate 1 "--migration-key without --blobs: usage (1)" "$T/a.qcow2" --migration-key "pwdfile=$T/mk"
validate 0 "--help" --help
expect_output "Exit codes: 0 loadable" "--help lists the exit codes"
finish
