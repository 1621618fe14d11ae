"""One ClusterClient (or Client) shared by threads and by gevent greenlets.

A ClusterClient keeps connections, used tube and watch list per thread
(per greenlet once gevent has patched ``threading``), so sharing one is
correct, and a job is touched or finished on the connection that reserved
it whichever thread asks; a plain Client is one connection and refuses a
second concurrent user with ConcurrentUseError instead of mixing up replies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import pytest
from bsclient import Client, ClusterClient, ConcurrentUseError
from test_cluster_client import running_nodes, wait_until

pytestmark = pytest.mark.integration
N_THREADS, PER_THREAD = 4, 300


@pytest.fixture(scope="module")
def nodes4():
    with running_nodes(4) as (_, nodes):
        yield nodes


def run_threads(targets, timeout=60):
    errors = []

    def guard(fn):
        try:
            fn()
        except BaseException as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=guard, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors


def tubes_of(cc: ClusterClient, handles: dict[str, list[str]]) -> dict[str, Counter]:
    """For each thread's tube, the tubes its handles' jobs are really in."""
    return {tube: Counter(cc.stats_job(h)["tube"] for h in hs) for tube, hs in handles.items()}


@pytest.mark.parametrize("style", ["use-then-put", "put-with-tube"])
def test_threads_sharing_one_cluster_client_put_into_their_own_tubes(nodes4, style):
    handles: dict[str, list[str]] = {}
    with ClusterClient(nodes4) as cc:
        def produce(i):
            tube = f"thread-{style}-{i}"
            out = handles[tube] = []
            for k in range(PER_THREAD):
                if style == "use-then-put":
                    cc.use(tube)  # the race of a shared connection: use, then put
                    out.append(cc.put(f"{i}-{k}".encode()))
                else:
                    out.append(cc.put(f"{i}-{k}".encode(), tube=tube))
        run_threads([lambda i=i: produce(i) for i in range(N_THREADS)])
        assert sum(len(h) for h in handles.values()) == N_THREADS * PER_THREAD
        assert len({h for hs in handles.values() for h in hs}) == N_THREADS * PER_THREAD
        assert tubes_of(cc, handles) == {t: Counter({t: PER_THREAD}) for t in handles}
        assert cc.dead_nodes() == []

        # and back out: each thread watches and drains its own tube
        got: dict[str, list[bytes]] = {}

        def consume(tube):
            cc.watch(tube)
            cc.ignore("default")
            out = got[tube] = []
            for _ in range(PER_THREAD):
                job = cc.reserve(timeout=10)
                out.append(job.body)
                cc.delete(job)
        run_threads([lambda t=t: consume(t) for t in handles])
        for i, tube in enumerate(sorted(handles)):
            assert sorted(got[tube]) == sorted(f"{i}-{k}".encode() for k in range(PER_THREAD))
        assert cc.stats()["current-jobs-ready"] == 0


def test_a_new_thread_starts_with_the_creating_threads_tubes(nodes4):
    with ClusterClient(nodes4) as cc:
        cc.use("shared-start")
        cc.watch("shared-start")
        seen = []
        t = threading.Thread(target=lambda: seen.append((cc.using, cc.watching)))
        t.start()
        t.join(10)
        assert seen == [("shared-start", ["default", "shared-start"])]


def test_another_thread_can_touch_and_finish_a_job_on_the_reserving_connection(nodes4):
    # a worker's keep-alive thread touches the job its handler thread reserved
    with ClusterClient(nodes4, watch=["owned-by-thread"]) as cc:
        cc.put(b"x", tube="owned-by-thread", ttr=5)
        job = cc.reserve(timeout=5)
        before = cc.stats_job(job)["time-left"]
        errors, done = [], []

        def other():
            try:
                cc.touch(job)
                done.append(cc.stats_job(job)["state"])
                cc.release(job, priority=3)
                done.append(cc.stats_job(job)["pri"])
            except Exception as e:  # checked below
                errors.append(e)
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert not errors and done == ["reserved", 3]
        assert before <= 5
        again = cc.reserve(timeout=5)  # released, so it can be reserved again
        assert again.id == job.id
        cc.delete(again)


def test_a_plain_client_refuses_a_second_concurrent_user(nodes4):
    with Client(nodes4["node1"]) as c:
        got = []
        t = threading.Thread(target=lambda: got.append(c.reserve(timeout=10)))
        t.start()
        with Client(nodes4["node1"]) as probe:
            wait_until(lambda: probe.stats()["current-waiting"] >= 1, what="a waiter")
        with pytest.raises(ConcurrentUseError):
            c.put(b"would interleave")
        with Client(nodes4["node1"]) as producer:
            producer.put(b"wake")
        t.join(10)
        assert [j.body for j in got] == [b"wake"]
        c.delete(got[0])


GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys
    import gevent
    from bsclient import ClusterClient

    nodes = json.loads(sys.argv[1])
    n, per = int(sys.argv[2]), int(sys.argv[3])
    cc = ClusterClient(nodes)
    handles = {}

    def produce(i, style):
        tube = f"greenlet-{style}-{i}"
        out = handles[tube] = []
        for k in range(per):
            if style == "use":
                cc.use(tube)
                gevent.sleep(0)  # invite the race
                out.append(cc.put(f"{i}-{k}".encode()))
            else:
                out.append(cc.put(f"{i}-{k}".encode(), tube=tube))

    def consume():  # blocked in reserve while the producers run: must not block them
        cc.watch("greenlet-wake")
        job = cc.reserve(timeout=20)
        cc.delete(job)
        return job.body.decode()

    waiter = gevent.spawn(consume)
    gevent.joinall([gevent.spawn(produce, i, s) for i in range(n) for s in ("use", "tube")],
                   raise_error=True, timeout=60)
    cc.put(b"woken", tube="greenlet-wake")
    woke = waiter.get(timeout=20)
    tubes = {t: sorted(set(cc.stats_job(h)["tube"] for h in hs)) for t, hs in handles.items()}
    print(json.dumps({"tubes": tubes, "count": sum(len(h) for h in handles.values()),
                      "unique": len({h for hs in handles.values() for h in hs}),
                      "woke": woke, "dead": cc.dead_nodes()}))
""")


