#!/usr/bin/env bash
# test-truncated.sh - a truncated image is damage, never a new TPM (issue 17).
# The qcow2 tables of a cut image still map clusters past its end, which a
# plain read gives back as zeros: blank slots, so a TPM served as new (its NV
# indices and seeds gone), or a blank newest slot, so the previous version.
# For each cut the server must exit 2 with one line naming the image and the
# offset, leaving the file byte for byte as it was; `nvtpm check` and
# `nvtpm info` say corrupt (2) as well, and `check --repair` changes nothing
# (the clusters cut off are still referenced: their refcounts are no leaks).
# A TPM whose superblock says it was manufactured is refused as well when
# its permall reads as blank inside the file. The image as it was still serves.
# Usage: test-truncated.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require tpm2_nvdefine tpm2_nvwrite tpm2_nvread qemu-img qemu-io python3 sha256sum
T=$TEST_TMP
IMG=$T/tpm.qcow2
P=$(free_ports 2)
export TPM2TOOLS_TCTI=swtpm:port=$P
FLAGS=(--tpm2 --server "type=tcp,port=$P" --ctrl "type=tcp,port=$((P + 1))"
    --flags "not-need-init,startup-clear")

# serve IMG: in the background until its control port answers; else fail with the log
serve() {
    start_nvtpm "$T/server.log" --tpmstate "file=$1" "${FLAGS[@]}"
    wait_port $((P + 1)) || { fail "the server on $(basename "$1") listens" "$(cat "$T/server.log")"; return 1; }
}
# nvwrite WORD: NV index 0x1500017 := WORD
nvwrite() { printf '%s' "$1" | tpm2_nvwrite 0x1500017 -C o -i - >/dev/null 2>"$T/err"; }
# newest_permall IMG: A or B, from nvtpm info
newest_permall() { "$NVTPM" info "$1" | sed -n 's/^blob permall .* in slot \([AB]\),.*/\1/p'; }
# host_offset IMG GUEST: where the image file holds the guest offset
host_offset() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
g = int(sys.argv[1])
for m in json.load(sys.stdin):
    if m["start"] <= g < m["start"] + m["length"] and m.get("offset") is not None:
        print(m["offset"] + g - m["start"]); break' "$2"
}

# The TPM: an NV index written until both permall slots hold a version and
# the newest is slot B, the later one in the file (a stop commits too, so
# which slot ends up newest is seen only once the server is gone).
serve "$IMG" || { finish; exit; }
tpm2_nvdefine 0x1500017 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>"$T/err" &&
    nvwrite first--- && pass "an NV index defined and written" ||
    fail "an NV index defined and written" "$(cat "$T/err")"
stop_server TERM
for last in write-2- write-3- write-4- write-5-; do
    serve "$IMG" && nvwrite $last || fail "writing $last" "$(cat "$T/err" "$T/server.log")"
    stop_server TERM
    [ "$(newest_permall "$IMG")" = B ] && break
done
[ "$(newest_permall "$IMG")" = B ] && pass "permall's newest version is in slot B" ||
    fail "permall's newest version is in slot B" "$("$NVTPM" info "$IMG")"
expect_exit 0 "nvtpm check: the image is clean" -- "$NVTPM" check "$IMG"
SLOT_B=$(host_offset "$IMG" $((640 << 10)))  # permall slot B (docs/nvram-format.md)
SUPER=$(host_offset "$IMG" 0)                 # the superblocks, the first data cluster
SAVE_B=$(host_offset "$IMG" $((1984 << 10))) # savestate slot B: never read past its header
[ -n "$SLOT_B" ] && [ -n "$SUPER" ] && [ -n "$SAVE_B" ] && pass "the slots' places in the file" ||
    fail "the slots' places in the file" "$(qemu-img map "$IMG")"

# refused NAME CUT: the server, check and info on a copy cut at CUT
refused() {
    local name=$1 cut=$2 img=$T/cut.qcow2 before rc
    cp "$IMG" "$img" && truncate -s "$cut" "$img"
    before=$(sha256sum <"$img")
    # It exits by itself; the timeout only catches one that serves instead.
    timeout 20 "$NVTPM" socket --tpmstate "file=$img" "${FLAGS[@]}" >"$T/out" 2>"$T/err"
    rc=$?
    [ $rc = 2 ] && pass "$name: the server exits 2" ||
        fail "$name: the server exits 2" "exit $rc (124: it served): $(cat "$T/err")"
    [ "$(wc -l <"$T/err")" = 1 ] && grep -Eq "cut\.qcow2: .*offset [0-9]+.*truncated" "$T/err" &&
        pass "$name: one line naming the image and the offset" ||
        fail "$name: one line naming the image and the offset" "$(cat "$T/out" "$T/err")"
    [ "$(sha256sum <"$img")" = "$before" ] && pass "$name: the image is unchanged" ||
        fail "$name: the image is unchanged"
    expect_exit 2 "$name: nvtpm check says corrupt" -- "$NVTPM" check "$img"
    expect_exit 2 "$name: nvtpm info says corrupt" -- "$NVTPM" info "$img"
    # The lost clusters are still referenced: no leaks to repair there.
    expect_exit 2 "$name: nvtpm check --repair says corrupt" -- "$NVTPM" check --repair "$img"
    [ "$(sha256sum <"$img")" = "$before" ] && pass "$name: still unchanged" ||
        fail "$name: still unchanged"
}
refused "cut at 0x60000 (the issue's case: every slot past the end)" $((0x60000))
refused "cut at the superblocks' cluster (the data area)" "$SUPER"
refused "cut inside the newest permall slot (the older one intact)" $((SLOT_B + 4096 + 100))
refused "cut in a slot's unused tail (savestate B)" $((SAVE_B + 8192 + 7))

# Not cut, but permall's slots zeroed inside the file (both, through the
# virtual disk): the superblock says the TPM was manufactured (set with the
# commit after its first permall), so it is refused, not started blank.
cp "$IMG" "$T/zeroed.qcow2"
qemu-io -c "write -P 0 $((64 << 10)) $((1152 << 10))" "$T/zeroed.qcow2" >/dev/null
before=$(sha256sum <"$T/zeroed.qcow2")
timeout 20 "$NVTPM" socket --tpmstate "file=$T/zeroed.qcow2" "${FLAGS[@]}" >"$T/out" 2>"$T/err"
rc=$?
[ $rc = 2 ] && pass "permall zeroed in a manufactured TPM: the server exits 2" ||
    fail "permall zeroed in a manufactured TPM: the server exits 2" "exit $rc (124: it served): $(cat "$T/err")"
[ "$(wc -l <"$T/err")" = 1 ] && grep -q "zeroed\.qcow2: permall is blank, but the superblock says this TPM was manufactured" "$T/err" &&
    pass "permall zeroed: one line naming the image and permall" ||
    fail "permall zeroed: one line naming the image and permall" "$(cat "$T/out" "$T/err")"
[ "$(sha256sum <"$T/zeroed.qcow2")" = "$before" ] && pass "permall zeroed: the image is unchanged" ||
    fail "permall zeroed: the image is unchanged"
expect_exit 2 "permall zeroed: nvtpm check says corrupt" -- "$NVTPM" check "$T/zeroed.qcow2"

# The image as it was: serves the NV index's last value.
serve "$IMG" && got=$(tpm2_nvread 0x1500017 -C o -s 8 2>"$T/err")
[ "${got:-}" = "$last" ] && pass "the image as it was serves the last write" ||
    fail "the image as it was serves the last write" "read '${got:-}': $(cat "$T/err" "$T/server.log")"
stop_server TERM
finish
