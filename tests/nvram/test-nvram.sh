#!/usr/bin/env bash
# test-nvram.sh - the NVRAM store through nvtpm's commands and nvram-io:
# formatting and refusals, commits that leave qcow2 metadata alone, keys
# (right, wrong, missing, not needed, passphrase, add, remove, rotate, each
# failure leaving the file byte for byte unchanged), encrypting a plain image,
# EIO and ENOSPC at every write and flush of a commit, damage to every
# structure, and the access lock between processes.
# Usage: test-nvram.sh NVTPM TOOLS_DIR
set -u
. "$(dirname "$0")/../lib.sh"
NVTPM=$1
IO=$2/nvram-io
require qemu-img qemu-io md5sum xxd python3
T=$TEST_TMP
sum() { md5sum <"$1"; }
unchanged() { [ "$(sum "$2")" = "$1" ] && pass "$3: the file is unchanged" || fail "$3: the file is unchanged"; }
blank() { rm -f "$1"; qemu-img create -q -f qcow2 "$1" "${2:-4M}"; }

# --- formatting ------------------------------------------------------------------
blank "$T/a.qcow2"
expect_exit 0 "a blank qcow2 from qemu-img create is formatted on first use" -- \
    "$IO" --tpm2 --format -c 'store permall -P 0x11 3000' -c 'load permall -P 0x11 3000' "$T/a.qcow2"
expect_exit 0 "nvtpm info reads it" -- "$NVTPM" info "$T/a.qcow2"
expect_output "TPM 2.0" "info: TPM 2.0"
expect_output "blob permall +3000 bytes in slot A, sequence 2" "info: permall's slot, sequence and size"
expect_exit 0 "qemu-img check is clean after formatting and a commit" -- qemu-img check "$T/a.qcow2"
blank "$T/blank.qcow2"
s=$(sum "$T/blank.qcow2")
expect_exit 2 "opening a blank image without --format" -- "$IO" -c 'absent permall' "$T/blank.qcow2"
expect_output "is blank" "it says the image is blank"
unchanged "$s" "$T/blank.qcow2" "blank, not formatted"

blank "$T/small.qcow2" 1M
s=$(sum "$T/small.qcow2")
expect_exit 2 "an image too small is refused" -- "$IO" --tpm2 --format -c 'absent permall' "$T/small.qcow2"
expect_output "too small" "it says too small"
unchanged "$s" "$T/small.qcow2" "too small"

blank "$T/other.qcow2"
qemu-io -c 'write -P 0x77 0 64k' "$T/other.qcow2" >/dev/null
s=$(sum "$T/other.qcow2")
expect_exit 2 "an image holding something else is refused" -- "$IO" --tpm2 --format -c 'absent permall' "$T/other.qcow2"
expect_output "not a usable nvtpm NVRAM" "it says it is not an nvtpm NVRAM"
unchanged "$s" "$T/other.qcow2" "foreign data at offset 0"
blank "$T/other2.qcow2"
qemu-io -c 'write -P 0x77 1M 4k' "$T/other2.qcow2" >/dev/null
s=$(sum "$T/other2.qcow2")
expect_exit 2 "data deeper in an image without a superblock is never formatted over" -- \
    "$IO" --tpm2 --format -c 'absent permall' "$T/other2.qcow2"
expect_output "holds data at offset 1048576" "it names the offset"
unchanged "$s" "$T/other2.qcow2" "foreign data at 1 MiB"
expect_exit 8 "a TPM 2.0 image opened for TPM 1.2 is refused" -- "$IO" --tpm1.2 -c 'absent permall' "$T/a.qcow2" 
expect_output "holds a TPM 2.0 state, not a TPM 1.2 one" "it names both versions"

