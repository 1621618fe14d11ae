"""bsclient.Worker and `bscluster work`: the policy with plain values, the loop on real nodes.

Unit tests drive the retry policy and the keep-alive schedule with numbers
(no clock, no server).  Integration tests run workers against real bsnode
processes: in-process in thread mode, and as `bscluster work` subprocesses in
both modes (gevent needs a monkey-patched process of its own).  Tests wait on
events, on the queue itself (a handler in another process says "started" by
putting a job, and waits for a "go" job) or on log lines; the only waits
that run their full length are the ones proving a job is NOT handed out
again while its handler outlives its TTR.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from bsclient import Backoff, Bury, Client, ClusterClient, Retry, TimedOutError, Worker
from bsclient import retry as r
from bsclient.errors import NotFoundError
from bsclient.worker import FIRST_LOOK, Lease
from bsclient.worker_runtime import make_runtime
from bscluster.work import EXIT_FORCED, work
from click.testing import CliRunner
from servers import free_port, poll, start_bsnode

WAIT = 20  # seconds any expected event may take on a loaded machine
TTR = 2  # a job TTR short enough to outlive, long enough for a loaded machine's keeper


# --- the policy, with plain values ----------------------------------------------------
def test_backoff_doubles_from_base_up_to_the_cap_without_jitter():
    b = Backoff(base=2, cap=60, jitter=0)
    assert [b(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert b(10_000) == 60  # no float overflow for absurd attempt numbers


def test_backoff_jitter_stays_between_half_and_all_of_the_delay():
    b = Backoff(base=8, cap=3600, jitter=0.5, rng=random.Random(7))
    delays = [b(3) for _ in range(200)]  # 32 s before jitter
    assert min(delays) >= 16 and max(delays) <= 32
    assert len(set(delays)) > 5  # really spread, not one value


@pytest.mark.parametrize("bad", [dict(base=-1), dict(cap=-1), dict(jitter=1.5)])
def test_backoff_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


def test_attempts_come_from_the_servers_release_and_timeout_counts():
    assert r.attempt_of({"releases": 0, "timeouts": 0}) == 1
    assert r.attempt_of({"releases": 3, "timeouts": 2, "buries": 1, "kicks": 1}) == 6


POLICY = r.Policy(max_attempts=3, backoff=lambda n: 10 * n, on_exhausted=r.BURY)


@pytest.mark.parametrize("error, attempt, policy, expected", [
    (None, 1, POLICY, r.Action(r.DELETE)),
    (None, 9, POLICY, r.Action(r.DELETE)),  # success after the budget still deletes
    (ValueError(), 1, POLICY, r.Action(r.RELEASE, 10)),
    (ValueError(), 2, POLICY, r.Action(r.RELEASE, 20)),
    (ValueError(), 3, POLICY, r.Action(r.BURY, why="attempts used up")),
    (ValueError(), 3, r.Policy(3, lambda n: 0, r.DELETE),
     r.Action(r.DELETE, why="attempts used up")),
    (ValueError(), 50, r.Policy(None, lambda n: 1), r.Action(r.RELEASE, 1)),  # forever
    (Retry(7), 1, POLICY, r.Action(r.RELEASE, 7)),
    (Retry(), 2, POLICY, r.Action(r.RELEASE, 20)),  # no delay given: the backoff's
    (Retry(7), 3, POLICY, r.Action(r.BURY, why="attempts used up")),  # Retry counts
    (Bury("bad"), 1, POLICY, r.Action(r.BURY, why="asked by the handler")),
])
def test_settle_table(error, attempt, policy, expected):
    assert r.settle(error, attempt, policy) == expected


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError):
        r.Policy(max_attempts=0)
    with pytest.raises(ValueError, match="on_exhausted"):
        r.Policy(on_exhausted="release")
    with pytest.raises(ValueError):
        Retry(-1)


def test_lease_looks_first_then_touches_at_half_the_ttr():
    lease = Lease(reserved_at=100.0)
    assert not lease.due(100.0) and lease.due(100.0 + FIRST_LOOK)
    lease.learned(now=100.5, ttr=120, time_left=119)
    assert lease.check_at == pytest.approx(100.5 + 119 - 60)
    lease.touched(at=160.0)
    assert lease.check_at == 220.0
    short = Lease(0.0)
    short.learned(now=0.5, ttr=1, time_left=0)  # rounded down: touch at once
    assert short.due(0.5)
    short.touched(0.6)
    assert short.check_at == pytest.approx(1.1)


def test_gevent_mode_refuses_an_unpatched_process():
    with pytest.raises(RuntimeError, match="patch_all"):
        make_runtime("gevent")
    with pytest.raises(ValueError, match="thread, gevent"):
        make_runtime("fibers")


def test_worker_refuses_a_factory_that_shares_one_client():
    shared = ClusterClient({"node1": "127.0.0.1:1"})
    w = Worker(lambda: shared, lambda job: None, ["t"])
    w.new_client()
    with pytest.raises(ValueError, match="its own"):
        w.new_client()


# --- in-process workers on a real node (thread mode) -----------------------------------
@pytest.fixture
def node():
    with start_bsnode() as server:
        yield server


def nodes_of(server) -> dict:
    return {"node1": f"127.0.0.1:{server.port}"}


def producer(server, tube: str = "t") -> Client:
    return Client(f"127.0.0.1:{server.port}", use=tube)


class Calls:
    """A handler that records bodies, raises what it is told, sets an event at ``n`` calls."""

    def __init__(self, n: int, raises: BaseException | None = None):
        self.n = n
        self.raises = raises
        self.bodies: list = []
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, job):
        with self._lock:
            self.bodies.append(job.body)
            if len(self.bodies) >= self.n:
                self.reached.set()
        if self.raises is not None:
            raise self.raises


def run_until(worker: Worker, event: threading.Event) -> None:
    worker.start()
    try:
        assert event.wait(WAIT), "the handler was not called in time"
    finally:
        worker.stop()
        assert worker.join(WAIT), "the worker did not stop"
    assert worker.running() == 0


def taken_back(server, tube: str, *job_ids: int) -> dict:
    """The stats of jobs handed back by a closed connection, once the node has put them back.

    The node sees the close a moment after the worker made it, so the jobs are
    reserved here (which waits for exactly that), all on one connection, and
    that connection closed again.  With one job, its stats; else {id: stats}.
    """
    with Client(f"127.0.0.1:{server.port}", watch=tube) as c:
        jobs = [c.reserve(timeout=WAIT) for _ in job_ids]
        assert sorted(job.id for job in jobs) == sorted(job_ids)
        stats = {job.id: c.stats_job(job) for job in jobs}
    return stats[job_ids[0]] if len(job_ids) == 1 else stats


def test_success_deletes_every_job(node):
    c = producer(node)
    ids = [c.put(f"job {i}".encode()) for i in range(6)]
    calls = Calls(6)
    w = Worker(nodes_of(node), calls, ["t"], concurrency=3)
    run_until(w, calls.reached)
    assert sorted(calls.bodies) == sorted(f"job {i}".encode() for i in range(6))
    for job_id in ids:
        with pytest.raises(NotFoundError):
            c.stats_job(job_id)
    assert w.counts["done"] == 6
    tube = c.stats_tube("t")
    assert tube["cmd-delete"] == 6 and tube["current-jobs-reserved"] == 0


def test_failure_releases_with_backoff_keeping_priority_and_logs_one_line(node, caplog):
    caplog.set_level(logging.INFO, logger="bsclient.worker")
    c = producer(node)
    job_id = c.put(b"x", priority=77)
    calls = Calls(1, raises=ValueError("boom"))
    w = Worker(nodes_of(node), calls, ["t"], max_attempts=3, backoff=lambda n: 100 + n)
    run_until(w, calls.reached)
    st = c.stats_job(job_id)
    assert (st["state"], st["delay"], st["pri"], st["releases"]) == ("delayed", 101, 77, 1)
    lines = [rec.getMessage() for rec in caplog.records if "failed" in rec.getMessage()]
    assert lines == [f"job node1/{job_id} in tube t failed on attempt 1 of 3: "
                     "ValueError: boom; released, runs again in 101 s"]


def test_failing_job_is_buried_after_max_attempts(node, caplog):
    caplog.set_level(logging.WARNING, logger="bsclient.worker")
    c = producer(node)
    job_id = c.put(b"poison")
    calls = Calls(3, raises=RuntimeError("always"))
    w = Worker(nodes_of(node), calls, ["t"], max_attempts=3, backoff=lambda n: 0)
    run_until(w, calls.reached)
    assert calls.bodies == [b"poison"] * 3  # never a fourth time
    st = c.stats_job(job_id)
    assert (st["state"], st["releases"], st["buries"]) == ("buried", 2, 1)
    lines = [rec.getMessage() for rec in caplog.records if "failed" in rec.getMessage()]
    assert [f"attempt {i} of 3" in line for i, line in enumerate(lines, 1)] == [True] * 3
    assert lines[-1].endswith("RuntimeError: always; buried (attempts used up)")


def test_attempts_count_releases_made_before_this_worker(node):
    c = producer(node)
    job_id = c.put(b"old")
    c.watch("t")
    for _ in range(2):  # two earlier attempts, by someone else
        c.release(c.reserve(timeout=0))
    calls = Calls(1, raises=ValueError("third strike"))
    w = Worker(nodes_of(node), calls, ["t"], max_attempts=3, backoff=lambda n: 0)
    run_until(w, calls.reached)
    assert c.stats_job(job_id)["state"] == "buried"


def test_exhausted_jobs_can_be_deleted_instead(node):
    c = producer(node)
    job_id = c.put(b"x")
    calls = Calls(1, raises=ValueError())
    w = Worker(nodes_of(node), calls, ["t"], max_attempts=1, on_exhausted="delete")
    run_until(w, calls.reached)
    with pytest.raises(NotFoundError):
        c.stats_job(job_id)
    assert w.counts["deleted"] == 1


def test_handler_chooses_retry_delay_or_bury(node):
    c = producer(node)
    later = c.put(b"later")
    bad = c.put(b"bad")

    def handler(job):
        raise Retry(7) if job.body == b"later" else Bury("cannot parse")

    calls = Calls(2)
    w = Worker(nodes_of(node), lambda job: (calls(job), handler(job)), ["t"])
    run_until(w, calls.reached)
    st = c.stats_job(later)
    assert (st["state"], st["delay"]) == ("delayed", 7)
    st = c.stats_job(bad)
    assert (st["state"], st["releases"]) == ("buried", 0)


def test_handler_longer_than_ttr_keeps_its_job(node):
    """A second worker on the tube never gets the job while the first one's handler runs."""
    c = producer(node)
    job_id = c.put(b"long", ttr=TTR)
    started, finish = threading.Event(), threading.Event()
    stolen = threading.Event()

    def slow(job):
        started.set()
        assert finish.wait(WAIT)

    first = Worker(nodes_of(node), slow, ["t"])
    second = Worker(nodes_of(node), lambda job: stolen.set(), ["t"])
    first.start()
    try:
        assert started.wait(WAIT)
        second.start()
        # without touches the job would be ready again TTR seconds after it was reserved
        assert not stolen.wait(TTR + 1.5), "the job went back to ready while its handler ran"
        assert c.stats_job(job_id)["state"] == "reserved"
        assert c.stats_job(job_id)["timeouts"] == 0
        finish.set()
    finally:
        finish.set()
        for w in (first, second):
            w.stop()
        assert first.join(WAIT) and second.join(WAIT)
    with pytest.raises(NotFoundError):
        c.stats_job(job_id)
    assert first.counts["touched"] >= 2 and first.counts["done"] == 1
    assert not stolen.is_set()


