"""`bscluster top`: the screen it renders, and the real thing in a pseudo-terminal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pexpect
import pytest
from bsclient import Client
from bscluster.top import HOME_CLEAR, LEAVE, render
from servers import start_bsnode


def _view(**over) -> dict:
    node = {"name": "node1", "address": "127.0.0.1:11300", "up": True, "error": None,
            "ready": 7, "reserved": 1, "delayed": 2, "buried": 3, "urgent": 0,
            "connections": 4, "producers": 1, "workers": 2, "waiting": 1, "tubes": 3,
            "uptime": 65, "version": "1.12", "pid": 10, "total_jobs": 13, "draining": False,
            "ops": 12.5, "puts": 5.0, "reserves": 4.0, "deletes": 3.5}
    down = {"name": "node2", "address": "127.0.0.1:11301", "up": False,
            "error": "connection refused (nothing listening)",
            **dict.fromkeys(("ready", "reserved", "delayed", "buried", "urgent", "connections",
                             "producers", "workers", "waiting", "tubes", "uptime", "version",
                             "pid", "total_jobs", "draining", "ops", "puts", "reserves",
                             "deletes"))}

    def tube(name, ready=0, buried=0, watching=1, paused=0, ops=None):
        level = 3 if buried else 2 if ready and not watching else 1 if paused else 0
        why = {3: "buried jobs", 2: "ready jobs but no worker watching", 1: "paused",
               0: ""}[level]
        return {"name": name, "ready": ready, "reserved": 0, "delayed": 0, "buried": buried,
                "urgent": 0, "waiting": 0, "watching": watching, "using": 0,
                "total_jobs": ready + buried, "paused": paused, "nodes": ["node1"],
                "puts": ops, "deletes": ops, "ops": ops, "attention": level, "why": why}

    tubes = [tube("zeta", buried=3), tube("alpha", ready=5, watching=0),
             tube("paused", paused=30), tube("busy", ready=2, ops=40.0)]
    view = {"time": 0.0, "interval": 1.0,
            "totals": {"nodes": 2, "nodes_up": 1, "tubes": 4, "ready": 7, "reserved": 1,
                       "delayed": 2, "buried": 3, "urgent": 0, "connections": 4,
                       "producers": 1, "workers": 2, "waiting": 1, "total_jobs": 13,
                       "ops": 12.5, "puts": 5.0, "reserves": 4.0, "deletes": 3.5},
            "nodes": [node, down], "tubes": tubes}
    view.update(over)
    return view


def _tube_order(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("TUBE"))
    return [line.split()[0] for line in lines[start + 1:] if line and line[0].isalpha()
            and not line.startswith(("q ", "..."))]


def test_render_totals_nodes_and_attention_order():
    lines = render(_view(), color=False, width=200, height=50)
    text = "\n".join(lines)
    assert "1/2 nodes up, 4 tubes" in lines[0]
    assert "ready 7" in lines[1] and "ops/s 12.5" in lines[1]
    node_rows = [line for line in lines if line.startswith("node")]
    assert node_rows[0].split()[:3] == ["node2", "127.0.0.1:11301", "DOWN"]  # down first
    assert node_rows[1].split()[:4] == ["node1", "127.0.0.1:11300", "up", "7"]
    assert "node2: connection refused" in text
    assert _tube_order(lines) == ["zeta", "alpha", "paused", "busy"]
    assert "ready jobs but no worker watching" in text
    assert "1m05s" in text


@pytest.mark.parametrize("sort,order", [
    ("name", ["alpha", "busy", "paused", "zeta"]),
    ("ready", ["alpha", "busy", "paused", "zeta"]),
    ("buried", ["zeta", "alpha", "busy", "paused"]),
    ("ops/s", ["busy", "alpha", "paused", "zeta"]),
])
def test_render_sorts(sort, order):
    lines = render(_view(), sort=sort, color=False, width=200, height=50)
    assert f"sort: {sort}" in lines[0]
    assert _tube_order(lines) == order


def test_render_fits_the_terminal():
    lines = render(_view(), color=False, width=60, height=14)
    assert len(lines) <= 14
    assert all(len(line) <= 60 for line in lines)
    assert any(line.startswith("... ") and "more tubes" in line for line in lines)


def test_render_colours_down_nodes_and_attention():
    lines = render(_view(), color=True, width=200, height=50)
    assert any(line.startswith("\x1b[31mnode2") for line in lines)
    assert any(line.startswith("\x1b[33malpha") for line in lines)
    assert not any(line.startswith("\x1b[33mbusy") for line in lines)


def test_render_before_the_first_poll():
    assert "waiting for the first poll" in render(None)[0]


def _bscluster() -> list[str]:
    exe = shutil.which("bscluster")
    return [exe] if exe else [sys.executable, "-m", "bscluster"]


@pytest.fixture
def two_nodes():
    with start_bsnode() as a, start_bsnode() as b:
        yield a, b


def test_top_in_a_pty_renders_refreshes_and_quits(two_nodes):
    a, b = two_nodes
    cmd = _bscluster() + ["top", "--node", f"node1={a.host}:{a.port}",
                          "--node", f"node2={b.host}:{b.port}", "--interval", "0.3"]
    env = {**os.environ, "TERM": "xterm"}
    child = pexpect.spawn(cmd[0], cmd[1:], env=env, dimensions=(40, 160), timeout=15,
                          encoding="utf-8", codec_errors="replace")
    try:
        child.expect_exact("2/2 nodes up")
        child.expect("node1 +127\\.0\\.0\\.1")
        with Client(a.address) as c:
            c.use("fresh-tube")
            for i in range(3):
                c.put(b"job %d" % i)
        # a later frame shows the new tube and its jobs: the screen refreshes
        child.expect(re.compile(r"fresh-tube +node1 +3 "))
        frames_before = child.before.count(HOME_CLEAR)
        child.expect_exact(HOME_CLEAR)
        assert frames_before >= 1
        # a resized terminal gets frames of its new width
        child.setwinsize(30, 90)
        deadline_frames = 10
        for _ in range(deadline_frames):
            child.expect("\x1b\\[7m(bscluster top[^\x1b]*)\x1b\\[0m")
            if len(child.match.group(1)) == 90:
                break
        else:
            raise AssertionError("no frame of the new width")
        child.send("b")
        child.expect_exact("sort: buried")
        child.send("q")
        child.expect(pexpect.EOF)
        assert LEAVE in child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_top_ctrl_c_restores_and_exits(two_nodes):
    a, _ = two_nodes
    cmd = _bscluster() + ["top", "--node", f"node1={a.host}:{a.port}"]
    child = pexpect.spawn(cmd[0], cmd[1:], env={**os.environ, "TERM": "xterm"},
                          dimensions=(30, 120), timeout=15, encoding="utf-8",
                          codec_errors="replace")
    try:
        child.expect_exact("1/1 nodes up")
        child.sendintr()
        child.expect(pexpect.EOF)
        assert LEAVE in child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_top_once_without_a_terminal(two_nodes):
    a, b = two_nodes
    with Client(b.address) as c:
        c.use("printed")
        c.put(b"x")
    r = subprocess.run(_bscluster() + ["top", "--once", "--node", f"{a.host}:{a.port}",
                                       "--node", f"{b.host}:{b.port}"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert re.search(r"^printed +node2 +1 ", r.stdout, re.M), r.stdout
    assert "2/2 nodes up" in r.stdout


def test_top_bad_node_flag_is_a_clear_error():
    r = subprocess.run(_bscluster() + ["top", "--once", "--node", "node1=127.0.0.1:99999"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "--node" in r.stderr and "Traceback" not in r.stderr
