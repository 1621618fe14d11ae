"""The proxy's command dispatch: beanstalkd events in, reply bytes out, the cluster between.

How this works
--------------
``ProxyCommands.execute(client, event)`` takes one event from the codec
(``bsclient.protocol.CommandReader``, the node's own), runs it through the
shared ``ClusterClient`` in the calling greenlet's session, and returns the
reply bytes beanstalkd 1.12 would send (doc/protocol.txt), or ``CLOSE``.

* use/put: the ClusterClient (the used tube's owner, failover, drain).
* watch/ignore/reserve*: the ClusterClient's multiplexed reserve; after it
  returns, reserves still in flight are cancelled (``proxy_cluster``), so
  only a job the client was given is held for it.
* by-job commands: the id is a proxy id (``proxy_ids``): decoded to node and
  node id, sent to that node on the connection that reserved the job;
  replies carry proxy ids again (stats-job's ``id:`` too).
* stats, stats-tube, list-tubes: merged over nodes; pause-tube and kick
  fanned out; peek-ready/-delayed/-buried ranked as ClusterClient ranks them.
* list-tube-used, list-tubes-watched: local.

Counters that describe connections and commands (``cmd-*``,
``current-connections``, stats-tube's ``current-using``...) are this proxy's
own: the node-side numbers count the proxy's internal connections and
commands, not its clients'.  Errors the cluster cannot hide become protocol
words (docs/PROXY.md, "When a node fails"): a node that cannot be reached
for a command is INTERNAL_ERROR; a reserve waits on the nodes that remain.
"""

from __future__ import annotations

import math
import os
import resource
import secrets
import time

import gevent
from bsclient import flat_yaml
from bsclient import protocol as P
from bsclient.client import Client, Job, remove_watched
from bsclient.errors import (
    BeanstalkError,
    BuriedError,
    ConnectionLostError,
    NoNodeAvailableError,
    NotFoundError,
    ReplyError,
    TimedOutError,
)
from bsclient.fanout import merge_stats

from . import proxy_cluster as pc
from . import proxy_ids

CLOSE = object()
VERSION = "1.12"  # the protocol the proxy speaks (stats' version)
NONE_REACHABLE_RETRY = 0.5  # seconds a reserve waits before asking a dead cluster again
HOLDING_SLICE = 1  # a client holding jobs waits in slices this long, to see DEADLINE_SOON
CONN_STATS = ("current-connections", "current-producers", "current-workers",
              "current-waiting", "total-connections")
MAX_OVER_NODES = frozenset({"binlog-oldest-index", "binlog-current-index", "binlog-max-size",
                            "cmd-pause-tube", "pause", "pause-time-left"})
NOT_MERGED = frozenset({"name"})  # stats-tube's name: the tube's, not a number to add


class ClientState:
    """One proxy client connection as beanstalkd would count it."""

    __slots__ = ("using", "watching", "producer", "worker", "waiting")

    def __init__(self) -> None:
        self.using = "default"
        self.watching = ["default"]
        self.producer = False
        self.worker = False
        self.waiting = False


