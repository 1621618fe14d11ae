"""`bscluster up --proxy ADDR`: the supervisor runs the proxy, restarts it, stops it.

Real bsnodes (this interpreter's ``-m bsnode``) under a foreground `up`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import greenstalk
import pytest
from bscluster.runtime import pid_alive
from bscluster.states import STOP_TIMEOUT
from clusters import Cluster, port_free
from proxyrun import write_config
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


def _status(cluster: Cluster, **env) -> str:
    """`bscluster status` with ``env`` added for this one run (the config it reads)."""
    saved = dict(cluster.env)
    cluster.env.update(env)
    try:
        return cluster.run("status").stdout
    finally:
        cluster.env = saved


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
        os.kill(second, signal.SIGSTOP)  # hung: SIGCONT follows the stop's SIGTERM
        began = time.monotonic()
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        assert time.monotonic() - began < STOP_TIMEOUT
        assert not pid_alive(second) and port_free(port)
        assert "proxy stopped" in cluster.output()
    finally:
        cluster.cleanup()


def test_a_taken_proxy_address_stops_up_before_any_node_starts(tmp_path):
    port = free_port()
    taken = socket.create_server(("127.0.0.1", port))
    cluster = Cluster(tmp_path, f"{sys.executable} -m bsnode", nodes=2)
    try:
        r = cluster.run("up", "-d", "--proxy", f"127.0.0.1:{port}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"cannot serve the proxy on 127.0.0.1:{port}: Address already in use" in r.stderr
        assert cluster.state() is None  # nothing started, nothing left
    finally:
        taken.close()
        cluster.cleanup()


def test_the_proxys_own_start_error_is_a_stamped_line_and_exit_1(tmp_path):
    """`bscluster proxy` on a taken address: one line on stderr, stamped like the
    proxy's other lines (under a supervisor it lands in the log as is)."""
    port = free_port()
    taken = socket.create_server(("127.0.0.1", port))
    config = write_config(tmp_path / "proxy.toml", [free_port()])
    try:
        r = subprocess.run([sys.executable, "-m", "bscluster", "proxy", "-l",
                            f"127.0.0.1:{port}", "-c", str(config)],
                           capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert r.returncode == 1, r.stderr
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d bscluster proxy: error: cannot "
                        rf"listen on 127\.0\.0\.1:{port}: Address already in use; .*\n",
                        r.stderr), r.stderr


def test_a_killed_supervisors_proxy_keeps_serving_and_is_adopted(tmp_path):
    """As its nodes are: the proxy outlives a supervisor killed with SIGKILL, the next
    `up -d` (flags left out: it resumes the cluster as it ran) takes it over (no second
    proxy that could not bind), `status` shows it and `down` stops it, with or without a
    supervisor."""
    port = free_port()
    cluster = Cluster(tmp_path, f"{sys.executable} -m bsnode", nodes=2)
    try:
        cluster.run("up", "-d", "--proxy", f"127.0.0.1:{port}", check=True)
        proxy = cluster.state()["proxy"]
        cluster.seen_pids.add(proxy["pid"])
        os.kill(cluster.state()["supervisor"]["pid"], signal.SIGKILL)
        assert _served(port) is not None  # still serving, unsupervised
        cluster.run("up", "-d", check=True)  # (no --proxy: it resumes the cluster as it ran)
        status = json.loads(cluster.run("status", "--json", check=True).stdout)
        assert status["proxy"]["pid"] == proxy["pid"] and status["proxy"]["up"] is True
        assert "proxy adopted" in (cluster.data_dir / "bscluster.log").read_text()
        assert f"proxy: 127.0.0.1:{port}, pid {proxy['pid']}, accepting connections" in \
            cluster.run("status").stdout
        os.kill(cluster.state()["supervisor"]["pid"], signal.SIGKILL)
        hung = [proxy["pid"], cluster.state()["nodes"]["node1"]["pid"]]
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)  # `down` without a supervisor wakes them too
        began = time.monotonic()
        r = cluster.run("down", check=True)
        assert time.monotonic() - began < STOP_TIMEOUT
        assert f"and the proxy (pid {proxy['pid']})" in r.stdout
        assert not any(pid_alive(pid) for pid in hung)
        assert not pid_alive(proxy["pid"], proxy["pid_start"]) and port_free(port)
    finally:
        cluster.cleanup()


