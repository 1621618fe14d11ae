"""Config keys for monitoring: web, metrics_base_port/metrics_host/metrics_port (no processes)."""

from __future__ import annotations

import pytest
from bscluster.cli import cli
from bscluster.config import ClusterConfig, ConfigError, load_config
from click.testing import CliRunner


def config(tmp_path, text: str, **env) -> ClusterConfig:
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\n" + text)
    return load_config(path, env=env)


def test_metrics_base_port_gives_each_node_its_own_metrics_flag(tmp_path):
    c = config(tmp_path, "nodes = 3\nmetrics_base_port = 9400\n")
    for i, node in enumerate(c.nodes):
        argv = node.argv(c.node_command)
        assert argv[-2:] == ["--metrics", f"127.0.0.1:{9400 + i}"]
        assert node.metrics_url == f"http://127.0.0.1:{9400 + i}/metrics"


def test_metrics_off_by_default_so_beanstalkd_still_works(tmp_path):
    c = config(tmp_path, "nodes = 2\nnode_command = \"beanstalkd\"\n")
    assert all("--metrics" not in n.argv(c.node_command) and n.metrics_url is None
               for n in c.nodes)


def test_metrics_host_and_per_node_port(tmp_path):
    c = config(tmp_path, 'nodes = 2\nmetrics_base_port = 9400\nmetrics_host = "0.0.0.0"\n'
                         "[nodes.node2]\nmetrics_port = 9500\n")
    assert c.nodes[0].argv(c.node_command)[-1] == "0.0.0.0:9400"
    assert c.nodes[0].metrics_url == "http://127.0.0.1:9400/metrics"  # where to scrape it
    assert c.nodes[1].argv(c.node_command)[-1] == "0.0.0.0:9500"
    one = config(tmp_path, "nodes = 2\n[nodes.node2]\nmetrics_port = 9500\n")
    assert one.nodes[0].metrics_url is None and one.nodes[1].metrics_port == 9500


@pytest.mark.parametrize("text, words", [
    ("nodes = 2\nbase_port = 9400\nmetrics_base_port = 9401\n",
     "node2 and node1's metrics would both listen on 127.0.0.1:9401"),
    ('nodes = 2\nmetrics_base_port = 9400\nweb = "127.0.0.1:9401"\n',
     "node2's metrics and the dashboard"),
    ("nodes = 3\nmetrics_base_port = 65534\n", "runs past 65535; lower metrics_base_port"),
    ("metrics_base_port = 70000\n", "or 0 for no node metrics"),
    ('web = "nowhere"\n', "ADDR:PORT for the dashboard"),
    ("web = true\n", "ADDR:PORT for the dashboard"),
])
def test_bad_monitoring_settings_say_what_is_wrong(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        config(tmp_path, text)


def test_web_values(tmp_path):
    assert config(tmp_path, "nodes = 1\n").web == ""
    assert config(tmp_path, 'web = "off"\n').web == ""
    assert config(tmp_path, 'web = ":0"\n').web == ":0"  # 127.0.0.1, a free port
    c = config(tmp_path, 'web = "127.0.0.1:11380"\n', BSCLUSTER_WEB="off")
    assert c.web == "" and c.sources["web"] == "env BSCLUSTER_WEB"
    flagged = load_config(tmp_path / "c.toml", {"web": "127.0.0.1:12000"}, env={})
    assert flagged.web == "127.0.0.1:12000" and flagged.sources["web"] == "flag --web"


def test_a_wanted_json_from_before_these_keys_still_loads(tmp_path):
    c = config(tmp_path, "nodes = 2\n")
    old = c.to_dict()
    for key in ("crash_limit", "crash_window", "web", "metrics_base_port", "metrics_host"):
        del old[key]
    for node in old["nodes"]:
        del node["metrics_host"], node["metrics_port"]
    assert ClusterConfig.from_dict(old) == c


def test_config_command_shows_metrics_urls_and_the_dashboard(tmp_path):
    r = CliRunner().invoke(cli, ["config", "--nodes", "2", "--metrics-base-port", "9400",
                                 "--web", "--data-dir", str(tmp_path)], env={})
    assert r.exit_code == 0, r.output
    assert "metrics http://127.0.0.1:9400/metrics" in r.output
    assert "metrics http://127.0.0.1:9401/metrics" in r.output
    assert "# dashboard (up --web): http://127.0.0.1:11380/ and /metrics" in r.output
    assert 'web = "127.0.0.1:11380"  # flag --web' in r.output
    off = CliRunner().invoke(cli, ["config", "--web", "off", "--data-dir", str(tmp_path)], env={})
    assert 'web = ""  # flag --web' in off.output and "# dashboard" not in off.output
