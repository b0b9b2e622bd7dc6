#!/usr/bin/env bash
# test-vm.sh - nvtpm as a VM's vTPM, proved with Debian's QEMU (TCG), its
# SeaBIOS, a Debian kernel and a busybox initramfs with tpm2-tools
# (make-guest.sh): firmware measurements, a Linux guest's NV data across VM
# restarts and reboots, tpm-tis and tpm-crb, encrypted images, control
# sockets handed over as descriptors, terminate. A failing check prints the
# guest's console.
# Usage: test-vm.sh NVTPM GUEST_DIR
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../tpm/common.sh"
NVTPM=$1
GUEST=$2
HERE=$(cd "$(dirname "$0")" && pwd)
require qemu-system-x86_64 busybox cpio tpm2 python3
[ -e /usr/share/seabios/bios-256k.bin ] && pass "SeaBIOS is installed" || fail "SeaBIOS is installed (./dev deps)"
T=$TEST_TMP
if "$HERE/make-guest.sh" "$GUEST" 2>"$T/guest.err"; then
    pass "the guest: $(cat "$GUEST/kernel-package") and a busybox initramfs"
else
    fail "the guest: kernel and initramfs" "$(cat "$T/guest.err")"
    finish
    exit 1
fi
SOCK=$T/ctrl.sock
CONSOLE=$T/console.log
P=$(free_ports 1)

# qemu ARGS...: QEMU as the tests run it (TCG, no devices but those asked
# for, the serial console to a file), at most 180 s; qemu_bg: in the
# background, QEMU_PID is QEMU's own pid (the test kills it)
# meson sets glibc's MALLOC_PERTURB_ for every test; Debian's QEMU 7.2 then
# hangs when the guest reboots (found by this suite: the second boot never
# comes). nvtpm keeps it; QEMU runs without.
QEMU=(env -u MALLOC_PERTURB_ qemu-system-x86_64 -accel tcg -m 512 -nodefaults -display none)
qemu() { timeout 180 "${QEMU[@]}" -serial "file:$CONSOLE" "$@"; }
qemu_bg() {
    "${QEMU[@]}" -serial "file:$CONSOLE" "$@" &
    QEMU_PID=$!
}
# linux MODE [DATA]: LX holds the arguments that boot the guest in MODE
# (guest-init); the console of the run before is cleared
linux() {
    rm -f "$CONSOLE"
    LX=(-kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.gz"
        -append "console=ttyS0 panic=-1 ${LINUX_LOGLEVEL:-quiet} nvtpm.mode=$1 nvtpm.data=${2:-}")
}
tpm_dev() { echo -tpmdev emulator,id=tpm0,chardev=chrtpm -device "${1:-tpm-tis},tpmdev=tpm0"; }
tpm_chardev() { echo -chardev "socket,id=chrtpm,path=$SOCK"; }
# guest_says NAME PATTERN: the console has a line NVTPM-... matching PATTERN
guest_says() {
    if tr -d '\r' <"$CONSOLE" 2>/dev/null | grep -Eq -- "^NVTPM-$2"; then
        pass "$1"
    else
        fail "$1" "no /NVTPM-$2/ on the guest's console:
$(tail -40 "$CONSOLE" 2>/dev/null)"
        return 1
    fi
}
# handover listen|pair IMG [NVTPM-ARGS...]: handover.py starts nvtpm on IMG and
# QEMU booting LX (without rebooting); its "qemu=RC nvtpm=RC" line in $T/out
handover() {
    local mode=$1 img=$2
    shift 2
    python3 "$HERE/handover.py" "$mode" "$SOCK" "$NVTPM" socket --tpm2 --tpmstate "file=$img" "$@" \
        -- "${QEMU[@]}" -serial "file:$CONSOLE" -no-reboot "${LX[@]}" $(tpm_dev) >"$T/out" 2>"$T/err"
}
serve() { # IMG ARGS...: nvtpm with a UNIX control socket made for it (QEMU connects at once)
    local img=$1
    shift
    listen_start "$T/nvtpm.log" "unix:$SOCK" -- "$NVTPM" socket --tpm2 --tpmstate "file=$img" \
        --ctrl type=unixio,fd=3 "$@"
}
server_exit() { # NAME CODE: nvtpm exits with CODE within 10 s
    local i
    for i in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "$1" "still running"
        kill -9 "$SERVER_PID"
    else
        wait "$SERVER_PID"
        local rc=$?
        [ "$rc" = "$2" ] && pass "$1" || fail "$1" "exit $rc: $(cat "$T/nvtpm.log")"
    fi
}

# --- 1. firmware: SeaBIOS measures into the TPM ------------------------------------------------
serve "$T/fw.qcow2" --server "type=tcp,port=$P"
rm -f "$T/seabios.log"
qemu_bg -chardev "file,id=dbg,path=$T/seabios.log" -device isa-debugcon,iobase=0x402,chardev=dbg \
    $(tpm_chardev) $(tpm_dev)