def test_a_job_reserved_after_the_stop_is_handed_back_untouched(node):
    c = producer(node)
    job_id = c.put(b"late", priority=5)
    holder: list[Worker] = []

    class StopsOnReserve:
        """A client whose reserve returns a job just after the worker was told to stop."""

        def __init__(self):
            self.inner = ClusterClient(nodes_of(node))

        def reserve(self, timeout=None):
            job = self.inner.reserve(timeout)
            holder[0].stop()
            return job

        def __getattr__(self, name):
            return getattr(self.inner, name)

    calls = Calls(1)
    w = Worker(StopsOnReserve, calls, ["t"])
    holder.append(w)
    w.start()
    assert w.join(WAIT)
    assert calls.bodies == []
    st = taken_back(node, "t", job_id)
    assert (st["reserves"], st["releases"], st["timeouts"], st["pri"]) == (2, 0, 0, 5)


def test_stop_now_hands_back_the_job_of_a_running_handler(node):
    c = producer(node)
    job_id = c.put(b"stuck")
    started, finish = threading.Event(), threading.Event()

    def stuck(job):
        started.set()
        finish.wait(WAIT)

    w = Worker(nodes_of(node), stuck, ["t"])
    w.start()
    try:
        assert started.wait(WAIT)
        w.stop(now=True)
        st = taken_back(node, "t", job_id)
        assert (st["reserves"], st["releases"], st["timeouts"]) == (2, 0, 0)
    finally:
        finish.set()
    assert w.join(WAIT)
    assert w.counts["done"] == w.counts["lost"] == 0  # the abandoned handler's end settled nothing


