#!/usr/bin/env bash
# test-swtpm-setup.sh - a VM's TPM made and moved the way libvirt and its
# operators do it. Debian's swtpm_setup manufactures a TPM through nvtpm, as
# `swtpm_setup --tpm "nvtpm socket"` and as libvirt runs it (`swtpm` found on
# the PATH: nvtpm's compatibility link first), plain and encrypted; the TPM
# then boots (CMD_INIT(0) and TPM2_Startup(CLEAR) answer 0 on every start), its
# EK is at 0x81010001 and the EK certificate in NV 0x1c00002 holds that key;
# --print-states and --not-overwrite see the state. Then a TPM that real swtpm
# made and used is served by nvtpm from its folder (imported: the NV data and
# the EK are the same), swtpm and nvtpm exclude each other through the
# folder's .lock, the TPM goes back to swtpm with `export --replace`, and a
# folder where swtpm ran since beside nvtpm's image is refused with a line
# naming both states, nothing touched; with the image moved away, swtpm's
# state is imported.
# Usage: test-swtpm-setup.sh NVTPM COMPAT_DIR
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
COMPAT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
require swtpm swtpm_setup swtpm_ioctl tpm2_nvread tpm2_nvdefine tpm2_readpublic openssl python3
[ -x "$COMPAT/swtpm" ] && pass "the compatibility directory has swtpm" || fail "the compatibility directory has swtpm" "$COMPAT"
T=$TEST_TMP
P=$(free_ports 2)
CTRL=$T/ctrl.sock # for the servers that must not start
export TPM2TOOLS_TCTI=swtpm:port=$P
VMID=nvtpm-test:00000000-0000-0000-0000-000000000001
# what libvirt 9.0 passes (docs/libvirt.md)
SETUP_ARGS=(--tpm2 --vmid "$VMID" --logfile "$T/setup.log" --createek --create-ek-cert
    --create-platform-cert --lock-nvram --not-overwrite)
printf 'libvirt secret value' >"$T/pw"
printf 'not the secret' >"$T/pw-wrong"

# setup_ok NAME -- COMMAND...: swtpm_setup exits 0. It reports only into its
# --logfile (an exit 1 says nothing else), so a failure shows that log's end.
setup_ok() {
    local before=$failed
    expect_exit 0 "$@"
    [ "$failed" = "$before" ] || tail -8 "$T/setup.log" | sed 's/^/  setup.log: /'
}

