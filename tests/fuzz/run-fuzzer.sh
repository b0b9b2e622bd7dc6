#!/usr/bin/env bash
# run-fuzzer.sh - run a libFuzzer target for a while from a copy of its corpus
# (the repository's corpus is never modified). A finding fails the test and
# its input is kept in fuzz-artifacts/ under the build directory.
# Usage: run-fuzzer.sh FUZZER CORPUS SECONDS
set -u
. "$(dirname "$0")/../lib.sh"
FUZZER=$1 CORPUS=$2 SECONDS_=$3
name=$(basename "$FUZZER")
work=$TEST_TMP/corpus
mkdir -p "$work" fuzz-artifacts
cp -r "$CORPUS"/. "$work"/
[ "$(ls "$work" | wc -l)" -gt 0 ] && pass "$name: the corpus has seeds" || fail "$name: the corpus has seeds"
if "$FUZZER" -max_total_time="$SECONDS_" -max_len=262144 -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz-artifacts/$name-" -print_final_stats=1 "$work" >"$TEST_TMP/log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$TEST_TMP/log" | grep -o '[0-9]*$')
    pass "$name: ${runs:-?} inputs in ${SECONDS_}s without a finding"
    [ "${runs:-0}" -gt 0 ] && pass "$name: the fuzzer really ran" || fail "$name: the fuzzer really ran"
else
    fail "$name: ran ${SECONDS_}s without a finding" "$(grep -E 'ERROR|SUMMARY|artifact' "$TEST_TMP/log" | head -10)"
fi
finish