def run_in_thread(worker: Worker, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    runner = threading.Thread(target=lambda: result.append(worker.run(signals=False, **kwargs)),
                              daemon=True)
    runner.start()
    return runner, result


def test_grace_turns_a_graceful_stop_into_stop_now(node):
    c = producer(node)
    job_id = c.put(b"stuck")
    started, finish = threading.Event(), threading.Event()

    def stuck(job):
        started.set()
        finish.wait(WAIT)

    w = Worker(nodes_of(node), stuck, ["t"])
    runner, result = run_in_thread(w, grace=0.5)
    try:
        assert started.wait(WAIT)
        w.stop()
        runner.join(WAIT)
        assert result == [False]  # not every handler finished
        st = taken_back(node, "t", job_id)
        assert (st["releases"], st["timeouts"]) == (0, 0)
    finally:
        finish.set()


def test_stop_now_ends_run_while_a_slot_waits_on_a_hung_node(node):
    """A plain Client's reserve waits for the hung node's reply (up to its operation
    timeout, far beyond the test): a graceful stop waits for it, stop(now) does not."""
    producer(node).put(b"one")
    calls = Calls(1)
    w = Worker(lambda: Client(f"127.0.0.1:{node.port}", timeout=60), calls, ["t"])
    runner, result = run_in_thread(w)
    assert calls.reached.wait(WAIT)  # the slot now deletes, then reserves again
    with producer(node) as watcher:  # stopped during the delete, it would not be a reserve
        poll(lambda: watcher.stats()["current-waiting"] >= 1, WAIT, "the slot to reserve again")
    node.signal(signal.SIGSTOP)
    try:
        w.stop()
        runner.join(2)  # the slot's reserve waits for a reply that does not come
        assert runner.is_alive(), "the graceful stop should wait for the hung reserve"
        w.stop(now=True)
        runner.join(WAIT)
        assert result == [False]
    finally:
        node.signal(signal.SIGCONT)
    assert w.join(WAIT)  # once the node answers, the slot ends too


def test_graceful_stop_is_not_held_by_a_hung_node_on_a_cluster_client(node):
    """ClusterClient's reserve never overruns its timeout (a reply still due stays
    in flight), so a graceful stop ends in about the reserve timeout while the node
    hangs, with every handler finished."""
    producer(node).put(b"one")
    calls = Calls(1)
    w = Worker(lambda: ClusterClient(nodes_of(node), op_timeout=60), calls, ["t"])
    runner, result = run_in_thread(w)
    assert calls.reached.wait(WAIT)
    with producer(node) as watcher:
        poll(lambda: watcher.stats()["current-waiting"] >= 1, WAIT, "the slot to reserve again")
    node.signal(signal.SIGSTOP)
    try:
        w.stop()
        runner.join(WAIT)
        assert not runner.is_alive() and result == [True]
    finally:
        node.signal(signal.SIGCONT)


class LogEvent(logging.Handler):
    """Set when the worker logs a line containing ``text``."""

    def __init__(self, text: str):
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()
        self.logger = logging.getLogger("bsclient.worker")

    def emit(self, record):
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self):
        self.logger.addHandler(self)
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)


