"""The supervisor and its dashboard against an adversary (issue 19, cases 2 and 7).

* 2,000 idle connections to the dashboard of `up -d --web`, the supervisor
  held to 512 descriptors (soft and hard, so raising the limit cannot
  help): the supervisor keeps a bounded number of descriptors, the
  dashboard still answers, a node killed with kill -9 comes back RUNNING
  with a new pid, and `down` stops everything.  (Before: each connection
  held a thread and a descriptor, the supervisor ran out, marked the
  killed node FATAL "install it", died in write_json and orphaned node2.)
* The supervisor lifts its soft descriptor limit to the hard one.
* ``pid_alive`` in a process with no descriptor left says "alive" for a
  live process (it used to say "dead", so node2 was never signalled).
* A launch that fails with EMFILE is BACKOFF and retried, not FATAL.
* An error in a turn of the supervision loop is logged once and the turn
  retried; the loop goes on.
* The dashboard server: idle connections cost no thread and are capped and
  timed out; a bad Content-Length (-1, "abc") is answered 400, a huge one
  413, instead of an unbounded read or a dropped connection.

Clusters run in tmp_path on free loopback ports and are taken down, with
every pid they ever had, at the end (test_supervisor_faults' fixture).
"""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import test_supervisor_faults
from bsclient.config import NodeAddress
from bscluster.config import load_config
from bscluster.monitor import Monitor
from bscluster.runtime import RateLimitedLog, pid_alive
from bscluster.states import STOP_TIMEOUT, Event, State
from bscluster.supervisor import Supervisor
from bscluster.web import Dashboard, make_server
from bscluster.webserver import MAX_CONNECTIONS, BoundedServer
from fake_clock import FakeClock
from servers import poll
from test_supervisor_web import dashboard_url, refused

cluster = test_supervisor_faults.cluster  # a Cluster factory, cleaned up after

IDLE_CLIENTS = 2000
SUPERVISOR_FDS = 512  # soft and hard: below the idle clients, so raising cannot help


