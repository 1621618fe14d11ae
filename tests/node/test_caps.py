"""Opt-in caps: --max-jobs and --max-job-bytes.

The store is driven directly with a fake clock (accounting exact across
put, delete, and every state a job can be in); a real node checks the
OUT_OF_MEMORY reply, that `stats` is beanstalkd's field for field without
a cap, that /metrics always has the figures, and that a binlog replay
restores the counts.
"""

from __future__ import annotations

import re
import urllib.request

import greenstalk
import pytest
from bsclient import Client, OutOfMemoryError
from bscluster.monitor import fullness
from bsnode.caps import Caps, parse
from bsnode.commands import Commands
from bsnode.lifecycle import Outcome
from bsnode.store import Store
from servers import start_bsnode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_with(caps: Caps) -> tuple[Store, object]:
    store = Store(Clock())
    store.caps = caps
    return store, store.connect()


def test_job_cap_refuses_puts_only_and_frees_on_delete():
    store, s = store_with(Caps(max_jobs=3))
    jobs = [store.put(s, 0, 0, 60, b"x") for _ in range(3)]
    assert all(jobs)
    assert store.put(s, 0, 0, 60, b"x") is None  # a 4th: refused
    # a held job still moves: reserve, release with delay, bury, kick
    job = store.reserve(s, 0)
    assert store.release(s, job.id, 0, 5) is Outcome.DONE
    store.clock.now += 10
    store.tick()
    job = store.reserve(s, 0)
    assert store.bury(s, job.id, 0) is Outcome.DONE
    assert store.kick(s, 10) == 1
    assert store.delete(s, jobs[0].id)
    assert store.put(s, 0, 0, 60, b"x") is not None
    assert len(store.jobs) == 3


def test_byte_cap_counts_bodies_exactly():
    store, s = store_with(Caps(max_job_bytes=100))
    a = store.put(s, 0, 0, 60, b"a" * 60)
    assert store.put(s, 0, 0, 60, b"b" * 41) is None  # 101 > 100
    b = store.put(s, 0, 10, 60, b"b" * 40)  # delayed jobs count too
    assert store.job_bytes == 100
    assert store.put(s, 0, 0, 60, b"") is not None  # an empty body fits at the cap
    store.delete(s, a.id)
    assert store.job_bytes == 40
    store.delete(s, b.id)
    assert store.job_bytes == 0


def test_accounting_without_caps_is_kept_too():
    store, s = store_with(Caps())
    for i in range(50):
        store.put(s, 0, 0, 60, b"x" * i)
    assert store.job_bytes == sum(range(50))
    for job_id in list(store.jobs)[::2]:
        store.delete(s, job_id)
    assert store.job_bytes == sum(len(j.body) for j in store.jobs.values())


def test_stats_show_caps_only_when_set():
    plain = Commands(Store(Clock()))
    capped_store = Store(Clock())
    capped_store.caps = Caps(max_jobs=5)
    capped = Commands(capped_store)
    keys = [k for k, _ in plain.stats_fields()]
    assert not any("max-jobs" in k or "job-bytes" in k for k in keys)
    extra = [k for k, _ in capped.stats_fields()][len(keys):]
    assert extra == ["max-jobs", "max-job-bytes", "current-jobs", "current-job-bytes"]


@pytest.mark.parametrize("values, message", [
    ({"max_jobs": "ten"}, "--max-jobs: expected a whole number"),
    ({"max_job_bytes": "-5"}, "--max-job-bytes: expected a whole number"),
])
def test_bad_flag_values(values, message):
    with pytest.raises(ValueError, match=message):
        parse(values)


def test_fullness_for_the_dashboard():
    assert fullness({"current-jobs-ready": 3}) is None  # beanstalkd, or no cap
    f = fullness({"current-jobs": 30, "max-jobs": 100, "current-job-bytes": 900,
                  "max-job-bytes": 1000})
    assert f["fraction"] == 0.9 and f["max_jobs"] == 100


# --- a real node ---------------------------------------------------------------------
@pytest.mark.integration
def test_node_answers_out_of_memory_beyond_the_cap():
    with start_bsnode("--max-jobs", "2", "--max-job-bytes", "10") as node, \
            Client(node.address) as c:
        c.put(b"12345")
        with pytest.raises(OutOfMemoryError):
            c.put(b"123456")  # 11 bytes > 10
        c.put(b"12345")
        with pytest.raises(OutOfMemoryError):
            c.put(b"")  # a third job > 2
        stats = c.stats()
        assert (stats["max-jobs"], stats["current-jobs"], stats["current-job-bytes"]) == \
            (2, 2, 10)
        assert stats["cmd-put"] == 4 and stats["total-jobs"] == 2
        with greenstalk.Client(node.address) as g:  # a published client sees the usual error
            with pytest.raises(greenstalk.OutOfMemoryError):
                g.put("x")


@pytest.mark.integration
def test_stats_keys_match_beanstalkd_without_caps(beanstalkd):
    with start_bsnode() as node, Client(node.address) as ours, \
            Client(beanstalkd.address) as ref:
        assert list(ours.stats()) == list(ref.stats())


def _scrape(node) -> str:
    line = next(ln for ln in node.lines if "metrics on http://" in ln)
    url = re.search(r"(http://\S+/metrics)", line).group(1)
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _metric(page: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", page, re.M).group(1))


@pytest.mark.integration
def test_metrics_always_show_the_figures():
    with start_bsnode("--metrics", "127.0.0.1:0") as node, Client(node.address) as c:
        c.put(b"abc")
        c.put(b"defgh")
        page = _scrape(node)
        assert _metric(page, "bsnode_caps_jobs") == 2
        assert _metric(page, "bsnode_caps_job_bytes") == 8
        assert _metric(page, "bsnode_caps_max_jobs") == 0


@pytest.mark.integration
def test_binlog_replay_restores_the_counts(tmp_path):
    args = ("-b", str(tmp_path), "--max-jobs", "4")
    with start_bsnode(*args) as node, Client(node.address) as c:
        ids = [c.put(b"x" * n) for n in (10, 20, 30, 40)]
        with pytest.raises(OutOfMemoryError):
            c.put(b"full")
        c.delete(ids[1])
    with start_bsnode(*args) as node, Client(node.address) as c:
        stats = c.stats()
        assert (stats["current-jobs"], stats["current-job-bytes"]) == (3, 80)
        c.put(b"fits again")
        with pytest.raises(OutOfMemoryError):
            c.put(b"full")


@pytest.mark.integration
def test_cluster_client_spills_a_full_nodes_put_only_when_asked():
    from bsclient import ClusterClient

    with start_bsnode("--max-jobs", "1") as small, start_bsnode() as big:
        nodes = {"node1": small.address, "node2": big.address}
        tube = next(t for t in (f"t{i}" for i in range(1000))
                    if ClusterClient(nodes).node_for(t) == "node1")
        plain = ClusterClient(nodes)
        assert plain.put(b"a", tube=tube).startswith("node1/")
        with pytest.raises(OutOfMemoryError):  # back-pressure by default
            plain.put(b"b", tube=tube)
        spill = ClusterClient(nodes, spill_when_full=True)
        assert spill.put(b"b", tube=tube).startswith("node2/")
        assert spill.clone().spill_when_full
        assert spill.put(b"c", tube=tube).startswith("node2/")
        plain.close()
        spill.close()
