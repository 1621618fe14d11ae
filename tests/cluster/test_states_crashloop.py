"""Crash-loop give-up, driven with a fake clock (no processes, no sleeping).

The policy (``CrashPolicy``) alone, then the supervisor's own handling of an
exit (``Supervisor._on_exit``) on a node record that never had a process:
the give-up line it logs, the reason it keeps, what `restart` does to a
FATAL node, and when the supervisor itself stops because every node is FATAL.
"""

from __future__ import annotations

import io
import signal

import pytest
from bscluster.config import ConfigError, load_config
from bscluster.states import (
    CRASH_LIMIT,
    CRASH_WINDOW,
    CrashPolicy,
    Event,
    State,
    crash_delay,
)
from bscluster.supervisor import Supervisor
from fake_clock import FakeClock
from servers import free_port


# --- the policy ----------------------------------------------------------------------------
def decisions(policy: CrashPolicy, times: list[float]) -> list[float | None]:
    out, earlier = [], []
    for t in times:
        out.append(policy.after_crash(earlier, t))
        earlier.append(t)
    return out


def test_defaults_are_five_crashes_in_sixty_seconds():
    assert (CRASH_LIMIT, CRASH_WINDOW) == (5, 60)
    assert CrashPolicy() == CrashPolicy(5, 60)


def test_the_limit_th_crash_inside_the_window_gives_up_after_growing_delays():
    got = decisions(CrashPolicy(5, 60), [0, 1, 3, 6, 10])
    assert got[:4] == [0.0, crash_delay(1), crash_delay(2), crash_delay(3)]
    assert got[0] == 0 and got[1] < got[2] < got[3]
    assert got[4] is None


def test_crashes_further_apart_than_the_window_never_give_up():
    # one crash every 61 s for an hour: always the first in its window
    times = [i * 61.0 for i in range(60)]
    assert decisions(CrashPolicy(5, 60), times) == [0.0] * 60


def test_old_crashes_leave_the_window():
    # four quick crashes, a long quiet spell, then four more: never five in 60 s
    times = [0, 1, 2, 3, 100, 101, 102, 103]
    got = decisions(CrashPolicy(5, 60), times)
    assert None not in got
    assert got[4] == 0.0  # the quiet spell reset the backoff too


# The window's edge: "crashes closer together than its window count as a loop"
# (states.py), so the first crash counts against the 5th one 59.999 s later and
# not against one 60 s or 60.001 s later.
@pytest.mark.parametrize("fifth_at, gives_up", [
    (59.999, True), (60.0, False), (60.001, False),
])
def test_the_fifth_crash_at_the_edge_of_the_window(fifth_at, gives_up):
    times = [0.0, 10.0, 20.0, 30.0, fifth_at]
    got = decisions(CrashPolicy(5, 60), times)
    assert got[:4] == [0.0, crash_delay(1), crash_delay(2), crash_delay(3)]
    assert got[4] is None if gives_up else got[4] == crash_delay(3)


@pytest.mark.parametrize("second_at, delay", [
    (59.999, crash_delay(1)), (60.0, 0.0), (60.001, 0.0),
])
def test_the_restart_delay_at_the_edge_of_the_window(second_at, delay):
    assert decisions(CrashPolicy(5, 60), [0.0, second_at]) == [0.0, delay]


def test_limit_zero_restarts_for_ever_with_capped_delays():
    got = decisions(CrashPolicy(0, 60), [float(i) for i in range(100)])
    assert None not in got and max(got) == crash_delay(99)


def test_limit_one_gives_up_on_the_first_crash():
    assert decisions(CrashPolicy(1, 60), [0]) == [None]


