#!/usr/bin/env bash
# test-install.sh - `meson install` into a scratch root, then build and run a
# program against the installed libnvtpm found through pkg-config: the public
# header <nvtpm/tis.h> alone, the library's exported API alone.
# Usage: test-install.sh BUILD_DIR [EXTRA_CFLAGS]
set -u
. "$(dirname "$0")/../lib.sh"
BUILD=$1
EXTRA_CFLAGS=${2:-}
require pkg-config cc
DEST=$TEST_TMP/root

if meson install -C "$BUILD" --destdir "$DEST" --no-rebuild --quiet >"$TEST_TMP/install.log" 2>&1; then
    pass "meson install into a destdir"
else
    fail "meson install into a destdir" "$(tail -5 "$TEST_TMP/install.log")"
fi
pcfile=$(find "$DEST" -name libnvtpm.pc | head -1)
[ -n "$pcfile" ] && pass "libnvtpm.pc installed" || fail "libnvtpm.pc installed"
for f in bin/nvtpm include/nvtpm/tis.h share/man/man1/nvtpm.1; do
    [ -n "$(find "$DEST" -path "*/$f" | head -1)" ] && pass "installed $f" || fail "installed $f"
done
# The public API is tis.h alone: the layers' own headers stay in the tree.
headers=$(cd "$DEST" && find . -path '*/include/*' -type f | sort | tr '\n' ' ')
[ "$headers" = "$(cd "$DEST" && find . -path '*/include/nvtpm/tis.h')"' ' ] &&
    pass "tis.h is the only header installed" || fail "tis.h is the only header installed" "$headers"
[ -n "$(find "$DEST" -name 'libnvtpm.so*' | head -1)" ] && pass "installed libnvtpm.so" || fail "installed libnvtpm.so"
# the compatibility folder for libvirt (docs/libvirt.md): swtpm, a link to the installed nvtpm
link=$(find "$DEST" -path '*/libexec/nvtpm/swtpm-compat/swtpm' | head -1)
nvtpm_bin=$(find "$DEST" -path '*/bin/nvtpm' | head -1)
[ -L "$link" ] && [ "$DEST$(readlink "$link")" = "$nvtpm_bin" ] &&
    pass "installed libexec/nvtpm/swtpm-compat/swtpm, a link to the installed nvtpm" ||
    fail "installed libexec/nvtpm/swtpm-compat/swtpm, a link to the installed nvtpm" "${link:-none} -> $(readlink "$link" 2>/dev/null)"

export PKG_CONFIG_PATH=$(dirname "${pcfile:-/nonexistent/x}") PKG_CONFIG_SYSROOT_DIR=$DEST
flags=$(pkg-config --cflags --libs libnvtpm 2>"$TEST_TMP/err") && pass "pkg-config --cflags --libs libnvtpm" \
    || fail "pkg-config --cflags --libs libnvtpm" "$(cat "$TEST_TMP/err")"

# A VMM's view: only <nvtpm/tis.h>, in strict C11, warnings as errors. The
# device on dummy ops (a command answered at once), then the error object
# and the key parser.
cat >"$TEST_TMP/user.c" <<'C'
#include <nvtpm/tis.h>

#include <stdio.h>
#include <string.h>

static struct tis *dev;

static void execute(void *opaque, uint8_t locality, const uint8_t *cmd, uint32_t len)
{
    (void)opaque, (void)locality;
    tis_command_done(dev, cmd, len); /* an echo, as the TPM's answer */
}

static void set_irq(void *opaque, int level)
{
    (void)opaque, (void)level;
}

static void cancel(void *opaque)
{
    (void)opaque;
}

int main(int argc, char **argv)
{
    (void)argc;
    const struct tis_config cfg = {.tpm_version = 2};
    const struct tis_ops ops = {.execute = execute, .set_irq = set_irq, .cancel = cancel};
    struct nv_error *err = tis_error_new();
    if (!err || !(dev = tis_new(&cfg, &ops, NULL)))
        return 1;
    if (tis_mmio_read(dev, 0xf00, 4) != 0x00011014) { /* DID_VID, QEMU's default */
        fprintf(stderr, "DID_VID reads %#x\n", (unsigned)tis_mmio_read(dev, 0xf00, 4));
        return 1;
    }
    tis_mmio_write(dev, 0x00, 0x02, 1); /* ACCESS: requestUse at locality 0 */
    if ((tis_mmio_read(dev, 0x00, 1) & 0xa0) != 0xa0) /* tpmRegValidSts | activeLocality */
        return 1;
    static const uint8_t junk[] = "not a saved state";
    if (tis_load(dev, junk, sizeof(junk), err) >= 0 || tis_error_code(err) >= 0 ||
        !*tis_error_message(err))
        return 1;
    printf("tis_load: %s\n", tis_error_message(err));
    tis_free(dev);
    /* argv[1]: a key file of 32 hex digits */
    char spec[4096];
    snprintf(spec, sizeof(spec), "file=%s,format=hex", argv[1]);
    struct nvram_key *key = tis_key_new(spec, err);
    if (!key || tis_key_new("file=/nonexistent", err) || !*tis_error_message(err))
        return 1;
    tis_key_free(key);
    tis_error_free(err);
    puts("libnvtpm works");
    return 0;
}
C
echo 000102030405060708090a0b0c0d0e0f >"$TEST_TMP/key"
# shellcheck disable=SC2086
if cc -std=c11 -pedantic -Wall -Wextra -Werror $EXTRA_CFLAGS -o "$TEST_TMP/user" "$TEST_TMP/user.c" $flags 2>"$TEST_TMP/err"; then
    pass "a program including only <nvtpm/tis.h> builds with pkg-config --cflags --libs libnvtpm"
else
    fail "a program including only <nvtpm/tis.h> builds with pkg-config --cflags --libs libnvtpm" "$(cat "$TEST_TMP/err")"
fi
libdir=$(dirname "$(find "$DEST" -name 'libnvtpm.so*' | head -1)")
out=$(LD_LIBRARY_PATH=$libdir "$TEST_TMP/user" "$TEST_TMP/key" 2>&1)
[ "$(tail -1 <<<"$out")" = "libnvtpm works" ] && pass "the program runs on the installed libnvtpm" || fail "the program runs on the installed libnvtpm" "$out"
finish