# --- commits never change qcow2 metadata ---------------------------------------------
"$NVTPM" create "$T/m.qcow2" >/dev/null
qemu-img map --output=json "$T/m.qcow2" >"$T/map.before"
size_before=$(stat -c %s "$T/m.qcow2")
cmds=()
for i in $(seq 1 20); do cmds+=(-c "store permall -P $i $((i * 20000))" -c "store volatilestate -P $i $((i * 9000))"); done
expect_exit 0 "40 commits of growing blobs" -- "$IO" "${cmds[@]}" -c 'store savestate -P 9 250000' "$T/m.qcow2"
qemu-img map --output=json "$T/m.qcow2" >"$T/map.after"
cmp -s "$T/map.before" "$T/map.after" && pass "the qcow2 allocation map did not change" || fail "the qcow2 allocation map did not change"
[ "$(stat -c %s "$T/m.qcow2")" = "$size_before" ] && pass "the file did not grow" || fail "the file did not grow"
expect_exit 0 "nvtpm create's image checks clean" -- "$NVTPM" check "$T/m.qcow2"
expect_exit 1 "a blob above its capacity is refused" -- "$IO" -c 'store permall -P 1 600000' "$T/m.qcow2"
expect_output "exceeds its capacity of 585728" "the message names the capacity"

