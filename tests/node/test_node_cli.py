"""The ``bsnode`` command line: flags, listening sockets and signals.

Flag handling is compared with /usr/bin/beanstalkd where both can run (exit
status, which stream the text goes to).  Every process started here is on
127.0.0.1 or a UNIX socket under tmp_path, waited for with a deadline, and
killed and reaped before the test ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

import pytest
from servers import BEANSTALKD, HAVE_BEANSTALKD, bsnode_command, start_bsnode
from test_telnet import Wire, yaml_of

pytestmark = pytest.mark.integration
DEADLINE = 20.0
_LISTENING = re.compile(r"listening on (\S+)")

needs_beanstalkd = pytest.mark.skipif(not HAVE_BEANSTALKD,
                                      reason="/usr/bin/beanstalkd is not installed")


def command(kind: str) -> list[str]:
    return [BEANSTALKD] if kind == "beanstalkd" else bsnode_command()


KINDS = [pytest.param("beanstalkd", marks=needs_beanstalkd), "bsnode"]


def run(argv: list[str], timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


class Launched:
    """A bsnode we started with exactly the argv we chose."""

    def __init__(self, argv: list[str], env: dict | None = None, pass_fds=()) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, pass_fds=pass_fds)
        self.lines: deque = deque(maxlen=200)
        self.where: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m and not self._found.is_set():
                self.where = m.group(1)
                self._found.set()
        self.proc.stderr.close()

    def wait_listening(self) -> str:
        deadline = time.monotonic() + DEADLINE
        while not self._found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("bsnode did not start: " + " | ".join(self.lines))
        return self.where

    @property
    def port(self) -> int:
        return int(self.wait_listening().rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def roundtrip(sock: socket.socket) -> None:
    """A put, reserve and delete over ``sock``."""
    w = Wire(sock)
    try:
        assert w.line(b"put 0 0 10 2\r\nhi") == b"INSERTED 1\r\n"
        assert w.line(b"reserve-with-timeout 0") == b"RESERVED 1 2\r\nhi\r\n"
        assert w.line(b"delete 1") == b"DELETED\r\n"
    finally:
        w.close()


# --- help, version, bad flags ---------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_help_goes_to_stderr_and_exits_zero(kind):
    r = run(command(kind) + ["-h"])
    assert r.returncode == 0
    assert r.stdout == b""
    err = r.stderr.decode()
    assert re.search(r"^Use: \S+ \[OPTIONS\]", err, re.M)
    for flag in ("-b DIR", "-f MS", "-F", "-l ADDR", "-p PORT", "-u USER", "-z BYTES",
                 "-s BYTES", "-v", "-V", "-h"):
        assert re.search(rf"^ {re.escape(flag)}\b", err, re.M), flag


@pytest.mark.parametrize("kind", KINDS)
def test_version_on_stdout(kind):
    r = run(command(kind) + ["-v"])
    assert r.returncode == 0
    assert re.search(rb"1\.12", r.stdout)
    assert r.stderr == b""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("args,message", [
    (["-x"], "unknown flag: "),
    (["stray"], "unknown argument: stray"),
    (["-p"], "flag requires an argument: -p"),
    (["-l"], "flag requires an argument: -l"),
    (["-z"], "flag requires an argument: -z"),
    (["-z", "abc"], "invalid size: abc"),
    (["-z", "10x"], "invalid size: 10x"),
    (["-s", "1k"], "invalid size: 1k"),
])
def test_bad_flags_exit_5_with_usage(kind, args, message):
    # valid loopback flags first, so that a parse that wrongly succeeds
    # cannot bind the default 0.0.0.0:11300
    r = run(command(kind) + ["-l", "127.0.0.1", "-p", "0"] + args, timeout=10)
    assert r.returncode == 5
    assert r.stdout == b""
    err = r.stderr.decode()
    assert message in err
    assert "Use: " in err


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_user_exits_33(kind):
    r = run(command(kind) + ["-l", "127.0.0.1", "-p", "0", "-u", "no-such-user-xyz"])
    assert b'getpwnam("no-such-user-xyz"): no such user' in r.stderr
    assert r.returncode == 33


# --- flags that start a server ----------------------------------------------------------
def test_glued_flags():
    with Launched(bsnode_command() + ["-p0", "-l127.0.0.1", "-z100", "-VV"]) as node:
        assert node.wait_listening().startswith("127.0.0.1:")
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            w = Wire(s)
            assert yaml_of(w.line(b"stats"))["max-job-size"] == "100"


def test_combined_bare_flags_and_removed_ones():
    argv = bsnode_command() + ["-l", "127.0.0.1", "-p", "0", "-FV", "-c", "-n", "-f", "10",
                               "-s", "20000"]
    with Launched(argv) as node:
        node.wait_listening()
        text = "\n".join(node.lines)
        assert "-c flag was removed" in text
        assert "-n flag was removed" in text
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            roundtrip(s)


def test_max_job_size_clamped():
    with start_bsnode("-z", "2000000000") as node:
        assert any("maximum job size was set to 1073741824" in ln for ln in node.lines)
        w = Wire.to(node)
        assert yaml_of(w.line(b"stats"))["max-job-size"] == "1073741824"
        w.close()


@pytest.mark.parametrize("kind", KINDS)
def test_small_max_job_size(kind):
    from servers import start
    with start(kind, "-z", "10") as server:
        w = Wire.to(server)
        assert w.line(b"put 0 0 1 11\r\n" + b"x" * 11) == b"JOB_TOO_BIG\r\n"
        assert w.line(b"put 0 0 1 10\r\n" + b"x" * 10) == b"INSERTED 1\r\n"
        w.close()


# --- UNIX sockets --------------------------------------------------------------------------
def test_unix_socket(tmp_path):
    path = str(tmp_path / "bs.sock")
    with Launched(bsnode_command() + ["-l", "unix:" + path]) as node:
        assert node.wait_listening() == "unix:" + path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        roundtrip(s)


def test_unix_socket_replaces_a_stale_socket_file(tmp_path):
    path = str(tmp_path / "stale.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # the file stays behind, as after a crash
    with Launched(bsnode_command() + ["-l", "unix:" + path]) as node:
        node.wait_listening()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        roundtrip(s)


@pytest.mark.parametrize("kind", KINDS)
def test_unix_socket_refuses_to_replace_a_regular_file(kind, tmp_path):
    path = tmp_path / "precious"
    path.write_text("keep me")
    r = run(command(kind) + ["-l", f"unix:{path}"])
    assert r.returncode == 111
    assert path.read_text() == "keep me"


# --- systemd socket activation -------------------------------------------------------------
_ACTIVATE = """
import os, sys
fd, pid = int(sys.argv[1]), sys.argv[2]
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
os.execv(sys.argv[3], sys.argv[3:])
"""


def activated(kind: str, listener: socket.socket, *flags: str, pid: str = "self"):
    """Start a server the way systemd does: the socket on fd 3, LISTEN_FDS=1
    and LISTEN_PID naming the server's own pid (a wrapper that execs it)."""
    fd = listener.fileno()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    argv = [sys.executable, "-c", _ACTIVATE, str(fd), pid] + command(kind) + list(flags)
    return Launched(argv, env=env, pass_fds=(fd,))