# serve PROGRAM DIR [ARGS...]: `PROGRAM socket` on DIR with libvirt's
# --tpmstate and --log, the channels on TCP ports P and P+1 (tpm2-tools' swtpm
# TCTI wants both); SERVER_PID is set
serve() {
    local prog=$1 dir=$2
    shift 2
    "$prog" socket --tpm2 --tpmstate "dir=$dir,mode=0600" --ctrl "type=tcp,port=$((P + 1))" \
        --server "type=tcp,port=$P" --log "file=$T/server.log" "$@" >"$T/server.out" 2>&1 &
    SERVER_PID=$!
    wait_port $((P + 1)) "$SERVER_PID" || fail "$prog serves $dir" "$(cat "$T/server.out" "$T/server.log" 2>/dev/null)"
}
stop() { # NAME: SHUTDOWN through swtpm_ioctl, as libvirt stops it; exit status 0
    swtpm_ioctl --tcp ":$((P + 1))" -s >/dev/null 2>&1
    wait "$SERVER_PID"
    local rc=$?
    [ "$rc" = 0 ] && pass "$1" || fail "$1" "exit $rc: $(cat "$T/server.out")"
}
# boots NAME: a VM start (INIT(0), Startup(CLEAR): "0 0")
boots() {
    local r
    r=$(python3 "$HERE/startup.py" "tcp:$((P + 1))" "$P" 2>&1)
    [ "$r" = "0 0" ] && pass "$1: INIT and TPM2_Startup(CLEAR) answer 0" ||
        fail "$1: INIT and TPM2_Startup(CLEAR) answer 0" "$r $(cat "$T/server.out")"
}
# ek_matches NAME: the EK at 0x81010001 and the key in the certificate at 0x1c00002
ek_matches() {
    rm -f "$T/ek.pem" "$T/cert.der"
    tpm2_readpublic -c 0x81010001 -f pem -o "$T/ek.pem" >/dev/null 2>"$T/err" &&
        tpm2_nvread 0x1c00002 -o "$T/cert.der" 2>>"$T/err" &&
        openssl x509 -inform der -in "$T/cert.der" -noout -pubkey >"$T/cert-key.pem" 2>>"$T/err" &&
        cmp -s "$T/ek.pem" "$T/cert-key.pem" && pass "$1: the EK certificate in NV 0x1c00002 holds the EK at 0x81010001" ||
        fail "$1: the EK certificate in NV 0x1c00002 holds the EK at 0x81010001" "$(cat "$T/err")"
    cp "$T/ek.pem" "$T/ek-$2.pem" 2>/dev/null
}
nv_is() { # NAME WANT: NV index 0x1500016 holds WANT
    local got
    got=$(tpm2_nvread 0x1500016 -C o 2>"$T/err")
    [ "$got" = "$2" ] && pass "$1" || fail "$1" "read '$got': $(cat "$T/err")"
}
nv_write() { # DATA: into NV index 0x1500016 (defined if needed)
    tpm2_nvdefine 0x1500016 -C o -s 7 -a "ownerread|ownerwrite" >/dev/null 2>&1
    printf '%s' "$1" | tpm2_nvwrite 0x1500016 -C o -i - 2>"$T/err" && pass "NV written: $1" ||
        fail "NV written: $1" "$(cat "$T/err")"
}
sums() { sha256sum "$1"/tpm2-00.* 2>/dev/null; }

# --- 1. swtpm_setup --tpm "nvtpm socket" ----------------------------------------------------------
mkdir "$T/a"
setup_ok "swtpm_setup --tpm 'nvtpm socket' with libvirt's arguments" -- \
    swtpm_setup --tpm "$NVTPM socket" --tpm-state "$T/a" "${SETUP_ARGS[@]}"
[ -f "$T/a/tpm-00.qcow2" ] && [ ! -e "$T/a/tpm2-00.permall" ] && pass "the state is nvtpm's image in the folder" ||
    fail "the state is nvtpm's image in the folder" "$(ls -la "$T/a")"
grep -q "Successfully authored TPM state" "$T/setup.log" && pass "swtpm_setup says the TPM is made" ||
    fail "swtpm_setup says the TPM is made" "$(tail -5 "$T/setup.log")"
