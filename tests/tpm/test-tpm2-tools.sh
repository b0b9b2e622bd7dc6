#!/usr/bin/env bash
# test-tpm2-tools.sh - nvtpm socket with tpm2-tools through tpm2-tss's swtpm
# TCTI (and its mssim TCTI): random, PCRs, keys, signatures, NV; orderly
# stops and SIGKILLs; restarts on the same image; the command line's checks.
# Usage: test-tpm2-tools.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require tpm2_getrandom tpm2_pcrextend tpm2_nvdefine qemu-img python3
T=$TEST_TMP
IMG=$T/tpm.qcow2
P=$(free_ports 3)
export TPM2TOOLS_TCTI=swtpm:port=$P
ONE=0000000000000000000000000000000000000000000000000000000000000001
EXTENDED=90F4B39548DF55AD6187A1D20D731ECEE78C545B94AFD16F42EF7592D99CD365
ZERO=0000000000000000000000000000000000000000000000000000000000000000

serve() {
    listen_start "$T/server.log" "tcp:$P" "tcp:$((P + 1))" -- "$NVTPM" socket --tpm2 \
        --tpmstate "file=$IMG" --server type=tcp,fd=3 --ctrl type=tcp,fd=4 \
        --flags not-need-init,startup-clear "$@"
}
pcr0() { tpm2_pcrread sha256:0 2>/dev/null | awk '/0 :/ {print $3}' | sed 's/^0x//'; }

serve
swtpm_ioctl --tcp ":$((P + 1))" -g >/dev/null 2>&1 # answered once the server is up
[ -e "$IMG" ] && pass "the image was created on first run" || fail "the image was created on first run" "$(cat "$T/server.log")"
r=$(tpm2_getrandom --hex 16 2>"$T/err")
[[ "$r" =~ ^[0-9a-f]{32}$ ]] && pass "tpm2_getrandom: 16 random bytes" || fail "tpm2_getrandom: 16 random bytes" "$r $(cat "$T/err")"
expect_exit 0 "tpm2_pcrextend" -- tpm2_pcrextend "0:sha256=$ONE"
[ "$(pcr0)" = "$EXTENDED" ] && pass "tpm2_pcrread shows the extended PCR 0" || fail "tpm2_pcrread shows the extended PCR 0" "$(pcr0)"
# No resource manager here: each tool leaves its transient objects loaded, so
# flush them between steps as one must with a bare TPM (3 object slots).
flush() { tpm2_flushcontext -t >/dev/null 2>&1; }
expect_exit 0 "tpm2_createprimary" -- tpm2_createprimary -C o -g sha256 -G ecc -c "$T/primary.ctx"
flush
expect_exit 0 "tpm2_create (an ECC signing key)" -- tpm2_create -C "$T/primary.ctx" -G ecc -u "$T/key.pub" -r "$T/key.priv"
flush
expect_exit 0 "tpm2_load" -- tpm2_load -C "$T/primary.ctx" -u "$T/key.pub" -r "$T/key.priv" -c "$T/key.ctx"
echo "message to sign" >"$T/msg"
expect_exit 0 "tpm2_sign" -- tpm2_sign -c "$T/key.ctx" -g sha256 -o "$T/sig" "$T/msg"
flush
expect_exit 0 "tpm2_verifysignature" -- tpm2_verifysignature -c "$T/key.ctx" -g sha256 -m "$T/msg" -s "$T/sig"
echo "not the message" >"$T/msg2"
flush
expect_exit 1 "tpm2_verifysignature refuses another message" -- tpm2_verifysignature -c "$T/key.ctx" -g sha256 -m "$T/msg2" -s "$T/sig"
expect_exit 0 "tpm2_nvdefine" -- tpm2_nvdefine 0x1500016 -C o -s 32 -a "ownerread|ownerwrite"
printf 'nvtpm keeps this' >"$T/nvdata"
expect_exit 0 "tpm2_nvwrite" -- tpm2_nvwrite 0x1500016 -C o -i "$T/nvdata"
tpm2_flushcontext -t >/dev/null 2>&1

stop_server TERM
[ "$SERVER_STATUS" = 0 ] && pass "SIGTERM: a clean exit" || fail "SIGTERM: a clean exit" "status $SERVER_STATUS: $(cat "$T/server.log")"
expect_exit 0 "the image checks clean after the orderly stop" -- "$NVTPM" check "$IMG"
serve
expect_exit 0 "tpm2_nvread after a restart on the same image" -- tpm2_nvread 0x1500016 -C o -s 16
[ "$(cat "$T/out")" = "nvtpm keeps this" ] && pass "the NV index holds what was written" || fail "the NV index holds what was written" "$(cat "$T/out")"
[ "$(pcr0)" = "$ZERO" ] && pass "a stop stores no volatile state (as swtpm): the restart is a cold boot, PCR 0 reset" \
    || fail "a stop stores no volatile state (as swtpm): the restart is a cold boot, PCR 0 reset" "$(pcr0)"
