"""bsclient.address: the one parser of listen addresses, connect hosts and the loopback test.

The supervisor's config, the dashboard's --listen and the client all ask it;
these tests pin its answers and that the other entry points give the same ones.
"""

from __future__ import annotations

import click
import pytest
from bsclient import address as A
from bscluster import config as cluster_config
from bscluster import web


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    (":9100", ("127.0.0.1", 9100)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)),
    (" 0.0.0.0:80 ", ("0.0.0.0", 80)),
])
def test_parse_listen(text, want):
    assert A.parse_listen(text) == want
    assert cluster_config.parse_listen(text) == want
    assert web._listen(text) == want


@pytest.mark.parametrize("bad", ["9100", "host:", "host:x", "host:70000", "host:-1", "h:\u0661"])
def test_parse_listen_rejects_everywhere(bad):
    with pytest.raises(ValueError, match="expected ADDR:PORT"):
        A.parse_listen(bad)
    with pytest.raises(ValueError, match=r"e\.g\. 127\.0\.0\.1:11380"):  # the dashboard's default
        cluster_config.parse_listen(bad)
    with pytest.raises(click.BadParameter, match="expected ADDR:PORT"):
        web._listen(bad)


@pytest.mark.parametrize("host,want", [
    ("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("", "127.0.0.1"), ("localhost", "127.0.0.1"),
    ("10.1.2.3", "10.1.2.3"), ("::1", "::1"),
])
def test_connect_host(host, want):
    assert A.connect_host(host) == want


@pytest.mark.parametrize("host,want", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("example.com", False),
])
def test_is_loopback(host, want):
    assert A.is_loopback(host) is want
    assert web.handler_open_to_others(host) is not want


@pytest.mark.parametrize("text,want", [
    ("h:1", ("h", 1)), ("h", ("h", 11300)), ("[::1]:7", ("::1", 7)), ("::1", ("::1", 11300)),
    (":5", ("127.0.0.1", 5)), ("unix:/tmp/s", "/tmp/s"), (("h", 2), ("h", 2)),
])
def test_parse_address_and_back(text, want):
    assert A.parse_address(text) == want
    if isinstance(want, str):
        assert A.format_address(want) == text


@pytest.mark.parametrize("bad", ["h:0", "h:65536", "h:x", ("h", True)])
def test_parse_address_refuses_bad_ports(bad):
    with pytest.raises(ValueError, match="1 to 65535"):
        A.parse_address(bad)
