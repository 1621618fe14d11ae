"""The CLI's side of a running cluster: start it detached, change it, stop it.

How this works
--------------
The supervisor is told things only through its data dir and signals (see
``runtime.py``): ``wanted.json`` + SIGHUP adds nodes, a file in
``requests/`` + SIGHUP restarts one, SIGTERM stops everything.  What it
did is read back from ``bscluster.json``, polled with a deadline.  A
supervisor that died (kill -9) leaves its nodes running; ``down`` then
stops them itself, and the next ``up`` adopts them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bsclient.address import parse_listen
from bscluster.config import ClusterConfig
from bscluster.probe import connectable
from bscluster.report import counted
from bscluster.runtime import (
    Paths,
    ask_to_stop,
    make_private_dir,
    open_private,
    pid_alive,
    read_json,
    stop_pids,
    supervisor_alive,
    wait_gone,
    write_json,
)
from bscluster.states import SETTLED, START_TIMEOUT, STOP_TIMEOUT, State

SETTLE_TIMEOUT = START_TIMEOUT + 15.0
PROXY_TIMEOUT = 15.0  # seconds `up -d` waits for its proxy to listen, once the nodes run
POLL = 0.05
# what `up` says when every node is FATAL, under the nodes' reasons
NONE_RUNNING_HINT = "no node is running: fix what each line above names, then run `bscluster up` again"


class ClusterError(Exception):
    """Something the user can act on; the message says what."""


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data dir owner-only, or say plainly why it cannot be used."""
    try:
        make_private_dir(data_dir)
    except FileExistsError:
        raise ClusterError(f"data dir {data_dir} exists and is not a directory; "
                           f"set data_dir (or --data-dir) to a directory") from None
    except PermissionError:
        raise ClusterError(f"cannot create data dir {data_dir}: permission denied; "
                           f"choose a data_dir you can write (--data-dir)") from None
    except OSError as e:
        raise ClusterError(f"cannot use data dir {data_dir}: {e.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ClusterError(f"data dir {data_dir} is not writable by this user; fix its "
                           f"permissions or choose another (--data-dir)")


def running_state(paths: Paths) -> dict | None:
    """The live supervisor's state, or None when no supervisor runs."""
    if not supervisor_alive(paths):
        return None
    deadline = time.monotonic() + 5.0
    while True:  # a supervisor that just started may not have written it yet
        state = read_json(paths.state)
        if state is not None or time.monotonic() > deadline:
            return state
        time.sleep(POLL)


def running_config(paths: Paths) -> ClusterConfig | None:
    doc = read_json(paths.wanted)
    return ClusterConfig.from_dict(doc) if doc else None


def supervisor_pid(state: dict) -> int:
    return int(state["supervisor"]["pid"])


# --- starting ------------------------------------------------------------------
def start_detached(config: ClusterConfig) -> int:
    """Start ``bscluster supervise`` in a session of its own; returns its pid."""
    paths = Paths(config.data_dir)
    write_json(paths.wanted, config.to_dict())
    log = open_private(paths.log)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bscluster", "supervise", "--data-dir", str(config.data_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=config.data_dir, start_new_session=True,
        )
    finally:
        os.close(log)
    proc.returncode = 0  # not ours to wait for: it outlives this command
    return proc.pid


def log_size(paths: Paths) -> int:
    """Where the supervisor log ends now: a new run's lines start there."""
    try:
        return paths.log.stat().st_size
    except OSError:
        return 0