def test_connection_loss_is_survived():
    port = free_port()
    server = start_bsnode("-p", str(port))
    addr = f"127.0.0.1:{port}"
    calls = Calls(1)
    w = Worker(lambda: Client(addr, lazy=True), calls, ["t"])
    with LogEvent("cannot reserve") as lost:
        w.start()
        try:
            server.kill()  # the worker's reserve loses its connection, then cannot connect
            assert lost.seen.wait(WAIT), "no reconnect attempt logged"
            server = start_bsnode("-p", str(port))
            producer(server).put(b"after the outage")
            assert calls.reached.wait(WAIT)
            assert w.running() == 1
        finally:
            w.stop()
            assert w.join(WAIT)
            server.stop()
    assert calls.bodies == [b"after the outage"]


def test_a_node_restart_under_a_running_handler_is_logged_and_the_job_still_settled(tmp_path):
    """The restarted node has the job ready again: the keeper warns, the result deletes it."""
    port = free_port()
    node_args = ("-p", str(port), "-b", str(tmp_path / "binlog"), "-f", "0")
    server = start_bsnode(*node_args)
    addr = f"127.0.0.1:{port}"
    job_id = producer(server).put(b"work", ttr=TTR)
    started, finish = threading.Event(), threading.Event()

    def slow(job):
        started.set()
        assert finish.wait(WAIT)

    w = Worker(lambda: Client(addr, lazy=True), slow, ["t"])
    with LogEvent("no longer reserved by this worker while its handler runs") as lost:
        w.start()
        try:
            assert started.wait(WAIT)
            server.kill()
            server = start_bsnode(*node_args)  # replays the binlog: the job is ready again
            assert lost.seen.wait(WAIT)
            finish.set()
            w.stop()
            assert w.join(WAIT)
            with pytest.raises(NotFoundError):
                producer(server).stats_job(job_id)
            assert w.counts["done"] == 1
        finally:
            finish.set()
            w.stop()
            server.stop()