for _ in $(seq 300); do grep -q "No bootable device" "$T/seabios.log" 2>/dev/null && break; sleep 0.1; done
grep -q "No bootable device" "$T/seabios.log" && pass "SeaBIOS ran to the end of its boot order" ||
    fail "SeaBIOS ran to the end of its boot order" "$(tail -20 "$T/seabios.log")"
kill -9 $QEMU_PID; wait $QEMU_PID 2>/dev/null # no SHUTDOWN: nvtpm keeps serving
pcr0=$(python3 "$HERE/pcr-read.py" "$P" 0 2>&1)
[[ "$pcr0" =~ ^[0-9a-f]{64}$ ]] && [ "$pcr0" != "$(printf '0%.0s' $(seq 64))" ] &&
    pass "PCR 0, read through nvtpm's TCP data channel afterwards, is not zero" ||
    fail "PCR 0, read through nvtpm's TCP data channel afterwards, is not zero" "$pcr0"
kill -0 "$SERVER_PID" 2>/dev/null && pass "without terminate, nvtpm outlives a killed QEMU" ||
    fail "without terminate, nvtpm outlives a killed QEMU"
linux read
qemu "${LX[@]}" $(tpm_chardev) $(tpm_dev) -no-reboot
guest_says "and serves the next QEMU: a Linux guest sees its TPM" "DEV: /dev/tpm0 /dev/tpmrm0"
guest_says "whose PCR 0 is what SeaBIOS measured" "PCR0: ${pcr0^^}"
server_exit "QEMU's SHUTDOWN at its exit ends nvtpm, status 0" 0

# --- 2. a Linux guest: two VM runs on one image, tpm-tis then tpm-crb ----------------------------
# Each run is a cold boot (a new nvtpm, a new QEMU): SeaBIOS's PCR 0 both
# times, PCR 8 zero at boot though the run before extended it, NV data kept.
serve "$T/vm.qcow2"
linux boot vm-nvtpm
qemu "${LX[@]}" $(tpm_chardev) $(tpm_dev tpm-tis) -no-reboot &&
    pass "QEMU (tpm-tis) exits 0 after the guest powers off" || fail "QEMU (tpm-tis) exits 0 after the guest powers off"
guest_says "the guest sees /dev/tpm0 and /dev/tpmrm0" "DEV: /dev/tpm0 /dev/tpmrm0 $"
guest_says "tpm_version_major is 2" "MAJOR: 2$"
guest_says "run 1: PCR 0 is what SeaBIOS measured" "PCR0: ${pcr0^^}$"
guest_says "run 1: PCR 8 is zero at boot" "PCR8: 0{64}$"
guest_says "run 1: the guest defines and writes an NV index" "NVWRITE: ok"
guest_says "run 1: and extends PCR 8" "EXTENDED: [0-9A-F]*[1-9A-F][0-9A-F]*$"
server_exit "nvtpm stops with QEMU" 0
qemu-img check -q "$T/vm.qcow2" && pass "the image checks clean (qemu-img check)" || fail "the image checks clean (qemu-img check)"
serve "$T/vm.qcow2"
qemu "${LX[@]}" $(tpm_chardev) $(tpm_dev tpm-crb) -no-reboot
guest_says "run 2 (tpm-crb, same image): a cold boot, not a resume" "BOOT: again$"
guest_says "run 2: PCR 0 is SeaBIOS's again" "PCR0: ${pcr0^^}$"
guest_says "run 2: PCR 8 is zero at boot (reset, as at every power-on)" "PCR8: 0{64}$"
guest_says "run 2: the NV data of run 1 is there" "NVREAD: vm-nvtpm$"
server_exit "nvtpm stops with it" 0

# --- 3. a reboot inside one QEMU run ----------------------------------------------------------
serve "$T/reboot.qcow2" --log "file=$T/reboot-nvtpm.log,level=5"
LINUX_LOGLEVEL=loglevel=6 linux reboot vm-reboot # the kernel's TPM messages, for a failure's report
qemu "${LX[@]}" $(tpm_chardev) $(tpm_dev) \
    -chardev "file,id=dbg,path=$T/reboot-seabios.log" -device isa-debugcon,iobase=0x402,chardev=dbg
guest_says "first boot: NV written" "NVWRITE: ok"
guest_says "first boot: PCR 8 extended" "PCR8: [0-9A-F]*[1-9A-F][0-9A-F]*$"
guest_says "the guest rebooted inside the same QEMU" "BOOT: second" ||
    echo "  SeaBIOS's TPM lines and end: $(grep -i tpm "$T/reboot-seabios.log" | tail -20)
