#!/usr/bin/env bash
# test-libvirt.sh - a VM's vTPM under libvirt: libvirt's own
# <tpm><backend type='emulator'/> life cycle, run against whatever `swtpm`
# libvirt finds first on its PATH. Without SWTPM_DIR that is Debian's
# /usr/bin/swtpm (the control run); with SWTPM_DIR (a folder holding an
# executable named swtpm, such as nvtpm's compatibility folder) libvirt runs
# SWTPM_DIR/swtpm, while swtpm_setup and swtpm_ioctl stay the real ones.
#
# The packages come from the project's list (scripts/debian-packages.txt,
# installed by scripts/install-deps.sh when missing). The test runs its
# own libvirtd and virtlogd (Debian 12's libvirt 9.0 has no virtqemud) in
# system mode, as root, in a private mount namespace: private folders of the
# test's are bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt, /var/cache/libvirt, /var/log/swtpm and
# /var/lib/swtpm-localca, and over /etc/passwd and /etc/group copies that add
# the user libvirt-qemu (libvirt 9.0's system mode refuses to start without
# it, before it reads qemu.conf; the host has it only with
# libvirt-daemon-system). So the host's configuration is neither read nor
# changed, and everything goes when the test ends. QEMU runs as libvirt-qemu,
# swtpm and swtpm_setup as tss, as on a Debian host; qemu.conf only turns
# cgroups off (libvirt would make /sys/fs/cgroup/*/machine on the host).
#
# What it checks, each VM on a TPM of its own (libvirt's swtpm_setup makes
# it at the VM's first start, not at define):
#   a. define, first start (swtpm_setup, then swtpm): the guest sees a TPM 2,
#      PCR 0 measured, writes an NV index; the state folder belongs to tss
#   b. libvirtd restarted, second start: PCR 8 zero again, the NV data read
#      back; then a third start and virsh destroy: the emulator ends with QEMU
#   c. virsh save, virsh restore: the guest goes on with its TPM (NV, PCR 8),
#      and still writes NV
#   d. the same with virsh managedsave and virsh start
#   e. an internal snapshot (the VM gets a small qcow2 disk for it: libvirt
#      9.0 cannot revert an external one) taken while the guest waits; the
#      guest then defines a second index; after snapshot-revert it can define
#      it again - the TPM went back to the snapshot's state too
#   f. <encryption secret=.../> in the TPM backend: a libvirt secret, the VM
#      starts on the first try, writes NV, and reads it back at the next start
#   g. a VM defined and first run under Debian's swtpm (before the daemons
#      restart with SWTPM_DIR): then its next start under SWTPM_DIR's swtpm
#      has its NV data and EK certificate (same SHA-256); with nvtpm's
#      compatibility folder (its swtpm runs nvtpm) the way back too: nvtpm
#      export --replace, the image moved away, Debian's swtpm again sees what
#      the guest wrote under nvtpm
#
# Usage: test-libvirt.sh GUEST_DIR [SWTPM_DIR]
#   GUEST_DIR as for tests/vm/make-guest.sh (made there if missing);
#   SWTPM_DIR may also come from the environment; empty: /usr/bin/swtpm.
#   LIBVIRT_TEST_TRACE=FILE (debug): wrappers named swtpm, swtpm_setup and
#   swtpm_ioctl first on libvirtd's PATH log each command libvirt runs (the
#   test's step, the user, the inherited descriptors) into FILE, then run the
#   real program.
#   LIBVIRT_TEST_LOG_FILTERS: libvirtd's log_filters (its log is shown on failures)
# Needs root. Takes about 3 minutes on 2 cores (TCG). tests/libvirt/NOTES.md
# has what libvirt 9.0 runs, and when.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
GUEST=${1:?usage: test-libvirt.sh GUEST_DIR [SWTPM_DIR]}
SWTPM_DIR=${2:-${SWTPM_DIR:-}}
TRACE=${LIBVIRT_TEST_TRACE:-}
T=$TEST_TMP
chmod 711 "$T" # QEMU (libvirt-qemu) and swtpm (tss) reach their files in it
LV=$T/libvirt  # the daemons' private folders
URI="qemu:///system?socket=$LV/sock/libvirt-sock"
DAEMON_PID="" DAEMON_NS=""
CREATED=() # mount points the test had to make on the host (removed at the end)
# host folder (in the daemons' namespace) : private folder under $LV
MOUNTS=(/etc/libvirt:etc /run/libvirt:run /var/lib/libvirt:lib /var/log/libvirt:log
    /var/cache/libvirt:cache /var/log/swtpm:swtpm-log /var/lib/swtpm-localca:swtpm-localca)

