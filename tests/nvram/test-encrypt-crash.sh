#!/usr/bin/env bash
# test-encrypt-crash.sh - `nvtpm encrypt` is crash-safe: its write log is
# replayed prefix by prefix onto the plain image; every prefix must load the
# original state, without a key while still plain and with the new key once
# the superblock says encrypted. Finally, running encrypt again on a crashed
# half-way image finishes the job.
# Usage: test-encrypt-crash.sh NVTPM TOOLS_DIR
set -u
. "$(dirname "$0")/../lib.sh"
NVTPM=$1 TOOLS=$2 IO=$2/nvram-io
require qemu-img xxd
T=$TEST_TMP
head -c 32 /dev/urandom | xxd -p -c 64 >"$T/k"
"$NVTPM" create "$T/base.qcow2" >/dev/null
"$IO" -c 'store permall -P 0x11 150000' -c 'store permall -P 0x12 90000' -c 'store volatilestate -P 0x21 7000' \
    "$T/base.qcow2" >/dev/null
cp "$T/base.qcow2" "$T/work.qcow2"
expect_exit 0 "nvtpm encrypt runs over the logging driver" -- \
    "$NVTPM" encrypt "faults:log=$T/w.log:$T/work.qcow2" --new-key "file=$T/k"
n=$("$TOOLS/wlog-replay" "$T/w.log" count)
bad=0 plain=0 enc=0 mid=""
for ((k = 0; k <= n; k++)); do
    "$TOOLS/wlog-replay" "$T/w.log" apply "$T/base.qcow2" "$T/out.qcow2" "$k"
    if "$IO" -r -c 'load permall -P 0x12 90000' -c 'load volatilestate -P 0x21 7000' "$T/out.qcow2" >/dev/null 2>"$T/e1"; then
        plain=$((plain + 1))
    elif "$IO" -r --key "file=$T/k" -c 'load permall -P 0x12 90000' -c 'load volatilestate -P 0x21 7000' \
        "$T/out.qcow2" >/dev/null 2>"$T/e2"; then
        enc=$((enc + 1))
        [ -z "$mid" ] && [ $k -lt $((n - 4)) ] && mid=$k
    else
        bad=$((bad + 1))
        [ $bad -le 2 ] && echo "  prefix $k: $(cat "$T/e1") / $(cat "$T/e2")"
    fi
done
echo "  $((n + 1)) prefixes: $plain load without a key, $enc with it"
[ $bad -eq 0 ] && pass "every prefix of the encryption loads the original state" || fail "every prefix of the encryption loads the original state" "$bad failed"
[ "$plain" -gt 0 ] && [ "$enc" -gt 0 ] && pass "both phases were crossed" || fail "both phases were crossed"
if [ -n "$mid" ]; then
    "$TOOLS/wlog-replay" "$T/w.log" apply "$T/base.qcow2" "$T/half.qcow2" "$mid"
    expect_exit 0 "running encrypt again on a half-way image finishes it" -- \
        "$NVTPM" encrypt "$T/half.qcow2" --new-key "file=$T/k"
    expect_exit 0 "the finished image loads with the key" -- \
        "$IO" -r --key "file=$T/k" -c 'load permall -P 0x12 90000' "$T/half.qcow2"
    expect_exit 0 "and info says it is no longer half-way" -- "$NVTPM" info "$T/half.qcow2"
    expect_output "encryption: aes-256-gcm$" "encryption: aes-256-gcm"
    python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); sys.exit(0 if bytes([0x12]) * 4096 in d or bytes([0x11]) * 4096 in d else 1)" "$T/half.qcow2" \
        && fail "no plaintext left after finishing" || pass "no plaintext left after finishing"
else
    fail "a half-way prefix was found"
fi
finish
