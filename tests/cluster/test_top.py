"""`bscluster top`: the screen it renders, and the real thing in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
from bsclient import Client
from bscluster.top import HOME_CLEAR, LEAVE, render
from servers import bscluster_command, free_port, poll, start_bsnode


def _view(**over) -> dict:
    node = {"name": "node1", "address": "127.0.0.1:11300", "up": True, "error": None, "state": "up",
            "ready": 7, "reserved": 1, "delayed": 2, "buried": 3, "urgent": 0,
            "connections": 4, "producers": 1, "workers": 2, "waiting": 1, "tubes": 3,
            "uptime": 65, "version": "1.12", "pid": 10, "total_jobs": 13, "draining": False,
            "ops": 12.5, "puts": 5.0, "reserves": 4.0, "deletes": 3.5}
    down = {"name": "node2", "address": "127.0.0.1:11301", "up": False, "state": "DOWN",
            "error": "connection refused (nothing listening)",
            **dict.fromkeys(("ready", "reserved", "delayed", "buried", "urgent", "connections",
                             "producers", "workers", "waiting", "tubes", "uptime", "version",
                             "pid", "total_jobs", "draining", "ops", "puts", "reserves",
                             "deletes"))}

    def tube(name, ready=0, buried=0, watching=1, paused=0, ops=None):
        level = 3 if buried else 2 if ready and not watching else 1 if paused else 0
        why = {3: "buried jobs", 2: "ready jobs but no worker watching", 1: "paused",
               0: ""}[level]
        return {"name": name, "ready": ready, "reserved": 0, "delayed": 0, "buried": buried,
                "urgent": 0, "waiting": 0, "watching": watching, "using": 0,
                "total_jobs": ready + buried, "paused": paused, "nodes": ["node1"],
                "puts": ops, "deletes": ops, "ops": ops, "attention": level, "why": why}

    tubes = [tube("zeta", buried=3), tube("alpha", ready=5, watching=0),
             tube("paused", paused=30), tube("busy", ready=2, ops=40.0)]
    view = {"time": 0.0, "interval": 1.0,
            "totals": {"nodes": 2, "nodes_up": 1, "tubes": 4, "ready": 7, "reserved": 1,
                       "delayed": 2, "buried": 3, "urgent": 0, "connections": 4,
                       "producers": 1, "workers": 2, "waiting": 1, "total_jobs": 13,
                       "ops": 12.5, "puts": 5.0, "reserves": 4.0, "deletes": 3.5},
            "nodes": [node, down], "tubes": tubes}
    view.update(over)
    return view


def _tube_order(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("TUBE"))
    return [line.split()[0] for line in lines[start + 1:] if line and line[0].isalpha()
            and not line.startswith(("q ", "..."))]


def test_render_totals_nodes_and_attention_order():
    lines = render(_view(), color=False, width=200, height=50)
    text = "\n".join(lines)
    assert "1/2 nodes up, 4 tubes" in lines[0]
    assert "ready 7" in lines[1] and "ops/s 12.5" in lines[1]
    node_rows = [line for line in lines if line.startswith("node")]
    assert node_rows[0].split()[:3] == ["node2", "127.0.0.1:11301", "DOWN"]  # down first
    assert node_rows[1].split()[:4] == ["node1", "127.0.0.1:11300", "up", "7"]
    assert "node2: connection refused" in text
    assert _tube_order(lines) == ["zeta", "alpha", "paused", "busy"]
    assert "ready jobs but no worker watching" in text
    assert "1m05s" in text


@pytest.mark.parametrize("sort,order", [
    ("name", ["alpha", "busy", "paused", "zeta"]),
    ("ready", ["alpha", "busy", "paused", "zeta"]),
    ("buried", ["zeta", "alpha", "busy", "paused"]),
    ("ops/s", ["busy", "alpha", "paused", "zeta"]),
])
def test_render_sorts(sort, order):
    lines = render(_view(), sort=sort, color=False, width=200, height=50)
    assert f"sort: {sort}" in lines[0]
    assert _tube_order(lines) == order


def test_render_fits_the_terminal():
    lines = render(_view(), color=False, width=60, height=14)
    assert len(lines) <= 14
    assert all(len(line) <= 60 for line in lines)
    assert any(line.startswith("... ") and "more tubes" in line for line in lines)


def test_render_colours_down_nodes_and_attention():
    lines = render(_view(), color=True, width=200, height=50)
    assert any(line.startswith("\x1b[31mnode2") for line in lines)
    assert any(line.startswith("\x1b[33malpha") for line in lines)
    assert not any(line.startswith("\x1b[33mbusy") for line in lines)


def test_render_before_the_first_poll():
    assert "waiting for the first poll" in render(None)[0]


def _bscluster() -> list[str]:
    return bscluster_command()


@pytest.fixture
def two_nodes():
    with start_bsnode() as a, start_bsnode() as b:
        yield a, b


class Terminal:
    """A program on a pseudo-terminal (stdlib pty; what pexpect does, in a few lines)."""

    def __init__(self, argv: list[str], rows: int, cols: int, timeout: float = 15.0) -> None:
        env = {**os.environ, "TERM": "xterm"}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, then become the program
            try:
                _set_size(0, rows, cols)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.timeout = pid, fd, timeout
        self.buf = ""  # output not yet consumed by expect
        self.before = ""  # what came before the last match
        self.status: int | None = None

    def _read(self, deadline: float) -> bool:
        """Read what is there; False at end of output."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out; the screen so far ends with: " + self.buf[-2000:])
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program closed the terminal
            data = b""
        self.buf += data.decode("utf-8", "replace")
        return bool(data)

    def expect(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + self.timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                self.before, self.buf = self.buf[:m.start()], self.buf[m.end():]
                return m
            if not self._read(deadline):
                raise AssertionError(f"output ended before {pattern!r}: {self.buf[-2000:]}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        _set_size(self.fd, rows, cols)  # the kernel sends SIGWINCH

    def wait_exit(self) -> int:
        """Read to the end of output, then reap; returns the exit status."""
        deadline = time.monotonic() + self.timeout
        while self._read(deadline):
            pass
        self.before = self.buf
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise AssertionError("the program closed its terminal but did not exit")
            else:
                time.sleep(0.02)
        return self.status

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_top_in_a_pty_renders_refreshes_and_quits(two_nodes):
    a, b = two_nodes
    term = Terminal(_bscluster() + ["top", "--node", f"node1={a.host}:{a.port}",
                                    "--node", f"node2={b.host}:{b.port}", "--interval", "0.3"],
                    rows=40, cols=160)
    try:
        term.expect(re.escape("2/2 nodes up"))
        term.expect(r"node1 +127\.0\.0\.1")
        with Client(a.address) as c:
            c.use("fresh-tube")
            for i in range(3):
                c.put(b"job %d" % i)
        # a later frame shows the new tube and its jobs: the screen refreshes
        term.expect(r"fresh-tube +node1 +3 ")
        assert HOME_CLEAR in term.before
        term.expect(re.escape(HOME_CLEAR))
        # a resized terminal gets frames of its new width
        term.resize(30, 90)
        for _ in range(10):
            m = term.expect("\x1b\\[7m(bscluster top[^\x1b]*)\x1b\\[0m")
            if len(m.group(1)) == 90:
                break
        else:
            raise AssertionError("no frame of the new width")
        term.send("b")
        term.expect(re.escape("sort: buried"))
        term.send("q")
        assert term.wait_exit() == 0, term.before
        assert term.before.endswith(LEAVE), term.before[-200:]
    finally:
        term.close()


def test_top_ctrl_c_restores_and_exits(two_nodes):
    a, _ = two_nodes
    term = Terminal(_bscluster() + ["top", "--node", f"node1={a.host}:{a.port}"],
                    rows=30, cols=120)
    try:
        term.expect(re.escape("1/1 nodes up"))
        term.send("\x03")  # the terminal turns it into SIGINT
        assert term.wait_exit() == 0
        assert LEAVE in term.before
    finally:
        term.close()


def test_top_once_without_a_terminal(two_nodes):
    a, b = two_nodes
    with Client(b.address) as c:
        c.use("printed")
        c.put(b"x")
    r = subprocess.run(_bscluster() + ["top", "--once", "--node", f"{a.host}:{a.port}",
                                       "--node", f"{b.host}:{b.port}"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert re.search(r"^printed +node2 +1 ", r.stdout, re.M), r.stdout
    assert "2/2 nodes up" in r.stdout


def test_top_once_exit_status_says_what_it_saw(two_nodes):
    a, _ = two_nodes
    nobody = free_port()
    runs = {name: subprocess.run(_bscluster() + ["top", "--once", *flags],
                                 capture_output=True, text=True, timeout=20)
            for name, flags in (("some", ["--node", f"{a.host}:{a.port}",
                                          "--node", f"127.0.0.1:{nobody}"]),
                                ("none", ["--node", f"127.0.0.1:{nobody}"]))}
    assert (runs["some"].returncode, runs["none"].returncode) == (3, 4)
    assert "1/2 nodes up" in runs["some"].stdout


def test_top_names_a_hung_node_no_answer_a_refused_one_down_as_status_does(two_nodes):
    a, b = two_nodes
    nobody = free_port()
    a.signal(signal.SIGUSR1)  # drain: it refuses new jobs
    with Client(a.address) as c:
        poll(lambda: c.stats()["draining"] is True, 10, "node1 to drain")
    b.signal(signal.SIGSTOP)  # hung: it holds its port and never answers
    try:
        r = subprocess.run(_bscluster() + ["top", "--once", "--node", f"{a.host}:{a.port}",
                                           "--node", f"{b.host}:{b.port}",
                                           "--node", f"127.0.0.1:{nobody}"],
                           capture_output=True, text=True, timeout=30)
    finally:
        b.signal(signal.SIGCONT)
    assert r.returncode == 3, r.stdout + r.stderr
    states = {m[0]: m[1] for m in re.findall(r"^(node\d) +\S+ +(draining|NO ANSWER|DOWN) ",
                                             r.stdout, re.M)}
    assert states == {"node1": "draining", "node2": "NO ANSWER", "node3": "DOWN"}, r.stdout


def test_top_bad_node_flag_is_a_clear_error():
    r = subprocess.run(_bscluster() + ["top", "--once", "--node", "node1=127.0.0.1:99999"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "--node" in r.stderr and "Traceback" not in r.stderr