def listening_socket() -> socket.socket:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    return ls


@pytest.mark.parametrize("kind", KINDS)
def test_systemd_socket_activation(kind):
    ls = listening_socket()
    port = ls.getsockname()[1]
    with activated(kind, ls) as server:
        ls.close()  # only the server holds it now
        if kind == "bsnode":
            assert server.wait_listening() == f"127.0.0.1:{port}"
        s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        roundtrip(s)
        assert server.proc.poll() is None


def test_systemd_socket_wins_over_l_and_p():
    ls = listening_socket()
    port = ls.getsockname()[1]
    with activated("bsnode", ls, "-l", "127.0.0.1", "-p", "0") as server:
        ls.close()
        assert server.wait_listening() == f"127.0.0.1:{port}"
        assert any("-l and -p are ignored" in ln for ln in server.lines)
        roundtrip(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))


def test_systemd_variables_for_another_pid_are_ignored():
    ls = listening_socket()
    with activated("bsnode", ls, "-l", "127.0.0.1", "-p", "0", pid="1") as server:
        where = server.wait_listening()
        assert where != f"127.0.0.1:{ls.getsockname()[1]}"
        roundtrip(socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE))
    ls.close()


# --- signals -----------------------------------------------------------------------------
def put_reply(w: Wire) -> bytes:
    return w.line(b"put 0 0 10 1\r\nx")


