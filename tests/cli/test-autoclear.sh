#!/usr/bin/env bash
# test-autoclear.sh - extensions nvtpm does not use, with QEMU's persistent
# bitmaps as the example: a refused open (socket, export, key, encrypt) leaves the image
# byte for byte as it was, the bitmaps' autoclear bit set and qemu-img content;
# `nvtpm check` counts the bitmaps' clusters as qemu-img check does (and
# --repair keeps them); a start that writes clears the bit first, as the qcow2
# spec asks of a program that does not keep bitmaps, and leaves no corruption.
# Usage: test-autoclear.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../tpm/common.sh"
NVTPM=$1
require qemu-img qemu-io python3 tpm2_getrandom
T=$TEST_TMP
P=$(free_ports 2)
echo secret >"$T/pw"
echo other >"$T/wrong"

sum() { sha256sum <"$1"; }
# autoclear IMG: the header's autoclear_features, in decimal
autoclear() { python3 -c 'import sys; print(int.from_bytes(open(sys.argv[1],"rb").read(96)[88:96],"big"))' "$1"; }
# with_bitmap IMG: a persistent bitmap b0, as libvirt's incremental backups make
with_bitmap() { qemu-img bitmap --add "$1" b0; }
# field FILE KEY: a field of a JSON check result
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# bitmap_intact NAME IMG SUM: unchanged, bit set, qemu-img lists b0 and checks clean
bitmap_intact() {
    [ "$(sum "$2")" = "$3" ] && pass "$1: the image is unchanged (sha256)" ||
        fail "$1: the image is unchanged (sha256)"
    [ "$(autoclear "$2")" = 1 ] && pass "$1: the bitmaps' autoclear bit is still set" ||
        fail "$1: the bitmaps' autoclear bit is still set" "autoclear $(autoclear "$2")"
    qemu-img info "$2" >"$T/info" 2>&1
    grep -q "name: b0" "$T/info" && ! grep -q "lacking bitmap support" "$T/info" &&
        pass "$1: qemu-img info lists the bitmap as consistent" ||
        fail "$1: qemu-img info lists the bitmap as consistent" "$(cat "$T/info")"
    expect_exit 0 "$1: qemu-img check is clean" -- qemu-img check "$2"
}
# same_check NAME IMG: nvtpm check and qemu-img check agree (exit, leaks, end)
same_check() {
    qemu-img check --output=json "$2" >"$T/q.json" 2>/dev/null
    local q=$? ours
    "$NVTPM" check --json "$2" >"$T/n.json" 2>/dev/null
    ours=$?
    local ql nl qe ne
    ql=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("leaks",0))' "$T/q.json")
    nl=$(field "$T/n.json" leaks)
    qe=$(field "$T/q.json" image-end-offset)
    ne=$(field "$T/n.json" image-end-offset)
    [ "$q" = "$ours" ] && [ "$ql" = "$nl" ] && [ "$qe" = "$ne" ] &&
        pass "$1: nvtpm check agrees with qemu-img check (exit $q, $ql leaks, end $qe)" ||
        fail "$1: nvtpm check agrees with qemu-img check" "qemu-img: exit $q, $ql leaks, end $qe; nvtpm: exit $ours, $nl leaks, end $ne"
}
socket() { "$NVTPM" socket --tpmstate "file=$1" --ctrl "type=unixio,path=$T/ctrl" "${@:2}"; }

# --- refused opens write nothing -------------------------------------------------------------
"$NVTPM" create --tpm2 "$T/plain.qcow2" >/dev/null && with_bitmap "$T/plain.qcow2"
s=$(sum "$T/plain.qcow2")
expect_exit 6 "socket --key on a plain image: key unneeded (6)" -- socket "$T/plain.qcow2" --tpm2 --key "pwdfile=$T/pw"
bitmap_intact "refused start (6)" "$T/plain.qcow2" "$s"
expect_exit 8 "socket for TPM 1.2 on a TPM 2.0 image: not loadable (8)" -- socket "$T/plain.qcow2"
bitmap_intact "refused start (8)" "$T/plain.qcow2" "$s"

# busy: a server owns it (it has run no TPM command, so it wrote nothing either)
start_nvtpm "$T/first.log" --tpm2 --tpmstate "file=$T/plain.qcow2" --ctrl "type=tcp,port=$P"
wait_port "$P"
expect_exit 7 "a second server on the image: busy (7)" -- socket "$T/plain.qcow2" --tpm2
stop_server TERM
bitmap_intact "refused start (7), and a server that ran no command" "$T/plain.qcow2" "$s"

"$NVTPM" create --tpm2 --key "pwdfile=$T/pw" "$T/enc.qcow2" >/dev/null && with_bitmap "$T/enc.qcow2"
s=$(sum "$T/enc.qcow2")
expect_exit 4 "socket without the key of an encrypted image: key missing (4)" -- socket "$T/enc.qcow2" --tpm2
bitmap_intact "refused start (4)" "$T/enc.qcow2" "$s"
expect_exit 5 "socket with a wrong key: wrong key (5)" -- socket "$T/enc.qcow2" --tpm2 --key "pwdfile=$T/wrong"
bitmap_intact "refused start (5)" "$T/enc.qcow2" "$s"
expect_exit 5 "key add with a wrong key: wrong key (5)" -- \
    "$NVTPM" key add "$T/enc.qcow2" --key "pwdfile=$T/wrong" --new-key "pwdfile=$T/pw"