# --- keys ---------------------------------------------------------------------------------
head -c 32 /dev/urandom | xxd -p -c 64 >"$T/k1"
head -c 32 /dev/urandom | xxd -p -c 64 >"$T/k2"
head -c 16 /dev/urandom >"$T/k128.bin"
printf 'correct horse battery staple' >"$T/pw"
printf 'wrong horse' >"$T/pw-wrong"
K1=file=$T/k1 K2=file=$T/k2 PW=pwdfile=$T/pw,iterations=1000
expect_exit 0 "create an encrypted image" -- "$NVTPM" create --key "$K1" "$T/e.qcow2"
expect_exit 0 "commit and load with the right key" -- "$IO" --key "$K1" -c 'store permall -P 0x5e 5000' -c 'load permall -P 0x5e 5000' "$T/e.qcow2"
s=$(sum "$T/e.qcow2")
expect_exit 4 "no key: exit 4" -- "$IO" -c 'load permall' "$T/e.qcow2"
expect_output "e.qcow2 is encrypted; give --key" "no key: the message"
unchanged "$s" "$T/e.qcow2" "no key"
expect_exit 5 "wrong key: exit 5" -- "$IO" --key "$K2" -c 'load permall' "$T/e.qcow2"
expect_output "the key matches no key slot of .*e.qcow2" "wrong key: the message"
unchanged "$s" "$T/e.qcow2" "wrong key"
expect_exit 6 "a key for a plain image: exit 6" -- "$IO" --key "$K1" -c 'load permall' "$T/a.qcow2"
expect_output "is not encrypted, but a key was given" "key not needed: the message"
s2=$(sum "$T/a.qcow2"); unchanged "$s2" "$T/a.qcow2" "key not needed"
expect_exit 5 "nvtpm info with the wrong key is refused by key add" -- "$NVTPM" key add "$T/e.qcow2" --key "$K2" --new-key "$PW"
unchanged "$s" "$T/e.qcow2" "key add with a wrong unlocking key"
! grep -qi "$(cat "$T/k1")" "$T/err" "$T/out" && pass "the key never appears in the output" || fail "the key never appears in the output"
expect_exit 0 "key add: a passphrase" -- "$NVTPM" key add "$T/e.qcow2" --key "$K1" --new-key "$PW"
expect_exit 0 "the passphrase opens the image" -- "$IO" --key "$PW" -c 'load permall -P 0x5e 5000' "$T/e.qcow2"
s=$(sum "$T/e.qcow2")
expect_exit 5 "a wrong passphrase: exit 5" -- "$IO" --key "pwdfile=$T/pw-wrong" -c 'load permall' "$T/e.qcow2"
unchanged "$s" "$T/e.qcow2" "wrong passphrase"
expect_exit 0 "key list" -- "$NVTPM" key list "$T/e.qcow2"
expect_output "key slot 1: passphrase \\(PBKDF2-HMAC-SHA512, 1000 iterations\\)" "key list shows the passphrase slot"
expect_exit 1 "adding a key that opens a slot already is refused" -- "$NVTPM" key add "$T/e.qcow2" --key "$K1" --new-key "$PW"
expect_exit 0 "rotate: add a new key" -- "$NVTPM" key add "$T/e.qcow2" --key "$PW" --new-key "$K2"
expect_exit 0 "rotate: remove the old one (the slot it opens)" -- "$NVTPM" key remove "$T/e.qcow2" --key "$K1"
expect_exit 5 "the removed key no longer opens the image" -- "$IO" --key "$K1" -c 'load permall' "$T/e.qcow2"
# Not even through the older superblock copy: damage the current one, so that
# the other copy is the one read; the removed key must not open it either.
cp "$T/e.qcow2" "$T/e-old.qcow2"
gen0=$(qemu-io -r -c 'read -v 16 1' "$T/e-old.qcow2" | head -1 | awk '{print $2}')
gen1=$(qemu-io -r -c 'read -v 4112 1' "$T/e-old.qcow2" | head -1 | awk '{print $2}')
newer=$([ $((16#$gen0)) -gt $((16#$gen1)) ] && echo 0 || echo 4096)
qemu-io -c "write -P 0 $newer 8" "$T/e-old.qcow2" >/dev/null
expect_exit 5 "the removed key opens neither superblock copy" -- "$IO" -r --key "$K1" -c 'load permall' "$T/e-old.qcow2"
expect_exit 0 "while the current key opens the older copy" -- "$IO" -r --key "$K2" -c 'load permall -P 0x5e 5000' "$T/e-old.qcow2"
expect_exit 0 "the new key does, with the same state" -- "$IO" --key "$K2" -c 'load permall -P 0x5e 5000' "$T/e.qcow2"
expect_exit 0 "remove slot 1 by number" -- "$NVTPM" key remove "$T/e.qcow2" --key "$K2" --slot 1
s=$(sum "$T/e.qcow2")
expect_exit 1 "the last key slot cannot be removed" -- "$NVTPM" key remove "$T/e.qcow2" --key "$K2"
expect_output "is the last one" "the message says why"
unchanged "$s" "$T/e.qcow2" "removing the last slot"
expect_exit 0 "a 128-bit binary key with AES-128-GCM" -- "$NVTPM" create --cipher aes-128-gcm --key "file=$T/k128.bin,format=binary,mode=aes-cbc" "$T/e128.qcow2"
expect_exit 0 "it opens and commits" -- "$IO" --key "file=$T/k128.bin,format=binary" -c 'store volatilestate -P 3 100' -c 'load volatilestate -P 3 100' "$T/e128.qcow2"
expect_exit 0 "a passphrase-only image" -- "$NVTPM" create --key "$PW" "$T/epw.qcow2"
expect_exit 0 "it opens with the passphrase" -- "$IO" --key "$PW" -c 'store permall -P 4 10' "$T/epw.qcow2"
cp "$T/k1" "$T/k-once"
expect_exit 0 "--key ...,remove deletes the key file after reading it" -- "$NVTPM" create --key "file=$T/k-once,remove" "$T/eonce.qcow2"
[ ! -e "$T/k-once" ] && pass "the key file is gone" || fail "the key file is gone"
head -c 12 /dev/urandom | xxd -p >"$T/k96"
expect_exit 1 "a 96-bit key is refused" -- "$NVTPM" create --key "file=$T/k96" "$T/bad.qcow2"
expect_output "96 bits; a key has 128 or 256 bits" "the message says why"
[ ! -e "$T/bad.qcow2" ] && pass "no image was created" || fail "no image was created"
expect_exit 1 "an unknown key option is refused" -- "$NVTPM" create --key "file=$T/k1,colour=blue" "$T/bad.qcow2"
expect_exit 9 "a missing key file" -- "$NVTPM" create --key "file=$T/nonexistent" "$T/bad.qcow2"
expect_exit 0 "a key from a descriptor (fd=3)" -- "$IO" --key fd=3 -c 'load permall -P 0x5e 5000' "$T/e.qcow2" 3<"$T/k2"

# --- encrypting a plain image ----------------------------------------------------------------
"$NVTPM" create "$T/p.qcow2" >/dev/null
secret=SECRET-TPM-STATE-$RANDOM$RANDOM
printf '%s%.0s' $(seq 1 50) >/dev/null
python3 -c "import sys; open(sys.argv[1],'w').write(sys.argv[2] * 100)" "$T/secret" "$secret"
expect_exit 0 "a plain image with state in it" -- "$IO" -c "store permall $T/secret" -c "store permall $T/secret" -c 'store volatilestate -P 7 900' "$T/p.qcow2"
grep -q "$secret" "$T/p.qcow2" && pass "the secret is in the plain file (sanity)" || fail "the secret is in the plain file (sanity)"
expect_exit 0 "nvtpm encrypt" -- "$NVTPM" encrypt "$T/p.qcow2" --new-key "$K1"
! grep -q "$secret" "$T/p.qcow2" && pass "no plaintext copy of the state is left in the file" || fail "no plaintext copy of the state is left in the file"
expect_exit 4 "now a key is needed" -- "$IO" -c 'load permall' "$T/p.qcow2"
expect_exit 0 "and the key loads the same state" -- "$IO" --key "$K1" -c "load permall $T/secret.back" -c 'load volatilestate -P 7 900' "$T/p.qcow2"
cmp -s "$T/secret" "$T/secret.back" && pass "permall survived encryption byte for byte" || fail "permall survived encryption byte for byte"
expect_exit 0 "info: aes-256-gcm, not mid-way" -- "$NVTPM" info "$T/p.qcow2"
expect_output "encryption: aes-256-gcm$" "info says aes-256-gcm"
s=$(sum "$T/p.qcow2")
expect_exit 1 "encrypting twice is refused" -- "$NVTPM" encrypt "$T/p.qcow2" --new-key "$K1"
unchanged "$s" "$T/p.qcow2" "encrypting twice"

# --- EIO and ENOSPC at every write and flush of a commit ----------------------------------------
# Named points, not request numbers: the superblock write (the MANUFACTURED
# flag, first commit after a durable permall only), the slot's first and
# second cluster (a torn slot), the slot and all after it, the commit's flush.
"$NVTPM" create "$T/f.qcow2" >/dev/null
"$IO" -c 'store permall -P 0x31 150000' "$T/f.qcow2" >/dev/null
for rule in write=nvram-super-update:EIO write=nvram-commit-slot:EIO write=nvram-commit-slot/2:ENOSPC \
    write=nvram-commit-slot+:EIO flush=nvram-commit-slot:EIO flush=nvram-commit-slot:ENOSPC; do
    expect_exit 1 "$rule: the commit fails" -- "$IO" -c 'store permall -P 0x32 150000' "faults:$rule:$T/f.qcow2"
    expect_output "committing permall" "$rule: the error says what failed"
    expect_exit 0 "$rule: the previous state still loads" -- "$IO" -r -c 'load permall -P 0x31 150000' "$T/f.qcow2"
done
expect_exit 0 "after all that, a commit works and qemu-img check is clean" -- \
    "$IO" -c 'store permall -P 0x33 10' -c 'load permall -P 0x33 10' "$T/f.qcow2"
expect_exit 0 "qemu-img check" -- qemu-img check "$T/f.qcow2"

# --- damage to every structure ---------------------------------------------------------------------
# poke IMG OFFSET: flip one byte of the virtual disk, through qemu-io
poke() {
    local b
    b=$(qemu-io -r -c "read -v $2 1" "$1" | head -1 | awk '{print $2}')
    qemu-io -c "write -P $(( 0x$b ^ 0xff )) $2 1" "$1" >/dev/null
}
"$NVTPM" create "$T/d.qcow2" >/dev/null
"$IO" -c 'store permall -P 0x41 5000' -c 'store permall -P 0x42 5000' "$T/d.qcow2" >/dev/null
cp "$T/d.qcow2" "$T/d0.qcow2"
for off in 0 20 41 60 200 4063 4064; do
    cp "$T/d0.qcow2" "$T/dd.qcow2"; poke "$T/dd.qcow2" $off
    expect_exit 0 "superblock copy 0 byte $off flipped: copy 1 is used" -- "$IO" -r -c 'load permall -P 0x42 5000' "$T/dd.qcow2"
    expect_output "superblock copy 0 is damaged; using copy 1" "superblock byte $off: a warning names the copy"
done
cp "$T/d0.qcow2" "$T/dd.qcow2"; poke "$T/dd.qcow2" 100; poke "$T/dd.qcow2" $((4096 + 100))
s=$(sum "$T/dd.qcow2")
expect_exit 2 "both superblock copies damaged: refused" -- "$IO" -r -c 'load permall' "$T/dd.qcow2"
expect_output "both superblock copies are damaged" "the message says so"
unchanged "$s" "$T/dd.qcow2" "both superblocks damaged (read-write open too)"
expect_exit 2 "nvtpm check: exit 2" -- "$NVTPM" check "$T/dd.qcow2"
# permall: slot A (64 KiB) holds sequence 2 (0x41), slot B (640 KiB) sequence 3 (0x42)
for off in 0 9 24 33 40 60 72 100 4096 9000; do
    cp "$T/d0.qcow2" "$T/dd.qcow2"; poke "$T/dd.qcow2" $((655360 + off))
    expect_exit 0 "permall slot B byte $off flipped: falls back to slot A" -- "$IO" -r -c 'load permall -P 0x41 5000' "$T/dd.qcow2"
    expect_output "permall slot B is damaged .*; using slot A \\(sequence 2\\)" "slot B byte $off: a warning names the slot"
done
cp "$T/d0.qcow2" "$T/dd.qcow2"; poke "$T/dd.qcow2" $((655360 + 5000)); poke "$T/dd.qcow2" $((65536 + 5000))
expect_exit 2 "both permall slots damaged: a clear error, never an empty TPM" -- "$IO" -r -c 'load permall' "$T/dd.qcow2"
expect_output "both slots of permall are unusable" "the message names the blob"
expect_exit 2 "nvtpm check: both slots damaged is corruption" -- "$NVTPM" check "$T/dd.qcow2"
cp "$T/d0.qcow2" "$T/dd.qcow2"; poke "$T/dd.qcow2" $((655360 + 5000))
expect_exit 0 "nvtpm check: one torn slot is not corruption" -- "$NVTPM" check "$T/dd.qcow2"
expect_output "slot B is damaged" "check reports the damaged slot"
# A slot copied from another blob or another image does not verify.
"$NVTPM" create "$T/d2.qcow2" >/dev/null
"$IO" -c 'store permall -P 0x51 5000' -c 'store permall -P 0x52 5000' "$T/d2.qcow2" >/dev/null
qemu-img convert -O raw "$T/d2.qcow2" "$T/d2.raw"
python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'wb').write(d[655360:655360 + 12288])" \
    "$T/d2.raw" "$T/slotB.raw"
cp "$T/d0.qcow2" "$T/dd.qcow2"
qemu-io -c "write -s $T/slotB.raw 655360 12288" "$T/dd.qcow2" >/dev/null
expect_exit 0 "a slot from another image does not verify: falls back" -- "$IO" -r -c 'load permall -P 0x41 5000' "$T/dd.qcow2"
expect_output "belongs to another image" "the warning says why"

# --- the access lock between processes -------------------------------------------------------------
"$NVTPM" create "$T/l.qcow2" >/dev/null
"$IO" -r -c 'hold-shared 1500' "$T/l.qcow2" >"$T/holder" 2>&1 &
holder=$!
for _ in $(seq 100); do grep -q holding "$T/holder" && break; sleep 0.05; done
start=$(date +%s%N)
expect_exit 0 "a commit waits while a reader holds the shared lock" -- "$IO" -c 'store permall -P 1 100' "$T/l.qcow2"
waited=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$waited" -ge 700 ] && pass "the writer waited for the reader ($waited ms)" || fail "the writer waited for the reader ($waited ms)"
wait $holder
"$IO" -r -c 'hold-shared 2000' "$T/l.qcow2" >"$T/holder" 2>&1 &
holder=$!
for _ in $(seq 100); do grep -q holding "$T/holder" && break; sleep 0.05; done
expect_exit 1 "with a short lock timeout the commit gives up" -- "$IO" --lock-timeout 200 -c 'store permall -P 2 100' "$T/l.qcow2"
expect_output "held by another process" "the message says why"
wait $holder
expect_exit 0 "the state is the one committed before" -- "$IO" -r -c 'load permall -P 1 100' "$T/l.qcow2"
finish
