#!/usr/bin/env bash
# test-footprint.sh - what one TPM costs its host beyond the TPM itself
# (issue 19): the process of `nvtpm socket` maps no library it does not call
# (zlib, zstd and json-c are loaded on first use: a compressed image, JSON
# output), and a new image holds its NVRAM area allocated at creation (qcow2
# metadata preallocation: a fresh TPM's format writes no qcow2 metadata) and
# no disk space reserved past its end once formatted.
# Usage: test-footprint.sh NVTPM
set -u
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"
NVTPM=$1
require swtpm_ioctl qemu-img python3
T=$TEST_TMP

# one_getrandom SOCKET: TPM2_GetRandom(8) on the data socket; prints the answer in hex
one_getrandom() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex('80010000000c0000017b0008'))
print(s.recv(4096).hex())
PY
}

listen_start "$T/server.log" "unix:$T/data" "unix:$T/ctrl" -- "$NVTPM" socket --tpm2 \
    --tpmstate "file=$T/tpm.qcow2" --server type=unixio,fd=3 --ctrl type=unixio,fd=4 \
    --flags not-need-init,startup-clear || finish
resp=$(one_getrandom "$T/data")
[ "${resp:0:20}" = 80010000001400000000 ] && pass "a fresh TPM answers GetRandom" ||
    fail "a fresh TPM answers GetRandom" "$resp $(cat "$T/server.log")"
maps=$(cat "/proc/$SERVER_PID/maps" 2>&1)
for lib in libz.so libzstd.so libjson-c.so; do
    echo "$maps" | grep -q "/$lib" && fail "nvtpm socket does not map $lib" "$(echo "$maps" | grep "/$lib")" ||
        pass "nvtpm socket does not map $lib"
done
echo "$maps" | grep -q "/libtpms.so" && pass "(it maps libtpms: the maps were read)" ||
    fail "(it maps libtpms: the maps were read)" "$maps"
expect_exit 0 "CMD_SHUTDOWN" -- swtpm_ioctl --unix "$T/ctrl" -s
wait "$SERVER_PID"

size=$(stat -c %s "$T/tpm.qcow2")
used=$(($(stat -c %b "$T/tpm.qcow2") * $(stat -c %B "$T/tpm.qcow2")))
# (64 KiB of slack for the file system's own blocks; the format reserves
# 2.8 MB past the end while it works, and must give it back)
[ "$used" -le $((size + 65536)) ] && pass "no disk space stays reserved past the new image's end ($used bytes used, $size long)" ||
    fail "no disk space stays reserved past the new image's end" "$used bytes used, $size long"
expect_exit 0 "qemu-img check finds nothing wrong" -- qemu-img check "$T/tpm.qcow2"
map=$(qemu-img map --output=json "$T/tpm.qcow2")
python3 - "$map" <<'PY' && pass "the NVRAM area (its first 2240 KiB) is allocated data, in one extent" ||
import json, sys
m = json.loads(sys.argv[1])
first = m[0]
sys.exit(0 if first['start'] == 0 and first['data'] and first['length'] >= 2240 * 1024 else 1)
PY
    fail "the NVRAM area (its first 2240 KiB) is allocated data, in one extent" "$map"

# The preallocated layout at every cluster size and a size that is not a
# multiple of the cluster: qemu-img finds it clean and maps the NVRAM area
for cs in 512 4096 65536 2M; do
    img=$T/create-$cs.qcow2
    expect_exit 0 "nvtpm create --cluster-size $cs --size 2300k" -- "$NVTPM" create "$img" \
        --cluster-size "$cs" --size 2300k
    qemu-img check "$img" >"$T/check.out" 2>&1 && pass "cluster size $cs: qemu-img check is clean" ||
        fail "cluster size $cs: qemu-img check is clean" "$(cat "$T/check.out")"
    qemu-img map --output=json "$img" | python3 -c '
import json, sys
m = [e for e in json.load(sys.stdin) if e["data"]]
sys.exit(0 if m and m[0]["start"] == 0 and m[0]["length"] >= 2240 * 1024 else 1)' &&
        pass "cluster size $cs: the NVRAM area is mapped data from offset 0" ||
        fail "cluster size $cs: the NVRAM area is mapped data from offset 0" "$(qemu-img map "$img")"
    "$NVTPM" check "$img" >"$T/check.out" 2>&1 && pass "cluster size $cs: nvtpm check is clean" ||
        fail "cluster size $cs: nvtpm check is clean" "$(cat "$T/check.out")"
done

# JSON output still works: json-c loaded when needed
"$NVTPM" info "$T/tpm.qcow2" --json >"$T/info.json" 2>&1 &&
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/info.json" &&
    pass "nvtpm info --json prints JSON (json-c loaded on first use)" ||
    fail "nvtpm info --json prints JSON (json-c loaded on first use)" "$(cat "$T/info.json")"
finish
