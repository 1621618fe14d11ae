"""The small promises: man pages, shell completion, bsnode-dump's errors, config edits,
routing examples in the docs, the ring setting, leaving and removed nodes."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bscluster.config import ConfigError, load_config
from bscluster.config_edit import EditError, edit_file
from bscluster.mover import Limiter

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, **kw)


# --- man pages ------------------------------------------------------------------------
def test_man_pages_are_generated_from_the_help_and_installed():
    r = run("man/generate.py", "--check")
    assert r.returncode == 0, r.stderr
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    installed = cfg["options.data_files"]["share/man/man1"].split()
    assert sorted(installed) == ["man/bscluster.1", "man/bsnode.1"]
    page = (ROOT / "man/bscluster.1").read_text()
    for command in ("rebalance", "remove", "drain", "logs", "status"):
        assert f".SS bscluster {command} " in page
    if shutil.which("man"):
        for name in ("bscluster.1", "bsnode.1"):
            r = subprocess.run(["man", "-l", str(ROOT / "man" / name)], capture_output=True,
                               text=True, env={**os.environ, "MANWIDTH": "90", "MANPAGER": "cat",
                                               "PAGER": "cat"}, timeout=60)
            assert r.returncode == 0 and "SYNOPSIS" in r.stdout, r.stderr


def test_shell_completion_lists_commands():
    env = {**os.environ, "COMP_WORDS": "bscluster re", "COMP_CWORD": "1",
           "_BSCLUSTER_COMPLETE": "bash_complete"}
    r = run("-m", "bscluster", env=env)
    assert r.stdout.split() == ["plain,rebalance", "plain,reload", "plain,remove", "plain,restart"]


# --- bsnode-dump ------------------------------------------------------------------------
def test_dump_of_a_directory_without_segments_is_an_error(tmp_path):
    r = run("-m", "bsnode.binlog.dump", str(tmp_path))
    assert r.returncode == 2 and "holds no binlog segments" in r.stderr


def test_dump_into_a_closed_pipe_ends_quietly(tmp_path):
    from bsclient.protocol import encode_command
    from bscluster.mover import Pipe
    from servers import start_bsnode

    server = start_bsnode("-b", str(tmp_path))
    try:
        pipe = Pipe("n", "127.0.0.1", server.port)
        assert len(pipe.call([encode_command("put", 0, 0, 60, 1, body=b"x")] * 3000)) == 3000
        pipe.close()
    finally:
        server.stop()
    proc = subprocess.Popen([sys.executable, "-m", "bsnode.binlog.dump", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait(30)
    proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# --- the config: ring, leaving, removed, edits ------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bscluster.toml"
    path.write_text(text)
    return path


def test_ring_setting_and_leaving_nodes_decide_the_placement(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 3\nring = \"ketama\"\n\n[nodes.node2]\n"
                           "leaving = true\n")
    config = load_config(path, {}, env={})
    ring = config.placement()
    assert ring.ketama and ring.nodes == ("node1", "node3")
    assert [n.name for n in config.nodes] == ["node1", "node2", "node3"]  # still run
    with pytest.raises(ConfigError, match="ring = 'rendezvous'"):
        load_config(write(tmp_path, "[cluster]\nring = \"rendezvous\"\n"), {}, env={})


def test_removed_nodes_are_not_part_of_the_cluster(tmp_path):
    path = write(tmp_path, "[cluster]\nnodes = 3\nbase_port = 27100\n\n[nodes.node2]\n"
                           "removed = true\n")
    config = load_config(path, {}, env={})
    assert [(n.name, n.port) for n in config.nodes] == [("node1", 27100), ("node3", 27102)]
    with pytest.raises(ConfigError, match="at least one node"):
        load_config(write(tmp_path, "[cluster]\nnodes = 1\n[nodes.node1]\nremoved = true\n"),
                    {}, env={})


def test_edits_keep_comments_and_check_the_result(tmp_path):
    path = write(tmp_path, "# mine\n[cluster]\nnodes = 4  # four\n\n[nodes.node2]\n"
                           "weight = 2\n# a note\n")
    edit_file(path, [("nodes.node2", "leaving", True), ("nodes.node3", "removed", True)])
    edit_file(path, [("cluster", "nodes", 3)], drop=("nodes.node4",))
    text = path.read_text()
    assert text.startswith("# mine\n") and "weight = 2\nleaving = true\n# a note" in text
    config = load_config(path, {}, env={})
    assert [(n.name, n.leaving) for n in config.nodes] == [("node1", False), ("node2", True)]
    path.write_text("[cluster]\nnodes = 4\n[nodes]\nnode2 = { weight = 2 }\n")
    with pytest.raises(EditError, match="by hand"):
        edit_file(path, [("nodes.node2", "leaving", True)])


# --- the mover's rate limit, with a fake clock -------------------------------------------
def test_rate_limit_spaces_batches():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = Limiter(100, clock=lambda: now[0], sleep=sleep)
    sizes = [limiter.batch(200) for _ in range(20)]
    assert set(sizes) == {10}
    assert 1.7 <= now[0] <= 2.0  # 200 jobs at 100/s, less the tenth of a second of burst
    assert Limiter(None).batch(200) == 200


# --- docs that show routing ----------------------------------------------------------------
ROUTE_ROW = re.compile(r"^(\S+)\s+(node\d+)\s+127\.0\.0\.1:(\d+)\s+((?:node\d+ ?)+)$", re.M)


@pytest.mark.parametrize("doc", ["docs/CLUSTER.md", "docs/CLIENT.md", "README.md"])
def test_routing_examples_in_the_docs_are_what_route_prints(doc):
    from bscluster.config import load_config as load

    ring = load(None, {"nodes": 4}, env={}).placement()
    text = (ROOT / doc).read_text()
    rows = ROUTE_ROW.findall(text)
    for tube, node, port, failover in rows:
        assert ring.preference(tube) == [node, *failover.split()], (doc, tube)
        assert int(port) == 11299 + int(node[4:]), (doc, tube)
    for tube, node in re.findall(r'"([a-z]+)" (?:lands on|is on|goes to) (node\d)', text):
        assert ring.node_for(tube) == node, (doc, tube, node)
    # a code example: cc.use("emails") ... cc.put(...)  # -> "node1/1"
    for tube, node in re.findall(r'\.use\("([a-z]+)"\)\n[^`]*?# -> "(node\d+)/', text):
        assert ring.node_for(tube) == node, (doc, tube, node)


# --- rebalance's plan, from made-up node reports ---------------------------------------------
def test_plan_moves_what_is_not_on_its_target():
    from bsclient import Ring
    from bscluster.probe import NodeReport
    from bscluster.rebalance import Survey, plan

    ring = Ring(["node1", "node2", "node3"])
    tube = "emails"
    owner, second, third = ring.preference(tube)

    def reports(draining=(), down=()):
        out = {}
        for n in ("node1", "node2", "node3", "node4"):
            st = {"draining": "true" if n in draining else "false"}
            tubes = {tube: {"current-jobs-ready": 2, "current-jobs-delayed": 1,
                            "current-jobs-buried": 0, "current-jobs-reserved": 1}}
            out[n] = NodeReport(up=n not in down, stats=st, tubes=tubes)
        return out

    def moves(**kw):
        spread = kw.pop("spread", {})
        s = Survey({}, reports(**kw), ring, {"node4"}, spread)
        return {(m.source, m.target, m.skipped) for m in plan(s)}

    assert moves() == {(second, owner, None), (third, owner, None), ("node4", owner, None)}
    assert moves(draining=[owner]) == {(owner, second, None), (third, second, None),
                                       ("node4", second, None)}
    assert moves(spread={tube: 2}) == {(third, owner, None), ("node4", owner, None)}
    skipped = moves(down=[owner])
    assert {t for _, t, _ in skipped} == {None} and all("does not answer" in w
                                                        for _, _, w in skipped)
    (only,) = [m for m in plan(Survey({}, reports(), ring, set())) if m.source == second]
    assert (only.ready, only.delayed, only.buried, only.reserved, only.movable) == (2, 1, 0, 1, 3)
