"""One connect timeout for Client and ClusterClient (bsclient.client.DEFAULT_CONNECT_TIMEOUT)."""

from __future__ import annotations

import inspect

from bsclient import Client, ClusterClient
from bsclient.client import DEFAULT_CONNECT_TIMEOUT
from bsclient.config import NodeAddress


def test_client_and_cluster_client_connect_within_the_same_default():
    assert Client("127.0.0.1:1", lazy=True).connect_timeout == DEFAULT_CONNECT_TIMEOUT
    with ClusterClient([NodeAddress("node1", "127.0.0.1:1")]) as cc:
        assert cc._pool.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    for fn in (Client.__init__, ClusterClient.__init__):
        assert inspect.signature(fn).parameters["connect_timeout"].default == DEFAULT_CONNECT_TIMEOUT
    assert DEFAULT_CONNECT_TIMEOUT == 2.0  # docs/CLIENT.md states it for both