out=$("$COMPAT/swtpm" socket --tpm2 --print-states --tpmstate "dir=$T/a")
[[ "$out" =~ ^\{\ \"type\":\ \"swtpm\",\ \"states\":\ \[\ \{\"name\":\ \"permall\",\ \"size\":\ [0-9]+\}\ \]\ \}$ ]] &&
    pass "--print-states: swtpm's text, the permall there" || fail "--print-states: swtpm's text, the permall there" "$out"
sum=$(sha256sum <"$T/a/tpm-00.qcow2")
setup_ok "swtpm_setup --not-overwrite on it again: exit 0" -- \
    swtpm_setup --tpm "$NVTPM socket" --tpm-state "$T/a" "${SETUP_ARGS[@]}"
[ "$(sha256sum <"$T/a/tpm-00.qcow2")" = "$sum" ] && pass "and the TPM is left as it was" || fail "and the TPM is left as it was"
for run in 1 2; do
    serve "$NVTPM" "$T/a"
    boots "made through nvtpm, VM start $run"
    ek_matches "made through nvtpm, VM start $run" a
    stop "made through nvtpm, VM start $run: SHUTDOWN, exit 0"
done

# --- 2. as libvirt runs it: swtpm from the PATH, encrypted ----------------------------------------
mkdir "$T/b"
setup_ok "PATH=compat: swtpm_setup --pwdfile-fd --cipher aes-256-cbc (libvirt's encrypted TPM)" -- \
    env PATH="$COMPAT:$PATH" swtpm_setup --tpm-state "$T/b" --pwdfile-fd 3 --cipher aes-256-cbc \
    "${SETUP_ARGS[@]}" 3<"$T/pw"
"$NVTPM" info "$T/b/tpm-00.qcow2" 2>&1 | grep -q "^encryption: aes-256-gcm" && pass "nvtpm made an encrypted image" ||
    fail "nvtpm made an encrypted image" "$("$NVTPM" info "$T/b/tpm-00.qcow2" 2>&1)"
serve "$COMPAT/swtpm" "$T/b" --key pwdfd=4,mode=aes-256-cbc 4<"$T/pw"
boots "encrypted, the right key"
ek_matches "encrypted, the right key" b
stop "encrypted: SHUTDOWN, exit 0"
sum=$(sha256sum <"$T/b/tpm-00.qcow2")
expect_exit 5 "encrypted, a wrong key: exit 5" -- "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/b" \
    --ctrl "type=unixio,path=$CTRL" --key pwdfd=4,mode=aes-256-cbc 4<"$T/pw-wrong"
[ "$(sha256sum <"$T/b/tpm-00.qcow2")" = "$sum" ] && pass "and the image is unchanged" || fail "and the image is unchanged"

# --- 3. a TPM real swtpm made and used, then served by nvtpm -------------------------------------
mkdir "$T/c"
setup_ok "swtpm_setup with real swtpm" -- swtpm_setup --tpm "$(command -v swtpm) socket" --tpm-state "$T/c" "${SETUP_ARGS[@]}"
serve swtpm "$T/c"
boots "under swtpm"
ek_matches "under swtpm" swtpm
nv_write swtpm-1
stop "swtpm stops"
before=$(sums "$T/c")
out=$("$COMPAT/swtpm" socket --tpm2 --print-states --tpmstate "dir=$T/c")
[[ "$out" == *'"name": "permall"'* ]] && pass "--print-states in swtpm's folder lists swtpm's permall" ||
    fail "--print-states in swtpm's folder lists swtpm's permall" "$out"
serve "$COMPAT/swtpm" "$T/c"
boots "nvtpm in swtpm's folder"
nv_is "nvtpm serves that TPM: swtpm's NV data" swtpm-1
ek_matches "nvtpm in swtpm's folder" nvtpm
cmp -s "$T/ek-swtpm.pem" "$T/ek-nvtpm.pem" && pass "the same EK as under swtpm" || fail "the same EK as under swtpm"
grep -q "imported swtpm's TPM 2.0 state from $T/c" "$T/server.log" && pass "the log says it imported swtpm's files" ||
    fail "the log says it imported swtpm's files" "$(cat "$T/server.log")"
expect_exit 1 "swtpm cannot start a TPM on the folder meanwhile (its .lock)" -- \
    swtpm socket --tpm2 --tpmstate "dir=$T/c" --ctrl "type=unixio,path=$T/other.sock" --flags not-need-init
expect_output "Could not lock access to lockfile" "swtpm says the folder is locked"
nv_write nvtpm-2
stop "nvtpm stops"
[ "$(sums "$T/c")" = "$before" ] && pass "swtpm's files are left as they were" || fail "swtpm's files are left as they were"
serve "$COMPAT/swtpm" "$T/c"
boots "nvtpm's next start"
nv_is "the next start serves the image, not the files again" nvtpm-2
stop "nvtpm stops"

# --- 4. back to swtpm, and a folder where swtpm ran since ----------------------------------------
expect_exit 1 "export into the folder without --replace is refused" -- "$NVTPM" export "$T/c/tpm-00.qcow2" --to-dir "$T/c"
expect_exit 0 "export --replace gives the state back to swtpm's files" -- \
    "$NVTPM" export "$T/c/tpm-00.qcow2" --to-dir "$T/c" --replace
serve swtpm "$T/c"
boots "swtpm again"
nv_is "swtpm reads what the guest wrote under nvtpm" nvtpm-2
expect_exit 7 "nvtpm cannot start on the folder while swtpm runs (exit 7)" -- \
    "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/c" --ctrl "type=unixio,path=$T/other.sock"
nv_write swtpm-3
stop "swtpm stops"
sum=$(sha256sum <"$T/c/tpm-00.qcow2")
before=$(sums "$T/c")
expect_exit 1 "nvtpm on the image and swtpm's newer files side by side: exit 1" -- \
    "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/c" --ctrl "type=unixio,path=$T/other.sock"
expect_output "$T/c holds two TPM states: the image $T/c/tpm-00.qcow2 \(last written [-0-9:. +]+\) and swtpm's tpm2-00.permall.* \(written [-0-9:. +]+, after the image\)" \
    "the one line names both states and their times"
[ "$(sha256sum <"$T/c/tpm-00.qcow2")" = "$sum" ] && [ "$(sums "$T/c")" = "$before" ] &&
    [ "$(ls "$T/c" | grep -c tpm-00)" = 1 ] && [ ! -e "$T/other.sock" ] &&
    pass "nothing is touched: the image, swtpm's files, no other file, no socket" ||
    fail "nothing is touched: the image, swtpm's files, no other file, no socket" "$(ls -la "$T/c")"
expect_exit 1 "--print-states refuses the same folder alike" -- \
    "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/c" --print-states
mv "$T/c/tpm-00.qcow2" "$T/c-image.bak"
serve "$COMPAT/swtpm" "$T/c"
boots "nvtpm, with the image moved away as docs/libvirt.md says"
nv_is "swtpm's state is served, imported" swtpm-3
stop "nvtpm stops"

# --- 5. swtpm's encrypted files -------------------------------------------------------------------
mkdir "$T/d"
setup_ok "swtpm_setup with real swtpm, encrypted (--pwdfile)" -- swtpm_setup --tpm "$(command -v swtpm) socket" \
    --tpm-state "$T/d" --pwdfile "$T/pw" --cipher aes-256-cbc "${SETUP_ARGS[@]}"
serve swtpm "$T/d" --key "pwdfile=$T/pw,mode=aes-256-cbc"
boots "encrypted under swtpm"
nv_write swtpm-e
stop "swtpm stops"
expect_exit 4 "nvtpm without the key: exit 4" -- "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/d" \
    --ctrl "type=unixio,path=$T/other.sock"
expect_exit 5 "with a wrong key: exit 5" -- "$COMPAT/swtpm" socket --tpm2 --tpmstate "dir=$T/d" \
    --ctrl "type=unixio,path=$T/other.sock" --key pwdfd=4,mode=aes-256-cbc 4<"$T/pw-wrong"
[ ! -e "$T/d/tpm-00.qcow2" ] && [ ! -e "$T/d/tpm-00.qcow2.importing" ] && pass "and no image is left" ||
    fail "and no image is left" "$(ls -la "$T/d")"
serve "$COMPAT/swtpm" "$T/d" --key pwdfd=4,mode=aes-256-cbc 4<"$T/pw"
boots "encrypted swtpm state under nvtpm"
nv_is "its NV data" swtpm-e
stop "nvtpm stops"
"$NVTPM" info "$T/d/tpm-00.qcow2" --key "pwdfile=$T/pw" 2>&1 | grep -q "^encryption: aes-256-gcm" &&
    pass "the image is encrypted" || fail "the image is encrypted" "$("$NVTPM" info "$T/d/tpm-00.qcow2" 2>&1)"
finish
