#!/usr/bin/env bash
# bench-qcow2.sh - nvtpm's qcow2 driver against QEMU's own (`qemu-img bench`),
# side by side in one run, on identical images in the same folder:
#   4 KiB random writes in place, 4 KiB allocating sequential writes,
#   4 KiB random reads; writeback cache; with no flush and a flush every 16.
# "Random" is qemu-img bench's own pattern: the offset advances by a prime
# number of 4 KiB blocks modulo the image size, so every request lands
# somewhere else. One request at a time (-d 1): a TPM's writes are synchronous.
# QEMU also runs with 16 requests in flight (-d 16), its best case, for a
# fuller picture. Each line runs ROUNDS times, alternating; the median counts.
# Usage: bench-qcow2.sh BENCH_BINARY [DIR] [ROUNDS]
set -eu
BENCH=$1
DIR=${2:-$(mktemp -d)}
ROUNDS=${3:-5}
SIZE=$((256 << 20))
STEP=$((4096 * 7919))
COUNT=20000
command -v qemu-img >/dev/null || { echo "qemu-img is missing (./dev deps)"; exit 1; }
mkdir -p "$DIR"
full=$DIR/full.qcow2
qemu-img create -q -f qcow2 "$full" "$SIZE"
qemu-io -c "write -P 0x5a 0 $SIZE" "$full" >/dev/null

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

qemu_time() { # ARGS... -> seconds
    qemu-img bench "$@" 2>&1 | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'
}

# line NAME KIND(read|write) FRESH(yes|no) STEP FLUSH
line() {
    local name=$1 kind=$2 fresh=$3 step=$4 flush=$5 ours theirs deep i img
    local qflags=(-c "$COUNT" -s 4096 -S "$step" -t writeback -f qcow2)
    [ "$kind" = write ] && qflags+=(-w)
    [ "$flush" -gt 0 ] && qflags+=(--flush-interval="$flush")
    : >"$DIR/ours" && : >"$DIR/theirs" && : >"$DIR/deep"
    for ((i = 0; i < ROUNDS; i++)); do
        for who in ours theirs deep; do
            img=$DIR/run.qcow2
            rm -f "$img"
            if [ "$fresh" = yes ]; then qemu-img create -q -f qcow2 "$img" "$SIZE"; else cp "$full" "$img"; fi
            sync "$img"
            case $who in
            ours) "$BENCH" "$kind" "$img" "$COUNT" 4096 "$step" "$flush" >>"$DIR/ours" ;;
            theirs) qemu_time -d 1 "${qflags[@]}" "$img" >>"$DIR/theirs" ;;
            deep) qemu_time -d 16 "${qflags[@]}" "$img" >>"$DIR/deep" ;;
            esac
        done
    done
    ours=$(median <"$DIR/ours")
    theirs=$(median <"$DIR/theirs")
    deep=$(median <"$DIR/deep")
    awk -v n="$name" -v o="$ours" -v t="$theirs" -v d="$deep" -v c="$COUNT" 'BEGIN {
        printf "| %-41s | %8.0f | %8.0f | %6.2fx | %8.0f | %6.2fx |\n", n, c / o, c / t, t / o, c / d, d / o }'
}

echo "qcow2 driver benchmark: $COUNT requests of 4 KiB per line, $ROUNDS rounds, median;"
echo "image $((SIZE >> 20)) MiB, 64 KiB clusters, in $DIR ($(df -T "$DIR" | awk 'NR==2 {print $2}'))"
echo
echo "| workload                                  | nvtpm/s  | qemu/s   | ratio   | qemu d16 | ratio   |"
echo "|-------------------------------------------|----------|----------|---------|----------|---------|"
line "4 KiB random writes in place"              write no  "$STEP" 0
line "4 KiB random writes in place, flush/16"    write no  "$STEP" 16
line "4 KiB allocating sequential writes"        write yes 4096    0
line "4 KiB allocating seq. writes, flush/16"    write yes 4096    16
line "4 KiB random reads"                        read  no  "$STEP" 0
rm -rf "$DIR"/*.qcow2 "$DIR"/ours "$DIR"/theirs "$DIR"/deep
