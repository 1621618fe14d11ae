"""Start a proxied cluster for tests: N pristine bsnodes and `bscluster proxy` in front.

The nodes bind port 0 and report their ports; the config file written for the
proxy names each node's port in a [nodes.nodeI] table.  The proxy also binds
port 0 and reports "listening on HOST:PORT" on stderr, so nothing probes a
server before the test's own client connects (transcripts compare
total-connections).  ``ProxiedCluster.stop`` stops every process it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from differential.pristine import start_pristine_bsnode
from servers import START_DEADLINE, Server, _drain

_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def write_config(path: Path, ports: list[int], extra: str = "") -> Path:
    lines = ["[cluster]", f"nodes = {len(ports)}", "binlog = false", extra, ""]
    for i, port in enumerate(ports, 1):
        lines += [f"[nodes.node{i}]", f"port = {port}", ""]
    path.write_text("\n".join(lines))
    return path


def start_proxy(config: Path, *flags: str) -> Server:
    argv = [sys.executable, "-m", "bscluster", "proxy", "-l", "127.0.0.1:0",
            "-c", str(config), *flags]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_ENV)
    lines: deque = deque(maxlen=200)
    found = threading.Event()
    holder: list = []
    threading.Thread(target=_drain, args=(proc.stderr, lines, found, holder),
                     daemon=True).start()
    deadline = time.monotonic() + START_DEADLINE
    while not found.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise RuntimeError("proxy did not start: " + " | ".join(lines))
    return Server("proxy", proc, holder[0], lines)


class ProxiedCluster:
    """``nodes`` (Servers, node1 first) behind ``proxy`` (a Server)."""

    def __init__(self, tmp: Path, count: int = 3, *node_flags: str, extra: str = "") -> None:
        self.nodes: list[Server] = []
        self.proxy: Server | None = None
        try:
            with ThreadPoolExecutor(count) as pool:  # at once: each start waits on imports
                futures = [pool.submit(start_pristine_bsnode, *node_flags)
                           for _ in range(count)]
            for future in futures:
                if future.exception() is None:
                    self.nodes.append(future.result())
            for future in futures:
                future.result()  # raise the first failure (started ones are stopped)
            if "-z" in node_flags:  # the proxy reads the job size limit from the config
                extra += f"\nmax_job_size = {node_flags[node_flags.index('-z') + 1]}"
            self.config = write_config(tmp / "proxy.toml", [n.port for n in self.nodes], extra)
            self.proxy = start_proxy(self.config)
        except BaseException:
            self.stop()
            raise
        self.port = self.proxy.port
        self.kind = "proxy"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def restart_proxy(self) -> None:
        self.proxy.kill()
        self.proxy = start_proxy(self.config)
        self.port = self.proxy.port

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for node in self.nodes:
            node.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