def own_fd_limit(at_least: int) -> None:
    """Let this test process hold ``at_least`` descriptors (soft up to hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            pytest.fail(f"this test needs {at_least} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def run_limited(c, limits: tuple[int, int], *args: str) -> subprocess.CompletedProcess:
    """`bscluster ARGS` with RLIMIT_NOFILE set to ``limits`` (the supervisor inherits it)."""
    r = subprocess.run([sys.executable, "-m", "bscluster", *args], env=c.env, cwd=c.dir,
                       capture_output=True, text=True, timeout=90,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits))
    c.remember()
    return r


def idle_connections(host: str, port: int, count: int) -> list[socket.socket]:
    """Open up to ``count`` connections that never send a byte."""
    socks = []
    deadline = time.monotonic() + 60
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect((host, port))
        except OSError:  # the backlog was full: a server that stopped accepting
            s.close()
            continue
        socks.append(s)
    return socks


# --- case 2: the dashboard cannot take the supervisor down ------------------------------
def test_idle_dashboard_connections_cannot_take_the_supervisor_down(cluster):
    own_fd_limit(IDLE_CLIENTS + 256)
    c = cluster(nodes=2)
    r = run_limited(c, (SUPERVISOR_FDS, SUPERVISOR_FDS), "up", "-d", "--web", "127.0.0.1:0")
    assert r.returncode == 0, r.stdout + r.stderr
    url = dashboard_url(r.stdout)
    host, port = url.split("//")[1].rstrip("/").split(":")
    sup = c.state()["supervisor"]["pid"]
    assert fd_limits(sup) == (SUPERVISOR_FDS, SUPERVISOR_FDS)
    before = {n: c.node(n)["pid"] for n in ("node1", "node2")}
    socks = []
    try:
        t0 = time.monotonic()
        socks = idle_connections(host, int(port), IDLE_CLIENTS)
        opened = time.monotonic() - t0
        held = open_fds(sup)
        print(f"{len(socks)} idle connections opened in {opened:.1f} s; the supervisor "
              f"holds {held} descriptors")
        assert held < MAX_CONNECTIONS + 64, held
        # the dashboard still answers, with the idle ones still open
        with urllib.request.urlopen(url + "api/overview", timeout=10) as resp:
            assert resp.status == 200 and len(json.loads(resp.read())["nodes"]) == 2

        os.kill(before["node1"], signal.SIGKILL)
        back = poll(lambda: (e := c.node("node1")).get("state") == "RUNNING" and
                    e.get("pid") not in (None, before["node1"]) and e, timeout=30,
                    what="node1 RUNNING again with a new pid")
        assert back["crashes"] == 1 and back["restarts"] == 1, back
        assert c.node("node2")["pid"] == before["node2"]
        log = (c.data_dir / "bscluster.log").read_text()
        assert "FATAL" not in log and "error in the supervision loop" not in log, log
    finally:
        for s in socks:
            s.close()
    pids = [sup, before["node1"], before["node2"], back["pid"]]
    r = c.run("down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No cluster is running" not in r.stdout + r.stderr
    poll(lambda: not any(pid_alive(p) for p in pids), timeout=15, what="every process gone")
    assert refused(url)
    assert all(refused(f"http://127.0.0.1:{c.base_port + i}/") for i in range(2))


def test_the_supervisor_raises_its_soft_descriptor_limit(cluster):
    c = cluster(nodes=1)
    r = run_limited(c, (256, 4096), "up", "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    sup = c.state()["supervisor"]["pid"]
    assert fd_limits(sup) == (4096, 4096)
    assert "raised the descriptor limit from 256 to 4096" in \
        (c.data_dir / "bscluster.log").read_text()


PID_ALIVE_WITHOUT_FDS = textwrap.dedent('''
    import resource, subprocess, sys
    from bscluster.runtime import pid_alive, process_start_time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = process_start_time(child.pid)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:
        while True:
            held.append(open("/dev/null"))
    except OSError:
        pass
    verdicts = [pid_alive(child.pid, start), pid_alive(child.pid)]
    for f in held:
        f.close()
    child.kill()
    child.wait()
    print(verdicts, pid_alive(child.pid, start))
''')


def test_pid_alive_never_reads_cannot_tell_as_dead():
    r = subprocess.run([sys.executable, "-c", PID_ALIVE_WITHOUT_FDS], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # with no descriptor to read /proc: alive; once it is gone (and reaped): dead
    assert r.stdout.split() == ["[True,", "True]", "False"], r.stdout


# --- the supervisor's own handling, in process -------------------------------------------
@pytest.fixture
def sup(tmp_path):
    config = load_config(flags={"nodes": 1, "data_dir": str(tmp_path), "binlog": False,
                                "base_port": 1}, env={})
    s = Supervisor(config, out=io.StringIO(), clock=FakeClock())
    s._set_nodes(config)
    return s


def test_a_launch_that_fails_for_want_of_descriptors_is_retried_not_fatal(sup, monkeypatch):
    node = sup.nodes["node1"]
    failures = [OSError(errno.EMFILE, "Too many open files")] * 3
    launched = []

    def spawn(env):
        if failures:
            raise failures.pop()
        launched.append(True)
        node.pid = None  # nothing really started
    monkeypatch.setattr(node, "spawn", spawn)
    monkeypatch.setattr(sup, "_cannot_start", lambda spec: None)
    sup._reconcile()
    assert node.state is State.BACKOFF, node.reason
    assert "Too many open files" in node.reason and "install" not in node.reason
    delays = []
    while node.state is State.BACKOFF:
        delays.append(node.wake_at - sup.clock())
        sup.clock.advance(delays[-1])
        sup._tick(sup.clock())
    assert node.state is State.STARTING and launched == [True]
    assert delays == sorted(delays) and delays[0] < delays[-1]  # growing
    assert node.failed_starts == 0  # not counted as failed starts
    log = sup.out.getvalue()
    assert "FATAL" not in log and log.count("cannot launch it for now") == 1, log


def test_a_command_that_does_not_exist_is_still_fatal(sup, monkeypatch):
    node = sup.nodes["node1"]

    def spawn(env):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    monkeypatch.setattr(node, "spawn", spawn)
    monkeypatch.setattr(sup, "_cannot_start", lambda spec: None)
    sup._reconcile()
    assert node.state is State.FATAL and "install it" in node.reason


def test_an_error_in_the_loop_is_logged_once_and_the_turn_retried(sup, monkeypatch):
    turns = iter([OSError(errno.EMFILE, "Too many open files")] * 5 + [True])
    rests = []

    def turn():
        outcome = next(turns)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    monkeypatch.setattr(sup, "_turn", turn)
    monkeypatch.setattr(sup, "_rest", rests.append)
    sup._loop()  # returns: the sixth turn finished the job
    assert len(rests) == 5
    lines = [ln for ln in sup.out.getvalue().splitlines() if "supervision loop" in ln]
    assert len(lines) == 1 and "Too many open files" in lines[0], lines


def test_a_failed_publish_leaves_no_litter_and_is_retried(sup, monkeypatch):
    import bscluster.runtime as R
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        real(src, dst)
    monkeypatch.setattr(R.os, "replace", flaky)
    with pytest.raises(OSError):
        sup._publish()
    assert not sup.paths.state.exists()
    assert not list(sup.paths.data_dir.glob(".*.tmp"))
    sup._publish()
    assert json.loads(sup.paths.state.read_text())["nodes"]["node1"]["state"] == "STOPPED"


def test_rate_limited_log_counts_what_it_did_not_say():
    said, now = [], [0.0]
    log = RateLimitedLog(said.append, every=60, clock=lambda: now[0])
    assert log("emfile", "out of files")
    for _ in range(3):
        now[0] += 10
        assert not log("emfile", "out of files")
    assert log("other", "something else")
    now[0] += 31
    assert log("emfile", "out of files")
    assert said == ["out of files", "something else",
                    "out of files (3 more like this since the last report)"]


# --- the dashboard server ---------------------------------------------------------------
@pytest.fixture
def dashboard():
    """A dashboard with an action token over one node address nothing listens on."""
    mon = Monitor((NodeAddress("node1", "127.0.0.1:1"),), interval=60)
    d = Dashboard(mon, "tok")
    servers = []

    def serve(**kw) -> tuple[str, int]:
        server = make_server(d, "127.0.0.1", 0) if not kw else _bounded(d, **kw)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return server.server_address[:2]
    serve.servers = servers
    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _bounded(d: Dashboard, read_deadline: float, read_timeout: float, **kw) -> BoundedServer:
    """The dashboard's server with shorter timeouts."""
    server = make_server(d, "127.0.0.1", 0)
    handler = type("Quick", (server.RequestHandlerClass,),
                   {"read_deadline": read_deadline, "timeout": read_timeout,
                    "allowed_hosts": None})
    server.server_close()
    return BoundedServer(("127.0.0.1", 0), handler, **kw)


