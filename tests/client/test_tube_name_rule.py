"""One tube-name rule (bsclient.protocol.valid_tube_name), asked by every entry point.

A name the protocol refuses is refused by Client, ClusterClient, the config's
[tubes.NAME] tables (bsclient and bscluster readers), `bscluster route` and the
dashboard's API — before anything reaches a node.  No node is started: the
addresses point at a port nothing listens on, so a check that let a bad name
through would fail with a connection error instead of the refusal.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from bsclient import BadFormatError, Client, ClusterClient
from bsclient.config import ConfigError as ClientConfigError
from bsclient.config import NodeAddress, read_layout
from bsclient.protocol import MAX_TUBE_NAME, is_tube_name, valid_tube_name
from bscluster.cli import cli
from bscluster.config import ConfigError, load_config
from bscluster.monitor import Monitor
from bscluster.web import Dashboard, make_server
from click.testing import CliRunner

NOWHERE = "127.0.0.1:1"  # nothing listens on port 1; a name let through would try it
BAD = ["", "-lead", "has space", "tab\there", "cr\r\nput 0 0 1 1", "x" * (MAX_TUBE_NAME + 1),
       "bang!", "col:on", "caf\u00e9", "star*"]
GOOD = ["a", "emails", "x" * MAX_TUBE_NAME, "a-b+c/d;e.f$g_h(i)", "9lives"]


@pytest.mark.parametrize("name", BAD)
def test_the_protocol_refuses_every_bad_name(name):
    assert not is_tube_name(name)
    assert not valid_tube_name(name.encode("utf-8"))


@pytest.mark.parametrize("name", GOOD)
def test_the_protocol_takes_every_good_name(name):
    assert is_tube_name(name) and valid_tube_name(name.encode("ascii"))


@pytest.mark.parametrize("name", BAD)
def test_client_refuses_before_sending(name):
    c = Client(NOWHERE, lazy=True)
    for call in (c.use, c.watch, c.ignore, c.stats_tube, lambda t: c.pause_tube(t, 1)):
        with pytest.raises(BadFormatError):
            call(name)
    with pytest.raises(ValueError):  # also a ValueError: a bad argument
        c.use(name)
    with pytest.raises(BadFormatError):
        Client(NOWHERE, lazy=True, use=name)
    with pytest.raises(BadFormatError):
        Client(NOWHERE, lazy=True, watch=[name])


@pytest.mark.parametrize("name", GOOD)
def test_client_takes_good_names(name):
    assert Client(NOWHERE, lazy=True, use=name, watch=[name]).address == NOWHERE


@pytest.mark.parametrize("name", BAD)
def test_cluster_client_refuses_before_sending(name):
    with ClusterClient([NodeAddress("node1", NOWHERE)], connect_timeout=0.5) as cc:
        with pytest.raises(BadFormatError):
            cc.put(b"x", tube=name)
        for call in (cc.use, cc.watch, cc.stats_tube):
            with pytest.raises(BadFormatError):
                call(name)
    with pytest.raises(BadFormatError):
        ClusterClient([NodeAddress("node1", NOWHERE)], watch=[name])


def _toml_key(name: str) -> str:
    return json.dumps(name)  # a TOML basic string is JSON's, for these names


@pytest.mark.parametrize("name", BAD)
def test_config_tubes_table_refuses(tmp_path, name):
    path = tmp_path / "cluster.toml"
    path.write_text(f'[cluster]\nnodes = 1\n\n[tubes.{_toml_key(name)}]\nspread = 1\n')
    with pytest.raises(ClientConfigError, match="not a valid tube name"):
        read_layout(path)
    with pytest.raises(ConfigError, match="not a valid tube name"):
        load_config(path, env={})


def test_config_tubes_table_takes_good_names(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text("[cluster]\nnodes = 1\n\n"
                    + "".join(f"[tubes.{_toml_key(n)}]\nspread = 1\n" for n in GOOD))
    assert set(read_layout(path).spread) == set(GOOD)
    assert set(load_config(path, env={}).spread) == set(GOOD)


@pytest.mark.parametrize("name", [n for n in BAD if n])  # an empty argument is no tube at all
def test_route_refuses(name):
    r = CliRunner().invoke(cli, ["route", "--nodes", "2", "--", "fine", name], env={})
    assert r.exit_code == 2, r.output
    assert "is not a valid tube name" in r.output


@pytest.fixture(scope="module")
def web():
    dashboard = Dashboard(Monitor([NodeAddress("node1", NOWHERE)], interval=60), "tok")
    server = make_server(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _status(url: str, method: str = "GET") -> tuple[int, dict]:
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": "Bearer tok", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("name", [n for n in BAD if n])  # '' is another URL, not a bad tube
def test_web_api_refuses(web, name):
    quoted = quote(name, safe="")
    status, doc = _status(f"{web}/api/tubes/{quoted}")
    assert status == 400 and "not a valid tube name" in json.dumps(doc)
    status, doc = _status(f"{web}/api/tubes/{quoted}/kick", "POST")
    assert status == 400 and "not a valid tube name" in json.dumps(doc)