# --- the config keys ----------------------------------------------------------------------
def test_config_keys_reach_the_policy(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\nnodes = 1\ncrash_limit = 3\ncrash_window = 20\n")
    c = load_config(path, env={})
    assert c.crash_policy == CrashPolicy(3, 20)
    assert load_config(path, env={"BSCLUSTER_CRASH_LIMIT": "0"}).crash_policy.limit == 0
    assert load_config(path, {"crash_window": 5}, env={}).crash_policy.window == 5


@pytest.mark.parametrize("text, words", [
    ("crash_limit = -1", "crash_limit = -1"), ("crash_limit = 65", "or 0 to restart for ever"),
    ("crash_window = 0", "crash_window = 0"), ('crash_window = "60s"', "number of seconds"),
])
def test_bad_crash_settings_say_what_is_wrong(tmp_path, text, words):
    path = tmp_path / "c.toml"
    path.write_text(f"[cluster]\n{text}\n")
    with pytest.raises(ConfigError, match=words):
        load_config(path, env={})


# --- the supervisor's handling, on a fake clock -------------------------------------------
@pytest.fixture
def sup(tmp_path):
    def make(detached: bool = False, **flags) -> Supervisor:
        # a free base port: _spawn checks that nothing listens there (never 11300,
        # where the user's own beanstalkd may run)
        config = load_config(flags={"nodes": 2, "data_dir": str(tmp_path), "binlog": False,
                                    "base_port": free_port(), **flags}, env={})
        s = Supervisor(config, detached=detached, out=io.StringIO(), clock=FakeClock())
        s._set_nodes(config)
        return s
    return make


def run_then_crash(s: Supervisor, name: str, code: int, after: float) -> State:
    """The node starts, runs for ``after`` seconds, and exits with ``code``."""
    node = s.nodes[name]
    if node.state in (State.STOPPED, State.BACKOFF):
        node.fire(Event.SPAWN)
    if node.state is State.STARTING:
        node.fire(Event.READY)
    s.clock.advance(after)
    s._on_exit(node, code)
    return node.state


def test_supervisor_gives_up_on_the_fifth_quick_crash_and_says_why(sup):
    s = sup()
    codes = [-signal.SIGKILL, 3, -signal.SIGSEGV, 3, 70]
    states = [run_then_crash(s, "node1", code, after=1.0) for code in codes]
    assert states == [State.BACKOFF] * 4 + [State.FATAL]
    node = s.nodes["node1"]
    assert node.crash_count == 5 and node.wake_at is None
    assert "crashed 5 times in 4s" in node.reason
    assert "crash_limit 5 within crash_window 60s" in node.reason
    assert "was killed by SIGKILL" in node.reason and "exited with status 70" in node.reason
    assert "was killed by SIGSEGV" in node.reason
    log = s.out.getvalue().splitlines()
    fatal = [ln for ln in log if "FATAL" in ln]
    assert len(fatal) == 1, log  # one line, saying why and what to do
    assert "node1 FATAL: crashed 5 times" in fatal[0]
    assert "bscluster restart node1" in fatal[0]
    assert sum("crash loop" in ln for ln in log) == 3  # the delayed restarts before
    assert node.to_dict()["crashes"] == 5 and node.to_dict()["state"] == "FATAL"
    assert s.nodes["node2"].state is State.STOPPED  # the other node is not touched


@pytest.mark.parametrize("fifth_after, state", [
    (59.999, State.FATAL), (60.001, State.BACKOFF),
])
def test_supervisor_at_the_edge_of_the_window(sup, fifth_after, state):
    """Crashes at 0, 10, 20, 30 s and the 5th at 59.999 s or 60.001 s (fake clock)."""
    s = sup()
    gaps = [1.0, 10.0, 10.0, 10.0, fifth_after - 30.0]
    states = [run_then_crash(s, "node1", 1, after=gap) for gap in gaps]
    assert states == [State.BACKOFF] * 4 + [state]
    node = s.nodes["node1"]
    assert node.crashes[-1][0] - node.crashes[0][0] == pytest.approx(fifth_after, abs=1e-9)
    if state is State.FATAL:
        assert "crashed 5 times in" in node.reason
    else:
        assert node.wake_at is not None and "FATAL" not in s.out.getvalue()


def test_a_node_that_crashes_now_and_then_is_always_restarted(sup):
    s = sup()
    for _ in range(20):
        assert run_then_crash(s, "node1", 1, after=CRASH_WINDOW / 4 + 1) is State.BACKOFF
    assert s.nodes["node1"].crash_count == 20


def test_configured_limit_and_window_apply(sup):
    s = sup(crash_limit=2, crash_window=10)
    assert run_then_crash(s, "node1", 1, after=1) is State.BACKOFF
    assert run_then_crash(s, "node1", 1, after=11) is State.BACKOFF  # first one left the window
    assert run_then_crash(s, "node1", 1, after=1) is State.FATAL
    assert "crashed 2 times in 1s" in s.nodes["node1"].reason


def test_restart_revives_a_fatal_node_with_a_fresh_crash_history(sup, monkeypatch):
    s = sup(crash_limit=2)
    for _ in range(2):
        run_then_crash(s, "node1", 1, after=1)
    node = s.nodes["node1"]
    assert node.state is State.FATAL
    monkeypatch.setattr(node, "spawn", lambda env: None)  # no process in this test
    s._restart("node1")
    assert node.state is State.STARTING and not node.crashes
    assert node.crash_count == 2  # the counter for /metrics keeps counting
    assert run_then_crash(s, "node1", 1, after=1) is State.BACKOFF


def test_foreground_supervisor_stops_with_status_1_when_every_node_is_fatal(sup):
    s = sup(crash_limit=1)
    for name in s.nodes:
        s.nodes[name].fire(Event.SPAWN)
        s.nodes[name].fire(Event.READY)
    s._check_settled()  # the first settle: all RUNNING
    assert not s.stopping
    run_then_crash(s, "node1", 1, after=1)
    s._check_settled()
    assert not s.stopping  # node2 still runs
    run_then_crash(s, "node2", 1, after=1)
    s._check_settled()
    assert s.stopping and s.exit_status == 1
    assert "every node is FATAL; nothing left to supervise" in s.out.getvalue()


def test_detached_supervisor_stays_so_status_and_restart_still_work(sup):
    s = sup(detached=True, crash_limit=1)
    for name in s.nodes:
        s.nodes[name].fire(Event.SPAWN)
        s.nodes[name].fire(Event.READY)
    s._check_settled()
    for name in s.nodes:
        run_then_crash(s, name, 1, after=1)
    s._check_settled()
    assert not s.stopping and s.exit_status == 0
    assert all(e["state"] == "FATAL" and "crashed 1 time in 0s" in e["reason"]
               for e in s.snapshot()["nodes"].values())


def test_nothing_could_start_stops_either_way(sup):
    for detached in (False, True):
        s = sup(detached=detached)
        for node in s.nodes.values():
            node.fire(Event.GIVE_UP)
        s._check_settled()
        assert s.stopping and s.exit_status == 1
        assert "no node could start" in s.out.getvalue()
