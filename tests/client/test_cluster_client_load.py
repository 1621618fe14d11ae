"""ClusterClient under load on real nodes: nothing lost, nothing duplicated,
nothing stranded by a node crash or a ring change."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from bsclient import (
    Client,
    ClusterClient,
    ConnectionLostError,
    NoNodeAvailableError,
    TimedOutError,
)
from test_cluster_client import restart_node, running_nodes

pytestmark = pytest.mark.integration
RUN_DEADLINE = 60.0  # hard stop for any load loop; tests finish far sooner


def run_threads(targets):
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def join_all(threads, deadline):
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker did not finish"


def cluster_empty(nodes: dict) -> bool:
    with ClusterClient(nodes) as cc:
        s = cc.stats()
    return all(s[k] == 0 for k in (
        "current-jobs-ready", "current-jobs-reserved", "current-jobs-delayed",
        "current-jobs-buried"))


class Consumers:
    """Consumer threads recording every (body, node) they receive."""

    def __init__(self, nodes, tubes, n, **cc_kwargs):
        self.nodes, self.tubes, self.kwargs = nodes, tubes, cc_kwargs
        self.lock = threading.Lock()
        self.received: list[tuple[bytes, str, float]] = []
        self.delete_failed: set[bytes] = set()
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = run_threads([self.consume] * n)

    def consume(self):
        deadline = time.monotonic() + RUN_DEADLINE
        try:
            with ClusterClient(self.nodes, watch=self.tubes, **self.kwargs) as cc:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    try:
                        job = cc.reserve(timeout=1)
                    except TimedOutError:
                        continue
                    except ConnectionLostError:  # a node down: the others go on
                        time.sleep(0.05)
                        continue
                    with self.lock:
                        self.received.append((job.body, job.node, time.monotonic()))
                    try:
                        cc.delete(job)
                    except ConnectionLostError:
                        with self.lock:  # the job comes back: may be seen twice
                            self.delete_failed.add(job.body)
        except BaseException as e:
            self.errors.append(e)

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def bodies(self) -> Counter:
        with self.lock:
            return Counter(b for b, _, _ in self.received)

    def finish(self):
        self.stop.set()
        join_all(self.threads, time.monotonic() + 10)
        assert not self.errors, self.errors


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- 20,000 jobs --------------------------------------------------------------------
def test_20000_jobs_over_50_tubes_none_lost_or_duplicated():
    n_producers, per_producer, batch = 4, 5000, 100
    tubes = [f"load-{i}" for i in range(50)]
    expected = {f"{p}-{k}".encode() for p in range(n_producers) for k in range(per_producer)}
    with running_nodes(4) as (servers, nodes):
        handles: list[str] = []
        producer_errors = []

        def produce(p):
            try:
                with ClusterClient(nodes) as cc:
                    out = []
                    for b in range(per_producer // batch):
                        cc.use(tubes[(b + p * 7) % len(tubes)])
                        for k in range(b * batch, (b + 1) * batch):
                            out.append(cc.put(f"{p}-{k}".encode()))
                    handles.extend(out)
            except BaseException as e:
                producer_errors.append(e)

        consumers = Consumers(nodes, tubes, 4)
        producers = run_threads([lambda p=p: produce(p) for p in range(n_producers)])
        join_all(producers, time.monotonic() + RUN_DEADLINE)
        assert not producer_errors, producer_errors
        wait_for(lambda: consumers.count() >= len(expected), RUN_DEADLINE, "all jobs consumed")
        consumers.finish()
        got = consumers.bodies()
        assert set(got) == expected  # none lost
        assert max(got.values()) == 1 and sum(got.values()) == len(expected)  # none twice
        assert len(set(handles)) == len(expected)  # every handle unique
        assert {h.split("/")[0] for h in handles} == set(nodes)  # spread over all nodes
        assert cluster_empty(nodes)


# --- a ring change ---------------------------------------------------------------------
def test_a_node_added_to_the_ring_still_gets_old_jobs_consumed():
    tubes = [f"grow-{i}" for i in range(40)]
    with running_nodes(4) as (servers, nodes):
        three = {n: a for n, a in nodes.items() if n != "node4"}
        old = set()
        with ClusterClient(three) as before:
            for t in tubes:
                before.use(t)
                for k in range(10):
                    before.put(f"old-{t}-{k}".encode())
                    old.add(f"old-{t}-{k}".encode())
        with ClusterClient(three, watch=tubes) as after:
            after.add_node("node4", nodes["node4"])
            moved = [t for t in tubes if after.node_for(t) == "node4"]
            assert moved, "some tubes must move to the new node"
            new = set()
            for t in moved:
                after.use(t)
                handle = after.put(f"new-{t}".encode())
                assert handle.startswith("node4/")
                new.add(f"new-{t}".encode())
            got = Counter()
            while True:
                try:
                    job = after.reserve(timeout=0)
                except TimedOutError:
                    break
                got[job.body] += 1
                after.delete(job)
                assert sum(got.values()) <= len(old) + len(new)
            assert set(got) == old | new and max(got.values()) == 1
        assert cluster_empty(nodes)


# --- a node killed mid-stream ---------------------------------------------------------
def test_node_killed_and_restarted_loses_no_job(tmp_path):
    n_producers, per_producer = 2, 1500
    tubes = [f"crash-{i}" for i in range(30)]
    expected = {f"{p}-{k}".encode() for p in range(n_producers) for k in range(per_producer)}
    dirs = {i: tmp_path / f"node{i}" for i in (1, 2, 3)}
    for d in dirs.values():
        d.mkdir()
    kw = {"failure_threshold": 1, "dead_timeout": 0.3, "timeout": 5}
    with running_nodes(3, lambda i: ("-b", str(dirs[i]))) as (servers, nodes):
        ambiguous: set[bytes] = set()
        producer_errors = []

        def produce(p):
            try:
                with ClusterClient(nodes, **kw) as cc:
                    deadline = time.monotonic() + RUN_DEADLINE
                    for k in range(per_producer):
                        cc.use(tubes[k % len(tubes)])
                        body = f"{p}-{k}".encode()
                        while True:
                            assert time.monotonic() < deadline
                            try:
                                cc.put(body)
                                break
                            except NoNodeAvailableError as e:
                                if e.sent:  # may be stored already: may arrive twice
                                    ambiguous.add(body)
                                time.sleep(0.01)
            except BaseException as e:
                producer_errors.append(e)

        consumers = Consumers(nodes, tubes, 2, **kw)
        producers = run_threads([lambda p=p: produce(p) for p in range(n_producers)])
        wait_for(lambda: consumers.count() >= 800, RUN_DEADLINE, "consumers under way")
        # jobs node2 certainly still has when it dies (consumers may keep up with
        # the producers, and the producers may be done before the restart)
        with Client(nodes["node2"], use=tubes[0]) as c:
            for i in range(5):
                c.put(f"late-{i}".encode(), delay=2)
                expected.add(f"late-{i}".encode())
        victim = servers[1]
        victim.kill()
        killed_at = time.monotonic()
        on_victim_before = sum(1 for _, n, _ in consumers.received if n == "node2")
        # the others keep going while node2 is down
        mark = consumers.count()
        wait_for(lambda: consumers.count() >= mark + 300, RUN_DEADLINE, "progress while down")
        with restart_node(victim.port, "-b", str(dirs[2])) as again:
            restarted_at = time.monotonic()
            join_all(producers, time.monotonic() + RUN_DEADLINE)
            assert not producer_errors, producer_errors
            wait_for(lambda: set(consumers.bodies()) >= expected and cluster_empty(nodes),
                     RUN_DEADLINE, "every job consumed after the restart")
            consumers.finish()
            assert again.port == victim.port
        got = consumers.bodies()
        assert set(got) == expected  # nothing lost
        twice = {b for b, n in got.items() if n > 1}
        assert twice <= consumers.delete_failed | ambiguous, twice - consumers.delete_failed
        assert on_victim_before > 0
        # node2's jobs that were waiting when it died were consumed after it came back
        after = [b for b, n, t in consumers.received if n == "node2" and t > restarted_at]
        assert after, "nothing was consumed from the restarted node"
        assert killed_at < restarted_at
