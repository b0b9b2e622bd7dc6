#!/usr/bin/env bash
# test-install.sh - `meson install` into a scratch root, then build and run a
# program against the installed libnvtpm found through pkg-config.
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
for f in bin/nvtpm include/nvtpm/fdstash.h include/nvtpm/util.h share/man/man1/nvtpm.1; do
    [ -n "$(find "$DEST" -path "*/$f" | head -1)" ] && pass "installed $f" || fail "installed $f"
done
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

cat >"$TEST_TMP/user.c" <<'C'
#include <fdstash.h>
#include <stdio.h>
#include <unistd.h>
int main(void)
{
    struct fdstash s;
    fdstash_init(&s);
    int p[2];
    if (pipe(p) || fdstash_give(&s, "pipe", p[0], NULL) || fdstash_take(&s, "pipe") != p[0])
        return 1;
    fdstash_cleanup(&s);
    puts("libnvtpm works");
    return 0;
}
C
# shellcheck disable=SC2086
if cc $EXTRA_CFLAGS -o "$TEST_TMP/user" "$TEST_TMP/user.c" $flags 2>"$TEST_TMP/err"; then
    pass "a program builds against the installed headers and library"
else
    fail "a program builds against the installed headers and library" "$(cat "$TEST_TMP/err")"
fi
libdir=$(dirname "$(find "$DEST" -name 'libnvtpm.so*' | head -1)")
out=$(LD_LIBRARY_PATH=$libdir "$TEST_TMP/user" 2>&1)
[ "$out" = "libnvtpm works" ] && pass "the program runs on the installed libnvtpm" || fail "the program runs on the installed libnvtpm" "$out"
finish
