"""A cluster from a config with [tls]: the config, `init --tls`, and a real
`bscluster up` whose nodes serve only TLS with client certificates, used by
ClusterClient and by status, stats and top."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from bsclient import Client, ClusterClient, ConnectionLostError, UnexpectedReplyError
from bsclient.config import read_tls_settings
from bsclient.tls import client_context
from bscluster.config import ConfigError, load_config
from clusters import Cluster
from tls_helpers import make_certs

TLS_TABLE = """
[tls]
ca = "c/ca.pem"
cert = "c/client.pem"
key = "c/client.key"
node_cert = "c/node.pem"
node_key = "c/node.key"
client_auth = true
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-cluster") / "c")


def write_config(tmp_path: Path, certs, extra: str = "", cluster: str = "nodes = 2") -> Path:
    link = tmp_path / "c"
    if not link.exists():
        link.symlink_to(certs.ca.cert.parent)
    path = tmp_path / "bscluster.toml"
    path.write_text(f"[cluster]\n{cluster}\n{extra}")
    return path


def test_tls_table_gives_node_flags_and_client_settings(tmp_path, certs):
    path = write_config(tmp_path, certs, TLS_TABLE)
    config = load_config(path, env={})
    argv = config.nodes[0].argv(("bsnode",))
    d = str(tmp_path / "c")
    assert argv[-6:] == ["--tls-cert", f"{d}/node.pem", "--tls-key", f"{d}/node.key",
                         "--tls-client-ca", f"{d}/ca.pem"]
    assert config.tls.cert == f"{d}/client.pem" and config.tls.verify is True
    assert config.ssl_context() is not None
    # the client reads the same table, relative to the file too
    assert read_tls_settings(path, env={}) == config.tls
    # and the settings survive the supervisor's wanted.json
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_no_tls_table_means_plain_tcp(tmp_path, certs):
    config = load_config(write_config(tmp_path, certs), env={})
    assert config.tls is None and config.ssl_context() is None
    assert not any(a.startswith("--tls") for a in config.nodes[0].argv(("bsnode",)))
    assert read_tls_settings(tmp_path / "bscluster.toml", env={}) is None


def test_environment_turns_client_tls_on_and_wins(tmp_path, certs):
    path = write_config(tmp_path, certs, TLS_TABLE)
    env = {"BSCLUSTER_TLS_CA": str(certs.other_ca.cert), "BSCLUSTER_TLS_VERIFY": "false"}
    s = read_tls_settings(path, env=env)
    assert s.ca == str(certs.other_ca.cert) and s.verify is False
    assert read_tls_settings(None, env={"BSCLUSTER_TLS_CA": str(certs.ca.cert)}).ca == \
        str(certs.ca.cert)


@pytest.mark.parametrize("table, message", [
    ('[tls]\ncafile = "c/ca.pem"\n', "unknown key 'cafile'"),
    ('[tls]\ncert = "c/client.pem"\n', "cert and key go together"),
    ('[tls]\nca = "c/missing.pem"\n', "ca = .*missing.pem: no such file"),
    ('[tls]\nnode_cert = "c/node.pem"\nnode_key = "c/node.key"\nclient_auth = true\n',
     "client_auth = true needs ca"),
    ('[tls]\nverify = "yes"\n', "verify must be true or false"),
])
def test_bad_tls_tables_are_named(tmp_path, certs, table, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, certs, table), env={})


def test_caps_keys_become_node_flags(tmp_path, certs):
    path = write_config(tmp_path, certs, "[nodes.node2]\nmax_jobs = 7\n",
                        cluster="nodes = 2\nmax_job_bytes = 1000")
    config = load_config(path, env={"BSCLUSTER_MAX_JOBS": "5"})
    a1, a2 = (n.argv(("bsnode",)) for n in config.nodes)
    assert a1[-4:] == ["--max-jobs", "5", "--max-job-bytes", "1000"]
    assert a2[-4:] == ["--max-jobs", "7", "--max-job-bytes", "1000"]
    assert "--max-jobs" not in load_config(write_config(tmp_path, certs), env={}) \
        .nodes[0].argv(("bsnode",))
    with pytest.raises(ConfigError, match="max_jobs = -1"):
        load_config(path, env={"BSCLUSTER_MAX_JOBS": "-1"})


