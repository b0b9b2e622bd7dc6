#!/usr/bin/env bash
# test-migration-key.sh - --migration-key against swtpm 0.7 itself: state blobs
# encrypted by swtpm load into nvtpm and the reverse, for each kind of key
# (a passphrase through PBKDF2 or SHA-512, raw 128- and 256-bit keys); a
# missing or wrong key is refused with swtpm's result codes and loses nothing;
# a blob swtpm encrypted with its state key (--key) loads with the same --key.
# Usage: test-migration-key.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm swtpm_ioctl tpm2_nvdefine python3
T=$TEST_TMP
P=$(free_ports 4)
IO="swtpm_ioctl --tcp 127.0.0.1:$((P + 1))"
SWIO="swtpm_ioctl --tcp 127.0.0.1:$((P + 3))"
CTRLPY="python3 $(dirname "$0")/ctrl.py"

printf 'correct horse battery staple\n' >"$T/pw"
printf 'another passphrase\n' >"$T/pw-wrong"
printf '00112233445566778899aabbccddeeff\n' >"$T/k128"
printf '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n' >"$T/k256"
printf 'ffeeddccbbaa99887766554433221100\n' >"$T/k128-wrong"

stop_swtpm() { $SWIO -s >/dev/null 2>&1; wait "$SWTPM_PID" 2>/dev/null; }
stop_nvtpm() { $IO -s >/dev/null 2>&1; wait "$SERVER_PID"; }
# blob_flags FILE: the header's flags word, in hex
blob_flags() { python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); print("%04x" % int.from_bytes(b[4:6], "big"))' "$1"; }
write_nv() { # PORT INDEX DATA
    nv "$1" tpm2_nvdefine "$2" -C o -s 8 -a "ownerread|ownerwrite" >/dev/null 2>&1
    printf '%s' "$3" >"$T/data"
    nv "$1" tpm2_nvwrite "$2" -C o -i "$T/data"
}
check_nv() { # PORT INDEX DATA NAME
    expect_exit 0 "$4: nvread" -- nv "$1" tpm2_nvread "$2" -C o -s 8
    [ "$(cat "$T/out")" = "$3" ] && pass "$4: the data" || fail "$4: the data" "$(cat "$T/out")"
}
init_and_check() { # INDEX DATA NAME: INIT and TPM2_Startup on nvtpm, then check_nv
    expect_exit 0 "$3: INIT" -- $IO -i
    nv $P tpm2_startup -c >/dev/null 2>&1
    check_nv $P "$1" "$2" "$3"
}

# swtpm -> nvtpm with KEYSPEC (the same --migration-key on both sides); FLAGS
# is what the blob's header must say.
swtpm_to_nvtpm() { # NAME KEYSPEC FLAGS INDEX
    local name=$1 key=$2 flags=$3 index=$4 dir=$T/sw-$4
    serve_swtpm "$dir" --flags not-need-init,startup-clear --migration-key "$key"
    expect_exit 0 "$name: an NV index written under swtpm" -- write_nv $((P + 2)) "$index" "d${index: -7}"
    expect_exit 0 "$name: swtpm saves the permanent blob" -- $SWIO --save permanent "$T/$index.perm"
    expect_exit 0 "$name: and the volatile one" -- $SWIO --save volatile "$T/$index.vol"
    stop_swtpm
    [ "$(blob_flags "$T/$index.perm")" = "$flags" ] && pass "$name: swtpm's blob has flags $flags" ||
        fail "$name: swtpm's blob has flags $flags" "$(blob_flags "$T/$index.perm")"
    serve_nvtpm "$T/$index.qcow2" --migration-key "$key"
    expect_exit 0 "$name: the permanent blob loads into nvtpm" -- $IO --load permanent "$T/$index.perm"
    expect_exit 0 "$name: the volatile blob too" -- $IO --load volatile "$T/$index.vol"
    expect_exit 0 "$name: INIT" -- $IO -i
    check_nv $P "$index" "d${index: -7}" "$name: swtpm's NV index under nvtpm"
    stop_nvtpm
}

# nvtpm -> swtpm likewise.
nvtpm_to_swtpm() { # NAME KEYSPEC FLAGS INDEX
    local name=$1 key=$2 flags=$3 index=$4
    serve_nvtpm "$T/n$index.qcow2" --flags not-need-init,startup-clear --migration-key "$key"
    expect_exit 0 "$name: an NV index written under nvtpm" -- write_nv $P "$index" "d${index: -7}"
    expect_exit 0 "$name: nvtpm saves the permanent blob" -- $IO --save permanent "$T/n$index.perm"
    expect_exit 0 "$name: and the volatile one" -- $IO --save volatile "$T/n$index.vol"
    stop_nvtpm
    [ "$(blob_flags "$T/n$index.perm")" = "$flags" ] && pass "$name: nvtpm's blob has flags $flags" ||
        fail "$name: nvtpm's blob has flags $flags" "$(blob_flags "$T/n$index.perm")"
    serve_swtpm "$T/sw-n$index" --migration-key "$key"
    expect_exit 0 "$name: the permanent blob loads into swtpm" -- $SWIO --load permanent "$T/n$index.perm"
    expect_exit 0 "$name: the volatile blob too" -- $SWIO --load volatile "$T/n$index.vol"
    expect_exit 0 "$name: INIT on swtpm" -- $SWIO -i
    check_nv $((P + 2)) "$index" "d${index: -7}" "$name: nvtpm's NV index under swtpm"
    stop_swtpm
}

