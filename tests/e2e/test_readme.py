"""README.md, run as a new user runs it.

The commands come from README.md at test time (tests/readme_blocks.py), so
README and this test cannot drift apart.  What is run as written and what is
changed, and why:

* The first command, as root (README: leave out the word ``sudo``).  Its
  ``apt-get`` steps are not run here (they need the network and root; .ci/run
  installs the same python3-venv); every other step runs exactly as written,
  in a copy of this checkout: ``python3 -m venv .venv && .venv/bin/pip install
  .`` with ``PATH=/usr/bin:/bin`` and pip's own configuration (index, cache).
* The cluster part, ``.venv/bin/bscluster up --nodes 4``, runs under
  ``env -i PATH=/usr/bin:/bin`` (no venv on PATH, nothing activated) with the
  venv's bscluster by absolute path and one added variable,
  ``BSCLUSTER_BASE_PORT``: a free base port instead of README's 11300.
* The Python snippet runs with the venv's python against that cluster; its
  hard-coded ``11299`` (node I at 11299 + I) is rewritten to base port - 1.
  It must put 10 jobs and get the same 10 back.  Then Ctrl-C (SIGINT to the
  foreground process group) must stop bscluster and every node.
* The kill -9 demo runs in a scratch directory with the venv's bin on PATH,
  as README says, with two rewrites: its port 11370 becomes a free port, and
  each ``sleep 1`` (wait for the node to listen) becomes a wait for the port
  with a deadline, so a slow machine does not fail it.  Its output must
  contain the lines README shows; timestamps, pids, durations and the binlog's
  record count may differ, and the delayed job's time-left may be a little
  under README's 28.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import readme_blocks as rb
from bsclient.protocol import DEFAULT_PORT
from clusters import free_base_port
from servers import free_port

ROOT = Path(__file__).resolve().parents[2]
MINIMAL_PATH = "/usr/bin:/bin"
INSTALL_TIMEOUT = 300
UP_DEADLINE = 60.0
STOP_DEADLINE = 30.0
DEMO_PORT = 11370
# not copied: environments, caches and build output of this checkout
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", "*.egg-info",
                                     "build", "dist", ".hypothesis", ".pytest_cache",
                                     ".ruff_cache", ".build", "bscluster-data")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A copy of this checkout with README's first command run up to `bscluster up`."""
    command = rb.as_root(rb.first_command(rb.read()))
    steps = rb.steps(command)
    assert steps[-1][0].endswith("/bscluster") and steps[-1][1] == "up", command
    install = [s for s in steps[:-1] if s[0] != "apt-get"]
    assert [s[0] for s in steps[:-1] if s[0] == "apt-get"], "README no longer installs with apt-get?"
    repo = tmp_path_factory.mktemp("readme") / "bscluster"
    shutil.copytree(ROOT, repo, ignore=COPY_IGNORE)
    env = {**os.environ, "PATH": MINIMAL_PATH}  # pip keeps its configuration
    for argv in install:
        r = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT)
        assert r.returncode == 0, f"{' '.join(argv)} failed:\n{r.stdout}\n{r.stderr}"
    return repo