def check_rebalance(c: Cluster, config: Path) -> None:
    """`bscluster rebalance` surveys and moves jobs over TLS."""
    cc = ClusterClient.from_config(config)
    owner = cc.node_for("misplaced")
    other = "node1" if owner == "node2" else "node2"
    address = {n: cc.client(n).address for n in cc.nodes}
    ssl_context = cc.client(other).ssl_context
    cc.close()
    with Client(address[other], ssl_context=ssl_context, use="misplaced") as wrong:
        wrong.put(b"on the wrong node")
    c.run("rebalance", check=True)
    with Client(address[owner], ssl_context=ssl_context) as right:
        assert right.stats_tube("misplaced")["current-jobs-ready"] == 1


def check_https_dashboard(c: Cluster, config: Path) -> None:
    """`bscluster web` polls the TLS nodes and serves HTTPS with the node certificate."""
    web = subprocess.Popen([sys.executable, "-m", "bscluster", "web", "-c", str(config),
                            "--listen", "127.0.0.1:0"], env=c.env, cwd=c.dir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = web.stdout.readline()
        m = re.search(r"dashboard on (https://\S+/)", line)
        assert m, line
        ctx = ssl.create_default_context(cafile=str(c.dir / "tls" / "ca.pem"))
        with urllib.request.urlopen(m.group(1) + "api/overview", context=ctx,
                                    timeout=10) as r:
            view = json.load(r)
        assert [n["up"] for n in view["nodes"]] == [True, True]
    finally:
        web.terminate()
        web.wait(10)


@pytest.mark.integration
def test_cluster_from_init_tls_serves_only_mutual_tls(tmp_path):
    c = Cluster(tmp_path, f"{sys.executable} -m bsnode", 2)
    try:
        r = c.run("init", "--tls", "--nodes", "2", "--base-port", str(c.base_port),
                  "--data-dir", str(c.data_dir), check=True)
        assert "trial" in r.stderr and (tmp_path / "tls" / "ca.key").exists()
        assert oct((tmp_path / "tls" / "client.key").stat().st_mode & 0o777) == "0o600"
        c.run("up", "-d", check=True)
        status = json.loads(c.run("status", "--json", check=True).stdout)
        assert [row["up"] for row in status["nodes"]] == [True, True]
        config = tmp_path / "bscluster.toml"
        cc = ClusterClient.from_config(config, use="secure", watch="secure")
        handle = cc.put(b"over mutual TLS")
        job = cc.reserve(timeout=5)
        assert (job.handle, job.body) == (handle, b"over mutual TLS")
        cc.delete(job)
        cc.close()
        stats = json.loads(c.run("stats", "--json", check=True).stdout)
        assert stats["totals"]["total-jobs"] == 1 and stats["totals"]["cmd-delete"] == 1
        assert "2/2 nodes up" in c.run("top", "--once", check=True).stdout
        check_https_dashboard(c, config)
        check_rebalance(c, config)
        bench = c.run("bench", "--config", str(config), "--mode", "put-reserve-delete",
                      "--conns", "2", "--pipeline", "16", "--seconds", "1", "--procs", "1",
                      "--json", check=True)
        result = json.loads(bench.stdout)
        assert result["target"]["ops_per_s"] > 0 and result["target"]["errors"] == 0
        shown = c.run("config", check=True).stdout
        assert '# [tls]: ' in shown and '"client_auth": ' not in shown and "client_auth = true" in shown
        port = c.base_port
        with pytest.raises(UnexpectedReplyError, match="TLS_REQUIRED"):
            Client(("127.0.0.1", port)).stats()
        ca = str(tmp_path / "tls" / "ca.pem")
        with pytest.raises(ConnectionLostError, match="requires a client certificate"):
            Client(("127.0.0.1", port), ssl_context=client_context(ca)).stats()
    finally:
        c.run("down")
        c.cleanup()
