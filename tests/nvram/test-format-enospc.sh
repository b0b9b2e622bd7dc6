#!/usr/bin/env bash
# test-format-enospc.sh - a format that fails on a full disk leaks nothing
# (issue 17, item 8). Formatting allocates every cluster of the NVRAM; when
# a write or flush fails midway, the clusters already counted in the
# refcounts but not yet in the L2 table were leaked, and the next format,
# once space was freed, allocated new ones: 4.3 MB instead of 2.6 MB until
# `check --repair`. Every write and every flush of a format fails in turn,
# once (a transient error) and from there on (the disk stays full):
#   - once: the image has no leak right after the failed format;
#   - from there on: once the disk takes writes again, the next format
#     leaves the image as large as a format that never failed, with no leak.
# Usage: test-format-enospc.sh NVTPM TOOLS_DIR
set -u
. "$(dirname "$0")/../lib.sh"
NVTPM=$1
IO=$2/nvram-io
require qemu-img
T=$TEST_TMP
IMG=$T/f.qcow2
blank() { rm -f "$IMG"; qemu-img create -q -f qcow2 "$IMG" 4M; }
format() { "$IO" --tpm2 --format -c 'absent permall' "$@" >"$T/out" 2>&1; }
size() { stat -c %s "$IMG"; }

blank
format "$IMG" && pass "a format without faults" || fail "a format without faults" "$(cat "$T/out")"
REF=$(size)
"$NVTPM" check "$IMG" >/dev/null && pass "it leaves no leak ($REF bytes)" || fail "it leaves no leak"

for op in write flush; do
    points=0 leaked_once="" grown="" leaked_after="" wrong_exit=""
    for ((n = 1; n <= 200; n++)); do
        blank
        format "faults:$op=$n:ENOSPC:$IMG" && break # past the format's last $op
        points=$n
        "$NVTPM" check "$IMG" >/dev/null 2>&1 || leaked_once+=" $n"
        blank
        format "faults:$op=$n+:ENOSPC:$IMG" && wrong_exit+=" $n:0"
        grep -q "No space left on device" "$T/out" || wrong_exit+=" $n"
        format "$IMG" || { fail "$op $n+: the format works once there is space" "$(cat "$T/out")"; continue; }
        [ "$(size)" = "$REF" ] || grown+=" $n:$(size)"
        "$NVTPM" check "$IMG" >/dev/null 2>&1 || leaked_after+=" $n"
    done
    [ $points -gt 1 ] && pass "$op: $points failure points in a format" || fail "$op: failure points in a format" "$points"
    [ -z "$wrong_exit" ] && pass "$op: each failed format fails and says ENOSPC" ||
        fail "$op: each failed format fails and says ENOSPC" "at$wrong_exit"
    [ -z "$leaked_once" ] && pass "$op: a format that failed once leaves no leak" ||
        fail "$op: a format that failed once leaves no leak" "leaks after a failure at$leaked_once"
    [ -z "$grown" ] && pass "$op: after a full disk, the next format is $REF bytes too" ||
        fail "$op: after a full disk, the next format is $REF bytes too" "failure point:size$grown"
    [ -z "$leaked_after" ] && pass "$op: and leaves no leak" ||
        fail "$op: and leaves no leak" "leaks after a full disk at$leaked_after"
done
finish