V() { timeout 120 virsh -q -c "$URI" "$@"; }

cleanup() {
    stop_daemons
    local i
    for ((i = ${#CREATED[@]} - 1; i >= 0; i--)); do rmdir "${CREATED[i]}" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# One run at a time: runs share the host's mount points (and would remove
# them under each other).
exec 9<"$0"
flock -w 1800 9 || { fail "the lock on $0 (another run?)"; finish; exit 1; }

# --- packages ----------------------------------------------------------------------------------
# The project's list has libvirt's packages; install-deps.sh adds what is missing.
install_packages() {
    if "$HERE/../../scripts/install-deps.sh" >"$T/apt.log" 2>&1; then
        pass "the Debian packages of scripts/debian-packages.txt (libvirt's among them) are installed"
    else
        fail "install the missing Debian packages (scripts/install-deps.sh)" "$(tail -20 "$T/apt.log")"
        return 1
    fi
}

# --- the daemons -------------------------------------------------------------------------------
setup_root() {
    local m dir
    for m in "${MOUNTS[@]}"; do mkdir -p "$LV/${m#*:}"; done
    mkdir -p "$LV/sock"
    # swtpm_setup (as tss) keeps its local CA there, as in the package's folder
    chown tss:root "$LV/swtpm-localca" && chmod 750 "$LV/swtpm-localca"
    cat >"$LV/etc/libvirtd.conf" <<EOF
unix_sock_dir = "$LV/sock"
log_outputs = "1:file:$LV/libvirtd.log"
log_filters = "${LIBVIRT_TEST_LOG_FILTERS:-1:util.command 1:qemu.qemu_tpm 1:qemu.qemu_extdevice}"
EOF
    cat >"$LV/etc/qemu.conf" <<EOF
# No cgroups: libvirt would make /sys/fs/cgroup/*/machine on the host.
cgroup_controllers = [ ]
EOF
    cp /etc/passwd "$LV/passwd"
    cp /etc/group "$LV/group"
    getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:" >>"$LV/group"
    getent passwd libvirt-qemu >/dev/null ||
        echo "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin" >>"$LV/passwd"
    # in group kvm, as Debian makes it. Where /dev/kvm exists (it does here,
    # though the tests use TCG) libvirt's capability probe sees KVM; if the
    # QEMU user could not open /dev/kvm, libvirt 9.0 would find its cache
    # stale at every look-up and probe QEMU again and again ("KVM was enabled
    # when probing ..., but it is not available now": 40 s per virsh define)
    sed -i -E '/^kvm:/{/[:,]libvirt-qemu(,|$)/!{s/:$/:libvirt-qemu/;t;s/$/,libvirt-qemu/}}' "$LV/group"
    # the mount points; the namespace sees the same folders as the host
    for m in "${MOUNTS[@]}"; do
        dir=${m%%:*}
        [ -d "$dir" ] && continue
        mkdir "$dir" && CREATED+=("$dir")
    done
    {
        echo "#!/bin/bash"
        echo "# in a private mount namespace (unshare -m): libvirt's folders, then the daemons"
        echo "set -e"
        for m in "${MOUNTS[@]}"; do echo "mount --bind '$LV/${m#*:}' '${m%%:*}'"; done
        echo "mount --bind '$LV/passwd' /etc/passwd"
        echo "mount --bind '$LV/group' /etc/group"
        echo "/usr/sbin/virtlogd --daemon --pid-file '$LV/virtlogd.pid'"
        echo "exec /usr/sbin/libvirtd --config /etc/libvirt/libvirtd.conf --pid-file '$LV/libvirtd.pid'"
    } >"$LV/launch.sh"
}

# make_trace REAL_SWTPM: the logging wrappers of LIBVIRT_TEST_TRACE in $T/trace
make_trace() {
    local p real
    mkdir -p "$T/trace"
    touch "$T/trace.log" "$T/trace.step"
    chmod 666 "$T/trace.log"
    chmod 644 "$T/trace.step"
    for p in swtpm swtpm_setup swtpm_ioctl; do
        real=/usr/bin/$p
        [ "$p" = swtpm ] && real=$1
        cat >"$T/trace/$p" <<EOF
#!/bin/sh
# the test's trace wrapper: log, then run the real $p
fds=""
for f in /proc/\$\$/fd/*; do fds="\$fds \${f##*/}=\$(readlink "\$f")"; done
{
    echo "== \$(date +%T.%N) step=\$(cat '$T/trace.step') uid=\$(id -un) gid=\$(id -gn) pid=\$\$ ppid=\$PPID cwd=\$(pwd) umask=\$(umask)"
    echo "PATH=\$PATH"
    echo "run: $real \$*"
    echo "fds (this shell's; dash keeps its script open as fd 10):\$fds"
} >>'$T/trace.log'
exec '$real' "\$@"
EOF
        chmod 755 "$T/trace/$p"
    done
}

# log_errors: libvirtd's errors and warnings, less those this sandbox always
# has (no dnsmasq, no D-Bus, no DMI table)
log_errors() {
    grep -aE ' (error|warning) : ' "$LV/libvirtd.log" 2>/dev/null |
        grep -avE 'dnsmasq|system bus|DBus|udevGetDMIData|dmidecode'
}

daemon_log() {
    echo "daemon output: $(tail -5 "$LV/daemon.out" 2>/dev/null)"
    echo "virsh: $(tail -3 "$T/virsh.err" 2>/dev/null)"
    echo "libvirtd.log errors: $(log_errors | tail -10)"
}

# daemon_ns: DAEMON_NS is the daemons' mount namespace, once unshare made it
daemon_ns() {
    [ -n "$DAEMON_NS" ] && return 0
    local ns
    ns=$(readlink "/proc/$DAEMON_PID/ns/mnt" 2>/dev/null) || return 1
    [ "$ns" != "$(readlink /proc/$$/ns/mnt)" ] && DAEMON_NS=$ns
}

# start_daemons DIR: virtlogd and libvirtd with DIR (may be empty) first on
# libvirtd's PATH; waits until libvirtd answers (60 s at most)
start_daemons() {
    local dir=$1 path=/usr/sbin:/usr/bin:/sbin:/bin deadline real
    [ -n "$dir" ] && path=$dir:$path
    if [ -n "$TRACE" ]; then
        real=$(PATH=$path command -v swtpm)
        make_trace "$real"
        path=$T/trace:$path
    fi
    EMULATOR=$(PATH=$path command -v swtpm) # what libvirt is to run
    # MALLOC_PERTURB_ (set by meson): Debian's QEMU 7.2 hangs at a guest reboot with it
    env -u MALLOC_PERTURB_ PATH="$path" unshare --mount --propagation private \
        /bin/bash "$LV/launch.sh" >>"$LV/daemon.out" 2>&1 9<&- &
    DAEMON_PID=$!
    DAEMON_NS=""
    deadline=$((SECONDS + 60))
    until daemon_ns && timeout 30 virsh -c "$URI" version >"$T/virsh.out" 2>"$T/virsh.err"; do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            wait "$DAEMON_PID"
            fail "libvirtd starts (PATH=$path)" "it exited ($?): $(daemon_log)"
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            fail "libvirtd answers within 60 s (PATH=$path)" "$(daemon_log)"
            return 1
        fi
        sleep 0.2
    done
    pass "libvirtd answers, $(grep -o 'QEMU [0-9.]*$' "$T/virsh.out" | tail -1), PATH=$path"
}

# stop_daemons: the domains first (their QEMU and swtpm live in the daemons'
# namespace), then libvirtd, virtlogd and whatever else is left in the namespace
stop_daemons() {
    [ -n "$DAEMON_PID" ] || return 0
    local d p i
    daemon_ns
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        for d in $(timeout 20 virsh -q -c "$URI" list --name 2>/dev/null); do
            timeout 20 virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1
        done
    fi
    kill -TERM "$DAEMON_PID" 2>/dev/null
    for i in $(seq 150); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID" 2>/dev/null
    # virtlogd, and swtpm or QEMU if a destroy left one
    p=$(cat "$LV/virtlogd.pid" 2>/dev/null)
    [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = virtlogd ] && kill -TERM "$p"
    if [ -n "$DAEMON_NS" ]; then
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$DAEMON_NS" ] && kill -TERM "${p#/proc/}" 2>/dev/null
        done
        for i in $(seq 50); do
            local left=""
            for p in /proc/[0-9]*; do [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$DAEMON_NS" ] && left=1; done
            [ -z "$left" ] && break
            sleep 0.1
        done
    fi
    DAEMON_PID="" DAEMON_NS=""
}

# restart_daemons DIR: the same libvirt state, DIR first on libvirtd's PATH
restart_daemons() {
    stop_daemons
    start_daemons "$1"
}

# --- VMs ---------------------------------------------------------------------------------------
# vm_xml NAME UUID ARGS [DISK] [SECRET]: a diskless VM (or one with the qcow2
# DISK) booting the guest with ARGS; serial console appended to $T/NAME.console;
# the TPM encrypted with the libvirt secret SECRET if given
vm_xml() {
    local disk="" enc=""
    [ -n "${4:-}" ] && disk="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$4'/><target dev='vda' bus='virtio'/></disk>"
    [ -n "${5:-}" ] && enc="<encryption secret='$5'/>"
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <uuid>$2</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$T/guest/vmlinuz</kernel>
    <initrd>$T/guest/initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet $3</cmdline>
  </os>
  <!-- ACPI: Linux finds tpm_tis through it, and poweroff needs it -->
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    $disk
    <serial type='file'><source path='$T/$1.console' append='on'/><target port='0'/></serial>
    <tpm model='tpm-tis'><backend type='emulator' version='2.0'>$enc</backend></tpm>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

step() { echo "$1" >"$T/trace.step"; }

# vm_report NAME: what a failing check shows (lib.sh shows 20 lines)
vm_report() {
    echo "libvirtd.log errors: $(log_errors | tail -3)"
    echo "swtpm log: $(tail -4 "$LV/swtpm-log/libvirt/qemu/$1-swtpm.log" 2>/dev/null)"
    echo "qemu log: $(tail -3 "$LV/log/qemu/$1.log" 2>/dev/null)"
    echo "console: $(tr -d '\r' <"$T/$1.console" 2>/dev/null | grep -a '^NVTPM-' | tail -6)"
}

# virsh_ok CHECK VIRSH-ARGS...: a virsh command that must succeed
virsh_ok() {
    local name=$1
    shift
    if V "$@" >"$T/out" 2>"$T/err"; then pass "$name"; else
        fail "$name" "virsh $*: $(cat "$T/err")
$(vm_report "$2")"
        return 1
    fi
}

define_vm() { # NAME UUID ARGS [DISK] [SECRET]
    vm_xml "$@" >"$T/$1.xml"
    V define "$T/$1.xml" >"$T/out" 2>"$T/err" || { fail "virsh define $1" "$(cat "$T/err")"; return 1; }
}

# wait_state NAME STATE [SECONDS]: until virsh domstate says STATE
wait_state() {
    local deadline=$((SECONDS + ${3:-180})) st
    while :; do
        st=$(V domstate "$1" 2>&1)
        [ "$st" = "$2" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            fail "$1 is '$2' within ${3:-180} s" "still '$st'; $(vm_report "$1")"
            return 1
        fi
        sleep 0.5
    done
}

# wait_line NAME WHAT [SECONDS]: until the console has an NVTPM-WHAT line
wait_line() {
    local deadline=$((SECONDS + ${3:-180}))
    until tr -d '\r' <"$T/$1.console" 2>/dev/null | grep -aq "^NVTPM-$2"; do
        if [ $SECONDS -ge $deadline ] || [ "$(V domstate "$1" 2>&1)" = "shut off" ]; then
            fail "$1's guest says NVTPM-$2 within ${3:-180} s" "$(vm_report "$1")"
            return 1
        fi
        sleep 0.5
    done
}

# says NAME CHECK PATTERN: the console has a line NVTPM-... matching the ERE
says() {
    if tr -d '\r' <"$T/$1.console" 2>/dev/null | grep -aEq -- "^NVTPM-$3"; then pass "$2"; else
        fail "$2" "no /NVTPM-$3/ on the console: $(tr -d '\r' <"$T/$1.console" 2>/dev/null | grep -a '^NVTPM-' | tail -12)"
    fi
}
# value NAME WHAT: the value of the last NVTPM-WHAT line; count NAME PATTERN
value() { tr -d '\r' <"$T/$1.console" 2>/dev/null | sed -n "s/^NVTPM-$2: //p" | tail -1; }
count() { tr -d '\r' <"$T/$1.console" 2>/dev/null | grep -acE -- "^NVTPM-$2"; }

# run_vm NAME CHECK: start it, wait until the guest has powered off
run_vm() {
    step "start $1"
    virsh_ok "$2" start "$1" && wait_state "$1" "shut off"
}

# emulator_line NAME: the emulator command line libvirt logged at the last start
emulator_line() {
    grep -aA1 'Starting external device: TPM Emulator' "$LV/log/qemu/$1.log" 2>/dev/null | tail -1
}

# ran NAME WANT: libvirt's log of NAME's last start names the emulator WANT
ran() {
    local line
    line=$(emulator_line "$1")
    [ "${line%% *}" = "$2" ] && pass "libvirt ran $2" || fail "libvirt ran $2" "it logged: $line"
}

uuid() { cat /proc/sys/kernel/random/uuid; }
# emulators UUID: the processes of the daemons' namespace whose command line
# names UUID (the emulator's --tpmstate dir=.../UUID/tpm2); status 1 if none
emulators() {
    local p found=1
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$DAEMON_NS" ] || continue
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "$1"; then
            echo "${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline")"
            found=0
        fi
    done
    return $found
}
ZERO64=$(printf '0%.0s' $(seq 64))

# ===============================================================================================
[ "$(id -u)" = 0 ] && pass "running as root (system-mode libvirtd)" || {
    fail "running as root (system-mode libvirtd)" "uid $(id -u)"
    finish
    exit 1
}
install_packages || { finish; exit 1; }
PATH=$PATH:/usr/sbin require virsh libvirtd virtlogd swtpm swtpm_setup swtpm_ioctl qemu-system-x86_64 qemu-img unshare
if [ -n "$SWTPM_DIR" ]; then
    SWTPM_DIR=$(cd "$SWTPM_DIR" 2>/dev/null && pwd)
    [ -x "$SWTPM_DIR/swtpm" ] && pass "SWTPM_DIR holds an executable swtpm: $SWTPM_DIR/swtpm" ||
        { fail "SWTPM_DIR holds an executable swtpm" "${2:-${SWTPM_DIR:-}}"; finish; exit 1; }
fi
if "$HERE/../vm/make-guest.sh" "$GUEST" 2>"$T/guest.err"; then
    pass "the guest: $(cat "$GUEST/kernel-package") and a busybox initramfs"
else
    fail "the guest: kernel and initramfs" "$(cat "$T/guest.err")"
    finish
    exit 1
fi
# a copy: libvirt's DAC driver relabels (chowns) the kernel and initrd for the run
mkdir "$T/guest" && cp "$GUEST/vmlinuz" "$GUEST/initrd.gz" "$T/guest/"

setup_root

# --- g, first half: a VM of Debian's swtpm -----------------------------------------------------
# define, first start (swtpm_setup and swtpm, the real ones): NV written, the
# EK certificate's hash noted; then the daemons restart with SWTPM_DIR
start_daemons "" || { finish; exit 1; }
G=tpm-g UG=$(uuid)
step "define $G (swtpm)"
define_vm $G "$UG" "nvtpm.mode=boot nvtpm.data=libvirt-g nvtpm.word=word-1" &&
    pass "a VM for Debian's swtpm: defined"
run_vm $G "under Debian's swtpm: first start"
ran $G /usr/bin/swtpm
says $G "under swtpm: the guest writes NV" "NVWRITE: ok$"
says $G "under swtpm: and a second index" "NVWRITE2: ok$"
ek_g=$(value $G EKCERT)
[[ "$ek_g" =~ ^[0-9a-f]{64}$ ]] && pass "under swtpm: the EK certificate (NV 0x1c00002) is there" ||
    fail "under swtpm: the EK certificate (NV 0x1c00002) is there" "$(vm_report $G)"
state_g=$LV/lib/swtpm/$UG/tpm2
[ -f "$state_g/tpm2-00.permall" ] && pass "swtpm's state folder holds tpm2-00.permall" ||
    fail "swtpm's state folder holds tpm2-00.permall" "$(ls -la "$state_g" 2>&1)"
sum_g=$(sha256sum "$state_g"/tpm2-00.* 2>/dev/null)
restart_daemons "$SWTPM_DIR" || { finish; exit 1; }

# --- a. define, first start -------------------------------------------------------------------
A=tpm-a UA=$(uuid)
step "define $A"
define_vm $A "$UA" "nvtpm.mode=boot nvtpm.data=libvirt-a" && pass "virsh define (TPM 2.0, tpm-tis, emulator backend)"
[ ! -e "$LV/lib/swtpm/$UA" ] && pass "define makes no TPM state yet (swtpm_setup runs at the first start)" ||
    fail "define makes no TPM state yet (swtpm_setup runs at the first start)" "$(ls -lR "$LV/lib/swtpm/$UA")"
run_vm $A "first start: swtpm_setup makes the TPM, then the emulator runs"
ran $A "$EMULATOR"
says $A "the guest sees /dev/tpm0 and /dev/tpmrm0" "DEV: /dev/tpm0 /dev/tpmrm0 $"
says $A "tpm_version_major is 2" "MAJOR: 2$"
says $A "PCR 0 is not zero (SeaBIOS measured into it)" "PCR0: [0-9A-F]*[1-9A-F][0-9A-F]*$"
says $A "first start: a new TPM (no NV index yet)" "BOOT: first$"
says $A "the guest defines and writes an NV index" "NVWRITE: ok$"
says $A "and extends PCR 8" "EXTENDED: [0-9A-F]*[1-9A-F][0-9A-F]*$"
state=$LV/lib/swtpm/$UA/tpm2
[ -d "$state" ] && [ "$(stat -c %U:%a "$state")" = "tss:700" ] && [ -n "$(ls -A "$state")" ] &&
    pass "the state folder /var/lib/libvirt/swtpm/UUID/tpm2 belongs to tss, mode 700, not empty" ||
    fail "the state folder /var/lib/libvirt/swtpm/UUID/tpm2 belongs to tss, mode 700, not empty" \
        "$(ls -la "$state" 2>&1)"

# --- b. libvirtd restarted, second start ---------------------------------------------------------
restart_daemons "$SWTPM_DIR" || { finish; exit 1; }
: >"$T/$A.console"
run_vm $A "second start (after a libvirtd restart)"
ran $A "$EMULATOR"
says $A "second start: PCR 8 is zero again (a cold boot)" "PCR8: $ZERO64$"
says $A "the TPM is the same one" "BOOT: again$"
says $A "the NV data of the first start reads back" "NVREAD: libvirt-a$"

# virsh destroy of a running VM: QEMU is killed; the emulator must end too
: >"$T/$A.console"
step "start $A (to destroy)"
if virsh_ok "a third start" start $A && wait_line $A DEV; then
    step "destroy $A"
    virsh_ok "virsh destroy while the guest runs" destroy $A
    for _ in $(seq 100); do emulators $UA >/dev/null || break; sleep 0.1; done
    emulators $UA >"$T/out" && fail "the emulator ends with the destroyed VM (10 s)" "$(cat "$T/out")" ||
        pass "the emulator ends with the destroyed VM"
fi

# --- c, d. virsh save + restore, managedsave + start -------------------------------------------
# save_restore NAME HOW: the guest waits (migrate mode) with NV written and
# PCR 8 extended; HOW=save (virsh save FILE, virsh restore FILE) or
# managedsave (virsh managedsave, virsh start); then an NMI lets it go on
save_restore() {
    local n=$1 how=$2 pcr8
    define_vm $n "$(uuid)" "nvtpm.mode=migrate nvtpm.data=libvirt-$n nvtpm.word=after-$how" || return 1
    step "start $n"
    virsh_ok "$how: the VM starts" start $n || return 1
    wait_line $n READY || return 1
    pcr8=$(value $n PCR8)
    says $n "$how: the guest wrote NV and extended PCR 8, and waits" "NVWRITE: ok$"
    step "$how $n"
    if [ "$how" = save ]; then
        virsh_ok "virsh save $n FILE" save $n "$T/$n.save" || return 1
    else
        virsh_ok "virsh managedsave $n" managedsave $n || return 1
    fi
    [ "$(V domstate $n 2>&1)" = "shut off" ] && pass "$how: the VM is shut off" ||
        fail "$how: the VM is shut off" "$(V domstate $n 2>&1)"
    if [ "$how" = save ]; then
        step "restore $n"
        virsh_ok "virsh restore FILE" restore "$T/$n.save" || return 1
    else
        step "start $n (managed save)"
        virsh_ok "virsh start $n (from the managed save)" start $n || return 1
        [ "$(V domstate $n --reason 2>&1)" = "running (restored)" ] && pass "$how: it was restored, not booted" ||
            fail "$how: it was restored, not booted" "$(V domstate $n --reason 2>&1)"
    fi
    step "inject-nmi $n"
    virsh_ok "$how: the NMI is sent" inject-nmi $n || return 1
    wait_state $n "shut off" || return 1
    says $n "$how: the guest goes on after the restore" "RESUMED: nmi$"
    says $n "$how: the NV data is there" "NVREAD: libvirt-$n$"
    [ "$(value $n PCR8)" = "$pcr8" ] && [ "$(count $n PCR8)" = 2 ] &&
        pass "$how: PCR 8 is what it was before ($pcr8)" ||
        fail "$how: PCR 8 is what it was before ($pcr8)" "$(vm_report $n)"
    says $n "$how: the TPM still takes a new NV index" "NVWRITE2: ok$"
    says $n "$how: and reads it" "NVREAD2: after-$how$"
}
save_restore tpm-c save
save_restore tpm-d managedsave

# --- e. internal snapshot: create, then revert ---------------------------------------------------
E=tpm-e
qemu-img create -q -f qcow2 "$T/$E.qcow2" 16M
define_vm $E "$(uuid)" "nvtpm.mode=migrate nvtpm.data=libvirt-e nvtpm.word=after-snapshot" "$T/$E.qcow2"
step "start $E"
if virsh_ok "snapshot: the VM (with a 16 MiB qcow2 disk for the snapshot) starts" start $E && wait_line $E READY; then
    pcr8=$(value $E PCR8)
    step "snapshot-create $E"
    virsh_ok "virsh snapshot-create-as (internal, the running VM's memory and TPM)" snapshot-create-as $E snap1
    step "inject-nmi $E (1)"
    V inject-nmi $E >/dev/null && wait_state $E "shut off"
    says $E "after the snapshot the guest defines a second NV index" "NVWRITE2: ok$"
    step "snapshot-revert $E"
    virsh_ok "virsh snapshot-revert (the VM was shut off)" snapshot-revert $E snap1
    [ "$(V domstate $E --reason 2>&1)" = "running (from snapshot)" ] && pass "snapshot: the VM runs from the snapshot" ||
        fail "snapshot: the VM runs from the snapshot" "$(V domstate $E --reason 2>&1)"
    step "inject-nmi $E (2)"
    virsh_ok "snapshot: the NMI is sent" inject-nmi $E && wait_state $E "shut off"
    [ "$(count $E 'RESUMED: nmi$')" = 2 ] && pass "snapshot: the guest goes on from the snapshot" ||
        fail "snapshot: the guest goes on from the snapshot" "$(vm_report $E)"
    [ "$(value $E NVREAD)" = libvirt-e ] && pass "snapshot: the NV data is there" ||
        fail "snapshot: the NV data is there" "$(vm_report $E)"
    [ "$(value $E PCR8)" = "$pcr8" ] && pass "snapshot: PCR 8 is the snapshot's ($pcr8)" ||
        fail "snapshot: PCR 8 is the snapshot's ($pcr8)" "$(vm_report $E)"
    [ "$(count $E 'NVWRITE2: ok$')" = 2 ] &&
        pass "snapshot: the second index can be defined again - the TPM is back at the snapshot's state" ||
        fail "snapshot: the second index can be defined again - the TPM is back at the snapshot's state" \
            "$(vm_report $E)"
fi

# --- f. encrypted TPM state: a libvirt secret ---------------------------------------------------
F=tpm-f SF=$(uuid)
cat >"$T/secret.xml" <<EOF
<secret ephemeral='no' private='yes'>
  <uuid>$SF</uuid>
  <description>nvtpm libvirt test</description>
  <usage type='vtpm'><name>nvtpm-test-$F</name></usage>
</secret>
EOF
printf 'libvirt test passphrase' >"$T/passphrase"
step "secret-define"
virsh_ok "virsh secret-define (usage vtpm)" secret-define "$T/secret.xml" &&
    virsh_ok "virsh secret-set-value" secret-set-value "$SF" --file "$T/passphrase" --plain
step "define $F"
define_vm $F "$(uuid)" "nvtpm.mode=boot nvtpm.data=libvirt-f" "" "$SF" &&
    pass "virsh define, the TPM backend with <encryption secret='...'/>"
run_vm $F "encrypted: the VM starts on the first try"
line=$(emulator_line $F)
[[ "$line" == *"--key pwdfd="*"mode=aes-256-cbc"* ]] &&
    pass "libvirt hands the emulator the key: --key pwdfd=N,mode=aes-256-cbc" ||
    fail "libvirt hands the emulator the key: --key pwdfd=N,mode=aes-256-cbc" "it logged: $line"
says $F "encrypted: a new TPM" "BOOT: first$"
says $F "encrypted: the guest writes NV" "NVWRITE: ok$"
: >"$T/$F.console"
run_vm $F "encrypted: the second start"
says $F "encrypted: the NV data reads back (the state opens with the secret)" "NVREAD: libvirt-f$"

# --- g, second half: swtpm's VM under SWTPM_DIR's swtpm, and back ------------------------------
: >"$T/$G.console"
define_vm $G "$UG" "nvtpm.mode=boot nvtpm.data=libvirt-g nvtpm.word=word-2"
run_vm $G "switched: swtpm's VM starts under $EMULATOR"
ran $G "$EMULATOR"
says $G "switched: the same TPM (the NV index is there)" "BOOT: again$"
says $G "switched: its NV data" "NVREAD: libvirt-g$"
says $G "switched: and what swtpm's guest wrote last" "WORD2: word-1$"
[ "$(value $G EKCERT)" = "$ek_g" ] && pass "switched: the same EK certificate" ||
    fail "switched: the same EK certificate" "under swtpm $ek_g, now $(value $G EKCERT)"
says $G "switched: PCR 8 zero at boot" "PCR8: $ZERO64$"
NVTPM_BIN=$(readlink -f "${SWTPM_DIR:-/nonexistent}/swtpm" 2>/dev/null)
if [ -n "$SWTPM_DIR" ] && [ "$("$NVTPM_BIN" --version 2>/dev/null | cut -d' ' -f1)" = nvtpm ]; then
    [ -f "$state_g/tpm-00.qcow2" ] && [ "$(sha256sum "$state_g"/tpm2-00.*)" = "$sum_g" ] &&
        pass "nvtpm imported swtpm's files into tpm-00.qcow2 and left them as they were" ||
        fail "nvtpm imported swtpm's files into tpm-00.qcow2 and left them as they were" "$(ls -la "$state_g")"
    # back to swtpm, as docs/libvirt.md says
    "$NVTPM_BIN" export "$state_g/tpm-00.qcow2" --to-dir "$state_g" --replace >"$T/out" 2>&1 &&
        mv "$state_g/tpm-00.qcow2" "$T/tpm-g.qcow2" && chown tss:tss "$state_g"/tpm2-00.* &&
        pass "back: nvtpm export --replace, the image moved away" ||
        fail "back: nvtpm export --replace, the image moved away" "$(cat "$T/out")"
    restart_daemons "" || { finish; exit 1; }
    : >"$T/$G.console"
    define_vm $G "$UG" "nvtpm.mode=boot nvtpm.data=libvirt-g nvtpm.word=word-3"
    run_vm $G "back: the VM starts under Debian's swtpm again"
    says $G "back: its NV data" "NVREAD: libvirt-g$"
    says $G "back: swtpm sees what the guest wrote under nvtpm" "WORD2: word-2$"
    [ "$(value $G EKCERT)" = "$ek_g" ] && pass "back: the same EK certificate" ||
        fail "back: the same EK certificate" "$(value $G EKCERT)"
fi

if [ -n "$TRACE" ]; then
    stop_daemons # the last calls (at the domains' stop) are in the log too
    cp "$T/trace.log" "$TRACE" && echo "# trace of libvirt's swtpm, swtpm_setup and swtpm_ioctl calls: $TRACE"
fi
finish
