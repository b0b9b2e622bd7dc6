#!/usr/bin/env bash
# test-qemu-locks.sh - image locking between nvtpm and Debian's qemu-img and
# qemu-io, in both directions, and raw data written by each read by the other.
# Usage: test-qemu-locks.sh NVTPM_IO
set -u
. "$(dirname "$0")/../lib.sh"
IO=$1
require qemu-img qemu-io python3
Q=$TEST_TMP/a.qcow2
R=$TEST_TMP/r.raw
qemu-img create -q -f qcow2 "$Q" 4M
qemu-img create -q -f raw "$R" 1M

# wait_for FILE TEXT: until FILE contains TEXT (5 s at most)
wait_for() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}

# --- nvtpm owns the images -----------------------------------------------------
"$IO" -f raw -c 'echo ready' -c 'sleep 20000' "$Q" >"$TEST_TMP/owner-q" 2>&1 &
owner_q=$!
"$IO" -f raw -c 'echo ready' -c 'sleep 20000' "$R" >"$TEST_TMP/owner-r" 2>&1 &
owner_r=$!
wait_for "$TEST_TMP/owner-q" ready && wait_for "$TEST_TMP/owner-r" ready \
    && pass "nvtpm-io owns both images" || fail "nvtpm-io owns both images" "$(cat "$TEST_TMP"/owner-*)"

expect_exit 1 "qemu-io (writer) refused beside an nvtpm owner" -- qemu-io -c 'read 0 512' "$Q"
expect_output 'Failed to get "write" lock' "qemu-io says: Failed to get \"write\" lock"
expect_exit 1 "qemu-io -f raw (writer) refused on the raw image" -- qemu-io -f raw -c 'read 0 512' "$R"
expect_output 'Failed to get "write" lock' "raw: Failed to get \"write\" lock"
expect_exit 1 "qemu-img info of the qcow2 image refused" -- qemu-img info "$Q"
expect_output 'Failed to get shared "write" lock' "qemu-img says: Failed to get shared \"write\" lock"
expect_exit 0 "qemu-img info -U works beside nvtpm" -- qemu-img info -U "$Q"
expect_output 'file format: qcow2' "qemu-img info -U reads the header"
expect_exit 1 "qemu-img check refused beside an nvtpm owner" -- qemu-img check "$Q"
expect_exit 1 "a second nvtpm owner is refused" -- "$IO" -f raw -c 'length' "$Q"
expect_output "$Q: failed to get .*\"write\"" "the refusal names the image and the permission"
expect_exit 0 "a read-only nvtpm reader works beside the owner" -- "$IO" -r -f raw -c 'read 0 512' "$Q"
expect_exit 1 "the reader cannot reopen read-write beside the owner" -- "$IO" -r -f raw -c 'reopen -w' "$Q"
expect_output 'still open read-only' "the failed reopen says the reader is still read-only"

kill -9 "$owner_q" "$owner_r"
wait "$owner_q" "$owner_r" 2>/dev/null
expect_exit 0 "qemu-io writes once the nvtpm owner was killed" -- qemu-io -f raw -c 'write -P 0x11 0 4k' "$R"
expect_exit 0 "qemu-img check is clean once the owner was killed" -- qemu-img check "$Q"

# --- QEMU holds the image for writing ------------------------------------------
qemu-io -c 'sleep 20000' "$Q" >/dev/null 2>&1 &
qemu_pid=$!
held=no
for _ in $(seq 200); do # QEMU's write permission byte, looked at without touching
    if lock_held "$Q" 101; then held=yes; break; fi
    sleep 0.05
done
[ $held = yes ] && pass "qemu-io holds the qcow2 image" || fail "qemu-io holds the qcow2 image"
expect_exit 1 "nvtpm cannot own an image QEMU writes" -- "$IO" -f raw -c length "$Q"
expect_output "$Q" "the refusal names the image"
expect_output '"write"' "the refusal names the permission in conflict"
expect_exit 0 "a read-only nvtpm reader works beside a QEMU writer" -- "$IO" -r -f raw -c 'read 0 4' "$Q"
expect_exit 1 "nvtpm cannot take ownership by reopen beside a QEMU writer" -- "$IO" -r -f raw -c 'reopen -w' "$Q"
kill "$qemu_pid"
wait "$qemu_pid" 2>/dev/null
expect_exit 0 "nvtpm owns the image once QEMU is gone" -- "$IO" -f raw -c length "$Q"

# --- handing ownership over without closing ------------------------------------
"$IO" -f raw -c 'owner off' -c 'echo released' -c 'sleep 3000' -c 'owner on' -c 'echo retaken' \
    -c 'sleep 20000' "$R" >"$TEST_TMP/handover" 2>&1 &
hand=$!
wait_for "$TEST_TMP/handover" released && pass "nvtpm released ownership" || fail "nvtpm released ownership"
expect_exit 0 "qemu-io writes while nvtpm holds the file without ownership" -- qemu-io -f raw -c 'write -P 0x22 0 4k' "$R"
wait_for "$TEST_TMP/handover" retaken && pass "nvtpm took ownership back" || fail "nvtpm took ownership back" "$(cat "$TEST_TMP/handover")"
expect_exit 1 "after that, qemu-io is refused again" -- qemu-io -f raw -c 'read 0 1' "$R"
kill "$hand"
wait "$hand" 2>/dev/null

# --- data both ways (raw) --------------------------------------------------------
expect_exit 0 "nvtpm-io writes a pattern" -- "$IO" -f raw -c 'write -P 0x5a 4k 8k' -c flush "$R"
expect_exit 0 "qemu-io reads nvtpm's pattern" -- qemu-io -f raw -c 'read -P 0x5a 4k 8k' "$R"
expect_exit 0 "qemu-io writes a pattern" -- qemu-io -f raw -c 'write -P 0xa5 64k 12k' "$R"
expect_exit 0 "nvtpm-io reads QEMU's pattern" -- "$IO" -f raw -c 'read -P 0xa5 64k 12k' "$R"
expect_exit 1 "nvtpm-io notices a wrong pattern" -- "$IO" -f raw -c 'read -P 0xa5 60k 8k' "$R"
expect_output 'pattern verification failed at offset 61440' "the mismatch names its offset"
finish
