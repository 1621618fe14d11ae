"""Pipelined bursts through the proxy: many commands to one node in one write.

How this works
--------------
A client that pipelines (16 puts, then 16 reserves, then 16 deletes) would
cost the proxy one node round trip per command if each went through the
ClusterClient alone, and even one command costs the ClusterClient's
bookkeeping several times the proxy's.  ``Burst.run(client, events)`` takes a run of
consecutive commands of one kind that all go to one node on one of this
greenlet's connections, writes them there at once, reads the replies in
order and rewrites the ids.  It answers a prefix of the run (maybe none);
the caller runs the rest one at a time through ``ProxyCommands``, so every
rule of the single path (failover, draining, DEADLINE_SOON, the
multiplexed reserve) still decides anything unusual:

* puts: the used tube is not spread and its owner is alive and not
  draining; a DRAINING reply stops the burst there (that put and the rest
  go the single way, which fails over);
* deletes: every id decodes to the same node, and one connection of ours
  holds all of them (or none does);
* reserves: the watched tubes all have one owner node, and the other nodes
  were swept (asked for jobs) by the ClusterClient less than its
  ``SWEEP_SECONDS`` ago, so a job stranded on another node still waits no
  longer than the ClusterClient would let it; the burst asks the owner
  ``reserve-with-timeout 0`` once per reserve on a connection that holds
  nothing.  The first reply that is not RESERVED ends the answered prefix;
  a job reserved after that point is buffered in the session, so the next
  reserves of the run (taken the single way, which hands out buffered jobs
  first) get it: no job is held that the client does not get.

The session internals it touches (``Conn.held``, ``Session.buffer``, the
watch generation) are bsclient's; ``proxy_cluster`` is the other module that
does so.
"""

from __future__ import annotations

from bsclient import protocol as P
from bsclient.errors import ConnectionLostError

from . import proxy_ids

MAX_BURST = 256  # commands taken into one burst
# which events a burst of each kind takes
KINDS = {P.CMD_PUT: "puts", P.PUT_BODY: "puts", P.CMD_DELETE: "deletes",
         P.CMD_RESERVE: "reserves", P.CMD_RESERVE_WITH_TIMEOUT: "reserves"}


class Burst:
    def __init__(self, commands) -> None:
        self.commands = commands
        self.cc = commands.cc
        self.pool = commands.cc._pool
        self.numbers = commands.numbers

    # --- plumbing --------------------------------------------------------------------
    def _exchange(self, member, conn, data: bytes, count: int) -> list:
        """Send ``data``, read ``count`` replies (fewer if the connection fails)."""
        client = conn.client
        replies: list = []
        try:
            client.send(data)
            while len(replies) < count:
                replies += client.read_replies(self.pool.op_timeout)
        except ConnectionLostError:
            self.pool.failed(member)
            self.pool.session().lost(conn)
        return replies

    def _id(self, name: str, words: list) -> int:
        return proxy_ids.encode(self.numbers[name], int(words[1]))

    # --- puts --------------------------------------------------------------------------
    def run(self, c, kind: str, events: list) -> list[bytes]:
        """Replies to a prefix of ``events`` (commands of one ``kind``), counted."""
        replies = getattr(self, kind)(c, events)
        counts = self.commands.counts
        for ev in events[:len(replies)]:
            if ev[0] is not P.PUT_BODY:
                counts[ev[0]] += 1
        return replies

    def puts(self, c, events: list) -> list[bytes]:
        cc, pool = self.cc, self.pool
        tube = c.using
        if tube in cc.spread or self.commands.draining:
            return []
        name = cc.node_for(tube)
        member = pool.members[name]
        if member.dead_until or member.draining_until:
            return []
        conn = pool.conn(member)
        if conn.client.using != tube:
            return []  # the single path sends `use` first
        data = b"".join(b"put %d %d %d %d\r\n%s\r\n" % (ev[1], ev[2], ev[3], len(ev[4]), ev[4])
                        for ev in events)
        replies = self._exchange(member, conn, data, len(events))
        out = []
        for words, _ in replies:
            if words[0] == b"INSERTED":
                out.append(b"INSERTED %d\r\n" % self._id(name, words))
            elif words[0] == b"BURIED":
                out.append(b"BURIED %d\r\n" % self._id(name, words))
            elif words[0] == b"DRAINING":
                pool.drained(member)
                break  # this put and the rest: the single path fails over
            else:
                out.append(b" ".join(words) + P.CRLF)
        else:
            if len(replies) < len(events):  # sent, then lost: maybe stored, never retried
                out += [P.INTERNAL_ERROR] * (len(events) - len(replies))
        if out:
            c.producer = True
        return out

    # --- deletes -------------------------------------------------------------------------
    def deletes(self, c, events: list) -> list[bytes]:
        where = [proxy_ids.decode(ev[1]) for ev in events]
        if any(w is None for w in where) or len({w[0] for w in where}) != 1:
            return []
        name = where[0][0]
        member = self.pool.members.get(name)
        if member is None:
            return []
        s = self.pool.session()
        holders = {id(s.holder(name, w[1])) for w in where}
        if len(holders) != 1:
            return []
        conn = s.holder(name, where[0][1])
        conn = s.ready(conn) if conn is not None else self.pool.conn(member)
        data = b"".join(b"delete %d\r\n" % w[1] for w in where)
        replies = self._exchange(member, conn, data, len(events))
        out = []
        for (words, _), w in zip(replies, where, strict=False):
            conn.held.pop(w[1], None)
            out.append(b" ".join(words) + P.CRLF)
        out += [P.INTERNAL_ERROR] * (len(events) - len(replies))
        return out

    # --- reserves ------------------------------------------------------------------------
    def reserves(self, c, events: list) -> list[bytes]:
        cc, pool = self.cc, self.pool
        s = pool.session()
        if s.buffer or any(t in cc.spread for t in s.watching) or pool.clock() >= s.next_sweep:
            return []  # the other nodes are due to be asked: the single path sweeps them
        owners = {cc.node_for(t) for t in s.watching}
        if len(owners) != 1:
            return []
        name = owners.pop()
        member = pool.members[name]
        if member.dead_until:
            return []
        conn = s.free(name, member.address)
        if conn is None:
            return []
        client = conn.client
        try:
            if not client.connected:
                client.forget_tubes()
                client.connect()
        except ConnectionLostError:
            pool.failed(member)
            s.lost(conn)
            return []
        data, skip = b"", 0
        if conn.watch_gen != s.watch_gen:
            data, skip = client.watch_commands(s.watching)
            conn.watch_gen = s.watch_gen
        data += b"reserve-with-timeout 0\r\n" * len(events)
        replies = self._exchange(member, conn, data, skip + len(events))
        if any(words[0] != b"WATCHING" for words, _ in replies[:skip]):
            s.lost(conn)  # out of step: the single path starts afresh
            return []
        answered: list[bytes] = []
        stopped = False
        now = pool.clock()
        for reply in replies[skip:]:
            words, body = reply
            if words[0] != b"RESERVED":
                stopped = True  # TIMED_OUT: the single path answers from here on
                continue
            job = client.job_from(reply)
            conn.held[job.id] = now
            if stopped:
                s.buffer.append((job, conn, now))  # for the reserves that follow
            else:
                answered.append(b"RESERVED %d %d\r\n%s\r\n" % (self._id(name, words),
                                                                 len(body), body))
        if answered:
            c.worker = True
        return answered