# Flags: 0x02 encrypted with the migration key, 0x04 migration data, 0x10 256 bits.
swtpm_to_nvtpm "passphrase (PBKDF2), swtpm->nvtpm" "pwdfile=$T/pw" 0006 0x1500030
nvtpm_to_swtpm "passphrase (PBKDF2), nvtpm->swtpm" "pwdfile=$T/pw" 0006 0x1500031
swtpm_to_nvtpm "passphrase, kdf=sha512, 256 bits, swtpm->nvtpm" "pwdfile=$T/pw,kdf=sha512,mode=aes-256-cbc" 0016 0x1500032
nvtpm_to_swtpm "passphrase, kdf=sha512, 256 bits, nvtpm->swtpm" "pwdfile=$T/pw,kdf=sha512,mode=aes-256-cbc" 0016 0x1500033
swtpm_to_nvtpm "raw 128-bit key, swtpm->nvtpm" "file=$T/k128,format=hex,mode=aes-cbc" 0006 0x1500034
nvtpm_to_swtpm "raw 256-bit key, nvtpm->swtpm" "file=$T/k256,format=hex,mode=aes-256-cbc" 0016 0x1500035

# --- refusals: the TPM keeps its state ---------------------------------------------------------
serve_nvtpm "$T/keep.qcow2" --flags not-need-init,startup-clear
write_nv $P 0x1500040 keepme!! >/dev/null 2>&1
expect_exit 0 "STOP before the refused loads" -- $IO --stop
expect_exit 1 "no --migration-key: swtpm's encrypted blob is refused" -- $IO --load permanent "$T/0x1500030.perm"
expect_output "PTM_SET_STATEBLOB: 0xd" "with swtpm's result, key not found (0x0d)"
grep -q "encrypted with the migration key, none given" "$T/nvtpm.log" &&
    pass "the log says why" || fail "the log says why" "$(cat "$T/nvtpm.log")"
init_and_check 0x1500040 keepme!! "the state from before"
stop_nvtpm
serve_nvtpm "$T/keep.qcow2" --migration-key "pwdfile=$T/pw-wrong"
expect_exit 1 "a wrong passphrase: refused" -- $IO --load permanent "$T/0x1500030.perm"
expect_output "PTM_SET_STATEBLOB: 0x21" "with swtpm's result, decrypt error (0x21)"
grep -q "HMAC does not match" "$T/nvtpm.log" && pass "the log names the HMAC" ||
    fail "the log names the HMAC" "$(cat "$T/nvtpm.log")"
expect_exit 1 "a blob of a 256-bit key with a 128-bit one: refused" -- $IO --load permanent "$T/0x1500032.perm"
expect_output "PTM_SET_STATEBLOB: 0x21" "also as a decrypt error"
init_and_check 0x1500040 keepme!! "the state after two refusals"
stop_nvtpm
serve_nvtpm "$T/keep.qcow2" --migration-key "file=$T/k128-wrong"
expect_exit 1 "a wrong raw key: refused" -- $IO --load permanent "$T/0x1500034.perm"
expect_output "PTM_SET_STATEBLOB: 0x21" "decrypt error"
stop_nvtpm

# A plain blob is accepted by a server with a migration key (swtpm does too).
serve_swtpm "$T/sw-plain" --flags not-need-init,startup-clear
write_nv $((P + 2)) 0x1500041 plainblb >/dev/null 2>&1
$SWIO --save permanent "$T/plain.perm" >/dev/null
stop_swtpm
[ "$(blob_flags "$T/plain.perm")" = 0004 ] && pass "swtpm without a key: a plain blob" || fail "swtpm without a key: a plain blob"
serve_nvtpm "$T/plain.qcow2" --migration-key "pwdfile=$T/pw"
expect_exit 0 "a plain blob loads into a server with a migration key" -- $IO --load permanent "$T/plain.perm"
init_and_check 0x1500041 plainblb "the plain blob's NV index"
stop_nvtpm

# --- a blob encrypted with swtpm's state key -----------------------------------------------------
# swtpm_ioctl asks for decrypted blobs; a client that does not (flags 0 in
# GET_STATEBLOB) gets one encrypted with swtpm's --key: header flag 0x01
# (with 0x04, migration data).
serve_swtpm "$T/sw-state" --flags not-need-init,startup-clear --key "file=$T/k128,mode=aes-cbc"
write_nv $((P + 2)) 0x1500042 statekey >/dev/null 2>&1
$CTRLPY tcp:$((P + 3)) 0000000c000000000000000100000000 >"$T/get.hex"
stop_swtpm
python3 -c 'import sys; h=open(sys.argv[1]).read().split()[0]; open(sys.argv[2],"wb").write(bytes.fromhex(h)[16:])' "$T/get.hex" "$T/state.perm"
[ "$(blob_flags "$T/state.perm")" = 0005 ] && pass "swtpm's blob encrypted with its state key (flags 0005)" ||
    fail "swtpm's blob encrypted with its state key (flags 0005)" "$(blob_flags "$T/state.perm")"
serve_nvtpm "$T/state-nokey.qcow2"
expect_exit 1 "without --key it is refused" -- $IO --load permanent "$T/state.perm"
expect_output "PTM_SET_STATEBLOB: 0xd" "key not found"
stop_nvtpm
serve_nvtpm "$T/state.qcow2" --key "file=$T/k128,mode=aes-cbc"
expect_exit 0 "with swtpm's --key it loads" -- $IO --load permanent "$T/state.perm"
init_and_check 0x1500042 statekey "the NV index from swtpm's state-key blob"
stop_nvtpm
finish
