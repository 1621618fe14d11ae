"""Disk full under a real bsnode: puts refused, everything else goes on, nothing lost.

The binlog lives on a 4 MiB tmpfs mounted for the test (root only; skipped
when mount is not permitted) and is filled up by another file, as a full
disk usually is.  While full: puts are answered OUT_OF_MEMORY, reserve,
peek, stats and delete keep working.  Once the other file is removed, puts
are logged again.  Then the node is SIGKILLed and restarted on the same
directory: exactly the acknowledged, undeleted jobs come back.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from servers import start_bsnode
from test_hostile import command

pytestmark = pytest.mark.integration

DISK = "4m"
BODY = 1000
MAX_PUTS = 5000  # bound on the fill loop; a 4 MiB disk is full long before


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=True)


def put(c, n: int) -> bytes:
    body = b"job-%06d " % n
    body += b"x" * (BODY - len(body))
    return command(c, b"put 0 0 60 %d\r\n%s" % (len(body), body))


def fill(path) -> int:
    """Write ``path`` until the disk says it is full; returns bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\xaa" * 65536
    written = 0
    try:
        while True:
            try:
                written += os.write(fd, chunk if written % 65536 == 0 else chunk[:4096])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)


def drain_bodies(c) -> list[bytes]:
    """Reserve every ready job; their bodies' first word."""
    out = []
    for _ in range(MAX_PUTS):
        reply = command(c, b"reserve-with-timeout 0")
        if reply.startswith(b"TIMED_OUT"):
            return out
        head, body = reply.split(b"\r\n", 1)
        out.append(body.split(b" ", 1)[0])
    raise AssertionError("more jobs than were ever put")


def test_disk_full_refuses_puts_serves_the_rest_and_loses_nothing(small_disk):
    log_dir = small_disk / "log"
    acked: dict[bytes, int] = {}
    deleted: set[bytes] = set()
    n = 0
    with start_bsnode("-b", str(log_dir), "-f", "0", "-s", "262144") as node, \
            node.connect() as c:
        for _ in range(50):
            n += 1
            reply = put(c, n)
            assert reply.startswith(b"INSERTED"), reply
            acked[b"job-%06d" % n] = int(reply.split()[1])
        filled = fill(small_disk / "filler")
        refused = 0
        while refused == 0 and n < MAX_PUTS:
            n += 1
            reply = put(c, n)
            if reply == b"OUT_OF_MEMORY\r\n":
                refused += 1
            else:
                assert reply.startswith(b"INSERTED"), reply
                acked[b"job-%06d" % n] = int(reply.split()[1])
        assert refused, f"no OUT_OF_MEMORY after {n} puts on a full disk"
        full_at = len(acked)
        # still full: more puts are refused, everything else works
        for _ in range(5):
            n += 1
            assert put(c, n) == b"OUT_OF_MEMORY\r\n"
        assert command(c, b"stats").startswith(b"OK ")
        assert command(c, b"peek-ready").startswith(b"FOUND ")
        reply = command(c, b"reserve-with-timeout 0")
        assert reply.startswith(b"RESERVED "), reply
        first = int(reply.split()[1])
        assert command(c, b"delete %d" % first) == b"DELETED\r\n"
        for key, jid in list(acked.items())[1:11]:  # ten more, by id, from ready
            assert command(c, b"delete %d" % jid) == b"DELETED\r\n"
            deleted.add(key)
        deleted.add(next(k for k, v in acked.items() if v == first))
        assert command(c, b"release %d 0 0" % list(acked.values())[20]) == b"NOT_FOUND\r\n"
        # space comes back: puts are logged again
        os.unlink(small_disk / "filler")
        n += 1
        reply = put(c, n)
        assert reply.startswith(b"INSERTED"), reply
        acked[b"job-%06d" % n] = int(reply.split()[1])
        errors = "\n".join(node.lines)
        node.kill()
    assert "No space left on device" in errors, errors
    with start_bsnode("-b", str(log_dir), "-f", "0", "-s", "262144") as node, \
            node.connect() as c:
        back = drain_bodies(c)
    print(f"disk filled by {filled} bytes; {full_at} jobs acknowledged before puts were "
          f"refused; {len(deleted)} deleted while full; {len(back)} back after kill -9")
    assert sorted(back) == sorted(set(acked) - deleted)
