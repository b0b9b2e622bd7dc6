#!/usr/bin/env bash
# test-crash-loop.sh - durability under SIGKILL: a loop of NV writes through
# tpm2-tools while the server is killed at random moments and restarted.
# After each restart the NV index holds the last acknowledged write (or the
# one in flight), and the image checks clean.
# Usage: test-crash-loop.sh NVTPM [KILLS]   (CI: a few dozen; ./dev soak: hundreds)
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
KILLS=${2:-30}
require tpm2_nvwrite tpm2_nvread python3
T=$TEST_TMP
IMG=$T/tpm.qcow2
P=$(free_ports 2)
export TPM2TOOLS_TCTI=swtpm:port=$P
serve() {
    listen_start "$T/server.log" "tcp:$P" "tcp:$((P + 1))" -- "$NVTPM" socket --tpm2 \
        --tpmstate "file=$IMG" --server type=tcp,fd=3 --ctrl type=tcp,fd=4 \
        --flags not-need-init,startup-clear
}
serve
tpm2_nvdefine 0x1500030 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
printf '%08d' 0 >"$T/v" && tpm2_nvwrite 0x1500030 -C o -i "$T/v" >/dev/null 2>&1
acked=0 lost=0 bad_checks=0 RANDOM=42
for ((k = 1; k <= KILLS; k++)); do
    (   v=$acked
        while :; do
            v=$((v + 1))
            printf '%08d' $v >"$T/w"
            tpm2_nvwrite 0x1500030 -C o -i "$T/w" >/dev/null 2>&1 || exit 0
            echo $v >>"$T/acked" # acknowledged: the TPM answered success
        done
    ) &
    writer=$!
    sleep "0.$((RANDOM % 4 + 1))$((RANDOM % 10))"
    kill -9 "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
    wait "$writer" 2>/dev/null
    [ -s "$T/acked" ] && acked=$(tail -1 "$T/acked")
    "$NVTPM" check "$IMG" >"$T/check" 2>&1 || { bad_checks=$((bad_checks + 1)); cat "$T/check"; }
    serve
    got=$(tpm2_nvread 0x1500030 -C o -s 8 2>/dev/null)
    if [ -z "$got" ] || [ "$((10#$got))" -lt "$acked" ] || [ "$((10#$got))" -gt $((acked + 1)) ]; then
        lost=$((lost + 1))
        echo "  kill $k: read '$got', last acknowledged $acked"
    fi
    acked=$((10#${got:-$acked}))
done
stop_server TERM
echo "  $KILLS kills, the counter reached $acked"
[ "$acked" -gt "$KILLS" ] && pass "writes went on between kills ($acked in all)" || fail "writes went on between kills ($acked in all)"
[ $lost -eq 0 ] && pass "after every SIGKILL the last acknowledged write (or the one in flight) is there" \
    || fail "after every SIGKILL the last acknowledged write (or the one in flight) is there" "$lost lost"
[ $bad_checks -eq 0 ] && pass "nvtpm check: the image is clean after every kill" || fail "nvtpm check: the image is clean after every kill" "$bad_checks"
expect_exit 0 "qemu-img check at the end" -- qemu-img check "$IMG"
finish
