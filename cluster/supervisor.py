"""The supervisor: keeps every node of the configuration running.

How this works
--------------
One process, one loop, in the style of gunicorn's arbiter.  Signal handlers
do nothing but append the signal to a queue (and Python's wakeup fd makes
the sleeping ``select`` return); all the work happens in the loop, which
each turn:

1. handles queued signals: TERM/INT/QUIT stop everything (a second one
   kills), HUP re-reads ``wanted.json`` and the request mailbox (that is how
   `bscluster up` adds nodes, `bscluster remove` takes one away, and
   `restart`, `drain` and `undrain` reach one, and `reload` every node
   serving TLS, the proxy and the dashboard; a changed ``wanted.json`` is
   passed on to the proxy, if one runs, with a SIGHUP), CHLD only wakes us;
2. reaps every exited child with ``waitpid(-1, WNOHANG)`` and checks adopted
   nodes (not our children) by pid and start time;
3. moves timers: a STARTING node that accepts connections is RUNNING, one
   that is too slow is killed; a BACKOFF delay that ran out spawns again; a
   STOPPING node past its deadline gets SIGKILL;
4. reconciles wanted against running: every wanted node that is STOPPED is
   spawned (FATAL ones are not); a node no longer wanted is stopped, then
   forgotten;
5. publishes ``bscluster.json`` if anything changed, then sleeps in
   ``select`` on the wakeup fd and the nodes' output pipes.

With ``web`` set (`up --web`), the dashboard and the cluster /metrics run on
threads of this process (webhost.py); they only read what the loop
publishes, so the loop stays the one place that changes anything.

A drained node (`bscluster drain`) is sent SIGUSR1 each time it becomes
RUNNING, so it stays drained across restarts; the set of drained nodes is
part of the published state, and an adopting supervisor takes it over.

Node states and the retry policy are in ``states.py``.  The supervisor
never blocks on one node, so a slow or dead node never holds up the others.

Nothing that goes wrong in a turn ends the loop: the error is logged (each
kind at most once a minute, with a count) and the turn is tried again, so a
supervisor short of descriptors keeps its nodes supervised and its state
file in place instead of dying and orphaning them.  At start it lifts its
own soft descriptor limit to the hard one (``runtime.raise_fd_limit``); a
node that cannot be launched for want of descriptors waits in BACKOFF, and
a STARTING one is not killed as too slow while the supervisor cannot open a
socket to try it.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import ssl
import sys
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from bscluster.config import ClusterConfig, ConfigError, NodeSpec
from bscluster.nodeproc import NodeProc
from bscluster.probe import connectable
from bscluster.proxy_proc import ProxyProc, check_address
from bscluster.report import counted
from bscluster.runtime import (
    STATE_VERSION,
    Liveness,
    Lock,
    Paths,
    RateLimitedLog,
    ask_to_stop,
    make_private_dir,
    pid_alive,
    pid_state,
    process_start_time,
    raise_fd_limit,
    read_json,
    write_json,
)
from bscluster.states import (
    SETTLED,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TRANSIENT_LAUNCH_ERRNOS,
    Event,
    State,
    launch_retry_delay,
    start_retry_delay,
)
from bsnode.logstamp import log_stamp

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# a stopped node's exit codes that are no news: 0, SIGTERM's default action (beanstalkd's
# way to stop), or unknown (an adopted node, not our child)
CLEAN_STOPS = (0, -signal.SIGTERM, None)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
PROBE_INTERVAL = 0.05  # how often a STARTING node is tried
IDLE_INTERVAL = 1.0
ADOPTED_POLL = 0.2  # how often an adopted node's (or proxy's) pid is looked at
# what bsnode writes while it replays a large binlog (node/binlog/replay.py's
# progress lines): "binlog: replayed 40% (123 records, 1.0 s)"
REPLAY_PROGRESS = re.compile(r"binlog: (replay(?:ing|ed) [^(]*?)\s*(\(.*\))?$")
CRASHES_SHOWN = 5  # exits named in a crash-loop FATAL reason
LOOP_ERROR_DELAY = 0.5  # seconds before a turn that failed is tried again


class AlreadyRunning(RuntimeError):
    pass


class Supervisor:
    def __init__(self, config: ClusterConfig, *, detached: bool = False,
                 out: TextIO | None = None,
                 on_settled: Callable[[Supervisor], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.paths = Paths(config.data_dir)
        self.detached = detached
        self.out = out or sys.stdout
        self.on_settled = on_settled
        self.clock = clock  # monotonic; injected so tests can drive the timers
        self.first_settle = True
        self.web = None  # webhost.WebHost when the config asks for the dashboard
        self.web_url: str | None = None
        self.proxy: ProxyProc | None = None  # `bscluster proxy` when the config sets proxy
        self.nodes: dict[str, NodeProc] = {}
        self.drained: set[str] = set()  # nodes that refuse puts (SIGUSR1 on every start)
        self.progress: dict[str, str] = {}  # STARTING node -> "replayed 40%" (its last words)
        self.signals: deque[int] = deque()
        self.stopping = False
        self.awaiting_settle = True
        self.exit_status = 0
        self.started = time.time()
        self._pid_start = process_start_time(os.getpid())
        self.lock = Lock(self.paths.lock)
        self._published: dict | None = None
        self.tls_reload: dict | None = None  # what the last `bscluster reload` did
        self._wake_r = self._wake_w = -1
        self._old_wakeup = -1
        self._old_handlers: dict = {}
        self._width = max(len("bscluster"), *(len(n.name) for n in config.nodes))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.trouble = RateLimitedLog(self.say)  # recurring errors, said once a minute
        self._launch_failures: dict[str, int] = {}  # launches in a row that failed for now

    # --- life ------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until stopped; returns the exit status."""
        make_private_dir(self.config.data_dir)
        fd_limit = raise_fd_limit()
        if not self.lock.acquire():
            raise AlreadyRunning(f"a supervisor is already running for {self.config.data_dir}")
        clean = False
        try:
            self._install_signals()
            make_private_dir(self.paths.requests)
            write_json(self.paths.wanted, self.config.to_dict())
            self._set_nodes(self.config)
            self._start_web()
            old = (read_json(self.paths.state) or {}).get("proxy")
            if self.config.proxy:
                self.proxy = ProxyProc(self.config.proxy, self.paths.wanted, self.say, self.clock)
                if not (old and self.proxy.adopt(old)):
                    check_address(self.config.proxy)  # (ProxyError before anything starts)
            elif old and old.get("pid") and pid_alive(old["pid"], old.get("pid_start")):
                self.say(f"the proxy (pid {old['pid']}) from an earlier run still serves "
                         f"{old.get('listen')} but is not in this configuration; stop it "
                         f"with: kill {old['pid']}")
            self._adopt_leftovers()
            self.say(f"supervising {counted(len(self.nodes), 'node')} (pid {os.getpid()}, "
                     f"data in {self.config.data_dir})")
            if fd_limit[1] > fd_limit[0]:
                self.say(f"raised the descriptor limit from {fd_limit[0]} to {fd_limit[1]}")
            self._loop()
            clean = True
        finally:
            if not clean:
                self._kill_all()
            self._cleanup()
        return self.exit_status

    def _loop(self) -> None:
        while True:
            try:
                if self._turn():
                    return
            except Exception as e:  # noqa: BLE001 - supervising must outlive any error
                self.trouble("loop", f"error in the supervision loop: {type(e).__name__}: "
                                     f"{e}; retrying every {LOOP_ERROR_DELAY:g}s")
                self._rest(LOOP_ERROR_DELAY)

    def _turn(self) -> bool:
        """One pass of the loop; True when everything has stopped."""
        self._handle_signals()
        self._reap()
        self._tick(self.clock())
        if self.proxy is not None:
            self.proxy.tick(self.clock(), self.env)
        if not self.stopping:
            self._reconcile()
        self._publish()
        self._check_settled()
        if self.stopping and not any(n.state in (State.STOPPING,) or n.alive()
                                     for n in self.nodes.values()) \
                and not (self.proxy is not None and self.proxy.alive()):
            self.say("all nodes stopped")
            return True
        self._sleep(self._timeout(self.clock()))
        return False

    def _rest(self, seconds: float) -> None:
        try:
            self._sleep(seconds)
        except Exception:  # noqa: BLE001 - even the sleep failed: sleep without it
            time.sleep(seconds)

    # --- signals: handlers only enqueue ------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        self._old_handlers = {sig: signal.signal(sig, self._enqueue) for sig in HANDLED_SIGNALS}

    def _enqueue(self, signum, frame) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig in STOP_SIGNALS:
                self._stop_all(kill=self.stopping)
            elif sig == signal.SIGHUP and not self.stopping:
                if not self.detached and _terminal_hung_up(self.out):
                    _to_nowhere(self.out)  # (nobody reads it now; writes would fail)
                    self._stop_all(kill=False)
                else:
                    self._reload()

    # --- reaping -----------------------------------------------------------------
    def _reap(self) -> None:
        by_pid = {n.pid: n for n in self.nodes.values() if n.pid and not n.adopted}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            node = by_pid.get(pid)
            if node is not None:
                self._on_exit(node, os.waitstatus_to_exitcode(status))
            elif self.proxy is not None:
                self.proxy.exited(pid, os.waitstatus_to_exitcode(status))
        for node in self.nodes.values():
            # an adopted node is not our child: only a pid known dead has exited
            if node.adopted and node.pid and \
                    pid_state(node.pid, node.pid_start) is Liveness.DEAD:
                self._on_exit(node, None)
        if self.proxy is not None:
            self.proxy.check_adopted()
            if self.proxy.stopping and not self.proxy.alive() and not self.stopping:
                self.proxy = None  # turned off (``_apply_proxy``)

    def _on_exit(self, node: NodeProc, code: int | None) -> None:
        self._echo_output(node, node.exited(code))
        how = _describe_exit(code)
        now = self.clock()
        if node.state is State.STOPPING:
            if code not in CLEAN_STOPS and node.last_stop is None:  # (a kill said so already)
                node.last_stop = how
            node.fire(Event.EXIT)
            if not node.restart_requested:
                self.say(f"{node.name} stopped ({how})")
            return
        if node.state is State.STARTING:
            node.failed_starts += 1
            words = node.last_words()
            node.reason = node.reason or f"{how} while starting" + (f": {words}" if words else "")
            node.fire(Event.EXIT)
            delay = start_retry_delay(node.failed_starts)
            if delay is None:
                node.fire(Event.GIVE_UP)
                self.say(f"{node.name} FATAL: could not start after {node.failed_starts} "
                         f"attempts; last: {node.reason}")
                return
            node.wake_at = now + delay
            self.say(f"{node.name} failed to start ({node.reason}); retry in {delay:.2g}s")
            return
        # it was RUNNING: restart it, at once unless it keeps doing this
        policy = self.config.crash_policy
        delay = policy.after_crash([t for t, _ in node.crashes], now)
        node.crashes.append((now, how))
        node.crash_count += 1
        node.fire(Event.EXIT)
        if delay is None:
            node.reason = self._crash_loop_reason(node, now)
            node.fire(Event.GIVE_UP)
            self.say(f"{node.name} FATAL: {node.reason}; not restarting it again: fix the "
                     f"cause, then `bscluster restart {node.name}`")
            return
        node.reason = f"{how} unexpectedly"
        node.wake_at = now + delay
        self.say(f"{node.name} {node.reason}; restarting" +
                 (f" in {delay:.2g}s (crash loop)" if delay else ""))

    def _crash_loop_reason(self, node: NodeProc, now: float) -> str:
        """One line: how often it crashed, how each of the last ones ended, its last words."""
        window = self.config.crash_window
        recent = [(t, how) for t, how in node.crashes if now - t < window]
        span = now - recent[0][0]
        exits = ", ".join(how for _, how in recent[-CRASHES_SHOWN:])
        words = node.last_words()
        times = "time" if len(recent) == 1 else "times"
        return (f"crashed {len(recent)} {times} in {span:.0f}s (crash_limit {self.config.crash_limit}"
                f" within crash_window {window:g}s); last exits: {exits}"
                + (f"; last output: {words}" if words else ""))

    # --- timers ----------------------------------------------------------------
    def _tick(self, now: float) -> None:
        for node in self.nodes.values():
            self._echo_output(node, node.read_output())
            if node.state is State.STARTING:
                self._note_progress(node)
                if connectable(node.spec.host, node.spec.port) and node.alive():
                    node.fire(Event.READY)  # resets failed starts, timer and reason
                    self.say(f"{node.name} RUNNING on {node.spec.address} (pid {node.pid})")
                    if node.name in self.drained:
                        node.send(signal.SIGUSR1)
                        self.say(f"{node.name} drained again (it refuses new jobs)")
                elif node.wake_at is not None and now >= node.wake_at:
                    if not _can_probe():  # no descriptor to try it with: not its fault
                        node.wake_at = now + LOOP_ERROR_DELAY
                        self.trouble("probe", f"cannot check whether {node.name} accepts "
                                              f"connections: no descriptor left; waiting")
                        continue
                    node.reason = f"did not accept connections within {START_TIMEOUT:g}s"
                    node.send(signal.SIGKILL)
                    node.wake_at = None
            elif node.state is State.BACKOFF and not self.stopping:
                if node.wake_at is None or now >= node.wake_at:
                    self._spawn(node)
            elif node.state is State.STOPPING and node.wake_at is not None \
                    and now >= node.wake_at:
                node.last_stop = f"it did not stop within {STOP_TIMEOUT:g}s of SIGTERM: killed"
                self.say(f"{node.name} did not stop within {STOP_TIMEOUT:g}s; killing it")
                node.send(signal.SIGKILL)
                node.wake_at = None

    def _note_progress(self, node: NodeProc) -> None:
        """Remember how far a starting node's binlog replay got, from its output."""
        node.last_words()  # reads a detached node's log tail into node.tail
        for line in reversed(node.tail):
            m = REPLAY_PROGRESS.search(line)
            if m:
                self.progress[node.name] = m.group(1)
                return

    def _reconcile(self) -> None:
        wanted = {spec.name for spec in self.config.nodes}
        for name, node in list(self.nodes.items()):
            if name not in wanted:
                self._retire(node)
            elif node.state is State.STOPPED:
                self._spawn(node)

    def _retire(self, node: NodeProc) -> None:
        """A node taken out of the configuration: stop it, then forget it."""
        if node.state in (State.STARTING, State.RUNNING):
            self.say(f"{node.name} removed from the cluster; stopping it")
            node.stop(self.clock() + STOP_TIMEOUT)
        elif node.state is State.BACKOFF:
            node.fire(Event.STOP)
        elif node.state in (State.STOPPED, State.FATAL) and not node.alive():
            del self.nodes[node.name]
            self.drained.discard(node.name)
            self.say(f"{node.name} removed")

    def _spawn(self, node: NodeProc) -> None:
        problem = self._cannot_start(node.spec)
        if problem:
            node.reason = problem
            node.fire(Event.GIVE_UP)
            self.say(f"{node.name} FATAL: {problem}")
            return
        previous = node.started
        try:
            node.spawn(self.env)
        except OSError as e:
            if e.errno in TRANSIENT_LAUNCH_ERRNOS:
                self._launch_later(node, e)
                return
            node.reason = (f"cannot run node command {node.command[0]!r}: "
                           f"{e.strerror or e}; install it or set node_command "
                           f"(BSCLUSTER_NODE_COMMAND)")
            node.fire(Event.GIVE_UP)
            self.say(f"{node.name} FATAL: {node.reason}")
            return
        self._launch_failures.pop(node.name, None)
        self.progress.pop(node.name, None)
        if previous is not None:
            node.restarts += 1
        node.fire(Event.SPAWN)
        node.wake_at = self.clock() + START_TIMEOUT

    def _launch_later(self, node: NodeProc, error: OSError) -> None:
        """The launch failed for a reason that passes (no descriptor, process
        slot or memory left in the supervisor): BACKOFF, then try again."""
        failures = self._launch_failures.get(node.name, 0) + 1
        self._launch_failures[node.name] = failures
        delay = launch_retry_delay(failures)
        node.reason = (f"cannot launch it for now: {error.strerror or error}; "
                       f"retrying every {delay:g}s at most")
        node.fire(Event.EXIT)
        node.wake_at = self.clock() + delay
        self.trouble(f"launch {node.name}", f"{node.name} {node.reason}")

    def _cannot_start(self, spec: NodeSpec) -> str | None:
        """Why a node cannot start at all, so it goes FATAL without retrying."""
        if connectable(spec.host, spec.port):
            return (f"{spec.address} is already in use by another program; stop it, or "
                    f"give {spec.name} another port (base_port, or port in "
                    f"[nodes.{spec.name}])")
        if spec.metrics_port is not None and connectable(spec.metrics_host, spec.metrics_port):
            return (f"{spec.metrics_address} (its metrics port) is already in use by another "
                    f"program; stop it, or change metrics_base_port (or metrics_port in "
                    f"[nodes.{spec.name}])")
        if spec.binlog:
            try:
                make_private_dir(spec.data_dir)
            except FileExistsError:
                return f"data dir {spec.data_dir} exists and is not a directory"
            except OSError as e:
                return f"cannot create data dir {spec.data_dir}: {e.strerror}"
            if not os.access(spec.data_dir, os.W_OK | os.X_OK):
                return (f"data dir {spec.data_dir} is not writable by this user; fix its "
                        f"permissions or set data_dir")
        return None

    # --- stopping ------------------------------------------------------------------
    def _stop_all(self, kill: bool) -> None:
        if self.proxy is not None:
            self.proxy.stop(signal.SIGKILL if kill else signal.SIGTERM)
        if kill:
            self.say("stopping now (second signal): killing every node")
            for node in self.nodes.values():
                node.send(signal.SIGKILL)
            return
        self.stopping = True
        self.say("stopping all nodes")
        deadline = self.clock() + STOP_TIMEOUT
        for node in self.nodes.values():
            node.stop(deadline)

    def _kill_all(self) -> None:
        """Last resort when the loop itself failed: leave no node behind."""
        if self.proxy is not None:
            self.proxy.stop(signal.SIGKILL)
        for node in self.nodes.values():
            ask_to_stop(node.send)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(n.alive() for n in self.nodes.values()) and time.monotonic() < deadline:
            self._reap_quietly()
            time.sleep(0.02)
        for node in self.nodes.values():
            node.send(signal.SIGKILL)
        self._reap_quietly()

    def _reap_quietly(self) -> None:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass

    def _cleanup(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None
        for path in self.paths.runtime_files():
            if path != self.paths.lock:
                _unlink(path)
        if self.paths.requests.is_dir():
            for p in self.paths.requests.iterdir():
                _unlink(p)
            self.paths.requests.rmdir()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.lock.release()

    # --- configuration and requests --------------------------------------------------
    def _set_nodes(self, config: ClusterConfig) -> None:
        self.config = config
        for spec in config.nodes:
            node = self.nodes.get(spec.name)
            if node is None:
                log = self.paths.node_log(spec.name) if self.detached else None
                self.nodes[spec.name] = NodeProc(spec, config.node_command, log)
                self.awaiting_settle = True
            elif node.spec != spec or node.command != config.node_command:
                node.spec, node.command = spec, config.node_command
                self.say(f"{spec.name}: new settings apply when it next restarts "
                         f"(bscluster restart {spec.name})")
        self._width = max(self._width, *(len(n) for n in self.nodes))
        if self.web is not None:
            self.web.set_nodes(config.nodes)

    def _start_web(self) -> None:
        """Serve the dashboard and /metrics here (raises webhost.WebError)."""
        if not self.config.web:
            return
        from bscluster.tls_init import dashboard_context
        from bscluster.web import ENV_TOKEN
        from bscluster.webhost import WebHost

        token = os.environ.get(ENV_TOKEN) or None
        self.web = WebHost(self.config.web, self.config.nodes, token, lambda: self._published,
                           log=self.say, max_tubes=self.config.web_max_tubes,
                           ssl_context=self.config.ssl_context(),
                           https=dashboard_context(self.config))
        self.web_url = self.web.start()
        self.say(f"dashboard on {self.web_url} (metrics at {self.web_url}metrics; "
                 + ("actions enabled, token required)" if token else
                    f"read-only: set {ENV_TOKEN} to enable actions)"))
        if self.web.exposed:
            self.say(f"warning: the dashboard listens on {self.config.web}: anyone who can "
                     f"reach it sees job bodies")

    def _reload(self) -> None:
        doc = read_json(self.paths.wanted)
        if doc is not None:
            try:
                wanted = ClusterConfig.from_dict(doc)
            except (KeyError, TypeError, ValueError) as e:
                self.say(f"ignoring {self.paths.wanted}: {e}")
            else:
                added = [s.name for s in wanted.nodes if s.name not in self.nodes]
                changed = wanted.to_dict() != self.config.to_dict()
                proxy_changed = wanted.proxy_settings != self.config.proxy_settings
                if wanted.web != self.config.web:
                    self.say("the dashboard setting (web) applies when the supervisor "
                             "restarts (bscluster down, then up)")
                self._set_nodes(wanted)
                if proxy_changed:
                    self._apply_proxy(wanted.proxy)
                elif changed and self.proxy is not None:
                    self.proxy.reload()  # it reads the same wanted.json
                if added:
                    self.say(f"adding {', '.join(added)}")
        if self.paths.requests.is_dir():
            for path in sorted(self.paths.requests.iterdir()):
                if path.name.startswith("."):
                    continue  # still being written (write_json's temp file): next HUP
                request = read_json(path)
                _unlink(path)
                op = (request or {}).get("op")
                if op == "restart":
                    self._restart(request.get("node", ""))
                elif op in ("drain", "undrain"):
                    self._drain(request.get("node", ""), op == "drain")
                elif op == "reload-tls":
                    self._reload_tls(request.get("id"))

    def _apply_proxy(self, listen: str) -> None:
        """The proxy settings changed (`up` again with --proxy): start the proxy, start
        it again with them (another address too), or stop it (``listen`` empty)."""
        if self.proxy is None:
            if listen:  # (its first tick starts it)
                self.proxy = ProxyProc(listen, self.paths.wanted, self.say, self.clock)
        elif listen:
            self.say(f"new proxy settings: restarting the proxy on {listen}")
            self.proxy.restart_with(listen, self.clock())
        else:
            self.say("the proxy is off in the new configuration: stopping it")
            self.proxy.stop()

    def _reload_tls(self, ask: str | None) -> None:
        """Certificate files rewritten in place (`bscluster reload`, tls_reload.py):
        every node serving TLS, the proxy and the dashboard read them again."""
        told = []
        for name, node in self.nodes.items():
            if node.state is State.RUNNING and node.serves_tls():
                node.send(signal.SIGHUP)
                told.append(name)
        proxy = self.proxy is not None and self.proxy.alive()
        if proxy:
            self.proxy.reload()
        dashboard = None
        if self.web is not None:
            dashboard = "reloaded"
            try:
                self.web.reload_tls(self.config)
            except (ConfigError, OSError, ssl.SSLError) as e:
                dashboard = f"not reloaded, it keeps the old files: {e}"
        told_to = told + (["the proxy"] if proxy else [])
        self.say(f"TLS reload: SIGHUP to {', '.join(told_to)}" if told_to else
                 "TLS reload: no node or proxy here serves TLS")
        if dashboard is not None:
            self.say(f"dashboard: TLS files {'read again' if dashboard == 'reloaded' else dashboard}")
        self.tls_reload = {"id": ask, "nodes": told, "proxy": proxy, "dashboard": dashboard}

    def _drain(self, name: str, on: bool) -> None:
        """Drain a node (SIGUSR1 now and after every start), or stop draining it:
        a node cannot leave drain mode, so undrain restarts it."""
        node = self.nodes.get(name)
        if node is None:
            self.say(f"drain: no node named {name!r}")
            return
        if on:
            self.drained.add(name)
            self.say(f"draining {name}: it refuses new jobs from now on")
            if node.state is State.RUNNING:
                node.send(signal.SIGUSR1)
        elif name in self.drained:
            self.drained.discard(name)
            self.say(f"undraining {name}: restarting it without drain mode")
            self._restart(name)

    def _restart(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            self.say(f"restart: no node named {name!r}")
            return
        self.say(f"restarting {name} (requested)")
        node.restart_requested = True
        node.failed_starts = 0
        node.crashes.clear()
        self.awaiting_settle = True
        if node.state in (State.STARTING, State.RUNNING):
            node.stop(self.clock() + STOP_TIMEOUT)
        elif node.state in (State.BACKOFF, State.FATAL):
            self._spawn(node)

    def _adopt_leftovers(self) -> None:
        """Take over nodes a killed supervisor left running, so none is started twice."""
        old = read_json(self.paths.state) or {}
        for name, entry in (old.get("nodes") or {}).items():
            if entry.get("draining") and name in self.nodes:
                self.drained.add(name)  # a killed supervisor's drained nodes stay drained
            pid, start = entry.get("pid"), entry.get("pid_start")
            if pid_state(pid, start) is Liveness.DEAD:
                continue
            node = self.nodes.get(name)
            if node is None or (entry.get("host"), entry.get("port")) != \
                    (node.spec.host, node.spec.port):
                self.say(f"{name} (pid {pid}) from an earlier run is still running on "
                         f"{entry.get('host')}:{entry.get('port')} but is not in this "
                         f"configuration; stop it with: kill {pid}")
                continue
            node.adopt(pid, start, entry.get("started"))
            node.restarts = entry.get("restarts", 0)
            node.crash_count = entry.get("crashes", 0)
            self.say(f"{name} adopted: already running on {node.spec.address} (pid {pid})")

    # --- output and state ----------------------------------------------------------------
    def say(self, message: str) -> None:
        self._line("bscluster", message)

    def _line(self, who: str, text: str) -> None:
        # the log file gets the full ISO time; a terminal the time of day, as
        # node lines already carry bsnode's own full stamp
        stamp = log_stamp() if self.detached else log_stamp()[11:23]
        stamp += " "
        try:
            self.out.write(f"{stamp}{who:<{self._width}} | {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # our terminal went away; keep supervising

    def _echo_output(self, node: NodeProc, lines) -> None:
        for line in lines or ():
            self._line(node.name, line)

    def snapshot(self) -> dict:
        return {
            "version": STATE_VERSION,
            "supervisor": {
                "pid": os.getpid(), "pid_start": self._pid_start, "started": self.started, "detached": self.detached,
                "stopping": self.stopping, "config": str(self.config.path or ""),
                "log": str(self.paths.log) if self.detached else None,
                "web": self.web_url,
            },
            "nodes": {name: {**n.to_dict(), "draining": name in self.drained,
                             "progress": self.progress.get(name)
                             if n.state is State.STARTING else None}
                      for name, n in self.nodes.items()},
            "proxy": self.proxy.to_dict() if self.proxy is not None else None,
            "tls_reload": self.tls_reload,
        }

    def _publish(self) -> None:
        doc = self.snapshot()
        if doc != self._published:
            write_json(self.paths.state, doc)
            self._published = doc

    def _check_settled(self) -> None:
        """Report once everything settled; stop when nothing is left to supervise.

        Every node FATAL at the first settle: nothing could start, so stop
        (exit 1).  Every node FATAL later (crash loops): a foreground
        supervisor stops too (exit 1, so systemd's Restart=on-failure or the
        operator sees it); a detached one stays, so `status` shows each
        node's reason and `restart NODE` can revive it.
        """
        if self.stopping or not self.nodes:
            return
        all_fatal = all(n.state is State.FATAL for n in self.nodes.values())
        if self.awaiting_settle and all(n.state in SETTLED for n in self.nodes.values()):
            self.awaiting_settle = False
            first, self.first_settle = self.first_settle, False
            if self.on_settled is not None:
                self.on_settled(self)
            if all_fatal and first:
                self._give_up_all("no node could start; nothing to supervise")
                return
        if all_fatal and not self.detached and not self.first_settle:
            self._give_up_all("every node is FATAL; nothing left to supervise. Fix the "
                              "causes above and run `bscluster up` again")

    def _give_up_all(self, message: str) -> None:
        self.say(message)
        self.exit_status = 1
        self._stop_all(kill=False)

    # --- sleeping -------------------------------------------------------------------
    def _timeout(self, now: float) -> float:
        timeout = IDLE_INTERVAL
        for node in self.nodes.values():
            if node.state is State.STARTING or node.adopted:
                timeout = min(timeout, PROBE_INTERVAL if not node.adopted else ADOPTED_POLL)
            if node.wake_at is not None:
                timeout = min(timeout, max(0.0, node.wake_at - now))
        if self.proxy is not None and self.proxy.adopted is not None:
            timeout = min(timeout, ADOPTED_POLL)
        return timeout

    def _sleep(self, timeout: float) -> None:
        # poll(), not select(): descriptors above 1023 are fine, none is allocated
        poller = select.poll()
        for fd in [self._wake_r] + [n.fd for n in self.nodes.values() if n.fd is not None]:
            poller.register(fd, select.POLLIN)
        try:
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        except InterruptedError:
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass


def _terminal_hung_up(out) -> bool:
    """Is ``out`` a terminal that has hung up (closed)?  Then a foreground `up` got its
    SIGHUP from the kernel, not from a bscluster command asking it to reload."""
    try:
        termios.tcgetattr(out.fileno())
    except termios.error as e:
        return e.args[0] == errno.EIO  # (ENOTTY: not a terminal at all)
    except (OSError, ValueError):
        return False  # no descriptor (a test's stream), or closed
    return False


def _to_nowhere(out) -> None:
    """Point the hung-up terminal's descriptors (``out``, stderr) at /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in {out.fileno(), 2}:
        os.dup2(null, fd)
    os.close(null)


def _can_probe() -> bool:
    """Can this process open a socket at all (to try a node's port)?"""
    try:
        socket.socket().close()
    except OSError:
        return False
    return True


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _unlink(path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
