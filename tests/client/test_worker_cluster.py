"""The Worker over a ClusterClient: jobs reserved ahead go back while a handler runs
long, and ``ClusterClient.work`` runs a worker of clones."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from bsclient import Client, ClusterClient, Worker
from bsclient.ring import Ring
from servers import start_bsnode

WAIT = 15  # seconds any single wait below may take on a loaded machine


@pytest.fixture
def two_nodes():
    servers = [start_bsnode(), start_bsnode()]
    try:
        yield {f"node{i}": f"127.0.0.1:{s.port}" for i, s in enumerate(servers, 1)}
    finally:
        for s in servers:
            s.stop()


def tube_on(nodes: dict, name: str) -> str:
    """A tube name the ring places on node ``name``."""
    ring = Ring(list(nodes))
    return next(t for t in (f"t{i}" for i in range(1000)) if ring.node_for(t) == name)


def test_a_job_reserved_ahead_goes_back_while_the_handler_runs(two_nodes):
    """Both nodes have a job when the slot reserves: it waits on both at once, so
    it gets one for the handler and the other ahead (TTR 60).  The handler runs
    for longer than the keeper's first look; meanwhile another consumer must get
    the second job (without the hand-back it stays reserved for 60 s)."""
    tube1, tube2 = tube_on(two_nodes, "node1"), tube_on(two_nodes, "node2")
    for name, tube in (("node1", tube1), ("node2", tube2)):
        with Client(two_nodes[name], use=tube) as c:
            c.put(f"job in {tube}", ttr=60)
    started, finish = threading.Event(), threading.Event()
    handled = []

    def handler(job):
        handled.append(job.body)
        started.set()
        assert finish.wait(WAIT), "the test did not let the handler finish"

    template = ClusterClient(two_nodes)
    worker = Worker(template.clone, handler, [tube1, tube2])
    worker.start()
    try:
        assert started.wait(WAIT), "the handler was not called"
        with ClusterClient(two_nodes, watch=[tube1, tube2]) as other:
            got = other.reserve(timeout=WAIT)  # TimedOutError if the worker kept it
            assert worker.busy() == 1  # ... while the first handler still runs
            assert got.body != handled[0]
            other.delete(got)
    finally:
        finish.set()
        worker.stop()
        assert worker.join(WAIT)
        template.close()
    assert worker.counts["done"] == 1 and len(handled) == 1


def test_work_runs_a_worker_of_clones_until_sigterm(two_nodes):
    tube1, tube2 = tube_on(two_nodes, "node1"), tube_on(two_nodes, "node2")
    with ClusterClient(two_nodes) as cc:
        for i in range(6):
            cc.put(f"job {i}", tube=(tube1, tube2)[i % 2])
        bodies = []

        def handler(job):
            bodies.append(job.body)
            if len(bodies) == 6:
                os.kill(os.getpid(), signal.SIGTERM)  # run() stops gracefully

        assert cc.work(handler, [tube1, tube2], concurrency=2) is True
        assert sorted(bodies) == sorted(f"job {i}".encode() for i in range(6))
        stats = cc.stats()
        assert stats["current-jobs-ready"] == stats["current-jobs-reserved"] == 0
