"""A second bsnode on a UNIX socket another bsnode serves (issue 19, case 7).

The second node must refuse to start without touching the running node's
socket file: with the same ``-b DIR`` it is refused by the binlog lock
(exit 10) before the path is looked at; without a binlog it finds the
socket answering and refuses with exit 111.  Either way the first node is
still reachable at its path.  A socket file nobody answers on (left by a
crash) is still replaced (tests/node/test_node_cli.py).
"""

from __future__ import annotations

import socket

import pytest
from servers import bsnode_command
from test_node_cli import Launched, roundtrip, run

pytestmark = pytest.mark.integration


def reachable(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    roundtrip(s)


@pytest.mark.parametrize("with_binlog", [True, False], ids=["same-binlog", "no-binlog"])
def test_second_node_on_the_same_unix_socket_leaves_the_first_reachable(tmp_path,
                                                                        with_binlog):
    path = str(tmp_path / "bs.sock")
    log = ["-b", str(tmp_path / "log")] if with_binlog else []
    with Launched(bsnode_command() + ["-l", "unix:" + path] + log) as first:
        assert first.wait_listening() == "unix:" + path
        r = run(bsnode_command() + ["-l", "unix:" + path] + log)
        err = r.stderr.decode()
        if with_binlog:
            assert r.returncode == 10, err
            assert "in use by another process" in err
        else:
            assert r.returncode == 111, err
            assert "another server is listening on it" in err
        reachable(path)  # the first node's socket file is still there
        assert first.proc.poll() is None
