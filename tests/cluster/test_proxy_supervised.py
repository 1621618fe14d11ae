"""`bscluster up --proxy ADDR`: the supervisor runs the proxy, restarts it, stops it.

Real bsnodes (this interpreter's ``-m bsnode``) under a foreground `up`.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import greenstalk
import pytest
from bscluster.runtime import pid_alive
from clusters import Cluster, port_free
from servers import free_port, poll

pytestmark = pytest.mark.integration

_STARTED = re.compile(r"proxy starting on \S+ \(pid (\d+)\)")


def _proxy_pids(cluster: Cluster) -> list[int]:
    return [int(p) for p in _STARTED.findall(cluster.output())]


def _served(port: int):
    try:
        with greenstalk.Client(("127.0.0.1", port)) as c:
            return c.put("up")
    except OSError:
        return None


def test_up_runs_restarts_and_stops_the_proxy(tmp_path):
    port = free_port()
    cluster = Cluster(tmp_path, f"{sys.executable} -m bsnode", nodes=2,
                      extra_env={"BSCLUSTER_BINLOG": "false"})
    try:
        up = cluster.start_foreground("--proxy", f"127.0.0.1:{port}")
        job_id = poll(lambda: _served(port), what="the proxy to take a put")
        assert "bscluster proxy" in cluster.output()  # the banner names it
        first = _proxy_pids(cluster)[0]
        with greenstalk.Client(("127.0.0.1", port)) as c:
            held = c.reserve(timeout=1)
            assert held.id == job_id
            cluster.seen_pids.add(first)
            os.kill(first, signal.SIGKILL)
            poll(lambda: len(_proxy_pids(cluster)) >= 2, what="the proxy to be restarted")
        poll(lambda: _served(port), what="the restarted proxy to take a put")
        with greenstalk.Client(("127.0.0.1", port)) as c:
            assert c.peek(job_id).body == "up"  # released when the proxy died; same id
        second = _proxy_pids(cluster)[-1]
        cluster.seen_pids.add(second)
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        assert not pid_alive(second) and port_free(port)
        assert "proxy stopped" in cluster.output()
    finally:
        cluster.cleanup()