def exchange(address, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, return everything the server answers before it closes."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def post(host: str, port: int, length: str) -> bytes:
    return (f"POST /api/tubes/t/kick HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer tok\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("length, status", [("-1", 400), ("abc", 400), ("1e3", 400),
                                            ("99999999999999999999", 400),
                                            ("10000000", 413)])
def test_a_bad_content_length_is_answered_not_read_for_ever(dashboard, length, status):
    address = dashboard()
    try:
        reply = exchange(address, post(*address, length))
    except TimeoutError:
        pytest.fail(f"Content-Length {length}: no answer (the server is reading for ever)")
    assert reply.startswith(f"HTTP/1.0 {status} ".encode()), reply[:200]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert "Content-Length" in body["error"] or "too large" in body["error"]


def test_idle_connections_cost_no_thread_and_are_capped(dashboard):
    own_fd_limit(1200)
    address = dashboard()
    threads, fds = threading.active_count(), open_fds(os.getpid())
    socks = idle_connections(*address, 1000)
    try:
        # the server keeps accepting (and evicting); a rare SYN lost on a busy
        # machine costs a client its 1 s connect timeout, nothing more
        assert len(socks) > 900
        extra_fds = open_fds(os.getpid()) - fds - len(socks)
        print(f"1000 idle connections: {threading.active_count() - threads} more threads, "
              f"{extra_fds} more server descriptors")
        assert threading.active_count() - threads <= 1  # (the serving thread itself)
        assert extra_fds <= MAX_CONNECTIONS + 2  # (+ its selector, + one being accepted)
        # a real request gets through meanwhile, and the oldest idle ones were closed
        reply = exchange(address, f"GET /api/history HTTP/1.0\r\nHost: "
                                  f"{address[0]}:{address[1]}\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.0 200 "), reply[:200]
        socks[0].settimeout(5)
        assert socks[0].recv(1) == b""
    finally:
        for s in socks:
            s.close()


def test_silent_and_trickling_clients_are_dropped_in_time(dashboard):
    address = dashboard(idle_timeout=0.3, read_deadline=1.0, read_timeout=0.5)
    silent = socket.create_connection(address, timeout=5)
    t0 = time.monotonic()
    assert silent.recv(1) == b""  # closed after the idle timeout, without a worker
    assert time.monotonic() - t0 < 3
    silent.close()
    # a client that sends a byte every 0.1 s never trips the per-read timeout;
    # the deadline for the whole request ends it
    trickle = socket.create_connection(address, timeout=5)
    trickle.sendall(b"GET / HTTP/1.0\r\n")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 8:
            trickle.sendall(b"X")
            time.sleep(0.1)  # the pace of the slow client itself
    except OSError:
        pass  # reset: the server closed it
    held = time.monotonic() - t0
    trickle.close()
    assert 0.9 < held < 4, f"a trickling request held a worker for {held:.1f} s"


