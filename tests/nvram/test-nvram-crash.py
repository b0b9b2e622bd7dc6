#!/usr/bin/env python3
"""test-nvram-crash.py - crash consistency of NVRAM commits, exhaustively.

A workload of commits (each blob a distinct pattern per commit, payloads that
span several qcow2 clusters so a commit is several writes) runs over the
fault-injection driver's write log. Then, for every flush in the log and every
subset of the writes between it and the next flush, the replayed image must
load, for each blob, either the last commit flushed before that point or the
one in flight; and qemu-img check must stay clean (commits never touch qcow2
metadata). Usage: test-nvram-crash.py TOOLS_DIR [--encrypted]"""
import itertools
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from tap import check, finish  # noqa: E402

tools = sys.argv[1]
keydir = tempfile.TemporaryDirectory()
keyfile = None
if len(sys.argv) > 2 and sys.argv[2] == '--encrypted':
    keyfile = os.path.join(keydir.name, 'key')
    with open(keyfile, 'w') as f:
        f.write(os.urandom(32).hex())


def run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


def nvram_io(*args):
    key = ['--key', 'file=' + keyfile] if keyfile else []
    return run(os.path.join(tools, 'nvram-io'), *key, *args)


# commits[i] = (blob, pattern byte, length); the length changes so that
# payloads span one to four 64 KiB clusters.
COMMITS = [('permall', 0x10 + i, 9000 + 47000 * (i % 4)) for i in range(8)]
COMMITS[2:2] = [('volatilestate', 0x60, 70000)]
COMMITS[6:6] = [('volatilestate', 0x61, 5000)]

with tempfile.TemporaryDirectory() as tmp:
    base = os.path.join(tmp, 'base.qcow2')
    work = os.path.join(tmp, 'work.qcow2')
    log = os.path.join(tmp, 'w.log')
    out = os.path.join(tmp, 'out.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', base, '4M')
    fmt = [os.path.join(tools, 'nvram-io'), '--tpm2', '--format', '-c', 'echo formatted', base]
    if keyfile:
        fmt[1:1] = ['--key', 'file=' + keyfile]
    r = run(*fmt)
    check(r.returncode == 0, 'the base image is formatted', r.stderr[:400])
    run('cp', base, work)
    cmds = []
    for blob, pat, length in COMMITS:
        cmds += ['-c', f'store {blob} -P {pat} {length}']
    r = nvram_io(*cmds, f'faults:log={log}:{work}')
    check(r.returncode == 0, f'{len(COMMITS)} commits ran over the logging driver', r.stderr[:400])

    records = [line.split() for line in run(os.path.join(tools, 'wlog-replay'), log,
                                            'list').stdout.splitlines()]
    flushes = [int(rec[0]) for rec in records if rec[1] == 'flush']
    check(len(flushes) == len(COMMITS), f'one flush per commit ({len(flushes)})')

    def expected(done):
        """What each blob must load after the first `done` commits."""
        state = {'permall': None, 'volatilestate': None}
        for blob, pat, length in COMMITS[:done]:
            state[blob] = (pat, length)
        return state

    def load(blob):
        r = nvram_io('-r', '-c', f'load {blob} {out}.{blob}', out)
        if r.returncode != 0:
            return 'absent' if 'does not exist' in r.stderr else r.stderr.strip()
        data = open(f'{out}.{blob}', 'rb').read()
        if not data or data != bytes([data[0]]) * len(data):
            return 'mixed'
        return (data[0], len(data))

    cases = bad = 0
    starts = [-1] + flushes
    for n, start in enumerate(starts[:-1]):
        end = starts[n + 1]
        writes = [int(rec[0]) for rec in records[start + 1:end] if rec[1] == 'write']
        before, after = expected(n), expected(n + 1)
        for size in range(len(writes) + 1):
            for subset in itertools.combinations(writes, size):
                idx = [str(i) for i in range(start + 1)] + [str(i) for i in subset]
                run(os.path.join(tools, 'wlog-replay'), log, 'apply-list', base, out, *idx)
                cases += 1
                for blob in ('permall', 'volatilestate'):
                    got = load(blob)
                    allowed = [before[blob], after[blob]]
                    allowed = ['absent' if a is None else a for a in allowed]
                    if got not in allowed:
                        bad += 1
                        if bad <= 3:
                            print(f'  commit {n}, writes {subset}: {blob} is {got}, '
                                  f'wanted one of {allowed}')
                if subprocess.run(['qemu-img', 'check', '-q', out]).returncode != 0:
                    bad += 1
    print(f'  {cases} crash points (every flush, every subset of the writes after it)')
    check(cases > len(COMMITS) * 2, f'{cases} crash points checked')
    check(bad == 0, 'every crash point loads the last flushed commit or the one in flight, '
          'and qemu-img check is clean', f'{bad} bad')

finish()
