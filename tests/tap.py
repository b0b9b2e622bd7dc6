"""tap.py - what the Python test scripts share: TAP-style checks with a count
that ends the run, and a search for free TCP ports on 127.0.0.1.

A script imports it after putting tests/ on sys.path (see any test-*.py)."""
import os
import random
import socket
import sys

passed = failed = 0


def check(ok, name, detail=''):
    """One assertion: prints ok/not ok, with detail only when it failed."""
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(('ok - ' if ok else 'not ok - ') + name + ('' if ok or not detail else '\n  ' + detail))


def finish():
    """Prints the count and exits 1 if any check failed."""
    print(f'{passed} passed, {failed} failed')
    sys.exit(1 if failed else 0)


def free_ports(n):
    """The first of n consecutive TCP ports that are free right now, below
    the kernel's ephemeral range: a client's outgoing connection (tpm2-tools
    opens one per command) can take any port in that range, and a server
    restarted on such a port would then fail to bind."""
    try:
        low = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(low, 10001 + n) - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(('127.0.0.1', p))
                socks.append(s)
            return base
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    raise SystemExit('no free ports')


def unix_listening(path):
    """Whether a UNIX socket at path is listening, seen in /proc/net/unix
    without connecting (a connection would count as a client: a server with
    'terminate' would end when it closes). The file alone is not enough: a
    server that binds in place (swtpm) has it from bind(), before listen().
    /proc keeps the name a socket was bound to: nvtpm binds PATH.PID and
    renames it into place once listening, so that name counts too."""
    if not os.path.exists(path):
        return False
    try:
        with open('/proc/net/unix') as f:
            next(f)
            for line in f:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode [Path]
                if (len(fields) >= 8 and int(fields[3], 16) & 0x10000 and
                        (fields[7] == path or (fields[7].startswith(path + '.') and
                                                fields[7][len(path) + 1:].isdigit()))):
                    return True
    except OSError:
        pass
    return False