# --- case 3's setting ---------------------------------------------------------------------
def test_web_max_tubes_comes_from_file_env_and_flag_and_reaches_the_monitor(tmp_path):
    from bscluster.config import ConfigError
    from bscluster.webhost import WebHost
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\nnodes = 1\nweb_max_tubes = 50\n")
    assert load_config(path, env={}).web_max_tubes == 50
    assert load_config(path, env={"BSCLUSTER_WEB_MAX_TUBES": "70"}).web_max_tubes == 70
    config = load_config(path, {"web_max_tubes": 90}, env={"BSCLUSTER_WEB_MAX_TUBES": "70"})
    assert config.web_max_tubes == 90
    assert load_config(None, env={}).web_max_tubes == 1000
    path.write_text("[cluster]\nweb_max_tubes = 0\n")
    with pytest.raises(ConfigError, match="web_max_tubes = 0"):
        load_config(path, env={})
    host = WebHost("127.0.0.1:0", config.nodes, None, dict, max_tubes=config.web_max_tubes)
    assert host.monitor.max_tubes == 90


def test_a_starting_node_is_not_killed_while_the_supervisor_cannot_probe_it(sup, monkeypatch):
    import bscluster.supervisor as S
    node = sup.nodes["node1"]
    node.fire(Event.SPAWN)
    node.wake_at = sup.clock() + 15
    killed = []
    monkeypatch.setattr(node, "send", killed.append)
    monkeypatch.setattr(S, "connectable", lambda host, port: False)
    monkeypatch.setattr(S, "_can_probe", lambda: False)  # out of descriptors
    sup.clock.advance(16)
    for _ in range(5):
        sup._tick(sup.clock())
        sup.clock.advance(1)
    assert node.state is State.STARTING and killed == []
    assert sup.out.getvalue().count("no descriptor left") == 1
    monkeypatch.setattr(S, "_can_probe", lambda: True)  # it can tell now: too slow
    sup._tick(sup.clock())
    assert killed == [signal.SIGKILL] and "did not accept" in node.reason


def test_when_every_connection_is_busy_a_new_one_is_told_503(dashboard):
    address = dashboard(read_deadline=30, read_timeout=30, max_connections=2, workers=1)
    busy = [socket.create_connection(address, timeout=10) for _ in range(2)]
    try:
        for s in busy:  # half a request each: dispatched, then waiting for the rest
            s.sendall(b"GET /api/history HTTP/1.0\r\n")
        server = dashboard.servers[-1][0]
        poll(lambda: server.busy == 2, timeout=10, what="both connections with the workers")
        reply = poll(lambda: (r := exchange(address, b"")).startswith(b"HTTP/1.0 503") and r,
                     timeout=10, what="a 503 for the third connection")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"].startswith("the dashboard")
        for s in busy:  # the busy ones are served once they finish their request
            s.sendall(f"Host: {address[0]}:{address[1]}\r\n\r\n".encode())
        assert busy[0].recv(12) == b"HTTP/1.0 200"
    finally:
        for s in busy:
            s.close()


def test_a_node_that_ignores_sigterm_is_killed_at_the_timeout_and_the_state_says_so(sup,
                                                                                     monkeypatch):
    """A stop sends SIGTERM and SIGCONT (a hung node wakes to act on it); one that
    still runs at STOP_TIMEOUT gets SIGKILL, and ``last_stop`` (restart's output)
    says so.  A clean stop leaves ``last_stop`` empty."""
    node = sup.nodes["node1"]
    sent = []
    monkeypatch.setattr(node, "send", sent.append)
    for event in (Event.SPAWN, Event.READY):
        node.fire(event)
    node.pid = 1  # (never signalled: ``send`` is the list)
    sup._restart("node1")
    assert sent == [signal.SIGTERM, signal.SIGCONT] and node.state is State.STOPPING
    sup.clock.advance(STOP_TIMEOUT - 0.1)
    sup._tick(sup.clock())
    assert sent[-1] == signal.SIGCONT
    sup.clock.advance(0.2)
    sup._tick(sup.clock())
    assert sent[-1] == signal.SIGKILL
    sup._on_exit(node, -signal.SIGKILL)
    assert node.to_dict()["last_stop"] == \
        f"it did not stop within {STOP_TIMEOUT:g}s of SIGTERM: killed"
    for code, told in ((0, None), (-signal.SIGTERM, None), (3, "exited with status 3")):
        node.fire(Event.SPAWN)
        node.fire(Event.READY)
        node.pid = 1
        sup._restart("node1")
        assert node.last_stop is None  # a new stop: its own ending
        sup._on_exit(node, code)  # (beanstalkd stops by dying of SIGTERM: no news)
        assert node.to_dict()["last_stop"] == told
