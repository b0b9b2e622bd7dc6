#!/usr/bin/env bash
# test-swtpm-interop.sh - Debian's swtpm-tools and swtpm against nvtpm:
# swtpm_ioctl drives nvtpm's control channel (-i, -s, --stop, -c, -e,
# --save/--load, --info, -v), and state blobs move between swtpm and nvtpm in
# both directions, an NV index written under one read back under the other.
# Usage: test-swtpm-interop.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm swtpm_ioctl tpm2_nvdefine python3
T=$TEST_TMP
P=$(free_ports 4)
CTRL=$T/ctrl.sock
IO="swtpm_ioctl --tcp 127.0.0.1:$((P + 1))" # the swtpm TCTI wants control on data port + 1


# --- swtpm_ioctl as nvtpm's control client --------------------------------------------------
serve_nvtpm "$T/a.qcow2"
expect_exit 0 "swtpm_ioctl -i (INIT)" -- $IO -i
expect_exit 0 "swtpm_ioctl -e (established flag)" -- $IO -e
expect_output "tpmEstablished is [01]" "-e prints the flag"
expect_exit 0 "swtpm_ioctl --info 1" -- $IO --info 1
expect_output '"TPMSpecification":\{"family":"2.0"' "--info: libtpms's JSON"
expect_exit 0 "swtpm_ioctl -v (STORE_VOLATILE)" -- $IO -v
expect_exit 0 "swtpm_ioctl -c (CANCEL)" -- $IO -c
nv $P tpm2_startup -c >/dev/null 2>&1
expect_exit 0 "an NV index written through the data channel" -- nv $P tpm2_nvdefine 0x1500020 -C o -s 8 -a "ownerread|ownerwrite"
printf 'nvtpm->x' >"$T/d1"
nv $P tpm2_nvwrite 0x1500020 -C o -i "$T/d1" >/dev/null 2>&1
expect_exit 0 "swtpm_ioctl --save permanent" -- $IO --save permanent "$T/perm.blob"
expect_exit 0 "swtpm_ioctl --save volatile" -- $IO --save volatile "$T/vol.blob"
[ -s "$T/perm.blob" ] && [ -s "$T/vol.blob" ] && pass "both blobs have content" || fail "both blobs have content"
expect_exit 0 "swtpm_ioctl --stop" -- $IO --stop
expect_exit 1 "GET_STATEBLOB on a stopped TPM fails as swtpm's does" -- $IO --save permanent "$T/x.blob"
expect_exit 0 "swtpm_ioctl --load permanent (stopped)" -- $IO --load permanent "$T/perm.blob"
expect_exit 0 "swtpm_ioctl --load volatile" -- $IO --load volatile "$T/vol.blob"
expect_exit 0 "swtpm_ioctl -i after the loads" -- $IO -i
expect_exit 0 "the state is back: nvread" -- nv $P tpm2_nvread 0x1500020 -C o -s 8
[ "$(cat "$T/out")" = "nvtpm->x" ] && pass "with the same data" || fail "with the same data" "$(cat "$T/out")"
expect_exit 0 "swtpm_ioctl -s (SHUTDOWN)" -- $IO -s
for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$SERVER_PID" 2>/dev/null && pass "the server exited after SHUTDOWN" || fail "the server exited after SHUTDOWN"
wait "$SERVER_PID"
[ $? = 0 ] && pass "with status 0" || fail "with status 0"

# --- a UNIX control socket, as QEMU and libvirt use ------------------------------------------
start_nvtpm "$T/unix.log" --tpm2 --tpmstate "file=$T/u.qcow2" --ctrl "type=unixio,path=$CTRL"
wait_unix "$CTRL" "$SERVER_PID" || fail "a UNIX control socket: the server starts" "$(cat "$T/unix.log")"
[ "$(stat -c %a "$CTRL")" = 600 ] && pass "the UNIX control socket is mode 0600" || fail "the UNIX control socket is mode 0600" "$(stat -c %a "$CTRL")"
expect_exit 0 "swtpm_ioctl --unix -i" -- swtpm_ioctl --unix "$CTRL" -i
expect_exit 0 "swtpm_ioctl --unix --info 2" -- swtpm_ioctl --unix "$CTRL" --info 2
expect_output '"TPMAttributes"' "--info 2: the attributes"
expect_exit 0 "swtpm_ioctl --unix -s" -- swtpm_ioctl --unix "$CTRL" -s
wait "$SERVER_PID"
[ ! -e "$CTRL" ] && pass "the socket file is removed at exit" || fail "the socket file is removed at exit"

# --- swtpm -> nvtpm ----------------------------------------------------------------------------
serve_swtpm "$T/sw" --flags not-need-init,startup-clear
nv $((P + 2)) tpm2_nvdefine 0x1500021 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
printf 'swtpm->n' >"$T/d2"
expect_exit 0 "an NV index written under swtpm" -- nv $((P + 2)) tpm2_nvwrite 0x1500021 -C o -i "$T/d2"
expect_exit 0 "swtpm_ioctl --save permanent from swtpm" -- swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --save permanent "$T/sw-perm.blob"
expect_exit 0 "swtpm_ioctl --save volatile from swtpm" -- swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --save volatile "$T/sw-vol.blob"
kill -TERM $SWTPM_PID; wait $SWTPM_PID 2>/dev/null
serve_nvtpm "$T/b.qcow2"
expect_exit 0 "swtpm's permanent blob loads into nvtpm" -- $IO --load permanent "$T/sw-perm.blob"
expect_exit 0 "and its volatile blob" -- $IO --load volatile "$T/sw-vol.blob"
expect_exit 0 "INIT" -- $IO -i
expect_exit 0 "the NV index written under swtpm reads back under nvtpm" -- nv $P tpm2_nvread 0x1500021 -C o -s 8
[ "$(cat "$T/out")" = "swtpm->n" ] && pass "with swtpm's data" || fail "with swtpm's data" "$(cat "$T/out")"

# --- nvtpm -> swtpm ------------------------------------------------------------------------------
printf 'n->swtpm' >"$T/d3"
nv $P tpm2_nvdefine 0x1500022 -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
expect_exit 0 "an NV index written under nvtpm" -- nv $P tpm2_nvwrite 0x1500022 -C o -i "$T/d3"
expect_exit 0 "nvtpm's permanent blob saved" -- $IO --save permanent "$T/n-perm.blob"
expect_exit 0 "nvtpm's volatile blob saved" -- $IO --save volatile "$T/n-vol.blob"
stop_server TERM
serve_swtpm "$T/sw2"
expect_exit 0 "nvtpm's permanent blob loads into swtpm" -- swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --load permanent "$T/n-perm.blob"
expect_exit 0 "and its volatile blob" -- swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) --load volatile "$T/n-vol.blob"
expect_exit 0 "INIT on swtpm" -- swtpm_ioctl --tcp 127.0.0.1:$((P + 3)) -i
expect_exit 0 "the NV index written under nvtpm reads back under swtpm" -- nv $((P + 2)) tpm2_nvread 0x1500022 -C o -s 8
[ "$(cat "$T/out")" = "n->swtpm" ] && pass "with nvtpm's data" || fail "with nvtpm's data" "$(cat "$T/out")"
kill -TERM $SWTPM_PID; wait $SWTPM_PID 2>/dev/null
finish
