#!/usr/bin/env bash
# test-import-export.sh - `nvtpm import` and `nvtpm export` against swtpm
# itself: an NV index written under swtpm survives swtpm -> nvtpm -> swtpm;
# plain files come back byte for byte (TPM 2.0 and 1.2); files encrypted with
# swtpm's key (a passphrase both ways, a raw 256-bit key to swtpm); --new-key; and
# the refusals: an existing image or state file, a server owning the image,
# a swtpm running on the folder,
# missing/wrong/unneeded keys, damaged files, a state libtpms refuses - each
# with its exit code and nothing written.
# Usage: test-import-export.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../tpm/common.sh"
NVTPM=$1
require swtpm swtpm_ioctl tpm2_nvdefine tpm2_nvwrite tpm2_nvread python3
T=$TEST_TMP
P=$(free_ports 4)
stamp() { echo "$(sha256sum <"$1") $(stat -c %Y.%y "$1")"; }
# flags FILE: the header flags of a state file (0x01 encrypted, 0x08 256-bit key)
flags() { python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); print(b[4]<<8|b[5])' "$1"; }
# write_index PORT INDEX TEXT / read_index PORT INDEX: through tpm2-tools
write_index() {
    nv "$1" tpm2_nvdefine "$2" -C o -s ${#3} -a "ownerread|ownerwrite" >/dev/null 2>>"$T/tools.err" &&
        printf '%s' "$3" | nv "$1" tpm2_nvwrite "$2" -C o -i - 2>>"$T/tools.err"
}
read_index() { nv "$1" tpm2_nvread "$2" -C o 2>>"$T/tools.err"; }
stop_swtpm() { swtpm_ioctl --tcp ":$((P + 3))" -s >/dev/null 2>&1; wait "$SWTPM_PID" 2>/dev/null; }
no_file() { [ ! -e "$1" ] && pass "$2" || fail "$2" "$1 exists"; }

# --- swtpm -> nvtpm -> swtpm: the NV index survives -------------------------------------------
serve_swtpm "$T/sw1" --flags not-need-init,startup-clear
write_index $((P + 2)) 0x1500060 under-swtpm && pass "swtpm: NV index 0x1500060 written" ||
    fail "swtpm: NV index 0x1500060 written" "$(cat "$T/tools.err")"
swtpm_ioctl --tcp ":$((P + 3))" -v >/dev/null # its volatile state, as a file too
expect_exit 7 "import while swtpm runs on the folder: busy (7)" -- \
    "$NVTPM" import "$T/a.qcow2" --from-dir "$T/sw1"
expect_output "holds its .lock" "it says swtpm holds the folder's lock"
no_file "$T/a.qcow2" "and makes no image"
stop_swtpm
expect_exit 0 "import of swtpm's folder" -- "$NVTPM" import "$T/a.qcow2" --from-dir "$T/sw1"
expect_output "TPM 2.0 state \(permall, volatilestate\)" "it names what it imported"
expect_exit 0 "the new image validates" -- "$NVTPM" validate "$T/a.qcow2"
serve_nvtpm "$T/a.qcow2" --flags not-need-init,startup-clear
[ "$(read_index $P 0x1500060)" = under-swtpm ] && pass "nvtpm reads swtpm's NV index" ||
    fail "nvtpm reads swtpm's NV index" "$(cat "$T/tools.err" "$T/nvtpm.log")"
write_index $P 0x1500061 under-nvtpm && pass "nvtpm: a second NV index written" ||
    fail "nvtpm: a second NV index written" "$(cat "$T/tools.err")"
expect_exit 7 "export while the server owns the image: busy (7)" -- \
    "$NVTPM" export "$T/a.qcow2" --to-dir "$T/busy"
no_file "$T/busy/tpm2-00.permall" "and no state file is written"
stop_server TERM
before=$(stamp "$T/a.qcow2")
expect_exit 0 "export to a new folder" -- "$NVTPM" export "$T/a.qcow2" --to-dir "$T/sw2"
[ "$(stamp "$T/a.qcow2")" = "$before" ] && pass "export only reads: checksum and mtime unchanged" ||
    fail "export only reads: checksum and mtime unchanged"
[ "$(stat -c %a "$T/sw2/tpm2-00.permall")" = 600 ] && pass "the files are private (0600)" ||
    fail "the files are private (0600)" "$(stat -c %a "$T/sw2/tpm2-00.permall")"
serve_swtpm "$T/sw2" --flags not-need-init,startup-clear
[ "$(read_index $((P + 2)) 0x1500060)" = under-swtpm ] && [ "$(read_index $((P + 2)) 0x1500061)" = under-nvtpm ] &&
    pass "swtpm on the export reads both indices: swtpm -> nvtpm -> swtpm" ||
    fail "swtpm on the export reads both indices: swtpm -> nvtpm -> swtpm" "$(cat "$T/tools.err" "$T/swtpm.log")"
expect_exit 7 "export into the folder of a running swtpm: busy (7)" -- \
    "$NVTPM" export "$T/a.qcow2" --to-dir "$T/sw2"
stop_swtpm

# --- plain files come back byte for byte ---------------------------------------------------------
expect_exit 0 "import again (untouched)" -- "$NVTPM" import "$T/b.qcow2" --from-dir "$T/sw1"
expect_exit 0 "export again" -- "$NVTPM" export "$T/b.qcow2" --to-dir "$T/sw1b"
same=yes
for f in "$T"/sw1/tpm2-00.*; do cmp -s "$f" "$T/sw1b/${f##*/}" || same="no: ${f##*/}"; done
[ "$same" = yes ] && pass "swtpm's plain files come back byte for byte" || fail "swtpm's plain files come back byte for byte" "$same"

# --- TPM 1.2 ----------------------------------------------------------------------------------------
mkdir -p "$T/sw12"
swtpm socket --tpmstate "dir=$T/sw12" --server "type=tcp,port=$((P + 2))" --ctrl "type=tcp,port=$((P + 3))" \
    --flags not-need-init,startup-clear >"$T/swtpm.log" 2>&1 &
SWTPM_PID=$!
wait_port $((P + 3)) "$SWTPM_PID" || fail "swtpm (TPM 1.2) serves" "$(cat "$T/swtpm.log")"
swtpm_ioctl --tcp ":$((P + 3))" -v >/dev/null
stop_swtpm
expect_exit 0 "import of a TPM 1.2 folder" -- "$NVTPM" import "$T/t12.qcow2" --from-dir "$T/sw12"
expect_exit 0 "it validates as TPM 1.2" -- "$NVTPM" validate "$T/t12.qcow2" --tpm1.2
expect_exit 0 "export of the TPM 1.2 image" -- "$NVTPM" export "$T/t12.qcow2" --to-dir "$T/sw12b"
same=yes
for f in "$T"/sw12/tpm-00.*; do cmp -s "$f" "$T/sw12b/${f##*/}" || same="no: ${f##*/}"; done
[ "$same" = yes ] && [ -e "$T/sw12b/tpm-00.permall" ] && pass "TPM 1.2 files (tpm-00.*) come back byte for byte" ||
    fail "TPM 1.2 files (tpm-00.*) come back byte for byte" "$same"
cp "$T/sw1/tpm2-00.permall" "$T/sw12/"
expect_exit 1 "a folder with both versions' files: usage (1), say which" -- \
    "$NVTPM" import "$T/both.qcow2" --from-dir "$T/sw12"
no_file "$T/both.qcow2" "no image is made"
expect_exit 0 "--tpm1.2 picks the TPM 1.2 files" -- "$NVTPM" import "$T/both.qcow2" --from-dir "$T/sw12" --tpm1.2

# --- encrypted with swtpm's key ----------------------------------------------------------------------
printf 'swtpm state passphrase\n' >"$T/pw"
printf 'another passphrase\n' >"$T/pw2"
printf 'not the passphrase\n' >"$T/wrong"
serve_swtpm "$T/sw3" --key "pwdfile=$T/pw" --flags not-need-init,startup-clear
write_index $((P + 2)) 0x1500062 secret-nv && pass "swtpm --key: NV index written" ||
    fail "swtpm --key: NV index written" "$(cat "$T/tools.err")"
stop_swtpm
[ $(($(flags "$T/sw3/tpm2-00.permall") & 1)) = 1 ] && pass "swtpm's files are encrypted (flag 0x01)" ||
    fail "swtpm's files are encrypted (flag 0x01)"
expect_exit 4 "import of encrypted files without --key: key missing (4)" -- \
    "$NVTPM" import "$T/e.qcow2" --from-dir "$T/sw3"
expect_exit 5 "with a wrong key: key wrong (5)" -- \
    "$NVTPM" import "$T/e.qcow2" --from-dir "$T/sw3" --key "pwdfile=$T/wrong"
no_file "$T/e.qcow2" "neither makes an image"
expect_exit 6 "--key for plain files: key unneeded (6)" -- \
    "$NVTPM" import "$T/e.qcow2" --from-dir "$T/sw1" --key "pwdfile=$T/pw"
expect_exit 0 "import with swtpm's key" -- "$NVTPM" import "$T/e.qcow2" --from-dir "$T/sw3" --key "pwdfile=$T/pw"
expect_output "aes-256-gcm" "the image is encrypted too"
expect_exit 0 "it validates with the same key" -- "$NVTPM" validate "$T/e.qcow2" --key "pwdfile=$T/pw"
serve_nvtpm "$T/e.qcow2" --key "pwdfile=$T/pw" --flags not-need-init,startup-clear
[ "$(read_index $P 0x1500062)" = secret-nv ] && pass "nvtpm --key reads the index" ||
    fail "nvtpm --key reads the index" "$(cat "$T/tools.err" "$T/nvtpm.log")"
stop_server TERM
expect_exit 0 "import with --new-key" -- \
    "$NVTPM" import "$T/n.qcow2" --from-dir "$T/sw3" --key "pwdfile=$T/pw" --new-key "pwdfile=$T/pw2"
expect_exit 0 "the image opens with the new key" -- "$NVTPM" validate "$T/n.qcow2" --key "pwdfile=$T/pw2"
expect_exit 5 "and not with swtpm's" -- "$NVTPM" validate "$T/n.qcow2" --key "pwdfile=$T/pw"

expect_exit 4 "export of an encrypted image without --key: 4" -- "$NVTPM" export "$T/e.qcow2" --to-dir "$T/sw4"
expect_exit 5 "with a wrong key: 5" -- "$NVTPM" export "$T/e.qcow2" --to-dir "$T/sw4" --key "pwdfile=$T/wrong"
no_file "$T/sw4/tpm2-00.permall" "neither writes a file"
expect_exit 0 "export with the image's key" -- "$NVTPM" export "$T/e.qcow2" --to-dir "$T/sw4" --key "pwdfile=$T/pw"
[ $(($(flags "$T/sw4/tpm2-00.permall") & 1)) = 1 ] && pass "the files are encrypted in swtpm's format" ||
    fail "the files are encrypted in swtpm's format"
serve_swtpm "$T/sw4" --key "pwdfile=$T/pw" --flags not-need-init,startup-clear
[ "$(read_index $((P + 2)) 0x1500062)" = secret-nv ] && pass "swtpm --key reads them: the index is there" ||
    fail "swtpm --key reads them: the index is there" "$(cat "$T/tools.err" "$T/swtpm.log")"
stop_swtpm
expect_exit 6 "export of a plain image with --key: key unneeded (6)" -- \
    "$NVTPM" export "$T/a.qcow2" --to-dir "$T/sw5" --key "pwdfile=$T/pw"
printf '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f' >"$T/k256"
expect_exit 0 "export of a plain image with --new-key (raw 256-bit)" -- \
    "$NVTPM" export "$T/a.qcow2" --to-dir "$T/sw5" --new-key "file=$T/k256,format=hex"
[ $(($(flags "$T/sw5/tpm2-00.permall") & 9)) = 9 ] && pass "encrypted, with the 256-bit key flag (0x08)" ||
    fail "encrypted, with the 256-bit key flag (0x08)" "flags $(flags "$T/sw5/tpm2-00.permall")"
serve_swtpm "$T/sw5" --key "file=$T/k256,format=hex,mode=aes-256-cbc" --flags not-need-init,startup-clear
[ "$(read_index $((P + 2)) 0x1500061)" = under-nvtpm ] && pass "swtpm with that raw key reads the index" ||
    fail "swtpm with that raw key reads the index" "$(cat "$T/tools.err" "$T/swtpm.log")"
stop_swtpm

# --- refusals: nothing is overwritten, nothing half-made is left ----------------------------------
before=$(stamp "$T/a.qcow2")
expect_exit 1 "import over an existing image: usage (1)" -- "$NVTPM" import "$T/a.qcow2" --from-dir "$T/sw1"
[ "$(stamp "$T/a.qcow2")" = "$before" ] && pass "the image is untouched" || fail "the image is untouched"
before=$(stamp "$T/sw2/tpm2-00.permall")
expect_exit 1 "export into a folder with state files: usage (1)" -- "$NVTPM" export "$T/b.qcow2" --to-dir "$T/sw2"
expect_output "never overwritten" "it says why"
[ "$(stamp "$T/sw2/tpm2-00.permall")" = "$before" ] && pass "swtpm's file is untouched" || fail "swtpm's file is untouched"
mkdir -p "$T/empty"
expect_exit 1 "import from a folder without state: usage (1)" -- "$NVTPM" import "$T/x.qcow2" --from-dir "$T/empty"
mkdir -p "$T/vol-only" && cp "$T/sw1/tpm2-00.volatilestate" "$T/vol-only/"
expect_exit 1 "a folder without permall: usage (1)" -- "$NVTPM" import "$T/x.qcow2" --from-dir "$T/vol-only"
expect_output "permanent state" "it names the missing permanent state"
mkdir -p "$T/damaged" && head -c 700 "$T/sw1/tpm2-00.permall" >"$T/damaged/tpm2-00.permall"
expect_exit 2 "a truncated state file: corrupt (2)" -- "$NVTPM" import "$T/x.qcow2" --from-dir "$T/damaged"
expect_output "tpm2-00.permall" "the message names the file"
mkdir -p "$T/refused"
python3 - "$T/refused/tpm2-00.permall" <<'PY'
import struct, sys
data = b'not a libtpms permanent state' * 8
tlv = struct.pack('>HI', 1, len(data)) + data
open(sys.argv[1], 'wb').write(bytes([2, 1]) + struct.pack('>HHI', 10, 0, 10 + len(tlv)) + tlv)
PY
expect_exit 8 "a well-formed file whose state libtpms refuses: not loadable (8)" -- \
    "$NVTPM" import "$T/x.qcow2" --from-dir "$T/refused"
no_file "$T/x.qcow2" "none of these leaves an image"
expect_exit 1 "import without --from-dir: usage (1)" -- "$NVTPM" import "$T/x.qcow2"
expect_exit 1 "export with an unknown option: usage (1)" -- "$NVTPM" export "$T/a.qcow2" --to-dir "$T/y" --size 4M
expect_exit 0 "import --help" -- "$NVTPM" import --help
expect_output "from-dir DIR" "it documents --from-dir"
finish
