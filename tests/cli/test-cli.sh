#!/usr/bin/env bash
# test-cli.sh - the nvtpm command line: help, version, unknown commands, exit codes.
# Usage: test-cli.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
NVTPM=$1

expect_exit 0 "--help exits 0" -- "$NVTPM" --help
expect_output '^Usage: nvtpm COMMAND' "--help prints usage"
expect_output 'Exit codes' "--help documents exit codes"
expect_exit 0 "-h exits 0" -- "$NVTPM" -h
expect_exit 0 "--version exits 0" -- "$NVTPM" --version
expect_output '^nvtpm [0-9]+\.[0-9]+\.[0-9]+ \(libtpms 0\.[0-9]+\.[0-9]+\)$' "--version names nvtpm and libtpms"
expect_exit 1 "unknown command exits 1" -- "$NVTPM" frobnicate
expect_output "^nvtpm: unknown command 'frobnicate'; run 'nvtpm --help'$" "unknown command: one clear line"
[ "$(wc -l <"$TEST_TMP/err")" -eq 1 ] && pass "unknown command prints exactly one line" || fail "unknown command prints exactly one line"
[ ! -s "$TEST_TMP/out" ] && pass "unknown command prints nothing on stdout" || fail "unknown command prints nothing on stdout"
expect_exit 1 "unknown option exits 1" -- "$NVTPM" --frobnicate
expect_output "unknown option '--frobnicate'" "unknown option named"
expect_exit 1 "no command exits 1" -- "$NVTPM"
expect_output "no command given" "no command: says so"
finish
