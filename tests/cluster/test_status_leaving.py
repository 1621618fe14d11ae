"""`bscluster status` marks the nodes the config marks leaving = true."""

from __future__ import annotations

import json
import re

from bscluster.cli import cli
from bscluster.probe import NodeReport
from bscluster.report import render_status, status_rows
from click.testing import CliRunner
from servers import free_port, start_bsnode

UP = NodeReport(True, {"pid": 7, "uptime": 5, "current-jobs-ready": 1, "draining": "false"})
DRAINED = NodeReport(True, {"pid": 8, "uptime": 5, "draining": "true"})
DOWN = NodeReport(False, error="connection refused")


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_rows_and_rendering():
    nodes = {n: {"address": f"127.0.0.1:{i}", "state": "RUNNING"}
             for i, n in enumerate(("node1", "node2", "node3", "node4"), 1)}
    reports = {"node1": UP, "node2": UP, "node3": DRAINED, "node4": DOWN}
    rows = status_rows(nodes, reports, leaving={"node2", "node3", "node4"})
    assert [r["leaving"] for r in rows] == [False, True, True, True]
    assert [r["state"] for r in rows] == ["RUNNING", "RUNNING", "DRAINING", "RUNNING"]
    states = dict(cells(line)[:2] for line in render_status(rows).splitlines()[1:]
                  if line.startswith("node"))
    assert states == {"node1": "RUNNING", "node2": "LEAVING", "node3": "LEAVING,DRAINING",
                      "node4": "NO ANSWER,LEAVING"}


def test_status_command_marks_a_leaving_node(tmp_path, monkeypatch):
    for key in ("BSCLUSTER_CONFIG", "BSCLUSTER_NODES", "BSCLUSTER_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    with start_bsnode() as server:
        path = tmp_path / "bscluster.toml"
        path.write_text(f'[cluster]\nnodes = 2\ndata_dir = "data"\n\n'
                        f'[nodes.node1]\nport = {server.port}\n\n'
                        f'[nodes.node2]\nport = {free_port()}\nleaving = true\n')
        runner = CliRunner()
        text = runner.invoke(cli, ["status", "--config", str(path)]).stdout
        rows = dict(cells(line)[:2] for line in text.splitlines() if line.startswith("node"))
        assert rows == {"node1": "UP", "node2": "DOWN,LEAVING"}
        path.write_text(path.read_text().replace("[nodes.node2]", "[nodes.node2]\nremoved = true")
                        .replace("nodes.node1]\n", "nodes.node1]\nleaving = true\n"))
        out = json.loads(runner.invoke(cli, ["status", "--config", str(path), "--json"]).stdout)
        assert [(r["node"], r["leaving"]) for r in out["nodes"]] == [("node1", True)]
        text = runner.invoke(cli, ["status", "--config", str(path)]).stdout
        assert any(line.split()[:2] == ["node1", "LEAVING"] for line in text.splitlines())