# --- `bscluster work` as a subprocess, in both modes ----------------------------------
HANDLERS = textwrap.dedent("""
    import os
    from bsclient import Client

    ADDR = os.environ["WORKER_TEST_ADDR"]

    def slow(job):
        c = Client(ADDR, use="started", watch="go")
        c.put(job.body)                 # tell the test we run
        c.delete(c.reserve(timeout=60))  # and wait for its go
        c.close()
    """)


class WorkProcess:
    """`python -m bscluster work ...` in ``cwd``; its stderr lines and a wait for one."""

    def __init__(self, cwd, addr: str, *args: str):
        env = dict(os.environ, WORKER_TEST_ADDR=addr, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bscluster", "work", *args], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.eof = False  # the process closed its stderr: every line is in
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_line(self, text: str) -> str:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(text in line for line in self.lines) or self.eof, WAIT)
        found = [line for line in self.lines if text in line]
        assert ok and found, f"no {text!r} in the worker's log:\n" + "\n".join(self.lines)
        return found[0]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.mark.parametrize("mode", ["thread", "gevent"])
def test_sigterm_finishes_the_running_handler_and_takes_nothing_new(node, project, mode):
    addr = f"127.0.0.1:{node.port}"
    cfg = project / "cluster.toml"
    cfg.write_text(f'[cluster]\nnodes = 1\nhost = "127.0.0.1"\nbase_port = {node.port}\n')
    c = producer(node, "work")
    first = c.put(b"first", ttr=TTR)
    watcher = Client(addr, watch="started")
    worker = WorkProcess(project, addr, "handlers:slow", "--tube", "work", "-n", "2",
                         "--mode", mode, "--config", str(cfg))
    try:
        worker.wait_line(f"2 {mode} slot(s)")
        watcher.delete(watcher.reserve(timeout=WAIT))  # the handler runs
        # kept alive: another consumer gets nothing for longer than the TTR
        thief = Client(addr, watch="work")
        with pytest.raises(TimedOutError):
            thief.reserve(timeout=TTR + 1)
        assert c.stats_job(first)["timeouts"] == 0
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_line("stopping gracefully: no new jobs, waiting for 1 running handler(s)")
        later = [c.put(b"after the stop") for _ in range(2)]
        Client(addr, use="go").put(b"go")
        assert worker.proc.wait(WAIT) == 0, "\n".join(worker.lines)
    finally:
        worker.close()
    with pytest.raises(NotFoundError):
        c.stats_job(first)  # finished and deleted
    for st in taken_back(node, "work", *later).values():  # not taken, or handed back untouched
        assert (st["releases"], st["timeouts"]) == (0, 0)
    last = worker.wait_line("stopped: ")
    assert "stopped: done 1," in last  # the handler's job, and no other
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO ", last)  # ISO 8601


