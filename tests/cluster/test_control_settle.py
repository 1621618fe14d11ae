"""``control.wait_settled`` when no node of a new supervisor could start.

The supervisor publishes every node FATAL, gives up and exits, removing its
state file.  `up -d` may read the state before or after that; either way it
must answer the same: the supervisor's exit, with each node's reason from the
log (once it was a race, and the answer depended on who won).  A real process
stands in for the supervisor; the test ends it itself, so no timing is involved.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from bscluster import control
from bscluster.runtime import Paths, write_json


def _state(pid: int, node_state: str) -> dict:
    return {"supervisor": {"pid": pid},
            "nodes": {"node1": {"state": node_state, "reason": "could not start after 3 tries"}}}


@pytest.fixture
def supervisor(tmp_path):
    """A stand-in supervisor process (waits for a line on stdin) and the data dir's paths."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                            stdin=subprocess.PIPE)
    paths = Paths(tmp_path)
    paths.log.write_text("12:00:00.000 bscluster | node1 FATAL: could not start after 3 "
                         "tries; last: cannot open binlog\n")
    try:
        yield proc, paths
    finally:
        proc.kill()
        proc.wait()


def test_every_node_fatal_waits_for_the_supervisor_to_exit_then_names_the_reasons(supervisor):
    proc, paths = supervisor
    write_json(paths.state, _state(proc.pid, "FATAL"))
    seen = threading.Event()

    def on_poll(state):  # the all-FATAL state was read: now the supervisor exits
        seen.set()
        proc.stdin.close()
        proc.wait()

    with pytest.raises(control.ClusterError) as e:
        control.wait_settled(paths, proc.pid, on_poll=on_poll)
    assert seen.is_set()
    assert "the supervisor exited before the cluster was up; the nodes could not start:\n" \
           "  node1: could not start after 3 tries; last: cannot open binlog" in str(e.value)


def test_a_running_node_is_an_answer_at_once(supervisor):
    proc, paths = supervisor
    state = _state(proc.pid, "RUNNING")
    write_json(paths.state, state)
    assert control.wait_settled(paths, proc.pid) == state
    assert proc.poll() is None  # (not waited for)
