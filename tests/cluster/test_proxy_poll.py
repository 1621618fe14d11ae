"""The proxy's busy poll (cluster/proxy_poll.py): when it polls, when it sleeps."""

from __future__ import annotations

import resource
from time import perf_counter

import gevent
import pytest
from bsclient import Client
from bscluster.procs import ProxiedCluster, start_proxy
from bscluster.proxy_poll import BusyPoll, cpu_limit, window_for

CPU_SECONDS = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime  # noqa: E731


TURN = 0.0005  # (a timer: sleep(0) would schedule a callback, and no turn would be empty)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turns_until(done, seconds: float = 2.0) -> bool:
    """Let the event loop run until ``done()`` (False: not within ``seconds``)."""
    end = perf_counter() + seconds
    while not done():
        if perf_counter() > end:
            return False
        gevent.sleep(TURN)
    return True


def _read(poll: BusyPoll, clock: FakeClock, gap: float, work: float = 0.0) -> None:
    """A read ``gap`` seconds after the last one's work ended, then its own ``work``."""
    clock.now += gap
    poll.poke()
    clock.now += work
    poll.done()


def test_dense_reads_start_the_poll_and_a_window_without_reads_ends_it():
    clock = FakeClock()
    poll = BusyPoll(50, clock)
    try:
        _read(poll, clock, 1)  # one read after a quiet spell: no poll
        assert not poll.polling
        for _ in range(6):  # reads 10 us apart: more than half of the recent ones are dense
            _read(poll, clock, 10e-6)
        assert poll.polling
        for _ in range(20):  # empty turns within the window keep it
            gevent.sleep(TURN)
        assert poll.polling
        clock.now += 51e-6  # the window passes without a read
        assert turns_until(lambda: not poll.polling)
        before = CPU_SECONDS()
        gevent.sleep(0.1)  # the loop sleeps again: no CPU spent meanwhile
        assert CPU_SECONDS() - before < 0.03
        for _ in range(2):  # dense reads again (the first came after the gap: not dense)
            _read(poll, clock, 10e-6)
        assert poll.polling
    finally:
        poll.close()


def test_reads_further_apart_than_the_window_never_start_the_poll():
    clock = FakeClock()
    poll = BusyPoll(50, clock)
    try:
        for _ in range(50):
            _read(poll, clock, 60e-6)
            assert not poll.polling
        for dense in range(1, 7):  # then dense ones: polled once they weigh more than half
            _read(poll, clock, 10e-6)
            assert poll.polling == (dense == 6)  # (1 - (7/8)^6 = 0.55)
    finally:
        poll.close()


def test_the_window_runs_from_the_end_of_a_reads_work_not_from_the_read():
    clock = FakeClock()
    poll = BusyPoll(50, clock)
    try:  # a pipelining client: each read's work (16 commands) outlasts the window
        for _ in range(6):
            _read(poll, clock, 10e-6, work=80e-6)
        assert poll.polling
        for _ in range(20):  # 30 us after the work ended: still within the window
            clock.now += 30e-6 / 20
            gevent.sleep(TURN)
        assert poll.polling
        clock.now += 21e-6
        assert turns_until(lambda: not poll.polling)
    finally:
        poll.close()


def test_a_window_of_zero_never_polls():
    poll = BusyPoll(0)
    poll.poke()
    assert not poll.polling
    poll.close()


def test_the_setting_applies_only_where_the_proxy_may_use_more_than_one_cpu():
    assert window_for(50, 2.0) == (50, "busy poll 50 us")
    assert window_for(50, 1.5) == (50, "busy poll 50 us")
    assert window_for(50, 1.0) == (0, "busy poll off: this process may use 1 CPU")
    assert window_for(50, 0.5) == (0, "busy poll off: this process may use 0.5 CPU")
    assert window_for(0, 8.0) == (0, "busy poll off")


def _cgroup(tmp_path, own: str, files: dict[str, str]):
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(f"1:cpu:/\n0::{own}\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root, proc


@pytest.mark.parametrize("own, files, quota", [
    ("/kubepods/pod1", {"kubepods/pod1/cpu.max": "50000 100000\n"}, 0.5),  # cgroup v2, own
    ("/", {"cpu.max": "100000 100000\n"}, 1.0),  # v2, a container's namespaced root
    ("/", {"cpu/cpu.cfs_quota_us": "25000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.25),
])
def test_a_cgroup_cpu_quota_below_the_cpus_is_the_limit(tmp_path, own, files, quota):
    assert cpu_limit(*_cgroup(tmp_path, own, files)) == quota


@pytest.mark.parametrize("files", [
    {"cpu.max": "max 100000\n"},
    {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    {},  # no cpu controller to read
    {"cpu.max": "garbage\n"},
])
def test_without_a_quota_the_limit_is_the_cpus_this_process_may_run_on(tmp_path, files):
    import os

    assert cpu_limit(*_cgroup(tmp_path, "/", files)) == len(os.sched_getaffinity(0))


def _voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt"))


@pytest.mark.integration
def test_a_polling_proxy_does_not_sleep_between_a_clients_commands(tmp_path):
    """Wired to the reads: with a 10 ms window the proxy's main thread sleeps (a
    voluntary context switch) far less often than once per command, and without
    polling at least once per command (it waits for the client, then the node)."""
    commands = 300
    with ProxiedCluster(tmp_path, 1, extra="proxy_busy_poll = 10000") as cluster:
        if cpu_limit() <= 1:  # (a one-CPU machine: the proxy must say it does not poll)
            assert any("busy poll off: this process may use" in line
                       for line in cluster.proxy.lines)
            return
        plain = start_proxy(cluster.config, "--busy-poll", "0")
        try:
            assert any("busy poll 10000 us" in line for line in cluster.proxy.lines)
            assert any("busy poll off" in line for line in plain.lines)
            switches = {}
            for server in (cluster.proxy, plain):
                with Client(server.address) as c:
                    c.put(b"warm")
                    before = _voluntary_switches(server.pid)
                    for _ in range(commands // 3):
                        c.delete(c.reserve(timeout=0))
                        c.put(b"x")
                    switches[server.kind, server is plain] = (
                        _voluntary_switches(server.pid) - before)
            polled, slept = switches["proxy", False], switches["proxy", True]
            assert polled < commands / 4 < commands <= slept, switches
        finally:
            plain.stop()