$(tail -8 "$T/reboot-seabios.log")
  nvtpm: $(tail -25 "$T/reboot-nvtpm.log" | cut -c1-160)
  kernel: $(grep -ai tpm "$CONSOLE" | tail -20)"
guest_says "after the reboot the NV data is there" "NVREAD: vm-reboot$"
guest_says "and PCR 8 is reset, as a TPM's PCRs are at a reset" "PCR8: 0{64}$"
server_exit "nvtpm stops with QEMU" 0

# --- 4. encrypted image -----------------------------------------------------------------------
printf 'vm test passphrase\n' >"$T/pw"
printf 'not the passphrase\n' >"$T/pw-wrong"
"$NVTPM" create "$T/enc.qcow2" --tpm2 --key "pwdfile=$T/pw" >/dev/null
serve "$T/enc.qcow2" --key "pwdfile=$T/pw"
linux write secret
qemu "${LX[@]}" $(tpm_chardev) $(tpm_dev) -no-reboot
guest_says "an encrypted image with the right key: the guest writes NV" "NVWRITE: ok"
server_exit "nvtpm stops with QEMU" 0
sum=$(sha256sum <"$T/enc.qcow2")
rm -f "$SOCK"
linux read
handover listen "$T/enc.qcow2" --key "pwdfile=$T/pw-wrong"
grep -q "nvtpm=5" "$T/out" && pass "a wrong key: nvtpm exits 5 before QEMU can use it" ||
    fail "a wrong key: nvtpm exits 5 before QEMU can use it" "$(cat "$T/out" "$T/err")"
grep -Eq "qemu=[1-9]" "$T/out" && grep -qi "tpm" "$T/err" && pass "QEMU fails and says it is the TPM" ||
    fail "QEMU fails and says it is the TPM" "$(cat "$T/out" "$T/err")"
grep -q "the key matches no key slot" "$T/err" && pass "nvtpm's message names the key" ||
    fail "nvtpm's message names the key" "$(cat "$T/err")"
[ "$(sha256sum <"$T/enc.qcow2")" = "$sum" ] && pass "the image is unchanged" || fail "the image is unchanged"

# --- 5. control sockets handed over as descriptors (seed 004) ----------------------------------
rm -f "$SOCK"
linux write handover
handover listen "$T/ho.qcow2"
grep -q "qemu=0 nvtpm=0" "$T/out" && pass "fd=N: a listening socket made by the test, QEMU connects once" ||
    fail "fd=N: a listening socket made by the test, QEMU connects once" "$(cat "$T/out" "$T/err")"
guest_says "and the guest writes NV" "NVWRITE: ok"
linux read
handover pair "$T/ho.qcow2"
grep -q "qemu=0 nvtpm=0" "$T/out" && pass "clientfd=N: one end of a socket pair, QEMU has the other" ||
    fail "clientfd=N: one end of a socket pair, QEMU has the other" "$(cat "$T/out" "$T/err")"
guest_says "and the guest reads the NV data back" "NVREAD: handover$"

# --- 6. terminate, --daemon and --pid ---------------------------------------------------------
rm -f "$SOCK"
"$NVTPM" socket --tpm2 --tpmstate "file=$T/d.qcow2" --ctrl "type=unixio,path=$SOCK,terminate" \
    --daemon --pid "file=$T/pid" 2>"$T/err"
wait_unix "$SOCK" || fail "--daemon: the server listens" "$(cat "$T/err")"
DPID=$(cat "$T/pid" 2>/dev/null)
[ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null && pass "--daemon: the pid file names a running process" ||
    fail "--daemon: the pid file names a running process" "$(cat "$T/err")"
[ -n "$DPID" ] && grep -q "$T/d.qcow2" <(ls -l /proc/"$DPID"/fd 2>/dev/null) && lock_held "$T/d.qcow2" 101 &&
    pass "that process holds the image and its ownership lock" || fail "that process holds the image and its ownership lock"
linux read
rm -f "$CONSOLE"
qemu_bg "${LX[@]}" $(tpm_chardev) $(tpm_dev) -no-reboot
for _ in $(seq 300); do grep -q "^NVTPM-DEV" "$CONSOLE" 2>/dev/null && break; sleep 0.1; done
guest_says "a guest boots on the daemon's TPM" "DEV: /dev/tpm0"
kill -9 $QEMU_PID; wait $QEMU_PID 2>/dev/null
for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$DPID" 2>/dev/null && pass "terminate: nvtpm exits when QEMU goes away (killed, no SHUTDOWN)" ||
    { fail "terminate: nvtpm exits when QEMU goes away (killed, no SHUTDOWN)"; kill "$DPID"; }
"$NVTPM" check "$T/d.qcow2" >"$T/out" 2>&1 && pass "and leaves a clean image" || fail "and leaves a clean image" "$(cat "$T/out")"
finish
