#!/usr/bin/env bash
# test-migration.sh - a migration on shared storage, as QEMU drives it: the
# source runs with --migration release-lock-outgoing, the destination starts
# on the same image with --migration incoming while the source still owns it;
# the source's three blobs are read (the savestate blob last: the source gives
# up the image), loaded into the destination (which takes the image) and
# INIT resumes there: an NV index written on the source reads back. The source
# then stops without writing over the destination's state, and a destination
# cannot take an image its source still owns. Last, a failed migration: the
# source takes its image back with LOCK_STORAGE and writes its state again.
# Usage: test-migration.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm_ioctl tpm2_nvdefine tpm2_nvwrite tpm2_nvread
T=$TEST_TMP
P=$(free_ports 4)
IMG=$T/shared.qcow2
SRC_CTRL=":$((P + 1))"
DST_CTRL=":$((P + 3))"

# owner: the pid that owns the image, per nvtpm info
owner() { "$NVTPM" info "$IMG" | sed -n 's/^lock holder: pid \([0-9]*\) .*owner.*/\1/p'; }

"$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$P" \
    --ctrl "type=tcp,port=$((P + 1))" --migration release-lock-outgoing \
    --flags not-need-init,startup-clear >"$T/src.log" 2>&1 &
src=$!
wait_port "$((P + 1))" "$src" && pass "the source serves" || fail "the source serves" "$(cat "$T/src.log")"
export TPM2TOOLS_TCTI="swtpm:port=$P"
tpm2_nvdefine 0x1500016 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>"$T/err" \
    && printf 'migrated' | tpm2_nvwrite 0x1500016 -C o -i - 2>>"$T/err" \
    && pass "an NV index is written on the source" || fail "an NV index is written on the source" "$(cat "$T/err")"

"$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$((P + 2))" \
    --ctrl "type=tcp,port=$((P + 3))" --migration incoming >"$T/dst.log" 2>&1 &
dst=$!
wait_port "$((P + 3))" "$dst" && pass "--migration incoming: the destination starts while the source owns the image" \
    || fail "--migration incoming: the destination starts while the source owns the image" "$(cat "$T/dst.log")"
[ "$(owner)" = "$src" ] && pass "the source still owns the image" || fail "the source still owns the image" "owner: $(owner)"
expect_exit 1 "the destination cannot load a blob while the source owns the image" -- \
    swtpm_ioctl --tcp "$DST_CTRL" --load permanent /dev/null
expect_exit 1 "nor INIT" -- swtpm_ioctl --tcp "$DST_CTRL" -i

for b in permanent volatile savestate; do
    expect_exit 0 "the source's $b blob is read" -- swtpm_ioctl --tcp "$SRC_CTRL" --save "$b" "$T/$b.blob"
done
[ -z "$(owner)" ] && pass "release-lock-outgoing: after the savestate blob nobody owns the image" \
    || fail "release-lock-outgoing: after the savestate blob nobody owns the image" "owner: $(owner)"
for b in permanent volatile savestate; do
    expect_exit 0 "the $b blob loads into the destination" -- swtpm_ioctl --tcp "$DST_CTRL" --load "$b" "$T/$b.blob"
done
[ "$(owner)" = "$dst" ] && pass "the destination owns the image once it holds the state" \
    || fail "the destination owns the image once it holds the state" "owner: $(owner)"
expect_exit 0 "INIT on the destination" -- swtpm_ioctl --tcp "$DST_CTRL" -i
export TPM2TOOLS_TCTI="swtpm:port=$((P + 2))"
[ "$(tpm2_nvread 0x1500016 -C o -s 8 2>"$T/err")" = "migrated" ] && pass "the NV index reads back on the destination" \
    || fail "the NV index reads back on the destination" "$(cat "$T/err")"

expect_exit 0 "the source's SHUTDOWN succeeds" -- swtpm_ioctl --tcp "$SRC_CTRL" -s
wait "$src"
grep -q "handed over to a migration's destination; the TPM stops without writing" "$T/src.log" \
    && pass "the source says it stops without writing its state" \
    || fail "the source says it stops without writing its state" "$(cat "$T/src.log")"
[ "$(owner)" = "$dst" ] && pass "the destination still owns the image" || fail "the destination still owns the image"
expect_exit 0 "SHUTDOWN on the destination" -- swtpm_ioctl --tcp "$DST_CTRL" -s
wait "$dst"
expect_exit 0 "the image checks clean" -- "$NVTPM" check "$IMG"

# The state survives on the image: a plain server on it reads the index.
"$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$P" --ctrl "type=tcp,port=$((P + 1))" \
    --flags not-need-init,startup-clear >"$T/again.log" 2>&1 &
again=$!
wait_port "$((P + 1))" "$again" || fail "the server starts again" "$(cat "$T/again.log")"
export TPM2TOOLS_TCTI="swtpm:port=$P"
[ "$(tpm2_nvread 0x1500016 -C o -s 8 2>"$T/err")" = "migrated" ] && pass "after both stopped, the index is on the image" \
    || fail "after both stopped, the index is on the image" "$(cat "$T/err") $(cat "$T/again.log")"
swtpm_ioctl --tcp "$SRC_CTRL" -s >/dev/null
wait "$again"

# A failed migration: the source read its blobs and gave the image up, then
# resumes. LOCK_STORAGE (swtpm_ioctl 0.7 has no --lock-storage: a raw
# request, 0x13 with 0 retries) takes the image back, and the source's next
# NV write lands on the image.
"$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$P" --ctrl "type=tcp,port=$((P + 1))" \
    --migration release-lock-outgoing --flags not-need-init,startup-clear >"$T/failed.log" 2>&1 &
src=$!
wait_port "$((P + 1))" "$src" || fail "the source starts" "$(cat "$T/failed.log")"
swtpm_ioctl --tcp "$SRC_CTRL" --save savestate "$T/savestate.blob" >/dev/null
[ -z "$(owner)" ] && pass "a failed migration: the source gave the image up" \
    || fail "a failed migration: the source gave the image up" "owner: $(owner)"
resp=$(python3 "$(dirname "$0")/ctrl.py" "tcp:$((P + 1))" 0000001300000000)
[ "$resp" = "00000000" ] && pass "LOCK_STORAGE succeeds" || fail "LOCK_STORAGE succeeds" "$resp"
[ "$(owner)" = "$src" ] && pass "the source owns the image again" || fail "the source owns the image again" "owner: $(owner)"
export TPM2TOOLS_TCTI="swtpm:port=$P"
printf 'resumed!' | tpm2_nvwrite 0x1500016 -C o -i - 2>"$T/err" && pass "the resumed source writes NV" \
    || fail "the resumed source writes NV" "$(cat "$T/err")"
expect_exit 0 "the source's SHUTDOWN" -- swtpm_ioctl --tcp "$SRC_CTRL" -s
wait "$src"
"$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$P" --ctrl "type=tcp,port=$((P + 1))" \
    --flags not-need-init,startup-clear >"$T/again.log" 2>&1 &
again=$!
wait_port "$((P + 1))" "$again" || fail "the server starts again" "$(cat "$T/again.log")"
! grep -q "handed over" "$T/failed.log" && [ "$(tpm2_nvread 0x1500016 -C o -s 8 2>"$T/err")" = "resumed!" ] \
    && pass "the source's write is on the image" \
    || fail "the source's write is on the image" "$(cat "$T/failed.log" "$T/err" "$T/again.log")"
swtpm_ioctl --tcp "$SRC_CTRL" -s >/dev/null
wait "$again"
finish