@pytest.mark.parametrize("mode", ["thread", "gevent"])
def test_second_signal_stops_now_and_hands_the_job_back(node, project, mode):
    addr = f"127.0.0.1:{node.port}"
    c = producer(node, "work")
    job_id = c.put(b"stuck", priority=9)
    watcher = Client(addr, watch="started")
    worker = WorkProcess(project, addr, "handlers:slow", "--tube", "work", "--mode", mode,
                         "--server", addr)
    try:
        watcher.delete(watcher.reserve(timeout=WAIT))
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_line("stopping gracefully")
        worker.proc.send_signal(signal.SIGINT)
        assert worker.proc.wait(WAIT) == EXIT_FORCED, "\n".join(worker.lines)
    finally:
        worker.close()
    worker.wait_line("SIGINT again: stopped now, 1 job(s) handed back")
    st = taken_back(node, "work", job_id)
    assert (st["reserves"], st["releases"], st["pri"]) == (2, 0, 9)


def test_sighup_makes_bscluster_work_read_tls_again_and_keep_working(node, project):
    """SIGHUP (whose default action would end the process) reads [tls] again; the worker
    goes on, and SIGTERM still stops it gracefully."""
    addr = f"127.0.0.1:{node.port}"
    cfg = project / "cluster.toml"
    cfg.write_text(f'[cluster]\nnodes = 1\nhost = "127.0.0.1"\nbase_port = {node.port}\n')
    worker = WorkProcess(project, addr, "handlers:slow", "--tube", "work", "--config", str(cfg))
    try:
        worker.wait_line("1 thread slot(s)")
        worker.proc.send_signal(signal.SIGHUP)
        worker.wait_line("SIGHUP: TLS files read again; new connections use them")
        assert worker.proc.poll() is None
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(WAIT) == 0, "\n".join(worker.lines)
    finally:
        worker.close()


