"""`bscluster up` when no node can start: each reason, what to do, exit 1.

Run as a user runs it (`python -m bscluster up`, in the foreground and with
--detach), with a node command that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bscluster.runtime import Paths, supervisor_alive
from servers import free_port

MISSING = "no-such-bsnode-program"


def up(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSCLUSTER_")}
    return subprocess.run(
        [sys.executable, "-m", "bscluster", "up", "--nodes", "2", "--base-port",
         str(free_port()), "--node-command", MISSING, *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flags", [(), ("--detach",)], ids=["foreground", "detached"])
def test_all_fatal_up_says_why_and_what_to_do(tmp_path, flags):
    r = up(tmp_path, *flags)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for name in ("node1", "node2"):  # each node with its reason
        assert any(name in line and f"cannot run node command '{MISSING}'" in line
                   for line in out.splitlines()), out
    assert "BSCLUSTER_NODE_COMMAND" in out
    assert "fix what each line above names, then run `bscluster up` again" in out
    # no help on connecting to a cluster that is not there
    assert "connect from Python" not in out and "telnet" not in out
    assert not supervisor_alive(Paths(tmp_path / "bscluster-data"))  # nothing left running
