#!/usr/bin/env bash
# test-exit-codes.sh - every command's exit code is the one nvtpm(1) documents
# for files that are not what they should be, whatever errno the layers below
# met: an empty file, a header cut short, an L1 entry outside the file (2,
# corrupt), a FIFO in the image's place (9), a full file system (9, one line,
# nothing half made left). And `validate` answers what `socket` will do for
# every refusal of the server's read-write open: the dirty and corrupt bits,
# a file the user cannot write. An EINVAL met below (a key file's read, a
# state file that is a folder) is 9, not a usage error.
# Usage: test-exit-codes.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../tpm/common.sh"
NVTPM=$1
require qemu-img python3 setpriv
T=$TEST_TMP
P=$(free_ports 2)

# socket_exit IMG: the exit status of `nvtpm socket` on IMG; it must end by
# itself (a refusal), within 20 s.
socket_exit() {
    rm -f "$T/ctrl"
    timeout 20 "$NVTPM" socket --tpm2 --tpmstate "file=$1" --ctrl "type=unixio,path=$T/ctrl" \
        >"$T/out" 2>"$T/err"
}
# same_code NAME WANT CMD...: CMD exits WANT and prints one line on stderr
same_code() {
    local name=$1 want=$2 got
    shift 2
    "$@" >"$T/out" 2>"$T/err" && got=0 || got=$?
    local lines
    lines=$(grep -c . "$T/err")
    if [ "$got" = "$want" ] && [ "$lines" -ge 1 ]; then pass "$name"; else
        fail "$name" "exit $got, wanted $want: $(cat "$T/err")"
    fi
}
stamp() { sha256sum <"$1"; }

"$NVTPM" create "$T/good.qcow2" >/dev/null

# --- files that are not nvtpm images: 2 from info, validate, socket and check ---------------
: >"$T/empty"
head -c 50 "$T/good.qcow2" >"$T/short"
cp "$T/good.qcow2" "$T/l1.qcow2"
l1=$(od -An -tu8 --endian=big -j40 -N8 "$T/l1.qcow2" | tr -d ' ')
printf '\x80\x00\x00\x00\x7f\x00\x00\x00' | dd of="$T/l1.qcow2" bs=1 seek="$l1" conv=notrunc 2>/dev/null
for f in empty short l1.qcow2; do
    s=$(stamp "$T/$f")
    same_code "$f: info exits 2 (not an nvtpm image or damaged)" 2 "$NVTPM" info "$T/$f"
    same_code "$f: validate exits 2" 2 "$NVTPM" validate "$T/$f"
    socket_exit "$T/$f" && got=0 || got=$?
    [ "$got" = 2 ] && pass "$f: socket exits 2" || fail "$f: socket exits 2" "exit $got: $(cat "$T/err")"
    [ "$(stamp "$T/$f")" = "$s" ] && pass "$f: left byte for byte as it was" ||
        fail "$f: left byte for byte as it was"
done
same_code "l1.qcow2: check exits 2 (corruption, as qemu-img check says)" 2 "$NVTPM" check "$T/l1.qcow2"
qemu-img check "$T/l1.qcow2" >/dev/null 2>&1
[ $? = 2 ] && pass "and qemu-img check exits 2 on it too" || fail "and qemu-img check exits 2 on it too"

# --- a FIFO where the image should be: 9 (it is not a file), at once -------------------------
mkfifo "$T/fifo"
same_code "fifo: info exits 9" 9 timeout 10 "$NVTPM" info "$T/fifo"
expect_output "not a regular file" "it says the FIFO is not a regular file"
same_code "fifo: validate exits 9" 9 timeout 10 "$NVTPM" validate "$T/fifo"
socket_exit "$T/fifo" && got=0 || got=$?
[ "$got" = 9 ] && pass "fifo: socket exits 9" || fail "fifo: socket exits 9" "exit $got: $(cat "$T/err")"

# --- validate answers what socket does: dirty, corrupt, not writable ------------------------
for bit in 1 2; do
    name=$([ $bit = 1 ] && echo dirty || echo corrupt)
    cp "$T/good.qcow2" "$T/$name.qcow2"
    printf "\\x0$bit" | dd of="$T/$name.qcow2" bs=1 seek=79 conv=notrunc 2>/dev/null
    s=$(stamp "$T/$name.qcow2")
    socket_exit "$T/$name.qcow2" && got=0 || got=$?
    [ "$got" = 2 ] && pass "$name bit: socket refuses it (2)" || fail "$name bit: socket refuses it (2)" "exit $got: $(cat "$T/err")"
    same_code "$name bit: validate says the same (2), not 'loadable'" 2 "$NVTPM" validate "$T/$name.qcow2"
    expect_output "failed +writable .*marked $name" "validate names the $name bit"
    [ "$(stamp "$T/$name.qcow2")" = "$s" ] && pass "$name bit: the image is unchanged" ||
        fail "$name bit: the image is unchanged"
