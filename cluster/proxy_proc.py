"""The proxy as a child of the supervisor (`bscluster up --proxy ADDR`).

How this works
--------------
The supervisor owns one ``ProxyProc`` when the config sets ``proxy``.  It is
started as ``[sys.executable, "-m", "bscluster", "proxy", ...]`` (this
installation's bscluster, never one found on PATH), reading the exact
configuration the supervisor runs (its wanted.json).  The supervisor's loop
reaps every child with ``waitpid(-1, WNOHANG)``; it hands the proxy's exit
to ``exited`` and calls ``tick`` each round, which restarts a dead proxy after
a back-off that doubles from ``RESTART_FIRST`` to ``RESTART_MAX`` seconds
(and resets once a proxy has stayed up ``RESTART_RESET`` seconds).  When the
supervisor takes a changed wanted.json, ``reload`` sends the proxy SIGHUP, and
it applies the new node set without a restart (a proxy still starting applies it
once it can: it is started with SIGHUP blocked).  Its stderr goes to the
supervisor's output (or log) as is.

The proxy outlives a supervisor killed with SIGKILL, as the nodes do, and
keeps serving; the next supervisor adopts it (``adopt``: its pid and start
time are in the state file, ``to_dict``), watches it by pid, signals it and
stops it at `down`, instead of starting a second one that could not bind.
Before anything starts, ``check_address`` says at once when the address is
taken by another program, as the dashboard's bind does.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bsclient.address import parse_listen
from bscluster.runtime import ask_to_stop, pid_alive, process_start_time, signal_pid
from bscluster.states import STOP_TIMEOUT

RESTART_FIRST = 0.5
RESTART_MAX = 30.0
RESTART_RESET = 10.0  # a proxy that ran this long restarts after RESTART_FIRST again


class ProxyError(RuntimeError):
    """The proxy cannot be served; the message says what to change."""


def check_address(listen: str) -> None:
    """Raise ProxyError if another program listens on ``listen`` now."""
    host, port = parse_listen(listen)
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ProxyError(
                f"cannot serve the proxy on {listen}: {e.strerror or e}; choose "
                f"another address with --proxy ADDR:PORT (or proxy in the config file), "
                f"or leave it off") from None


class ProxyProc:
    def __init__(self, listen: str, wanted: Path, say: Callable[[str], None],
                 clock: Callable[[], float]) -> None:
        self.listen = listen
        self.wanted = wanted
        self.say = say
        self.clock = clock
        self.popen: subprocess.Popen | None = None
        self.adopted: tuple[int, int | None] | None = None  # (pid, start time) not our child
        self.pid_start: int | None = None
        self.stopping = False
        self.backoff = RESTART_FIRST
        self.started_at = 0.0
        self.restart_at: float | None = 0.0  # start at the first tick
        self.exits = 0  # times it exited (or died) other than when told to stop
        self.last_exit: str | None = None
        self.moving = False  # stopped to start again with new settings (``restart_with``)
        self.kill_at: float | None = None  # then SIGKILL if it still runs

    def adopt(self, entry: dict) -> bool:
        """Take over the proxy an earlier supervisor left (its ``to_dict``), if it is
        alive and serves this address; True if adopted."""
        pid, start = entry.get("pid"), entry.get("pid_start")
        if not pid or not pid_alive(pid, start):
            return False
        if entry.get("listen") != self.listen:
            self.say(f"proxy (pid {pid}) from an earlier run still serves "
                     f"{entry.get('listen')}, not {self.listen}; stop it with: kill {pid}")
            return False
        self.adopted, self.restart_at = (pid, start), None
        self.say(f"proxy adopted: already serving {self.listen} (pid {pid})")
        return True

    def to_dict(self) -> dict:
        return {"listen": self.listen, "pid": self.pid if self.alive() else None,
                "pid_start": self.adopted[1] if self.adopted else self.pid_start,
                "exits": self.exits, "last_exit": self.last_exit}

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bscluster", "proxy", "--listen", self.listen,
                "--wanted", str(self.wanted)]

    @property
    def pid(self) -> int | None:
        if self.adopted is not None:
            return self.adopted[0]
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        if self.adopted is not None:
            return pid_alive(*self.adopted)
        return self.popen is not None and self.popen.returncode is None

    def check_adopted(self) -> None:
        """An adopted proxy is not our child: only a pid known dead has exited."""
        if self.adopted is not None and not pid_alive(*self.adopted):
            pid, self.adopted = self.adopted[0], None
            self._exited(pid, None)

    def restart_with(self, listen: str, now: float) -> None:
        """The proxy settings changed (`up` on a running cluster): serve ``listen`` from
        now on.  A running proxy is stopped (SIGKILL if it still runs after
        STOP_TIMEOUT) and started again at once; one that is not runs at the next tick."""
        self.listen, self.stopping = listen, False  # (a stop under way: it starts again)
        self.exits, self.last_exit, self.backoff = 0, None, RESTART_FIRST
        if self.alive():
            self.moving, self.kill_at = True, now + STOP_TIMEOUT
            ask_to_stop(self._send)
        else:
            self.restart_at = now

    def tick(self, now: float, env: dict) -> None:
        if self.kill_at is not None and now >= self.kill_at and self.alive():
            self.say(f"proxy did not stop within {STOP_TIMEOUT:g}s; killing it")
            self._send(signal.SIGKILL)
            self.kill_at = None  # (a restart's new proxy starts when it is gone)
        if self.stopping or self.alive() or self.restart_at is None or now < self.restart_at:
            return
        # the child starts with SIGHUP blocked and unblocks it once its handler is in
        # place (proxy.serve): a reload sent while it starts waits for it, not kills it
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            self.say(f"proxy: cannot start {self.argv[0]}: {e.strerror or e}")
            self.restart_at = now + RESTART_MAX
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pid_start = process_start_time(self.popen.pid)
        self.started_at = now
        self.restart_at = None
        self.say(f"proxy starting on {self.listen} (pid {self.popen.pid})")

    def exited(self, pid: int, code: int) -> bool:
        """The supervisor reaped ``pid``; True if it was the proxy."""
        if self.popen is None or pid != self.popen.pid:
            return False
        self.popen.returncode = code
        self._exited(pid, code)
        return True

    def _exited(self, pid: int, code: int | None) -> None:
        how = f"exit {code}" if code is not None else f"pid {pid} gone"
        if self.stopping:
            self.say(f"proxy stopped ({how})")
            return
        if self.moving:
            self.moving, self.kill_at, self.restart_at = False, None, self.clock()
            self.say(f"proxy stopped ({how}); starting it on {self.listen}")
            return
        now = self.clock()
        if now - self.started_at >= RESTART_RESET:
            self.backoff = RESTART_FIRST
        self.restart_at = now + self.backoff
        self.exits += 1
        self.last_exit = how
        self.say(f"proxy exited ({how}); restarting in {self.backoff:g}s")
        self.backoff = min(self.backoff * 2, RESTART_MAX)

    def reload(self) -> None:
        """wanted.json changed: SIGHUP makes a running proxy apply it (proxy_reload).
        A proxy not running reads it when it starts; one still starting gets the
        signal once its handler is in place (see ``tick``)."""
        if not self.stopping:
            self._send(signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it for good (SIGTERM: then SIGKILL if it still runs after STOP_TIMEOUT)."""
        self.stopping, self.moving = True, False
        if sig == signal.SIGTERM:
            ask_to_stop(self._send)  # (SIGCONT too: a hung proxy stops at once)
            self.kill_at = self.clock() + STOP_TIMEOUT
        else:
            self._send(sig)

    def _send(self, sig: int) -> None:
        if self.adopted is not None:
            pid, start = self.adopted
            signal_pid(pid, sig, start)
        elif self.alive():
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
