"""``bsclient.pool._at_once``: a fan-out's calls run at the same time, in bounded threads.

Unit tests with stand-in clients: a call that waits on a barrier only gets through
when its partners run at the same time (no sleeps, no timing).
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

from bsclient import pool


class StandIn:
    """What ``_at_once`` needs of a Client: ``exclusive``."""

    def exclusive(self, timeout):
        return nullcontext(self)


def test_every_call_runs_at_once_and_outcomes_keep_their_order():
    barrier = threading.Barrier(5, timeout=10)  # broken (an error) unless all 5 wait together

    def call(client, i):
        barrier.wait()
        if i == 3:
            raise KeyError(i)
        return i * 10

    outcomes = pool._at_once([(StandIn(), call, (i,), None) for i in range(5)])
    assert [o[0] for o in outcomes] == [0, 10, 20, None, 40]
    assert [type(o[1]) for o in outcomes] == [type(None)] * 3 + [KeyError, type(None)]


def test_no_more_than_fan_out_threads_calls_run_together(monkeypatch):
    monkeypatch.setattr(pool, "FAN_OUT_THREADS", 2)
    barrier = threading.Barrier(2, timeout=10)  # the calls get through in pairs
    lock = threading.Lock()
    running = []
    peak = []

    def call(client, i):
        with lock:
            running.append(i)
            peak.append(len(running))
        barrier.wait()
        with lock:
            running.remove(i)
        return i

    outcomes = pool._at_once([(StandIn(), call, (i,), None) for i in range(6)])
    assert [o for o, _ in outcomes] == list(range(6))
    assert max(peak) == 2


def test_one_call_runs_in_the_callers_thread():
    caller = threading.current_thread()
    outcomes = pool._at_once([(StandIn(), lambda c: threading.current_thread(), (), None)])
    assert outcomes == [[caller, None]]


def test_no_calls_no_outcomes():
    assert pool._at_once([]) == []
