"""A node held at its descriptor limit keeps its clock and its syncs (issue 19, case 1).

bsnode runs under ``prlimit --nofile=LIMIT`` with ``-b DIR -f 50`` (the
default fsync policy, whose timer hands each sync to a thread through a
duplicated descriptor), and the test opens more idle connections than it
can accept, so every descriptor is taken and every accept(), dup() and
open() fails with EMFILE.  Meanwhile, on connections accepted before:

* a delayed job becomes ready and is reserved, and the TTR of a reserved
  job runs out and another client gets it (the node's clock runs);
* ``reserve-with-timeout 1`` on an empty tube answers TIMED_OUT;
* puts are synced: fdatasync calls, counted with ``strace -f``, keep
  coming (-f 50: one every 50 ms while there are writes).

Then the idle connections go, a new connection is accepted (the accept
loop backed off and came back), so is a scrape of ``--metrics`` that waited
meanwhile, and the same checks pass again.  The
node's log names the shortage a bounded number of times and has no
traceback.  Before the fix the first dup() failing killed the greenlet
that runs every timer: no delayed job became ready again, no reserve
timed out, and no fdatasync ran.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest
from servers import bsnode_command, poll
from test_hostile import command, read_reply
from test_node_cli import Launched

pytestmark = pytest.mark.integration

LIMIT = 64  # the node's RLIMIT_NOFILE, soft and hard
IDLE = LIMIT + 40  # idle connections: more than the node can accept
PUT_WINDOW = 1.0  # seconds of puts while syncs are counted
MIN_SYNCS = 4  # fdatasync calls in PUT_WINDOW at -f 50 (healthy: ~20)
ANSWER = 8.0  # seconds any answer may take, even on a busy machine

needs_tools = pytest.mark.skipif(not (shutil.which("prlimit") and shutil.which("strace")),
                                 reason="needs prlimit and strace")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics_port(node) -> int | None:
    for line in list(node.lines):
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
        if m:
            return int(m.group(1))
    return None


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=ANSWER)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def timers_run(a: socket.socket, b: socket.socket, tube: bytes) -> None:
    """Delays, TTRs and reserve timeouts, on two connections the node already holds."""
    for s in (a, b):
        assert command(s, b"use " + tube).startswith(b"USING")
        assert command(s, b"watch " + tube).startswith(b"WATCHING")
        assert command(s, b"ignore default").startswith(b"WATCHING")
    # a delayed job becomes ready: only the clock can do that
    reply = command(a, b"put 0 1 1 5\r\nlater")  # delay 1 s, TTR 1 s
    assert reply.startswith(b"INSERTED "), reply
    jid = int(reply.split()[1])
    t0 = time.monotonic()
    a.sendall(b"reserve-with-timeout 6\r\n")
    assert read_reply(a, ANSWER) == b"RESERVED %d 5\r\nlater\r\n" % jid
    assert time.monotonic() - t0 >= 0.5  # it waited for the delay
    # its TTR runs out: the clock gives it back, and the other client gets it
    b.sendall(b"reserve-with-timeout 6\r\n")
    assert read_reply(b, ANSWER) == b"RESERVED %d 5\r\nlater\r\n" % jid
    assert b"timeouts: 1\n" in command(b, b"stats-job %d" % jid)
    assert command(b, b"delete %d" % jid) == b"DELETED\r\n"
    # a reserve with a timeout on an empty tube times out
    t0 = time.monotonic()
    a.sendall(b"reserve-with-timeout 1\r\n")
    assert read_reply(a, ANSWER) == b"TIMED_OUT\r\n"
    assert time.monotonic() - t0 >= 0.5


def syncs_during_puts(pid: int, sock: socket.socket, tmp_path, name: str) -> tuple[int, int]:
    """(fdatasync calls, puts) while putting for PUT_WINDOW seconds, strace attached."""
    out = tmp_path / f"strace-{name}.txt"
    tracer = subprocess.Popen(["strace", "-f", "-e", "trace=fdatasync", "-o", str(out),
                               "-p", str(pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # strace says "strace: Process N attached ..." once it traces (bounded wait)
        ready = select.select([tracer.stderr], [], [], 20)[0]
        said = tracer.stderr.readline() if ready else "(nothing from strace in 20 s)"
        assert "attached" in said and tracer.poll() is None, said
        puts = 0
        end = time.monotonic() + PUT_WINDOW
        while time.monotonic() < end and puts < 5000:
            assert command(sock, b"put 0 0 60 4\r\nsync").startswith(b"INSERTED")
            puts += 1
            time.sleep(0.002)  # writes spread over the window, as a real producer's
        time.sleep(0.2)  # the sync of the last writes (within 50 ms)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    calls = [line for line in out.read_text().splitlines() if "fdatasync(" in line]
    return len(calls), puts


@needs_tools
@pytest.mark.parametrize("fsync", ["50", "0"], ids=["-f 50", "-f 0"])
def test_node_at_its_descriptor_limit_keeps_its_clock_and_its_syncs(tmp_path, fsync):
    """-f 50: the timer hands syncs to a thread; -f 0: answers wait for a
    grouped sync (which used to be retried every second for want of a
    descriptor, holding every answer while the shortage lasted)."""
    argv = ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--", *bsnode_command(),
            "-l", "127.0.0.1", "-p", "0", "-b", str(tmp_path / "log"), "-f", fsync,
            "--metrics", "127.0.0.1:0"]
    idle: list[socket.socket] = []
    with Launched(argv) as node:
        port = node.port
        pid = node.proc.pid
        metrics = poll(lambda: metrics_port(node), ANSWER, "the metrics address")
        a, b, c = connect(port), connect(port), connect(port)
        try:
            for s in (a, b, c):
                assert command(s, b"list-tube-used") == b"USING default\r\n"  # accepted
            for _ in range(IDLE):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=ANSWER))
            poll(lambda: open_fds(pid) >= LIMIT, ANSWER * 2, "the node to run out of fds")

            scrape = socket.create_connection(("127.0.0.1", metrics), timeout=ANSWER)
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # waits to be accepted
            timers_run(a, b, b"during")
            syncs, puts = syncs_during_puts(pid, c, tmp_path, "during")
            print(f"at the limit: {syncs} fdatasync in {puts} puts")
            assert syncs >= MIN_SYNCS, f"{syncs} fdatasync in {puts} puts at the fd limit"
            assert open_fds(pid) >= LIMIT - 2  # still at the limit all along

            for s in idle:
                s.close()
            idle.clear()
            d, e = connect(port), connect(port)  # accepted again after the back-off
            try:
                page = b""
                while chunk := scrape.recv(65536):  # the metrics listener came back too
                    page += chunk
                scrape.close()
                assert page.startswith(b"HTTP/1.1 200") and b"bsnode_uptime_seconds" in page
                assert command(d, b"list-tube-used") == b"USING default\r\n"
                timers_run(d, e, b"after")
                syncs, puts = syncs_during_puts(pid, d, tmp_path, "after")
                print(f"after: {syncs} fdatasync in {puts} puts")
                assert syncs >= MIN_SYNCS
            finally:
                d.close()
                e.close()
        finally:
            for s in idle + [a, b, c]:
                s.close()
        log = list(node.lines)
    assert not [line for line in log if "Traceback" in line], "\n".join(log)
    shortage = [line for line in log if "Too many open files" in line
                or "descriptor" in line]
    print("\n".join(shortage))
    assert 1 <= len(shortage) <= 10, "\n".join(log)
