"""A cluster run by `bscluster` as a command, for the tests (no tests here).

``Cluster`` runs ``python -m bscluster`` in a temp dir with a given node
command, free loopback ports (``free_base_port``) and its own data dir; it
remembers every pid the state file names, and ``cleanup`` stops the
supervisor, runs ``down`` and kills anything left, so nothing survives a test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from bscluster.runtime import pid_alive
from servers import poll

DEADLINE = 20.0


def free_base_port(count: int) -> int:
    """A base port with ``count`` free ports above it (never 11300).

    Picked below the kernel's ephemeral range, so that neither port-0 binds
    nor the local ends of client connections made meanwhile can take it."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        socks = []
        try:
            for p in range(base, base + count):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no run of free ports found")


class Cluster:
    """Runs `bscluster` in a temp dir with a given node command."""

    def __init__(self, tmp_path: Path, node_command: str, nodes: int = 2, extra_env=None):
        self.dir = tmp_path
        self.base_port = free_base_port(nodes + 2)
        self.data_dir = tmp_path / "data"
        self.env = {**os.environ, "BSCLUSTER_NODE_COMMAND": node_command,
                    "BSCLUSTER_BASE_PORT": str(self.base_port),
                    "BSCLUSTER_DATA_DIR": str(self.data_dir), "BSCLUSTER_NODES": str(nodes),
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.env.pop("BSCLUSTER_CONFIG", None)
        self.seen_pids: set[int] = set()
        self.foreground: subprocess.Popen | None = None

    def by_hand(self) -> tuple[str, ...]:
        """Drop the BSCLUSTER_* settings this harness gives every command; returns the
        `up` flags that start the same nodes as a person types them.  Commands then find
        the cluster as they find such a one: in ./bscluster-data of the directory."""
        flags = ("--nodes", self.env.pop("BSCLUSTER_NODES"),
                 "--base-port", self.env.pop("BSCLUSTER_BASE_PORT"))
        del self.env["BSCLUSTER_DATA_DIR"]
        self.data_dir = self.dir / "bscluster-data"
        return flags

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "bscluster", *args], env=self.env,
                           cwd=self.dir, capture_output=True, text=True, timeout=90)
        self.remember()
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def start_foreground(self, *args: str) -> subprocess.Popen:
        self.out = open(self.dir / "foreground.out", "w+")
        self.foreground = subprocess.Popen(
            [sys.executable, "-m", "bscluster", "up", *args], env=self.env, cwd=self.dir,
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.foreground

    def output(self) -> str:
        return (self.dir / "foreground.out").read_text()

    def state(self) -> dict | None:
        try:
            doc = json.loads((self.data_dir / "bscluster.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.seen_pids.update(e["pid"] for e in doc["nodes"].values() if e.get("pid"))
        self.seen_pids.add(doc["supervisor"]["pid"])
        return doc

    def remember(self) -> None:
        self.state()

    def node(self, name: str) -> dict:
        return (self.state() or {"nodes": {}})["nodes"].get(name) or {}

    def wait_state(self, name: str, state: str, timeout: float = DEADLINE) -> dict:
        return poll(lambda: self.node(name).get("state") == state and self.node(name),
                    timeout, f"{name} to be {state}")

    def cleanup(self) -> None:
        self.remember()
        if self.foreground is not None and self.foreground.poll() is None:
            self.foreground.send_signal(signal.SIGTERM)
            try:
                self.foreground.wait(30)
            except subprocess.TimeoutExpired:
                self.foreground.kill()
                self.foreground.wait()
        if self.data_dir.exists():
            self.run("down")
        for pid in self.seen_pids:  # safety net: nothing survives a test
            if pid != os.getpid() and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.foreground is not None:
            self.out.close()


def port_free(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        return True