def test_up_again_starts_moves_and_stops_the_proxy_of_a_running_cluster(tmp_path):
    """`up -d --proxy ADDR` on a cluster running without one starts it (it used to say the
    proxy served ADDR and start nothing); another address or setting restarts it there;
    `--proxy off` stops it; an address another program holds is refused before anything
    changes."""
    first, second = free_port(), free_port()
    cluster = Cluster(tmp_path, f"{sys.executable} -m bsnode", nodes=2)
    try:
        cluster.run("up", "-d", check=True)
        assert "pending" not in _status(cluster)
        said = _status(cluster, BSCLUSTER_PROXY=f"127.0.0.1:{first}", BSCLUSTER_WEB="127.0.0.1:0")
        assert f"pending: the config runs a proxy on 127.0.0.1:{first}, the cluster none: " \
               f"`bscluster up -d` starts it" in said, said
        assert "pending: the dashboard: the config says 127.0.0.1:0, the supervisor serves " \
               "none" in said, said
        r = cluster.run("up", "-d", "--proxy", f"127.0.0.1:{first}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"starting the proxy on 127.0.0.1:{first}" in r.stdout, r.stdout
        assert _served(first) is not None  # at once: `up` waited for it
        pid = cluster.state()["proxy"]["pid"]
        cluster.seen_pids.add(pid)

        r = cluster.run("up", "-d", "--proxy", f"127.0.0.1:{second}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"restarting the proxy on 127.0.0.1:{second}" in r.stdout, r.stdout
        assert _served(second) is not None and port_free(first) and not pid_alive(pid)
        moved = cluster.state()["proxy"]
        cluster.seen_pids.add(moved["pid"])
        assert moved["listen"] == f"127.0.0.1:{second}" and moved["pid"] != pid

        cluster.env["BSCLUSTER_PROXY_BUSY_POLL"] = "0"  # another setting, the same address
        r = cluster.run("up", "-d", "--proxy", f"127.0.0.1:{second}")
        del cluster.env["BSCLUSTER_PROXY_BUSY_POLL"]
        assert r.returncode == 0, r.stdout + r.stderr
        assert "with the new settings" in r.stdout and _served(second) is not None, r.stdout
        assert not pid_alive(moved["pid"])
        moved = cluster.state()["proxy"]
        cluster.seen_pids.add(moved["pid"])

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            elsewhere = f"127.0.0.1:{taken.getsockname()[1]}"
            r = cluster.run("up", "-d", "--proxy", elsewhere)
            assert r.returncode == 1 and f"cannot serve the proxy on {elsewhere}" in r.stderr
        assert cluster.state()["proxy"]["pid"] == moved["pid"]  # nothing changed

        said = _status(cluster, BSCLUSTER_PROXY="off")
        assert f"pending: the config turns the proxy on 127.0.0.1:{second} off" in said, said
        said = _status(cluster, BSCLUSTER_PROXY_BUSY_POLL="50")
        assert "pending: the proxy: the config changes proxy_busy_poll 0 -> 50; " \
               "`bscluster up -d` restarts it with them" in said, said
        r = cluster.run("up", "-d", "--proxy", "off")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"stopping the proxy on 127.0.0.1:{second}" in r.stdout, r.stdout
        assert cluster.state()["proxy"] is None and port_free(second)
        assert not pid_alive(moved["pid"])
        assert "proxy" not in cluster.run("status").stdout

        r = cluster.run("up", "-d", "--nodes", "3", "--proxy", f"127.0.0.1:{first}")
        assert r.returncode == 0, r.stdout + r.stderr  # a node and the proxy at once
        assert "adding node3" in r.stdout and "starting the proxy" in r.stdout, r.stdout
        assert _served(first) is not None
        cluster.seen_pids.add(cluster.state()["proxy"]["pid"])
    finally:
        cluster.cleanup()

