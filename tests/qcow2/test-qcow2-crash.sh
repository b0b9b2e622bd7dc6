#!/usr/bin/env bash
# test-qcow2-crash.sh - crash consistency of the qcow2 driver: an allocating
# workload runs over the fault-injection driver's write log; every prefix of
# that log, replayed onto the image as it was before, is what a crash at that
# moment leaves. qemu-img check must find no corruption in any of them (leaks
# are allowed, and both nvtpm and qemu-img repair them).
# Usage: test-qcow2-crash.sh BUILD_TOOLS_DIR NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
TOOLS=$1
NVTPM=$2
require qemu-img
IO=$TOOLS/nvtpm-io

# prefixes N [WINDOW]: the prefixes to check; all of them, or with WINDOW,
# every one within WINDOW records of a header rewrite (the refcount table or
# the L1 table moving) and every 25th elsewhere.
prefixes() {
    local n=$1 window=${2:-}
    if [ -z "$window" ]; then seq 0 "$n"; return; fi
    "$TOOLS/wlog-replay" "$log" list | awk -v n="$n" -v w="$window" '
        $2 == "write" && $3 == 0 { h[++c] = $1 }
        END { for (k = 0; k <= n; k++) { near = 0
                for (i = 1; i <= c; i++) if (k >= h[i] - w && k <= h[i] + w) near = 1
                if (near || k % 25 == 0 || k == n) print k } }'
}

crash_run() { # CLUSTER_SIZE COMPAT OPS [REFCOUNT_BITS WINDOW]
    local cs=$1 compat=$2 ops=$3 bits=${4:-16} window=${5:-} name="cluster $1, compat $2, refcount bits ${4:-16}"
    local base=$TEST_TMP/base.qcow2 work=$TEST_TMP/work.qcow2 log=$TEST_TMP/w.log
    local ref=$TEST_TMP/ref.raw out=$TEST_TMP/out.qcow2
    rm -f "$base" "$work" "$ref"
    qemu-img create -q -f qcow2 -o "cluster_size=$cs,compat=$compat,refcount_bits=$bits" "$base" 24M
    cp "$base" "$work"
    truncate -s 24M "$ref"
    if "$TOOLS/qcow2-workload" "faults:log=$log:$work" "$ref" 11 "$ops" 10 >/dev/null 2>"$TEST_TMP/err"; then
        pass "$name: the workload ran over the logging driver"
    else
        fail "$name: the workload ran over the logging driver" "$(cat "$TEST_TMP/err")"
        return
    fi
    local n bad=0 leaky=0 checked=0 k headers
    n=$("$TOOLS/wlog-replay" "$log" count)
    headers=$("$TOOLS/wlog-replay" "$log" list | awk '$2 == "write" && $3 == 0' | wc -l)
    for k in $(prefixes "$n" "$window"); do
        "$TOOLS/wlog-replay" "$log" apply "$base" "$out" "$k" || { bad=$((bad + 1)); continue; }
        qemu-img check -q "$out" >/dev/null 2>&1
        case $? in
        0) ;;
        3) leaky=$((leaky + 1)) ;;
        *) bad=$((bad + 1)); [ $bad -eq 1 ] && qemu-img check "$out" >"$TEST_TMP/first-bad" 2>&1 && :
           echo "  prefix $k of $n is corrupt" ;;
        esac
        checked=$((checked + 1))
    done
    echo "  $name: $checked prefixes of 0 to $n records checked (${window:+windows around }$headers header rewrites), $leaky with leaks only"
    if [ -n "$window" ]; then
        [ "$headers" -gt 0 ] && pass "$name: the refcount table grew during the run" \
            || fail "$name: the refcount table grew during the run"
    fi
    [ $bad -eq 0 ] && pass "$name: no prefix of the write log is corrupt" \
        || fail "$name: no prefix of the write log is corrupt" "$bad corrupt; $(head -5 "$TEST_TMP/first-bad" 2>/dev/null)"
    [ "$checked" -gt 50 ] && pass "$name: enough prefixes checked ($checked)" || fail "$name: enough prefixes checked ($checked)"
    # The whole log is the finished image: clean, and equal to the reference.
    "$TOOLS/wlog-replay" "$log" apply "$base" "$out" "$n"
    qemu-img check -q "$out" && pass "$name: the full replay checks clean" || fail "$name: the full replay checks clean"
    qemu-img compare -q -f raw -F qcow2 "$ref" "$out" && pass "$name: the full replay equals the reference" \
        || fail "$name: the full replay equals the reference"
    # A leaky prefix is repaired by nvtpm, and qemu-img agrees.
    for ((k = n / 2; k <= n; k++)); do
        "$TOOLS/wlog-replay" "$log" apply "$base" "$out" "$k"
        qemu-img check -q "$out" >/dev/null 2>&1
        [ $? -eq 3 ] && break
    done
    if [ "$k" -le "$n" ]; then
        expect_exit 3 "$name: nvtpm check finds the leaks of prefix $k (exit 3)" -- "$NVTPM" check "$out"
        expect_exit 0 "$name: nvtpm check --repair repairs them" -- "$NVTPM" check --repair "$out"
        expect_exit 0 "$name: qemu-img check is clean after nvtpm's repair" -- qemu-img check "$out"
    else
        pass "$name: (no leaky prefix in the second half to repair)"
    fi
}

# I/O errors in the middle of a run, the run going on: whatever fails, the
# image must not be corrupt afterwards (leaks allowed). Counted rules hit
# some request mid-run; named ones hit each metadata write of a kind, so the
# refcount table's growth (64-bit refcounts, 512-byte clusters) and the
# header rewrites that publish it (two in 600 requests) are hit whatever the
# path writes first.
error_runs() {
    local img=$TEST_TMP/err.qcow2 ref=$TEST_TMP/err.raw wlog=$TEST_TMP/err.wlog bad=0 runs=0 rule
    for rule in write=40+:EIO write=200+:EIO write=900+:ENOSPC flush=3+:EIO flush=9:EIO write=1500:EIO \
        write=qcow2-l2-update:EIO write=qcow2-refblock-update:EIO write=qcow2-reftable-update:EIO \
        write=qcow2-l1-update:EIO write=qcow2-header-update:EIO flush=qcow2-reftable-update:EIO \
        write=qcow2-refblock-update/2+:ENOSPC; do
        rm -f "$img" "$ref"
        qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "$img" 24M
        truncate -s 24M "$ref"
        "$TOOLS/qcow2-workload" "faults:log=$wlog,$rule:$img" "$ref" 5 600 10 keep-going >/dev/null 2>&1
        runs=$((runs + 1))
        "$TOOLS/wlog-replay" "$wlog" list | grep -q " fault " || { bad=$((bad + 1)); echo "  $rule never fired"; }
        qemu-img check -q "$img" >/dev/null 2>&1
        case $? in 0 | 3) ;; *) bad=$((bad + 1)); echo "  $rule left the image corrupt" ;; esac
    done
    [ $bad -eq 0 ] && pass "I/O errors in $runs runs fire and never corrupt the image" \
        || fail "I/O errors in $runs runs fire and never corrupt the image" "$bad bad"
}
error_runs

# Sized so that every prefix gets checked in about a minute in all; 512-byte
# clusters make the refcount table grow several times during the run.
crash_run 65536 1.1 150
crash_run 512 1.1 12
crash_run 4096 0.10 60
# 64-bit refcounts with 512-byte clusters: the refcount table covers 2 MiB,
# so it grows during the run; every prefix around each move is checked.
crash_run 512 1.1 130 64 150
finish
