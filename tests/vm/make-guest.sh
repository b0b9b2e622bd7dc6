#!/usr/bin/env bash
# make-guest.sh - the VM tests' guest, from Debian packages: the kernel of the
# current linux-image-amd64 (downloaded with apt-get download and unpacked,
# cached in OUT) and an initramfs of busybox-static, tpm2-tools with the
# libraries it loads (the device TCTI included), and tests/vm/guest-init as
# /init. Prints nothing on success; OUT/vmlinuz and OUT/initrd.gz exist after.
# Usage: make-guest.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
work="" root=""
trap 'rm -rf "$work" "$root"' EXIT
for p in busybox cpio gzip dpkg-deb apt-get tpm2 ldd; do
    command -v "$p" >/dev/null || { echo "make-guest: $p is missing (./dev deps)" >&2; exit 1; }
done

# --- the kernel -------------------------------------------------------------------------------
if [ ! -s "$out/vmlinuz" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "make-guest: no kernel package behind linux-image-amd64" >&2; exit 1; }
    work=$(mktemp -d)
    (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) ||
        { echo "make-guest: apt-get download $pkg failed" >&2; exit 1; }
    dpkg-deb -x "$work"/*.deb "$work/x"
    grep -q '^CONFIG_TCG_TIS=y' "$work"/x/boot/config-* ||
        { echo "make-guest: $pkg does not build in tpm_tis" >&2; exit 1; }
    cp "$work"/x/boot/vmlinuz-* "$out/vmlinuz.new"
    echo "$pkg" >"$out/kernel-package"
    mv "$out/vmlinuz.new" "$out/vmlinuz"
fi

# --- the initramfs (rebuilt when guest-init changes) -----------------------------------------
if [ ! -s "$out/initrd.gz" ] || [ "$here/guest-init" -nt "$out/initrd.gz" ]; then
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib64,usr/lib/x86_64-linux-gnu}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    cp /usr/bin/tpm2 "$root/bin/tpm2"
    for t in nvdefine nvwrite nvread pcrextend pcrread getrandom; do ln -sf tpm2 "$root/bin/tpm2_$t"; done
    device_tcti=$(readlink -f /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0)
    for lib in $(ldd /usr/bin/tpm2 "$device_tcti" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}' | sort -u); do
        cp -L "$lib" "$root/usr/lib/x86_64-linux-gnu/"
    done
    cp -L "$device_tcti" "$root/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0"
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    ln -s usr/lib "$root/lib"
    cp "$here/guest-init" "$root/init"
    chmod 755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.gz.new"
    mv "$out/initrd.gz.new" "$out/initrd.gz"
fi
