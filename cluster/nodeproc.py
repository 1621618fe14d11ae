"""One supervised node: its process, its state and its output.

How this works
--------------
A ``NodeProc`` is the supervisor's record of one node.  It starts the node
command in a session of its own (so a Ctrl-C at the terminal reaches only
the supervisor, which then stops the nodes in order), with its output either
on a pipe that the supervisor reads and prefixes with the node's name
(foreground) or appended to ``nodeI.log`` (detached, so a node outlives a
supervisor that is killed and can be adopted by the next one).  It keeps
the last lines the node wrote, which become the reason shown when the node
cannot start.  It never waits for or reaps anything itself: the
supervisor's loop does that for every node at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from bsclient.tls import NODE_CERT_FLAG
from bscluster.config import NodeSpec
from bscluster.runtime import (
    ask_to_stop,
    open_private,
    pid_alive,
    process_args,
    process_start_time,
)
from bscluster.states import HAS_PROCESS, MAX_CRASH_LIMIT, Event, State, next_state
from bsnode.logstamp import log_stamp

START_MARK = "--- bscluster: starting"  # the line written to a node's log at each start
LINE_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[0-9:.+-]+ ")  # a log line's time: not in reasons
TAIL_LINES = 20
REASON_LINES = 3
_READ = 65536
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGCONT, signal.SIGKILL)  # to the node's process group


class NodeProc:
    def __init__(self, spec: NodeSpec, command: tuple[str, ...], log_path: Path | None):
        self.spec = spec
        self.command = command
        self.log_path = log_path  # None: output goes to a pipe we read
        self.state = State.STOPPED
        self.since = time.time()
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.popen: subprocess.Popen | None = None
        self.adopted = False
        self.started: float | None = None  # wall clock of the last spawn
        self.failed_starts = 0
        # (monotonic time, how it exited) of recent crashes (exits while RUNNING)
        self.crashes: deque[tuple[float, str]] = deque(maxlen=MAX_CRASH_LIMIT)
        self.crash_count = 0  # crashes since the supervisor took the node on
        self.restarts = 0
        self.reason: str | None = None
        self.wake_at: float | None = None  # monotonic: backoff end / deadline
        self.restart_requested = False
        # how its last stop ended if not cleanly (killed at the stop timeout, an error
        # status); None: it exited 0 or on SIGTERM, or has not been stopped
        self.last_stop: str | None = None
        self.fd: int | None = None
        self._buf = b""
        self._log_offset = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    @property
    def name(self) -> str:
        return self.spec.name

    def fire(self, event: Event) -> State:
        """Move by ``TRANSITIONS`` and apply what entering the new state resets."""
        # ``since`` moves on every event, so a watcher can tell "FATAL again"
        # from "still FATAL"
        self.state, self.since = next_state(self.state, event), time.time()
        ON_ENTRY.get(self.state, _nothing)(self)
        return self.state

    # --- processes -------------------------------------------------------------
    def spawn(self, env: dict[str, str]) -> None:
        """Start the node; raises OSError if the command cannot be run."""
        argv = self.spec.argv(self.command)
        self.tail.clear()
        if self.log_path is None:
            out: int = subprocess.PIPE
        else:
            out = open_private(self.log_path)
            self._log_offset = os.lseek(out, 0, os.SEEK_END)
            os.write(out, f"{log_stamp()} {START_MARK} {self.name}: {' '.join(argv)}\n".encode())
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                os.close(out)
        self.pid = self.popen.pid
        self.pid_start = process_start_time(self.pid)
        self.adopted = False
        self.started = time.time()
        if self.popen.stdout is not None:
            self.fd = self.popen.stdout.fileno()
            os.set_blocking(self.fd, False)

    def adopt(self, pid: int, pid_start: int | None, started: float | None) -> None:
        """Take over a node an earlier supervisor started and left running."""
        self.pid, self.pid_start, self.adopted = pid, pid_start, True
        self.started = started
        self.fire(Event.ADOPT)

    def send(self, sig: int) -> None:
        """Signal the node.  SIGTERM, SIGCONT and SIGKILL go to its whole process group (it was
        started in a session of its own): a ``node_command`` wrapper that does not
        ``exec`` stops with the server it runs (supervisord's stopasgroup).  Drain
        (SIGUSR1) and reload (SIGHUP) go to the process itself, which must be the
        server: a wrapper has to ``exec`` it (docs/CLUSTER.md)."""
        if self.pid and pid_alive(self.pid, self.pid_start):
            try:
                if sig in GROUP_SIGNALS and os.getpgid(self.pid) == self.pid:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def serves_tls(self) -> bool:
        """Runs with bsnode's TLS flags (read from /proc: an adopted node's too).  Only
        such a node may be sent SIGHUP: without TLS bsnode keeps SIGHUP's default
        action, which ends it."""
        args = process_args(self.pid) if self.pid else None
        return args is not None and NODE_CERT_FLAG in args

    def stop(self, deadline: float) -> None:
        """Ask the node to exit (SIGTERM, SIGCONT: a hung one too); the loop escalates
        after ``deadline``."""
        if self.state in HAS_PROCESS:
            ask_to_stop(self.send)
            self.wake_at = deadline
        self.fire(Event.STOP)

    def exited(self, returncode: int | None) -> list[str]:
        """The process is gone (reaped by the loop, or found dead if adopted);
        returns the last lines it wrote that were not read yet."""
        lines: list[str] = []
        if self.popen is not None:
            self.popen.returncode = returncode  # reaped by us, not by Popen
            if self.popen.stdout is not None:
                lines = self.read_output()
                self.popen.stdout.close()
        self.popen, self.fd, self.pid, self.pid_start = None, None, None, None
        return lines

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, self.pid_start)

    # --- output ----------------------------------------------------------------
    def read_output(self) -> list[str]:
        """Whole lines the node wrote since the last call (pipe mode)."""
        if self.fd is None:
            return []
        chunks = []
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:  # EOF: the node closed its output; stop watching it
                if self._buf:
                    chunks.append(b"\n")
                self.fd = None
                break
            chunks.append(data)
        text = self._buf + b"".join(chunks)
        *lines, self._buf = text.split(b"\n")
        out = [ln.decode(errors="replace").rstrip("\r") for ln in lines]
        self.tail.extend(out)
        return out

    def last_words(self) -> str:
        """The last lines the node wrote in this run, for error messages."""
        if self.log_path is not None:
            self._tail_log()
        lines = [LINE_STAMP.sub("", ln) for ln in self.tail if ln.strip()]
        return " / ".join(lines[-REASON_LINES:])

    def _tail_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return
        self.tail.clear()
        self.tail.extend(ln for ln in text.splitlines() if START_MARK not in ln)

    # --- reporting -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "state": self.state.value, "since": self.since, "pid": self.pid,
            "pid_start": self.pid_start, "adopted": self.adopted, "started": self.started,
            "host": self.spec.host, "port": self.spec.port, "restarts": self.restarts,
            "crashes": self.crash_count, "metrics": self.spec.metrics_url,
            "reason": self.reason, "last_stop": self.last_stop,
            "data_dir": str(self.spec.data_dir),
            "binlog": self.spec.binlog,
            "log": str(self.log_path) if self.log_path else None,
        }


# --- what entering a state resets (the one place; the supervisor never does it by hand)
def _nothing(node: NodeProc) -> None:
    pass


def _enter_starting(node: NodeProc) -> None:
    node.reason = None  # a fresh attempt; the supervisor sets its start deadline


def _enter_running(node: NodeProc) -> None:
    node.failed_starts = 0
    node.wake_at = None
    node.reason = None
    node.restart_requested = False


def _enter_stopping(node: NodeProc) -> None:
    node.last_stop = None  # this stop's ending is told when it exits


def _enter_settled_down(node: NodeProc) -> None:
    node.wake_at = None  # nothing is due for a node that stays down (STOPPED, FATAL)


ON_ENTRY = {
    State.STARTING: _enter_starting,
    State.RUNNING: _enter_running,
    State.STOPPING: _enter_stopping,
    State.STOPPED: _enter_settled_down,
    State.FATAL: _enter_settled_down,
}
