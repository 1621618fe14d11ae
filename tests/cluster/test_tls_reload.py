"""`bscluster reload`: certificates rewritten in place reach every node, the dashboard
(`up --web`) and a `bscluster web` of its own (SIGHUP) without a restart; bad files
change nothing; a node that serves plain TCP is never sent the SIGHUP that would end it."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from bsclient import ClusterClient
from bsclient.tls import client_context
from bscluster.probe import presented_certificate
from bscluster.runtime import pid_alive
from bscluster.tls_init import Pair, make_cert
from bscluster.tls_reload import file_certificate, fingerprint
from clusters import Cluster
from servers import poll

pytestmark = pytest.mark.integration


def tls_cluster(tmp_path: Path, *up_args: str) -> Cluster:
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    c.run("init", "--tls", "--nodes", "2", "--base-port", str(c.base_port),
          "--data-dir", str(c.data_dir), check=True)
    c.run("up", "-d", *up_args, check=True)
    return c


def rotate(tls_dir: Path, name: str, **kind) -> Pair:
    """A new certificate from the trial CA, moved over ``name``.pem/.key as an operator
    would (written elsewhere, then renamed); returns where it now is."""
    fresh = tls_dir.parent / "fresh"
    fresh.mkdir(exist_ok=True)
    pair = make_cert(fresh, Pair(tls_dir / "ca.pem", tls_dir / "ca.key"), name, **kind)
    os.replace(pair.key, tls_dir / f"{name}.key")
    os.replace(pair.cert, tls_dir / f"{name}.pem")
    return Pair(tls_dir / f"{name}.pem", tls_dir / f"{name}.key")


def addresses(c: Cluster) -> list[tuple[str, int]]:
    return [(e["host"], e["port"]) for e in c.state()["nodes"].values()]


def https_address(url: str) -> tuple[str, int]:
    host, port = re.match(r"https://([^/]+):(\d+)/", url).groups()
    return host, int(port)


def test_reload_rotates_node_client_and_dashboard_certificates(tmp_path):
    c = tls_cluster(tmp_path, "--web", "127.0.0.1:0")
    web = None
    try:
        tls = tmp_path / "tls"
        config = tmp_path / "bscluster.toml"
        old = file_certificate(str(tls / "node.pem"))
        verify = client_context(str(tls / "ca.pem"), str(tls / "client.pem"),
                                str(tls / "client.key"))
        assert {presented_certificate(h, p, verify) for h, p in addresses(c)} == {old}
        dashboard = https_address(c.state()["supervisor"]["web"])
        assert presented_certificate(*dashboard, verify) == old
        web = subprocess.Popen([sys.executable, "-m", "bscluster", "web", "-c", str(config),
                                "--listen", "127.0.0.1:0"], env=c.env, cwd=c.dir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        own = https_address(re.search(r"dashboard on (\S+)", web.stdout.readline()).group(1))
        # a connection opened with the old files, kept open through the reload
        before = ClusterClient.from_config(config, use="kept", watch="kept")
        before.put(b"before")

        rotate(tls, "node", hosts=["127.0.0.1", "localhost"])
        rotate(tls, "client", client=True)
        new = file_certificate(str(tls / "node.pem"))
        r = c.run("reload", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["node_cert"] == fingerprint(new)
        assert {n: (v["reloaded"], v["presents"]) for n, v in report["nodes"].items()} == \
            {"node1": (True, fingerprint(new)), "node2": (True, fingerprint(new))}
        assert report["dashboard"] == "reloaded" and report["proxy"] is False
        assert {presented_certificate(h, p, verify) for h, p in addresses(c)} == {new}
        assert presented_certificate(*dashboard, verify) == new
        # the dashboard's polls and actions connect with the new client certificate
        assert all(n["up"] for n in c_overview(c, dashboard, tls)["nodes"])
        # open connections keep theirs; new clients use the new files
        job = before.reserve(timeout=5)
        assert job.body == b"before"
        before.delete(job)
        before.close()
        with ClusterClient.from_config(config, use="after") as after:
            after.put(b"after")
        # a `bscluster web` of its own reads them on SIGHUP
        assert presented_certificate(*own, verify) == old
        web.send_signal(signal.SIGHUP)
        assert "SIGHUP: TLS files read again" in web.stderr.readline()
        assert presented_certificate(*own, verify) == new
        assert c.run("status", check=True).returncode == 0
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        c.run("down")
        c.cleanup()


def c_overview(c: Cluster, dashboard: tuple[str, int], tls: Path) -> dict:
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    url = f"https://{dashboard[0]}:{dashboard[1]}/api/overview?fresh=1"
    # the poller's next round (every second) is made with the new context
    def fresh():
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            view = json.load(r)
        return view if all(n["up"] for n in view["nodes"]) else None
    return poll(fresh, 15, "the dashboard to see the nodes up")


def test_reload_with_unloadable_files_changes_nothing(tmp_path):
    c = tls_cluster(tmp_path)
    try:
        tls = tmp_path / "tls"
        old = file_certificate(str(tls / "node.pem"))
        pids = {n: e["pid"] for n, e in c.state()["nodes"].items()}
        # a certificate that does not go with the key: bsnode refuses it, keeps the old
        other = make_cert(tmp_path, Pair(tls / "ca.pem", tls / "ca.key"), "other",
                          hosts=["127.0.0.1"])
        os.replace(other.cert, tls / "node.pem")
        r = c.run("reload")
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stdout.count("still presents another certificate") == 2, r.stdout
        verify = client_context(str(tls / "ca.pem"), str(tls / "client.pem"),
                                str(tls / "client.key"))
        assert {presented_certificate(h, p, verify) for h, p in addresses(c)} == {old}
        assert {n: e["pid"] for n, e in c.state()["nodes"].items()} == pids
        assert "not reloaded, still serving the old ones" in c.run("logs", "node1").stdout
    finally:
        c.run("down")
        c.cleanup()


def test_reload_never_signals_a_node_that_serves_plain_tcp(tmp_path):
    """A supervisor killed, [tls] added to the config, `up` again: it adopts the plain
    nodes, which serve TLS only once restarted.  Until then reload must leave them
    alone: SIGHUP would end a bsnode that runs without TLS."""
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    try:
        r = c.run("reload")
        assert r.returncode == 4 and "no cluster is running" in r.stderr, r.stderr
        c.run("up", "-d", check=True)
        r = c.run("reload")
        assert r.returncode == 1 and "runs without TLS" in r.stderr, r.stderr
        pids = {n: e["pid"] for n, e in c.state()["nodes"].items()}
        supervisor = c.state()["supervisor"]["pid"]
        os.kill(supervisor, signal.SIGKILL)
        poll(lambda: not pid_alive(supervisor) or None, 10, "the supervisor to be gone")
        c.run("init", "--tls", "--nodes", "2", "--base-port", str(c.base_port),
              "--data-dir", str(c.data_dir), check=True)
        c.run("up", "-d", check=True)
        assert {n: e["pid"] for n, e in c.state()["nodes"].items()} == pids  # adopted
        r = c.run("reload", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        notes = {n: v["note"] for n, v in json.loads(r.stdout)["nodes"].items()}
        assert all("serves plain TCP" in note for note in notes.values()), notes
        assert {n: (e["pid"], e["state"]) for n, e in c.state()["nodes"].items()} == \
            {n: (pid, "RUNNING") for n, pid in pids.items()}
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    finally:
        c.run("down")
        c.cleanup()
