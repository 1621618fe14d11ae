"""Hot tubes: a tube spread over its first k ring nodes (``spread=`` or [tubes.NAME] spread)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from bsclient import Client, ClusterClient, ConfigError
from bsclient.config import read_tube_settings
from bscluster.config import ConfigError as ClusterConfigError
from bscluster.config import load_config
from test_cluster_client import running_nodes, wait_until

TUBE = "emails"


def write(tmp_path, text: str):
    path = tmp_path / "bscluster.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def nodes4():
    with running_nodes(4) as (_, nodes):
        yield nodes


@pytest.mark.integration
def test_puts_to_a_spread_tube_take_turns_over_its_first_k_ring_nodes(nodes4):
    with ClusterClient(nodes4, spread={TUBE: 2}, watch=[TUBE]) as cc:
        first_two = cc.ring.preference(TUBE)[:2]
        handles = [cc.put(b"%d" % i, tube=TUBE) for i in range(10)]
        assert Counter(h.split("/")[0] for h in handles) == {n: 5 for n in first_two}
        got = sorted(cc.reserve(timeout=5).body for _ in range(10))
        assert got == sorted(b"%d" % i for i in range(10))


@pytest.mark.integration
def test_a_consumer_of_a_spread_tube_waits_on_all_its_nodes(nodes4):
    tube = TUBE + "-wait"
    with ClusterClient(nodes4, spread={tube: 3}, watch=[tube]) as cc:
        spread_over = cc.ring.preference(tube)[:3]
        got = []
        t = threading.Thread(target=lambda: got.append(cc.reserve(timeout=10)))
        t.start()

        def waiting():
            out = set()
            for name, address in nodes4.items():
                with Client(address) as c:
                    if c.stats()["current-waiting"]:
                        out.add(name)
            return out
        wait_until(lambda: waiting() == set(spread_over), what="waits on the spread nodes")
        with Client(nodes4[spread_over[2]], use=tube) as c:
            c.put(b"third")
        t.join(10)
        assert [j.body for j in got] == [b"third"]


@pytest.mark.integration
def test_a_spread_tube_skips_a_dead_node(nodes4):
    dead = {**nodes4, "node5": "127.0.0.1:1"}  # nothing listens there
    with ClusterClient(dead, spread={TUBE: 5}) as cc:
        handles = [cc.put(b"x", tube=TUBE) for _ in range(10)]
        assert "node5" not in {h.split("/")[0] for h in handles}
        assert "node5" in cc.dead_nodes()


def test_spread_is_read_from_the_config_file_and_checked(tmp_path):
    path = write(tmp_path, '[cluster]\nnodes = 4\n\n[tubes.emails]\nspread = 2\n')
    assert read_tube_settings(path) == {"emails": 2}
    cc = ClusterClient.from_config(path)
    assert cc.spread == {"emails": 2}
    assert ClusterClient.from_config(path, spread={"emails": 3}).spread == {"emails": 3}
    assert len(load_config(path).nodes) == 4  # bscluster reads the same file
    for bad in ('[tubes.emails]\nspread = 0\n', '[tubes.emails]\nspread = "2"\n',
                '[tubes.emails]\nspraed = 2\n', '[tubes]\nemails = 2\n'):
        bad_path = write(tmp_path, "[cluster]\nnodes = 4\n\n" + bad)
        with pytest.raises(ConfigError):
            read_tube_settings(bad_path)
        with pytest.raises(ClusterConfigError):
            load_config(bad_path)


def test_a_spread_argument_is_checked():
    with pytest.raises(ConfigError):
        ClusterClient({"node1": "127.0.0.1:11300"}, spread={"t": 0})