# --- the command's errors -------------------------------------------------------------
@pytest.fixture
def in_project(project, monkeypatch):
    """In-process `work` runs from the project directory; sys.path and modules restored."""
    (project / "broken.py").write_text("1 / 0\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("WORKER_TEST_ADDR", "127.0.0.1:1")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(project))])
    for name in ("handlers", "broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return project


@pytest.mark.parametrize("target, code, message", [
    ("nocolon", 2, "is not MODULE:FUNCTION"),
    ("no_such_module_xyz:f", 1, "no module named 'no_such_module_xyz'"),
    ("handlers:missing", 1, "module 'handlers' has no 'missing'"),
    ("handlers:ADDR", 1, "is a str, not a function"),
    ("broken:f", 1, "importing 'broken' failed: ZeroDivisionError"),
])
def test_work_command_explains_a_bad_target(in_project, target, code, message):
    result = CliRunner().invoke(work, [target, "--server", "127.0.0.1:1"])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_work_command_refuses_a_bad_tube_name(in_project):
    result = CliRunner().invoke(work, ["handlers:slow", "--server", "127.0.0.1:1",
                                       "--tube", "bad tube"])
    assert result.exit_code == 1 and "invalid tube name 'bad tube'" in result.output


def test_work_command_refuses_server_and_config_together():
    result = CliRunner().invoke(work, ["m:f", "--server", "127.0.0.1:1", "--config", "x.toml"])
    assert result.exit_code == 2 and "not both" in result.output


def test_work_names_and_serves_the_cluster_running_here(tmp_path):
    """A cluster started with flags only (`up --nodes 2 --base-port P`): `bscluster work`
    in its directory takes its jobs, and its first line says whose they are."""
    from clusters import Cluster
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    flags = c.by_hand()
    (tmp_path / "handlers.py").write_text(HANDLERS)
    worker = None
    try:
        c.run("up", "-d", *flags, check=True)
        addr = f"127.0.0.1:{c.base_port}"
        with Client(f"127.0.0.1:{c.base_port + 1}", use="work") as producer_:
            producer_.put(b"on node2")
        worker = WorkProcess(tmp_path, addr, "handlers:slow", "--tube", "work")
        line = worker.wait_line("working: ")
        assert f"of node1..node2 (the cluster running from {c.data_dir})" in line, line
        with Client(addr, watch="started") as started:
            assert started.reserve(timeout=WAIT).body == b"on node2"  # taken from node2
    finally:
        if worker is not None:
            worker.close()
        c.cleanup()


def test_use_ssl_context_reaches_every_slots_client_and_the_ones_made_later(tmp_path):
    """Rotated certificates (`bscluster work` on SIGHUP): each slot's client, and each
    client made from then on, opens its next connections with the new context."""
    from types import SimpleNamespace

    from bsclient import Client, Worker

    made = []

    def factory():
        made.append(Client("127.0.0.1:1", lazy=True))
        return made[-1]

    w = Worker(factory, lambda job: None, "t")
    w.slots = [SimpleNamespace(client=w.new_client()), SimpleNamespace(client=None)]
    new = object()
    w.use_ssl_context(new)
    later = w.new_client()
    assert [c.ssl_context for c in made] == [new, new] and later is made[-1]


def test_sighup_reads_the_config_files_tls_again_or_keeps_the_old(tmp_path, caplog):
    from bsclient import Worker

    config = tmp_path / "c.toml"
    config.write_text("[cluster]\nnodes = 1\n")
    w = Worker(str(config), lambda job: None, "t")
    assert w.reload_tls() and w._ssl == (None,)  # no [tls]: plain TCP
    config.write_text('[cluster]\nnodes = 1\n[tls]\nca = "missing.pem"\n')
    assert not w.reload_tls() and w._ssl == (None,)
    assert "SIGHUP: TLS files not reloaded, keeping the old ones" in caplog.text