expect_exit 0 "tpm2_pcrextend" -- tpm2_pcrextend "0:sha256=$ONE"
expect_exit 0 "swtpm_ioctl -v stores the volatile state" -- swtpm_ioctl --tcp ":$((P + 1))" -v
stop_server KILL
serve
[ "$(pcr0)" = "$EXTENDED" ] && pass "the next start resumes from it, also after a SIGKILL: PCR 0 as it was" \
    || fail "the next start resumes from it, also after a SIGKILL: PCR 0 as it was" "$(pcr0)"
expect_exit 0 "swtpm_ioctl -i: INIT resumes once more and deletes it" -- swtpm_ioctl --tcp ":$((P + 1))" -i
stop_server KILL
serve
[ "$(pcr0)" = "$ZERO" ] && pass "then the next start is a cold boot again: PCR 0 is reset" \
    || fail "then the next start is a cold boot again: PCR 0 is reset" "$(pcr0)"
expect_exit 0 "and the NV index survived the SIGKILL" -- tpm2_nvread 0x1500016 -C o -s 16
[ "$(cat "$T/out")" = "nvtpm keeps this" ] && pass "with its data" || fail "with its data"

# A second server on the same image names the owner and exits 7.
expect_exit 7 "a second server on the image is refused (exit 7)" -- \
    "$NVTPM" socket --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$((P + 2))" --ctrl "type=tcp,port=$((P + 2))"
expect_output "is in use by process $SERVER_PID \\(nvtpm\\)" "it names the image's owner"
stop_server TERM

# tpm2-tss's mssim TCTI: prefixed commands on the data port, the platform port beside it.
start_nvtpm "$T/mssim.log" --tpm2 --tpmstate "file=$IMG" --server "type=tcp,port=$P" --platform "port=$((P + 1))"
wait_port $((P + 1)) "$SERVER_PID" || fail "--platform: the server starts" "$(cat "$T/mssim.log")"
MS=mssim:host=127.0.0.1,port=$P
expect_exit 0 "mssim: tpm2_startup" -- env TPM2TOOLS_TCTI="$MS" tpm2_startup -c
expect_exit 0 "mssim: tpm2_getrandom" -- env TPM2TOOLS_TCTI="$MS" tpm2_getrandom --hex 8
expect_exit 0 "mssim: tpm2_nvread" -- env TPM2TOOLS_TCTI="$MS" tpm2_nvread 0x1500016 -C o -s 16
[ "$(cat "$T/out")" = "nvtpm keeps this" ] && pass "mssim: the same NV data" || fail "mssim: the same NV data" "$(cat "$T/out")"
stop_server TERM

# The command line.
expect_exit 0 "--print-capabilities" -- "$NVTPM" socket --print-capabilities
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["type"]=="swtpm" and "tpm-2.0" in d["features"] else 1)' "$T/out" \
    && pass "--print-capabilities prints swtpm's JSON shape" || fail "--print-capabilities prints swtpm's JSON shape" "$(cat "$T/out")"
expect_exit 0 "--print-states" -- "$NVTPM" socket --tpm2 --print-states --tpmstate "file=$IMG"
expect_output '"name": "permall"' "--print-states lists permall"
for bad in "--server type=tcp" "--server type=tcp,port=99999" "--server type=carrier,port=1" \
    "--ctrl type=unixio" "--flags not-need-init,frobnicate" "--server type=tcp,port=1,colour=red" \
    "--tpmstate dir=$T/x,file=$T/y" "--log level=abc" "--frobnicate"; do
    # shellcheck disable=SC2086
    expect_exit 1 "malformed: $bad" -- "$NVTPM" socket --tpm2 --tpmstate "file=$T/never.qcow2" $bad --ctrl "type=tcp,port=$((P + 2))"
    [ "$(wc -l <"$T/err")" -eq 1 ] && pass "malformed: $bad: one line" || fail "malformed: $bad: one line" "$(cat "$T/err")"
done
[ ! -e "$T/never.qcow2" ] && pass "malformed options created nothing" || fail "malformed options created nothing"

# Encrypted images: the key is checked before anything is served.
head -c 32 /dev/urandom | xxd -p -c 64 >"$T/k1"
head -c 32 /dev/urandom | xxd -p -c 64 >"$T/k2"
"$NVTPM" create --key "file=$T/k1" "$T/enc.qcow2" >/dev/null
sum=$(md5sum <"$T/enc.qcow2")
expect_exit 4 "encrypted image, no key: exit 4" -- "$NVTPM" socket --tpm2 --tpmstate "file=$T/enc.qcow2" --server "type=tcp,port=$P"
expect_output "is encrypted; give --key" "no key: the message"
expect_exit 5 "encrypted image, wrong key: exit 5" -- "$NVTPM" socket --tpm2 --tpmstate "file=$T/enc.qcow2" --key "file=$T/k2" --server "type=tcp,port=$P"
[ "$(md5sum <"$T/enc.qcow2")" = "$sum" ] && pass "the refused image is unchanged" || fail "the refused image is unchanged"
IMG=$T/enc.qcow2 serve --key "file=$T/k1"
expect_exit 0 "encrypted image, right key: tpm2_getrandom" -- tpm2_getrandom --hex 8
stop_server TERM
finish
