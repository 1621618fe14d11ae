"""Start and stop real servers for tests and benchmarks: bsnode and /usr/bin/beanstalkd.

tests/ (through tests/servers.py) and bench/ both use this module, so
neither imports the other.

Both listen on 127.0.0.1 only.  bsnode binds port 0 and reports the port it
got on stderr ("listening on 127.0.0.1:PORT"); beanstalkd cannot, so it gets
a port picked free just before it starts, retried if another process races
us to it.  Every start waits for readiness with a deadline; ``stop`` kills
and reaps the process, so no test leaves one behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bsnode

BEANSTALKD = "/usr/bin/beanstalkd"
HAVE_BEANSTALKD = os.path.exists(BEANSTALKD)
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_connectable(port: int, deadline: float, proc: subprocess.Popen | None = None) -> None:
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port}") from None
            time.sleep(0.01)


def poll(predicate, timeout: float = START_DEADLINE, what: str = "condition",
         step: float = 0.02):
    """Call ``predicate`` every ``step`` s until it returns something true, and return
    that; TimeoutError naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class Server:
    """A running server process; ``host``/``port`` say where it listens."""

    def __init__(self, kind: str, proc: subprocess.Popen, port: int, lines: deque):
        self.kind = kind
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.lines = lines  # the last lines the server wrote to stderr

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _drain(stream, lines: deque, found: threading.Event, holder: list) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if not found.is_set():
            m = _LISTENING.search(line)
            if m:
                holder.append(int(m.group(2)))
                found.set()
    stream.close()


def bsnode_command() -> list[str]:
    """The installed bsnode, as bscluster runs it (never looked up on PATH)."""
    return bsnode.command_line()


def bscluster_command() -> list[str]:
    """The installed bscluster (this interpreter's, never one found on PATH)."""
    return [sys.executable, "-m", "bscluster"]



def _listening(kind: str, proc: subprocess.Popen) -> Server:
    """``proc`` once it says "listening on HOST:PORT" on stderr (killed if it
    exits or START_DEADLINE passes first)."""
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
            raise RuntimeError(f"{kind} did not start: " + " | ".join(lines))
    return Server(kind, proc, holder[0], lines)

def start_bsnode(*args: str, env: dict | None = None) -> Server:
    """Start bsnode with extra flags; ``-l 127.0.0.1 -p 0`` unless given."""
    argv = list(args)
    if "-l" not in argv:
        argv = ["-l", "127.0.0.1"] + argv
    if "-p" not in argv:
        argv = ["-p", "0"] + argv
    # an explicit environment: spawning from a thread with env=None can fail
    # with EFAULT while another thread changes os.environ
    proc = subprocess.Popen(
        bsnode_command() + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(os.environ) if env is None else env,
    )
    return _listening("bsnode", proc)


def start_beanstalkd(*args: str) -> Server:
    """Start the reference server on a free loopback port."""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [BEANSTALKD, "-l", "127.0.0.1", "-p", str(port), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        lines: deque = deque(maxlen=200)
        threading.Thread(
            target=_drain, args=(proc.stderr, lines, threading.Event(), []), daemon=True
        ).start()
        try:
            wait_connectable(port, time.monotonic() + START_DEADLINE, proc)
            return Server("beanstalkd", proc, port, lines)
        except RuntimeError:
            proc.wait()
            continue  # port taken by a racer: try another
    raise RuntimeError("beanstalkd did not start: " + " | ".join(lines))


def start(kind: str, *args: str) -> Server:
    return start_beanstalkd(*args) if kind == "beanstalkd" else start_bsnode(*args)


# --- a cluster behind `bscluster proxy` (tests/*/test_proxy_*.py, bench/bench_proxy.py) ---
# Spawns get a copy of the environment taken once, at import, on the main thread:
# pytest's main thread changes os.environ (PYTEST_CURRENT_TEST) while worker threads
# spawn, and a concurrent putenv made execve fail with EFAULT.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def write_config(path: Path, ports: list[int], extra: str = "") -> Path:
    lines = ["[cluster]", f"nodes = {len(ports)}", "binlog = false", extra, ""]
    for i, port in enumerate(ports, 1):
        lines += [f"[nodes.node{i}]", f"port = {port}", ""]
    path.write_text("\n".join(lines))
    return path


def start_proxy(config: Path, *flags: str, python_args: tuple = ("-m", "bscluster")) -> Server:
    """`bscluster proxy` on a free port (``python_args``: how Python starts bscluster)."""
    argv = [sys.executable, *python_args, "proxy", "-l", "127.0.0.1:0",
            "-c", str(config), *flags]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_ENV)
    return _listening("proxy", proc)


class ProxiedCluster:
    """``nodes`` (Servers, node1 first) behind ``proxy`` (a Server)."""

    def __init__(self, tmp: Path, count: int = 3, *node_flags: str, extra: str = "") -> None:
        self.nodes: list[Server] = []
        self.proxy: Server | None = None
        try:
            with ThreadPoolExecutor(count) as pool:  # at once: each start waits on imports
                futures = [pool.submit(start_bsnode, *node_flags, env=_ENV)
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