class Foreground:
    """`bscluster up` in a terminal of its own: output collected, Ctrl-C by signal."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_for(self, pattern: str, deadline: float) -> re.Match:
        with self._new:
            while True:
                for line in self.lines:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {pattern!r} from bscluster up:\n" +
                                         "\n".join(self.lines))
                self._new.wait(min(left, 0.5))

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # what the terminal sends
        return self.proc.wait(STOP_DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_first_command_starts_four_nodes_the_snippet_uses_and_ctrl_c_stops(installed):
    command = rb.as_root(rb.first_command(rb.read()))
    up = rb.steps(command)[-1]
    base = free_base_port(4)
    argv = [str(installed / up[0]), *up[1:]]  # the venv's bscluster, by absolute path
    env = {"PATH": MINIMAL_PATH, "BSCLUSTER_BASE_PORT": str(base)}  # env -i, plus the port
    cluster = Foreground(argv, installed, env)
    try:
        deadline = time.monotonic() + UP_DEADLINE
        cluster.wait_for(r"bscluster: 4 of 4 nodes running", deadline)
        pids = [int(cluster.wait_for(rf"^\s+node{i}\s+127\.0\.0\.1:{base + i - 1}\s+RUNNING\s+"
                                     rf"pid (\d+)", deadline).group(1)) for i in range(1, 5)]
        snippet = rb.python_snippet(rb.read())
        shown = str(DEFAULT_PORT - 1)
        assert snippet.count(shown) == 1, f"the snippet no longer names {shown} once"
        snippet = snippet.replace(shown, str(base - 1))
        r = subprocess.run([str(installed / ".venv/bin/python"), "-c", snippet],
                           cwd=installed, env={"PATH": MINIMAL_PATH}, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        puts = re.findall(r"^put (node[1-4]/\d+)$", r.stdout, re.M)
        got = re.findall(r"^got (node[1-4]/\d+) b'hello (\d)'$", r.stdout, re.M)
        assert len(puts) == 10, r.stdout
        assert sorted(h for h, _ in got) == sorted(puts), r.stdout  # 10 out, the same 10
        assert sorted(int(n) for _, n in got) == list(range(10))
        assert cluster.ctrl_c() == 0, "\n".join(cluster.lines)
    finally:
        cluster.kill()
    assert "all nodes stopped" in cluster.lines[-1]
    assert not [pid for pid in pids if alive(pid)], "a node outlived Ctrl-C"


def readiness_wait(port: int) -> str:
    """A shell line that waits (at most 30 s) until 127.0.0.1:port accepts."""
    code = ("import socket,time\nd=time.time()+30\nwhile True:\n try:\n"
            f"  socket.create_connection(('127.0.0.1',{port}),1).close();break\n"
            " except OSError:\n  assert time.time()<d,'no node listening';time.sleep(0.05)")
    return f"python3 -c \"{code}\""


# what may differ in bsnode's log lines: the time, the pid, how long replay took, and
# how many records the binlog holds (the format's business; the jobs restored are checked)
_VARIES = (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", r"bsnode\[\d+\]", r"\(\d+\.\d+ s\)",
           r"\d+ records")


def shape(line: str) -> str:
    """A README log line as a pattern: its time, pid and duration may differ."""
    parts, rest = [], line
    while rest:
        hits = [(m.start(), m, varies) for varies in _VARIES
                for m in [re.search(varies, rest)] if m]
        if not hits:
            parts.append(re.escape(rest))
            break
        start, m, varies = min(hits, key=lambda h: h[0])
        parts += [re.escape(rest[:start]), varies]
        rest = rest[m.end():]
    return "".join(parts)


def test_kill_9_demo_prints_what_readme_shows(installed, tmp_path):
    demo, shown = rb.durability_demo(rb.read())
    port = free_port()
    assert demo.count(str(DEMO_PORT)) >= 2 and demo.count("sleep 1\n") == 2, demo
    script = demo.replace(str(DEMO_PORT), str(port)).replace("sleep 1\n",
                                                           readiness_wait(port) + "\n")
    venv_bin = installed / ".venv" / "bin"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": f"{venv_bin}:{MINIMAL_PATH}"}, timeout=120,
                       stdin=subprocess.DEVNULL)
    out = "\n".join([r.stdout, r.stderr])
    assert r.returncode == 0, out
    shown = [line for line in shown if line.strip()]
    # bsnode's log lines (stderr): each README shows is there, pid and duration aside
    logged = [line for line in shown if "bsnode[" in line]
    for want in logged:
        assert any(re.fullmatch(shape(want), got) for got in r.stderr.splitlines()), \
            f"README shows {want!r}; the demo printed:\n{out}"
    # what the demo's python prints (stdout): exactly README's lines, except that
    # the delayed job's time-left counts down while the demo runs
    printed = r.stdout.splitlines()
    expected = [line for line in shown if line not in logged]
    readme_left = int(re.fullmatch(r"delayed (\d+)", expected[-1]).group(1))
    assert printed[:-1] == expected[:-1], out
    left = re.fullmatch(r"delayed (\d+)", printed[-1])
    assert left and readme_left - 5 <= int(left.group(1)) <= 30, out
