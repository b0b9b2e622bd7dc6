#!/usr/bin/env bash
# test-handoff.sh - a migration on shared storage hands one image between two
# servers, driven through the control channel as QEMU drives it, with acked NV
# writes on both sides and SIGKILLs: whatever was acknowledged last must be
# what a fresh server reads. Each side refreshes what it cached of the image
# when it takes the image (nvram_storage_claim), so neither builds a commit on
# a past the other has moved beyond.
#   1. A failed migration: the destination takes the image, writes, is
#      killed; the source takes it back (LOCK_STORAGE), writes, is killed: the
#      source's write is on the image.
#   2. The other way: the destination opens the image while the source
#      still commits twice more; after the hand-off the destination's write
#      survives a SIGKILL.
# Usage: test-handoff.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
HERE=$(cd "$(dirname "$0")" && pwd)
require swtpm_ioctl tpm2_nvdefine tpm2_nvwrite tpm2_nvread python3
T=$TEST_TMP
P=$(free_ports 6)
IMG=$T/shared.qcow2

# server NAME DATA_PORT ARGS...: nvtpm on IMG, control on DATA_PORT+1; PID_<NAME> set
server() {
    local name=$1 port=$2
    shift 2
    "$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$port" \
        --ctrl "type=tcp,port=$((port + 1))" "$@" >"$T/$name.log" 2>&1 &
    eval "PID_$name=$!"
    wait_port $((port + 1)) "$!" || fail "$name serves" "$(cat "$T/$name.log")"
}
io() { swtpm_ioctl --tcp ":$(($1 + 1))" "${@:2}" >>"$T/ioctl.log" 2>&1; }
# write PORT NAME WORD: NV index 0x1500016 := WORD through PORT; acknowledged or a failed check
write() {
    printf '%s' "$3" | TPM2TOOLS_TCTI=swtpm:port=$1 tpm2_nvwrite 0x1500016 -C o -i - 2>"$T/err" &&
        pass "$2 writes $3 (acknowledged)" || fail "$2 writes $3 (acknowledged)" "$(cat "$T/err")"
}
# hand_over SRC_PORT DST_PORT: what QEMU does at a migration's switch-over
hand_over() {
    local b ok=0
    for b in permanent volatile savestate; do io "$1" --save $b "$T/$b.blob" || ok=1; done
    io "$2" --stop || ok=1
    for b in permanent volatile savestate; do io "$2" --load $b "$T/$b.blob" || ok=1; done
    io "$2" -i || ok=1
    [ $ok = 0 ] && pass "the hand-off: GET_STATEBLOB x3 on the source, STOP, SET_STATEBLOB x3, INIT on the destination" ||
        fail "the hand-off: GET_STATEBLOB x3 on the source, STOP, SET_STATEBLOB x3, INIT on the destination" \
            "$(tail -5 "$T/ioctl.log")"
}
kill9() { kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
# reads NAME WANT: a fresh server on IMG reads WANT from the index
reads() {
    server fresh $((P + 4)) --flags not-need-init,startup-clear
    local got
    got=$(TPM2TOOLS_TCTI=swtpm:port=$((P + 4)) tpm2_nvread 0x1500016 -C o -s 8 2>"$T/err")
    [ "$got" = "$2" ] && pass "$1" || fail "$1" "read '$got': $(cat "$T/err" "$T/fresh.log")"
    io $((P + 4)) -s
    wait "$PID_fresh"
}

# --- 1. the destination writes, is killed; the source takes the image back and writes ----------
server src "$P" --migration release-lock-outgoing --flags not-need-init,startup-clear
TPM2TOOLS_TCTI=swtpm:port=$P tpm2_nvdefine 0x1500016 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
write "$P" "the source" src-0001
server dst $((P + 2)) --migration incoming
hand_over "$P" $((P + 2))
write $((P + 2)) "the destination" dst-0001
write $((P + 2)) "the destination" dst-0002
kill9 "$PID_dst"
resp=$(python3 "$HERE/ctrl.py" "tcp:$((P + 1))" 0000001300000000)
[ "$resp" = 00000000 ] && pass "the migration failed: LOCK_STORAGE gives the source its image back" ||
    fail "the migration failed: LOCK_STORAGE gives the source its image back" "$resp $(cat "$T/src.log")"
write "$P" "the resumed source" src-0002
kill9 "$PID_src"
reads "a fresh server reads the source's last acknowledged write" src-0002
expect_exit 0 "the image checks clean" -- "$NVTPM" check "$IMG"

# --- 2. the destination opens the image while the source still commits -------------------------
rm -f "$IMG"
server src "$P" --migration release-lock-outgoing --flags not-need-init,startup-clear
TPM2TOOLS_TCTI=swtpm:port=$P tpm2_nvdefine 0x1500016 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
write "$P" "the source" src-0001
server dst $((P + 2)) --migration incoming
write "$P" "the source, after the destination opened the image," src-0002
write "$P" "the source, once more," src-0003
hand_over "$P" $((P + 2))
TPM2TOOLS_TCTI=swtpm:port=$((P + 2)) tpm2_nvread 0x1500016 -C o -s 8 >"$T/out" 2>"$T/err"
[ "$(cat "$T/out")" = src-0003 ] && pass "the destination has the source's last write" ||
    fail "the destination has the source's last write" "$(cat "$T/out" "$T/err")"
write $((P + 2)) "the destination" dst-0001
kill9 "$PID_dst"
kill9 "$PID_src"
reads "a fresh server reads the destination's first acknowledged write" dst-0001
expect_exit 0 "the image checks clean" -- "$NVTPM" check "$IMG"
finish
