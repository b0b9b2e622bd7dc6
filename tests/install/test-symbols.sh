#!/usr/bin/env bash
# test-symbols.sh - libnvtpm.so's ABI: the dynamic symbols it defines are
# exactly the names in libnvtpm.symbols (an export not listed, or a listed
# name not exported, fails with the names), and each is declared NVTPM_API in
# the installed headers.
# Usage: test-symbols.sh LIBNVTPM_SO SYMBOL_LIST PUBLIC_HEADER...
set -u
. "$(dirname "$0")/../lib.sh"
LIB=$1 LIST=$2
shift 2
require nm comm
export LC_ALL=C

grep -v '^#' "$LIST" | grep . >"$TEST_TMP/listed"
sort -c "$TEST_TMP/listed" 2>"$TEST_TMP/err" && pass "libnvtpm.symbols is sorted, one name a line" ||
    fail "libnvtpm.symbols is sorted, one name a line" "$(cat "$TEST_TMP/err")"
# -P: "name type value size"; defined symbols only, whatever their binding.
if nm -D --defined-only -P "$LIB" >"$TEST_TMP/nm" 2>"$TEST_TMP/err"; then
    pass "nm reads the dynamic symbols of $(basename "$LIB")"
else
    fail "nm reads the dynamic symbols of $(basename "$LIB")" "$(cat "$TEST_TMP/err")"
fi
awk '{print $1}' "$TEST_TMP/nm" | sort -u >"$TEST_TMP/exported"
extra=$(comm -13 "$TEST_TMP/listed" "$TEST_TMP/exported" | tr '\n' ' ')
missing=$(comm -23 "$TEST_TMP/listed" "$TEST_TMP/exported" | tr '\n' ' ')
[ -z "$extra" ] && pass "every export is listed in libnvtpm.symbols" ||
    fail "every export is listed in libnvtpm.symbols" "exported, not listed: $extra"
[ -z "$missing" ] && pass "every listed symbol is exported" ||
    fail "every listed symbol is exported" "listed, not exported: $missing"
undeclared=
while read -r name; do
    cat "$@" | grep -Eq "^NVTPM_API [^(]*[ *]$name\(" || undeclared="$undeclared $name"
done <"$TEST_TMP/listed"
[ -z "$undeclared" ] && pass "each listed symbol is declared NVTPM_API in the installed headers" ||
    fail "each listed symbol is declared NVTPM_API in the installed headers" "not declared:$undeclared"
finish