class ProxyCommands:
    def __init__(self, cc, max_job_size: int) -> None:
        self.cc = cc
        self.max_job_size = max_job_size
        self.clients: set[ClientState] = set()
        self.total_connections = 0
        self.counts = dict.fromkeys((op for op in _COUNTED), 0)
        self.draining = False  # SIGUSR1, as beanstalkd: puts get DRAINING
        self.instance_id = secrets.token_hex(8)
        self.started = time.monotonic()
        self.numbers = {}  # node name -> its number in proxy ids
        for name in cc.nodes:
            self.numbers[name] = proxy_ids.node_number(name)
        self._dispatch = {op: getattr(self, "_cmd_" + op.replace("-", "_")) for op in _HANDLED}
        self._dispatch[P.PUT_BODY] = self._cmd_put

    # --- connections ----------------------------------------------------------------
    def opened(self) -> ClientState:
        state = ClientState()
        self.clients.add(state)
        self.total_connections += 1
        return state

    def closed(self, state: ClientState) -> None:
        self.clients.discard(state)
        pc.end_session(self.cc)

    # --- dispatch -------------------------------------------------------------------
    def count(self, c: ClientState, ev: tuple) -> None:
        """Count a command as beanstalkd does (``cmd-*``; a put makes a producer), once,
        as it is read: the lane that runs it does not count again."""
        op = ev[0]
        if op is P.ERROR:
            op = ev[2]
            if op is None:
                return
            if op == P.CommandReader.PUT_PRODUCER:
                op = P.CMD_PUT
                c.producer = True
        elif op is P.PUT_BODY:
            return
        self.counts[op] += 1

    def execute(self, c: ClientState, ev: tuple):
        """The reply to one command (counted already), run through the ClusterClient."""
        op = ev[0]
        try:
            return self._dispatch[op](c, ev)
        except ReplyError as e:
            if isinstance(e, BuriedError) and e.job_id is not None:
                return b"BURIED %d\r\n" % e.job_id
            return e.word.encode() + P.CRLF
        except (ConnectionLostError, BeanstalkError):
            return P.INTERNAL_ERROR

    def proxy_id(self, job: Job) -> int:
        return proxy_ids.encode(self.numbers[job.node], job.id)

    def _job(self, proxy_id: int) -> Job | None:
        where = proxy_ids.decode(proxy_id)
        if where is None or where[0] not in self.numbers:
            return None
        return Job(where[1], b"", where[0])

    def _found(self, word: bytes, job: Job) -> bytes:
        body = job.body
        return b"%s %d %d\r\n%s\r\n" % (word, self.proxy_id(job), len(body), body)

    # --- producing ------------------------------------------------------------------
    def _cmd_put(self, c: ClientState, ev: tuple) -> bytes:
        c.producer = True
        if self.draining:
            return P.DRAINING
        try:
            handle = self.cc.put(ev[4], ev[1], ev[2], ev[3])
        except NoNodeAvailableError:
            return P.DRAINING if pc.all_draining(self.cc) else P.INTERNAL_ERROR
        name, _, num = handle.rpartition("/")
        return b"INSERTED %d\r\n" % proxy_ids.encode(self.numbers[name], int(num))

    def _cmd_use(self, c: ClientState, ev: tuple) -> bytes:
        c.using = self.cc.use(ev[1])
        return b"USING %s\r\n" % c.using.encode()

    # --- consuming ------------------------------------------------------------------
    def _cmd_watch(self, c: ClientState, ev: tuple) -> bytes:
        self.cc.watch(ev[1])
        if ev[1] not in c.watching:
            c.watching.append(ev[1])
        return b"WATCHING %d\r\n" % len(c.watching)

    def _cmd_ignore(self, c: ClientState, ev: tuple) -> bytes:
        self.cc.ignore(ev[1])  # NOT_IGNORED for the last one
        if ev[1] in c.watching:
            remove_watched(c.watching, ev[1])  # beanstalkd's order after a removal
        return b"WATCHING %d\r\n" % len(c.watching)

    def _cmd_reserve(self, c: ClientState, ev: tuple) -> bytes:
        return self._reserve(c, None)

    def _cmd_reserve_with_timeout(self, c: ClientState, ev: tuple) -> bytes:
        return self._reserve(c, ev[1] if ev[1] >= 0 else None)

    def _reserve(self, c: ClientState, timeout: int | None) -> bytes:
        c.worker = True
        c.waiting = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    job = self._reserve_once(deadline)
                    if job is not None:
                        break
                except NoNodeAvailableError:
                    # no node can be asked: to the client that is an empty queue
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimedOutError() from None
                    gevent.sleep(NONE_REACHABLE_RETRY if left is None
                                 else min(left, NONE_REACHABLE_RETRY))
                    timeout = None if left is None else max(0, int(left))
        finally:
            c.waiting = False
            pc.cancel_waits(self.cc)
        return self._found(b"RESERVED", job)

    def _reserve_once(self, deadline: float | None) -> Job | None:
        """One ClusterClient reserve up to ``deadline`` (None: a slice ended).

        A client holding jobs waits in slices, each of which asks the holding
        nodes for DEADLINE_SOON first (beanstalkd tells a waiting client when
        a job it holds nears its TTR)."""
        timeout = None if deadline is None else max(0, math.ceil(deadline - time.monotonic()))
        sliced = pc.holds_jobs(self.cc) and (timeout is None or timeout > HOLDING_SLICE)
        try:
            return self.cc.reserve(HOLDING_SLICE if sliced else timeout)
        except TimedOutError:
            if sliced:
                return None
            raise

    def _cmd_reserve_job(self, c: ClientState, ev: tuple) -> bytes:
        job = self._job(ev[1])
        if job is None:
            return P.NOT_FOUND
        reply = self._found(b"RESERVED", self.cc.reserve_job(job))
        c.worker = True
        return reply

    # --- by job ---------------------------------------------------------------------
    def _by_job(self, fn, ev: tuple, *args, done: bool = False):
        where = proxy_ids.decode(ev[1])
        if where is None or where[0] not in self.numbers:
            raise NotFoundError()
        return pc.by_job(self.cc, fn, where[0], where[1], *args, done=done)

    def _cmd_delete(self, c, ev) -> bytes:
        self._by_job(Client.delete, ev, done=True)
        return P.DELETED

    def _cmd_release(self, c, ev) -> bytes:
        self._by_job(Client.release, ev, ev[2], ev[3], done=True)
        return P.RELEASED

    def _cmd_bury(self, c, ev) -> bytes:
        self._by_job(Client.bury, ev, ev[2], done=True)
        return P.BURIED

    def _cmd_touch(self, c, ev) -> bytes:
        self._by_job(Client.touch, ev)
        return P.TOUCHED

    def _cmd_kick_job(self, c, ev) -> bytes:
        self._by_job(Client.kick_job, ev)
        return P.KICKED

    def _cmd_peek(self, c, ev) -> bytes:
        return self._found(b"FOUND", self._by_job(Client.peek, ev))

    def _cmd_stats_job(self, c, ev) -> bytes:
        stats = self._by_job(Client.stats_job, ev)
        stats["id"] = ev[1]
        return _yaml(stats.items())

    # --- fan-out --------------------------------------------------------------------
    def _cmd_peek_ready(self, c, ev) -> bytes:
        return self._found(b"FOUND", self.cc.peek_ready())

    def _cmd_peek_delayed(self, c, ev) -> bytes:
        return self._found(b"FOUND", self.cc.peek_delayed())

    def _cmd_peek_buried(self, c, ev) -> bytes:
        return self._found(b"FOUND", self.cc.peek_buried())

    def _cmd_kick(self, c, ev) -> bytes:
        return b"KICKED %d\r\n" % self.cc.kick(ev[1])

    def _cmd_pause_tube(self, c, ev) -> bytes:
        try:
            self.cc.pause_tube(ev[1], ev[2])
        except NotFoundError:
            if ev[1] not in set(self._local_tubes()):
                raise
            pc.make_tube(self.cc, ev[1])  # used or watched here only: make it on its owner
            self.cc.pause_tube(ev[1], ev[2])
        return P.PAUSED

    def _cmd_list_tubes(self, c, ev) -> bytes:
        return flat_yaml.yaml_list_reply(self._tubes())

    def _tubes(self) -> list[str]:
        """Every node's tubes, "default" first, then in node order (as one beanstalkd
        lists them in the order they were made), then the tubes only our clients
        use or watch (a node makes a tube when it first hears of it)."""
        seen = dict.fromkeys(["default"])
        for names in pc.per_node(self.cc, Client.list_tubes).values():
            seen.update(dict.fromkeys(names))
        seen.update(dict.fromkeys(self._local_tubes()))
        return list(seen)

    def _local_tubes(self):
        for s in self.clients:
            yield s.using
            yield from s.watching

    def _cmd_list_tube_used(self, c, ev) -> bytes:
        return b"USING %s\r\n" % c.using.encode()

    def _cmd_list_tubes_watched(self, c, ev) -> bytes:
        return flat_yaml.yaml_list_reply(c.watching)

    def _cmd_quit(self, c, ev):
        return CLOSE

    def _cmd_stats_tube(self, c, ev) -> bytes:
        tube = ev[1]
        try:
            merged = self.cc.stats_tube(tube)
            per = merged.pop("nodes")
        except NotFoundError:
            if tube not in set(self._local_tubes()):
                raise
            merged, per = {"name": tube, "nodes-unavailable": []}, \
                {"": dict.fromkeys(P.STATS_TUBE_FIELDS, 0)}
        local = {
            "current-using": sum(1 for s in self.clients if s.using == tube),
            "current-watching": sum(1 for s in self.clients if tube in s.watching),
            "current-waiting": sum(1 for s in self.clients if s.waiting and tube in s.watching),
        }
        return _yaml(_unavailable(self._merge(per, merged, local), merged).items())

    def _cmd_stats(self, c, ev) -> bytes:
        merged = self.cc.stats()
        per = merged.pop("nodes")
        ru = resource.getrusage(resource.RUSAGE_SELF)
        u = os.uname()
        local = {f"cmd-{op}": n for op, n in self.counts.items()}
        local.update({
            "current-connections": len(self.clients),
            "current-producers": sum(1 for s in self.clients if s.producer),
            "current-workers": sum(1 for s in self.clients if s.worker),
            "current-waiting": sum(1 for s in self.clients if s.waiting),
            "total-connections": self.total_connections,
            "max-job-size": self.max_job_size, "current-tubes": len(self._tubes()),
            "pid": os.getpid(), "version": f'"{VERSION}"',
            "rusage-utime": _secs(ru.ru_utime), "rusage-stime": _secs(ru.ru_stime),
            "uptime": int(time.monotonic() - self.started),
            "draining": "true" if self.draining or merged.get("draining") else "false",
            "id": self.instance_id, "hostname": u.nodename, "os": u.version,
            "platform": u.machine,
        })
        return _yaml(_unavailable(self._merge(per, merged, local), merged).items())

    @staticmethod
    def _merge(per: dict, merged: dict, local: dict) -> dict:
        """Fields in the first node's order: ours if local, else the nodes' figures
        through the one stats merge (bsclient.fanout.merge_stats), a max for the
        fields one beanstalkd shows once (MAX_OVER_NODES), else what ``merged``
        (ClusterClient's answer) or the first node says."""
        first = next(iter(per.values()))
        over = merge_stats(per.values(), leave_out=NOT_MERGED, take_max=MAX_OVER_NODES)
        return {key: local[key] if key in local else over.get(key, merged.get(key, first[key]))
                for key in first}


