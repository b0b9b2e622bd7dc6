#!/usr/bin/env python3
"""test-summary.py - one 'N passed, N failed' line over the meson test logs given.

Counts test cases, not test programs: a cmocka program counts its cases, a
shell test its "ok"/"not ok" lines (from its own closing line). A program that
failed without saying which case failed counts as one failure; a skipped or
timed-out test is a failure, never a pass."""
import json
import re
import sys

CMOCKA_PASSED = re.compile(r"^\[  PASSED  \] (\d+) test", re.M)
CMOCKA_FAILED = re.compile(r"^\[  FAILED  \] (\d+) test", re.M)
PLAIN = re.compile(r"^(\d+) passed, (\d+) failed", re.M)


def count(entry):
    out = entry.get("stdout") or ""
    ok = entry["result"] in ("OK", "EXPECTEDFAIL")
    plain = PLAIN.findall(out)
    if plain:
        p, f = int(plain[-1][0]), int(plain[-1][1])
    else:
        p = sum(int(n) for n in CMOCKA_PASSED.findall(out))
        f = sum(int(n) for n in CMOCKA_FAILED.findall(out))
    if p == 0 and f == 0:
        return (1, 0) if ok else (0, 1)
    if not ok and f == 0:
        f = 1
    return p, f


def main():
    passed = failed = 0
    for path in sys.argv[1:]:
        try:
            lines = open(path).read().splitlines()
        except OSError as e:
            print(f"test-summary: {e}", file=sys.stderr)
            failed += 1
            continue
        for line in lines:
            if line.strip():
                p, f = count(json.loads(line))
                passed += p
                failed += f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


sys.exit(main())