bitmap_intact "refused key add (5)" "$T/enc.qcow2" "$s"
expect_exit 1 "key remove of the last key slot: refused (1)" -- "$NVTPM" key remove "$T/enc.qcow2" --key "pwdfile=$T/pw"
bitmap_intact "refused key remove" "$T/enc.qcow2" "$s"
expect_exit 1 "encrypt of an encrypted image: refused (1)" -- "$NVTPM" encrypt "$T/enc.qcow2" --new-key "pwdfile=$T/pw"
bitmap_intact "refused encrypt" "$T/enc.qcow2" "$s"
expect_exit 5 "export with a wrong key: wrong key (5)" -- \
    "$NVTPM" export "$T/enc.qcow2" --to-dir "$T/exp-enc" --key "pwdfile=$T/wrong"
bitmap_intact "refused export (5)" "$T/enc.qcow2" "$s"

# --- a start that writes clears the bit first ------------------------------------------------
"$NVTPM" create --tpm2 "$T/run.qcow2" >/dev/null && with_bitmap "$T/run.qcow2"
start_nvtpm "$T/run.log" --tpm2 --tpmstate "file=$T/run.qcow2" --server "type=tcp,port=$P" \
    --ctrl "type=tcp,port=$((P + 1))" --flags not-need-init,startup-clear
wait_port $((P + 1))
TPM2TOOLS_TCTI=swtpm:port=$P tpm2_getrandom 8 >/dev/null 2>"$T/tools.err" &&
    pass "an accepted start serves the TPM" || fail "an accepted start serves the TPM" "$(cat "$T/tools.err" "$T/run.log")"
stop_server TERM
[ "$(autoclear "$T/run.qcow2")" = 0 ] && pass "after a start that wrote: the bitmaps' autoclear bit is clear" ||
    fail "after a start that wrote: the bitmaps' autoclear bit is clear" "autoclear $(autoclear "$T/run.qcow2")"
qemu-img info "$T/run.qcow2" >"$T/info" 2>&1
grep -q "all bitmaps are now considered inconsistent" "$T/info" && ! grep -q "name: b0" "$T/info" &&
    pass "qemu-img no longer uses the bitmap as consistent" || fail "qemu-img no longer uses the bitmap as consistent" "$(cat "$T/info")"
qemu-img check --output=json "$T/run.qcow2" >"$T/q.json" 2>/dev/null
[ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("corruptions",0))' "$T/q.json")" = 0 ] &&
    pass "qemu-img check finds no corruption" || fail "qemu-img check finds no corruption" "$(cat "$T/q.json")"
same_check "the stale bitmap's clusters are leaks to both" "$T/run.qcow2"
expect_exit 0 "nvtpm check --repair frees them" -- "$NVTPM" check --repair "$T/run.qcow2"
expect_exit 0 "qemu-img check is clean afterwards" -- qemu-img check "$T/run.qcow2"
expect_exit 0 "and the state still validates" -- "$NVTPM" validate "$T/run.qcow2"

# export and check of an image with state and a consistent bitmap write nothing
with_bitmap "$T/run.qcow2"
s=$(sum "$T/run.qcow2")
expect_exit 0 "export of an image with a bitmap" -- "$NVTPM" export "$T/run.qcow2" --to-dir "$T/exp"
bitmap_intact "export" "$T/run.qcow2" "$s"

# --- check counts the bitmaps' clusters -------------------------------------------------------
expect_exit 0 "check of an image with a bitmap: clean (0)" -- "$NVTPM" check "$T/plain.qcow2"
same_check "a bitmap's directory and table" "$T/plain.qcow2"
s=$(sum "$T/plain.qcow2")
expect_exit 0 "check --repair: clean (0)" -- "$NVTPM" check --repair "$T/plain.qcow2"
bitmap_intact "check --repair" "$T/plain.qcow2" "$s"

# a bitmap with data clusters (qemu-io's writes set its bits)
qemu-img create -q -f qcow2 "$T/data.qcow2" 4M && with_bitmap "$T/data.qcow2"
qemu-io -c 'write -P 1 0 1M' "$T/data.qcow2" >/dev/null
same_check "a bitmap with data clusters" "$T/data.qcow2"
expect_exit 0 "check of it: clean (0)" -- "$NVTPM" check "$T/data.qcow2"
# a real leak beside it: --repair frees the leak only
python3 - "$T/data.qcow2" <<'PY'
import os, struct, sys
p = sys.argv[1]
with open(p, 'r+b') as f:
    rt = struct.unpack('>Q', (f.seek(48), f.read(8))[1])[0]
    rb = struct.unpack('>Q', (f.seek(rt), f.read(8))[1])[0]
    cl = (os.path.getsize(p) + 65535) // 65536    # a cluster added at the end, unused
    f.seek(cl * 65536 + 65535); f.write(b'\0')
    f.seek(rb + 2 * cl); f.write(struct.pack('>H', 1))
PY
same_check "a bitmap and a real leak" "$T/data.qcow2"
expect_exit 0 "check --repair repairs the leak" -- "$NVTPM" check --repair "$T/data.qcow2"
expect_output "Repaired 1 leaked clusters" "only the one leak"
s=$(sum "$T/data.qcow2")
bitmap_intact "repair beside a bitmap" "$T/data.qcow2" "$s"
expect_exit 0 "qemu-io reads the data back" -- qemu-io -r -c 'read -P 1 0 1M' "$T/data.qcow2"
finish