_COUNTED = (
    P.CMD_PUT, P.CMD_PEEK, P.CMD_PEEK_READY, P.CMD_PEEK_DELAYED, P.CMD_PEEK_BURIED,
    P.CMD_RESERVE, P.CMD_RESERVE_WITH_TIMEOUT, P.CMD_DELETE, P.CMD_RELEASE, P.CMD_USE,
    P.CMD_WATCH, P.CMD_IGNORE, P.CMD_BURY, P.CMD_KICK, P.CMD_TOUCH, P.CMD_STATS,
    P.CMD_STATS_JOB, P.CMD_STATS_TUBE, P.CMD_LIST_TUBES, P.CMD_LIST_TUBE_USED,
    P.CMD_LIST_TUBES_WATCHED, P.CMD_PAUSE_TUBE, P.CMD_RESERVE_JOB, P.CMD_KICK_JOB, P.CMD_QUIT,
)
_HANDLED = _COUNTED


def _unavailable(fields: dict, merged: dict) -> dict:
    """stats and stats-tube summed without some node: a last field says how many
    (beanstalkd's fields only when every node answered)."""
    missed = merged["nodes-unavailable"]
    if missed:
        fields["nodes-unavailable"] = len(missed)
    return fields


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _secs(v)
    return str(v)


def _yaml(items) -> bytes:
    return flat_yaml.yaml_dict_reply((k, _value(v)) for k, v in items)


def _secs(t: float) -> str:
    whole = int(t)
    return f"{whole}.{int(round((t - whole) * 1e6)) % 1000000:06d}"
