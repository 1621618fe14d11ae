"""The proxy's id scheme and its config setting, without servers."""

from __future__ import annotations

import pytest
from bsclient.protocol import U64_MAX
from bscluster.config import ConfigError, load_config
from bscluster.proxy_ids import ID_RADIX, decode, digits, encode, node_number


@pytest.mark.parametrize("node,job", [(1, 1), (3, 17), (ID_RADIX, 5), (2, 10**15)])
def test_ids_round_trip(node, job):
    proxy_id = encode(node, job)
    assert decode(proxy_id) == (f"node{node}", job)


def test_ids_are_unique_across_nodes_and_a_pure_function():
    ids = {encode(n, j) for n in range(1, 11) for j in range(1, 101)}
    assert len(ids) == 1000
    assert encode(3, 17) == 17002 == encode(3, 17)


@pytest.mark.parametrize("node,job", [(1, 1), (3, 17), (11, 40), (ID_RADIX, 5), (2, 10**15)])
def test_a_nodes_ids_with_its_digits_appended_are_its_proxy_ids(node, job):
    # (the fast lane rewrites replies this way: proxy_fast)
    assert int(b"%d%s" % (job, digits(node))) == encode(node, job)


def test_ids_no_node_can_have_are_refused():
    assert decode(0) is None
    assert decode(ID_RADIX - 1) is None  # node id 0
    assert decode(U64_MAX + 1) is None


@pytest.mark.parametrize("name", ["node0", "node01", "web1", "node", f"node{ID_RADIX + 1}"])
def test_node_names_the_scheme_cannot_carry(name):
    with pytest.raises(ValueError):
        node_number(name)


def test_proxy_setting_from_file_env_and_flag(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nnodes = 2\nproxy = "127.0.0.1:11400"\n')
    assert load_config(path, env={}).proxy == "127.0.0.1:11400"
    assert load_config(path, env={"BSCLUSTER_PROXY": "off"}).proxy == ""
    assert load_config(path, {"proxy": "127.0.0.1:12000"}, env={}).proxy == "127.0.0.1:12000"
    assert load_config(path, env={}).to_dict()["proxy"] == "127.0.0.1:11400"


def test_proxy_setting_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nnodes = 2\nbase_port = 12000\nproxy = "127.0.0.1:12001"\n')
    with pytest.raises(ConfigError, match="node2 and the proxy"):
        load_config(path, env={})
    path.write_text('[cluster]\nnodes = 2\nproxy = "nowhere"\n')
    with pytest.raises(ConfigError, match="proxy"):
        load_config(path, env={})


def test_the_proxy_routes_with_the_configs_ring(tmp_path):
    """ring = "ketama" and leaving nodes: the proxy's ClusterClient places tubes
    exactly as the config's placement() (what `bscluster route` prints)."""
    from bscluster.proxy import build

    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nnodes = 4\nring = "ketama"\n[nodes.node3]\nleaving = true\n')
    config = load_config(path, env={})
    cc, _ = build(config)
    placement = config.placement()
    tubes = [f"t{i}" for i in range(200)]
    assert [cc.node_for(t) for t in tubes] == [placement.node_for(t) for t in tubes]
    assert "node3" in cc.nodes and "node3" not in {cc.node_for(t) for t in tubes}


def test_status_names_a_proxy_that_does_not_answer():
    from bscluster.cli import _proxy_line, _proxy_row
    from servers import free_port

    entry = {"listen": f"127.0.0.1:{free_port()}", "pid": 5, "pid_start": 1, "exits": 3,
             "last_exit": "exit 1"}
    row = _proxy_row({"proxy": entry})
    assert row["up"] is False
    assert "NOT ANSWERING; it exited 3 times, last exit 1" in _proxy_line(row)
    assert _proxy_row({"proxy": None}) is None


def test_a_supervised_proxy_that_ignores_sigterm_is_killed_at_the_stop_timeout(tmp_path,
                                                                                monkeypatch):
    """New proxy settings (``restart_with``) and a stop send SIGTERM and SIGCONT; a proxy
    still running STOP_TIMEOUT later gets SIGKILL, so a new one can start."""
    import signal

    from bscluster.proxy_proc import ProxyProc
    from bscluster.states import STOP_TIMEOUT
    from fake_clock import FakeClock

    clock, said, sent = FakeClock(), [], []
    proxy = ProxyProc("127.0.0.1:1", tmp_path / "wanted.json", said.append, clock)
    monkeypatch.setattr(proxy, "_send", sent.append)
    monkeypatch.setattr(proxy, "alive", lambda: True)  # it never exits
    proxy.restart_with("127.0.0.1:2", clock())
    assert sent == [signal.SIGTERM, signal.SIGCONT] and proxy.listen == "127.0.0.1:2"
    clock.advance(STOP_TIMEOUT - 0.1)
    proxy.tick(clock(), {})
    assert sent[-1] == signal.SIGCONT
    clock.advance(0.2)
    proxy.tick(clock(), {})
    assert sent[-1] == signal.SIGKILL and "did not stop within" in said[-1]
    proxy._exited(1, -9)  # (the supervisor reaped it): the new one starts at the next tick
    assert proxy.restart_at == clock() and not proxy.moving
    sent.clear()
    proxy.stop()
    clock.advance(STOP_TIMEOUT)
    proxy.tick(clock(), {})
    assert sent == [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL]
    proxy.restart_with("127.0.0.1:3", clock())  # on again before the stopped one is gone
    proxy._exited(1, -9)
    assert proxy.restart_at == clock() and not proxy.stopping and proxy.listen == "127.0.0.1:3"