def wait_settled(paths: Paths, sup_pid: int | None, names: list[str] | None = None,
                 timeout: float = SETTLE_TIMEOUT, since: int = 0,
                 on_poll: Callable[[dict], None] | None = None) -> dict:
    """Poll until every node (or ``names``) is RUNNING or FATAL; errors quote the
    supervisor log from offset ``since`` (this run) on.  ``on_poll`` sees each
    state read meanwhile (to show a replay's progress).

    A new supervisor (``names`` None) none of whose nodes could start gives up
    and exits (supervisor.py), so seeing them all FATAL or seeing it gone is one
    outcome, answered one way: its exit is awaited, then ClusterError."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_json(paths.state)
        if state and on_poll is not None:
            on_poll(state)
        if state and (sup_pid is None or state["supervisor"]["pid"] == sup_pid):
            nodes = state["nodes"]
            want = names if names is not None else list(nodes)
            if all(n in nodes and nodes[n]["state"] in SETTLED for n in want):
                if names is not None or sup_pid is None or any(
                        e["state"] == State.RUNNING.value for e in nodes.values()):
                    return state
                if not wait_gone({sup_pid: None}, STOP_TIMEOUT + 5):
                    return state  # (it stayed up after all: its FATAL nodes are the answer)
        if sup_pid is not None and not pid_alive(sup_pid):
            raise ClusterError("the supervisor exited before the cluster was up"
                               + log_tail(paths, since=since))
        if time.monotonic() > deadline:
            raise ClusterError(f"the cluster did not come up within {timeout:g}s"
                               + log_tail(paths, since=since))
        time.sleep(POLL)


def wait_proxy(paths: Paths, listen: str, timeout: float = PROXY_TIMEOUT,
               since: int = 0, replacing: int | None = None) -> None:
    """Poll until the proxy of `up --proxy` accepts connections (a new one, if it
    ``replacing`` the proxy with that pid); ClusterError with the log's last lines if
    it does not within ``timeout``."""
    host, port = parse_listen(listen)
    deadline = time.monotonic() + timeout
    while not (connectable(host, port) and
               (replacing is None or proxy_pid(read_json(paths.state)).keys() - {replacing})):
        if time.monotonic() > deadline:
            raise ClusterError(f"the proxy does not accept connections on {listen} after "
                               f"{timeout:g}s" + log_tail(paths, since=since))
        time.sleep(POLL)


def wait_proxy_gone(paths: Paths, timeout: float = STOP_TIMEOUT + 5) -> None:
    """Poll until the supervisor runs no proxy (it was turned off); ClusterError if it
    still does after ``timeout``."""
    deadline = time.monotonic() + timeout
    while proxy_pid(read_json(paths.state)):
        if time.monotonic() > deadline:
            raise ClusterError(f"the proxy still runs after {timeout:g}s" + log_tail(paths))
        time.sleep(POLL)


def log_tail(paths: Paths, lines: int = 8, since: int = 0) -> str:
    """Why it failed, from the supervisor's log after offset ``since``: each
    node's FATAL reason if there are any, else the last lines."""
    try:
        with open(paths.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    fatal: dict[str, str] = {}
    for line in text:
        _, bar, message = line.partition(" | ")
        name, sep, reason = message.partition(" FATAL: ")
        if bar and sep:
            fatal[name] = reason
    if fatal:
        return "; the nodes could not start:\n" + "\n".join(
            f"  {name}: {reason}" for name, reason in fatal.items()) + \
            f"\n{NONE_RUNNING_HINT} (log: {paths.log})"
    text = text[-lines:]
    return f"; last lines of {paths.log}:\n  " + "\n  ".join(text) if text else ""


# --- changing ------------------------------------------------------------------
def grow(paths: Paths, state: dict, config: ClusterConfig) -> list[str]:
    """Hand the running supervisor a larger configuration; returns the new names."""
    added = [n.name for n in config.nodes if n.name not in state["nodes"]]
    write_json(paths.wanted, config.to_dict())
    os.kill(supervisor_pid(state), signal.SIGHUP)
    return added


def send_request(paths: Paths, state: dict, op: str, name: str = "") -> str:
    """Put a request in the supervisor's mailbox and wake it; returns the request's id."""
    make_private_dir(paths.requests)
    ask = f"{time.time_ns()}-{os.getpid()}"
    write_json(paths.requests / f"{ask}.json", {"op": op, "node": name, "id": ask})
    os.kill(supervisor_pid(state), signal.SIGHUP)
    return ask


def request_restart(paths: Paths, state: dict, name: str, timeout: float) -> dict:
    """Restart one node and wait until it runs again; returns its new entry."""
    old = state["nodes"][name]
    asked = time.time()
    send_request(paths, state, "restart", name)
    deadline = time.monotonic() + timeout
    while True:
        doc = read_json(paths.state)
        entry = (doc or {}).get("nodes", {}).get(name)
        if entry and entry["state"] == State.RUNNING.value and entry["pid"] != old["pid"]:
            return entry
        if entry and entry["state"] == State.FATAL.value and entry["since"] > asked:
            raise ClusterError(f"{name} did not come back: {entry['reason']}")
        if not supervisor_alive(paths):
            raise ClusterError("the supervisor exited during the restart" + log_tail(paths))
        if time.monotonic() > deadline:
            raise ClusterError(f"{name} was not running again within {timeout:g}s"
                               + log_tail(paths))
        time.sleep(POLL)


# --- stopping ------------------------------------------------------------------
def node_pids(state: dict | None) -> dict[int, int | None]:
    """{pid: start time} of the nodes the supervisor ran."""
    return {e["pid"]: e.get("pid_start") for e in (state or {}).get("nodes", {}).values()
            if e.get("pid")}


def proxy_pid(state: dict | None) -> dict[int, int | None]:
    """{pid: start time} of the proxy it ran (``up --proxy``), if one."""
    entry = (state or {}).get("proxy") or {}
    return {entry["pid"]: entry.get("pid_start")} if entry.get("pid") else {}


def down(paths: Paths) -> str:
    """Stop the supervisor and every node; returns what was done."""
    alive_supervisor = supervisor_alive(paths)
    state = running_state(paths) if alive_supervisor else read_json(paths.state)
    if alive_supervisor and state is None:
        raise ClusterError(f"a supervisor holds {paths.lock} but has written no state yet; "
                           f"try again in a moment")
    pids = node_pids(state)
    proxy = proxy_pid(state)
    everything = {**pids, **proxy}
    if alive_supervisor and state:
        sup = supervisor_pid(state)
        ask_to_stop(lambda sig: os.kill(sup, sig))  # (a hung supervisor wakes to stop too)
        sup_start = state["supervisor"].get("pid_start")
        if not (_wait_unlocked(paths, STOP_TIMEOUT + 10.0)
                and wait_gone({sup: sup_start}, STOP_TIMEOUT)):
            raise ClusterError(f"the supervisor (pid {sup}) did not stop; "
                               f"kill it with: kill -9 {sup}")
        leftover = {p: t for p, t in everything.items() if pid_alive(p, t)}
        stop_pids(leftover, STOP_TIMEOUT)  # only if it failed to: it should have
        wait_gone(everything, STOP_TIMEOUT)
        return (f"stopped {counted(len(pids), 'node')}"
                + (", the proxy" if proxy else "") + f" and the supervisor (pid {sup})")
    alive = {p: t for p, t in everything.items() if pid_alive(p, t)}
    if alive:  # the supervisor died (kill -9) and left them running
        stop_pids(alive, STOP_TIMEOUT)
        for path in (paths.state, paths.wanted):
            path.unlink(missing_ok=True)
        nodes = [str(p) for p in alive if p in pids]
        said = [f"{len(nodes)} leftover node process(es): {', '.join(nodes)}"] if nodes else []
        said += [f"the proxy (pid {p})" for p in alive if p in proxy]
        return f"the supervisor was not running; stopped {' and '.join(said)}"
    for path in (paths.state, paths.wanted):
        path.unlink(missing_ok=True)
    return f"no cluster is running in {paths.data_dir}"


def _wait_unlocked(paths: Paths, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while supervisor_alive(paths):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True