def test_greenlets_sharing_one_cluster_client(nodes4):
    n, per = 4, 100
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, json.dumps(nodes4), str(n), str(per)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["count"] == result["unique"] == 2 * n * per
    assert all(tubes == [tube] for tube, tubes in result["tubes"].items())
    assert result["woke"] == "woken" and result["dead"] == []


def test_a_thread_that_ends_holding_a_job_gives_it_back_and_says_so(caplog):
    """A thread's connections close when it ends: a job it reserved and handed on is
    ready again on its node (as at any hang-up), and the client logs a warning naming
    it.  A thread that settled its job before ending is not warned about."""
    with running_nodes(2) as (_, nodes), ClusterClient(nodes, use="handoff",
                                                      watch="handoff") as cc:
        cc.put(b"handed on")
        cc.put(b"settled")
        got = []
        first = threading.Thread(target=lambda: got.append(cc.reserve(timeout=2)))
        first.start()
        first.join()
        job = got[0]
        node, job_id = job.handle.split("/")
        assert Client(nodes[node]).stats_job(int(job_id))["state"] == "ready"
        assert [r.getMessage() for r in caplog.records if r.name == "bsclient"] == [
            f"a thread ended holding 1 reserved job(s) ({job.handle}): its connections "
            f"closed, so the nodes made them ready again; delete, release or bury a job "
            f"before the thread that reserved it ends"]
        caplog.clear()
        second = threading.Thread(target=lambda: cc.delete(cc.reserve(timeout=2)))
        second.start()
        second.join()
        assert not [r for r in caplog.records if r.name == "bsclient"]