@pytest.mark.parametrize("kind", KINDS)
def test_sigusr1_enters_drain_mode(kind):
    from servers import start
    with start(kind) as server:
        w = Wire.to(server)
        assert put_reply(w) == b"INSERTED 1\r\n"
        server.signal(signal.SIGUSR1)
        deadline = time.monotonic() + DEADLINE
        while (reply := put_reply(w)) != b"DRAINING\r\n":
            assert reply.startswith(b"INSERTED"), reply
            assert time.monotonic() < deadline, "never entered drain mode"
            time.sleep(0.02)
        assert yaml_of(w.line(b"stats"))["draining"] == "true"
        fresh = Wire.to(server)
        assert put_reply(fresh) == b"DRAINING\r\n"
        # everything else still works
        assert fresh.line(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\nx\r\n"
        assert fresh.line(b"delete 1") == b"DELETED\r\n"
        w.close()
        fresh.close()
        assert server.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_exit_zero(sig):
    with start_bsnode() as node:
        busy = Wire.to(node)
        assert put_reply(busy) == b"INSERTED 1\r\n"
        waiting = Wire.to(node)
        waiting.send(b"watch empty\r\nignore default\r\nreserve\r\n")
        assert waiting.reply() == b"WATCHING 2\r\n"
        assert waiting.reply() == b"WATCHING 1\r\n"
        node.signal(sig)
        assert node.proc.wait(DEADLINE) == 0
        assert waiting.eof()
        busy.close()
        waiting.close()
        assert not any("Traceback" in ln for ln in node.lines), list(node.lines)


def test_accepted_connections_get_beanstalkds_socket_options():
    """TCP_NODELAY (no Nagle wait on a reply) and SO_KEEPALIVE, as beanstalkd's net.c."""
    import socket

    from bsnode.cli import make_listener, parse_args

    listener, where = make_listener(parse_args(["-l", "127.0.0.1", "-p", "0"]))
    with listener:
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2], timeout=10):
            conn, _ = listener.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    assert where.startswith("127.0.0.1:")


def test_the_node_loads_the_codec_not_the_client_stack():
    """bsnode imports bsclient's codec only: the clients, the ring and the worker load
    when a program uses them (bsclient's names are imported on first use), which keeps a
    node's start short (a supervisor restarting one, every test starting one)."""
    code = ("import json, sys, bsnode.server, bsnode.cli; "
            "print(json.dumps([m for m in sys.modules if m.startswith('bsclient.')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    loaded = set(json.loads(out))
    assert not loaded & {"bsclient.client", "bsclient.cluster", "bsclient.worker",
                         "bsclient.pool"}, loaded


def test_log_lines_start_with_the_time_bscluster_stamps_its_own_with():
    """One format in `bscluster logs NODE`, where the node's lines and the supervisor's
    interleave: ISO 8601, local time, milliseconds, offset with a colon."""
    from bsnode.logstamp import log_stamp
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
    assert re.fullmatch(stamp, log_stamp())
    with Launched(bsnode_command() + ["-l", "127.0.0.1", "-p", "0"]) as node:
        node.wait_listening()
        line = next(ln for ln in node.lines if "listening on" in ln)
    assert re.fullmatch(rf"{stamp} bsnode\[\d+\]: listening on 127\.0\.0\.1:\d+", line), line