done
cp "$T/good.qcow2" "$T/ro.qcow2"
chmod 0644 "$T/ro.qcow2"
chmod 0755 "$T"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
as_nobody "$NVTPM" validate "$T/ro.qcow2" >"$T/out" 2>"$T/err" && vgot=0 || vgot=$?
rm -f "$T/ctrl"
as_nobody timeout 20 "$NVTPM" socket --tpm2 --tpmstate "file=$T/ro.qcow2" \
    --ctrl "type=tcp,port=$P" >/dev/null 2>"$T/serr" && sgot=0 || sgot=$?
[ "$sgot" = 9 ] && [ "$vgot" = 9 ] &&
    pass "a file the user may read but not write: socket exits 9, and validate too" ||
    fail "a file the user may read but not write: socket exits 9, and validate too" \
        "socket $sgot ($(cat "$T/serr")), validate $vgot ($(cat "$T/err"))"
grep -q "read-write" "$T/err" && pass "validate says it cannot open it read-write" ||
    fail "validate says it cannot open it read-write" "$(cat "$T/err")"

# --- an EINVAL from below is no usage error: 9; a malformed option still is 1 -----------------
# (exit 1 before struct nv_error had a status: every EINVAL read as usage)
same_code "a key file whose read fails with EINVAL: create exits 9, not 1 (usage)" 9 \
    "$NVTPM" create "$T/einval.qcow2" --key file=/proc/self/pagemap
[ ! -e "$T/einval.qcow2" ] && pass "and makes no image" || fail "and makes no image"
same_code "a malformed --key: create exits 1 (usage)" 1 \
    "$NVTPM" create "$T/einval.qcow2" --key file=/proc/self/pagemap,bogus=1
mkdir -p "$T/swdir/tpm2-00.permall"
same_code "a state file that is a folder: import exits 9 (other errors), not 1" 9 \
    "$NVTPM" import "$T/einval.qcow2" --from-dir "$T/swdir"
[ ! -e "$T/einval.qcow2" ] && pass "and makes no image" || fail "and makes no image"

# --- a full file system: 9 (an I/O error), one line, nothing half made ----------------------
M=$T/full
mkdir -p "$M"
if mount -t tmpfs -o size=2m tmpfs "$M"; then
    trap 'umount "$M" 2>/dev/null; rm -rf "$TEST_TMP"' EXIT
    same_code "full disk: create exits 9 (I/O), not 2 (damaged)" 9 "$NVTPM" create "$M/new.qcow2"
    [ "$(grep -c . "$T/err")" = 1 ] && pass "create prints one line" || fail "create prints one line" "$(cat "$T/err")"
    grep -q "No space left on device" "$T/err" && pass "it names the full disk" || fail "it names the full disk" "$(cat "$T/err")"
    [ ! -e "$M/new.qcow2" ] && pass "create leaves no half-made image" || fail "create leaves no half-made image"
    socket_exit "$M/srv.qcow2" && got=0 || got=$?
    [ "$got" = 9 ] && pass "full disk: socket exits 9" || fail "full disk: socket exits 9" "exit $got: $(cat "$T/err")"
    [ ! -e "$M/srv.qcow2" ] && pass "socket leaves no half-made image" ||
        fail "socket leaves no half-made image" "$(ls -l "$M")"
    # a blank image there, formatted by the server on a disk too full for it
    qemu-img create -q -f qcow2 "$M/blank.qcow2" 4M
    head -c 1000000 /dev/zero >"$M/filler0"
    s=$(stamp "$M/blank.qcow2")
    socket_exit "$M/blank.qcow2" && got=0 || got=$?
    [ "$got" = 9 ] && pass "full disk: formatting a blank image fails, 9" ||
        fail "full disk: formatting a blank image fails, 9" "exit $got: $(cat "$T/err")"
    [ "$(stamp "$M/blank.qcow2")" = "$s" ] && pass "the blank image is left as it was" ||
        fail "the blank image is left as it was"
    "$NVTPM" check "$M/blank.qcow2" >"$T/out" 2>&1 && pass "and holds no leaked cluster" ||
        fail "and holds no leaked cluster" "$(cat "$T/out")"
    rm -f "$M/filler0"
    rm -f "$M/blank.qcow2"
    # export: an image with state, the folder's file system full
    serve_nvtpm "$T/state.qcow2" --flags not-need-init,startup-clear
    stop_server TERM
    head -c 2000000 /dev/zero >"$M/filler" 2>/dev/null
    dd if=/dev/zero of="$M/filler2" bs=4k 2>/dev/null
    mkdir -p "$M/out" 2>/dev/null || true
    same_code "full disk: export exits 9" 9 "$NVTPM" export "$T/state.qcow2" --to-dir "$M/out"
    [ -z "$(ls -A "$M/out" 2>/dev/null | grep -v '^\.lock$')" ] &&
        pass "export leaves no state file behind (swtpm's .lock only)" ||
        fail "export leaves no state file behind (swtpm's .lock only)" "$(ls -la "$M/out")"
    umount "$M"
else
    fail "a 2 MiB tmpfs for the full-disk cases (mount needs root)"
fi

finish
