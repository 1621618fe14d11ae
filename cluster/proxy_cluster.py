"""The proxy's view of a ClusterClient: the few things its public API lacks.

How this works
--------------
The proxy routes every command with one shared ``ClusterClient`` (ring,
failover, drain, the multiplexed reserve): each client connection is served
by its own greenlet, and the ClusterClient gives each greenlet its own
session (node connections, used tube, watch list, held jobs), exactly as it
gives each thread one.  This module is the one place that reaches past the
ClusterClient's public methods, into its pool's per-greenlet session, for
what a server needs and a library caller does not:

* ``end_session`` closes this greenlet's node connections when its client
  hangs up (the nodes release whatever it had reserved, as beanstalkd does);
* ``cancel_waits`` ends reserves still in flight after a reserve returned,
  so no node hands a job to a proxy client that is no longer waiting;
* ``has_buffered`` / ``give_back`` deal with a second job the multiplexed
  reserve got ahead of the client;
* ``by_job`` runs a by-job command on *this* greenlet's connections only:
  ClusterClient lets one thread act on a job another thread reserved (it
  borrows that thread's connection), but a proxy client, like a beanstalkd
  connection, must get NOT_FOUND for a job another client holds;
* ``per_node`` runs a ``Client`` method on every live node (list-tubes in
  each node's own order).

If bsclient grows public equivalents, only this module changes.
"""

from __future__ import annotations

from collections.abc import Callable

from bsclient import Client, ClusterClient
from bsclient.config import ClusterLayout


def make_cluster(layout: ClusterLayout, ssl_context=None) -> ClusterClient:
    """The ClusterClient every proxy connection shares (bodies stay bytes)."""
    return ClusterClient.from_layout(layout, ssl_context=ssl_context, encoding=None)


def session(cc: ClusterClient):
    """This greenlet's session (see module docstring)."""
    return cc._pool.session()


def end_session(cc: ClusterClient) -> None:
    """Close this greenlet's connections: reserved and buffered jobs go back."""
    session(cc).close()


def cancel_waits(cc: ClusterClient) -> int:
    """Close connections with a reserve still in flight; how many were closed.

    Closing is the protocol's only way to cancel a reserve: the node drops
    the wait, or releases the job it had just reserved on that connection.
    """
    s = session(cc)
    cancelled = 0
    for conns in list(s.conns.values()):
        for conn in conns:
            if conn.pending:
                s.lost(conn)
                cancelled += 1
    return cancelled


def by_job(cc: ClusterClient, fn: Callable, name: str, job_id: int, *args, done: bool = False):
    """``fn(client, job_id, *args)`` on node ``name``, on the connection of this
    greenlet that reserved the job, else any of this greenlet's to that node.
    ``done``: the command ends the reservation (delete, release, bury)."""
    pool = cc._pool
    member = pool.members[name]
    s = pool.session()
    conn = s.holder(name, job_id)
    conn = s.ready(conn) if conn is not None else pool.conn(member)
    result = pool.call_on(member, conn, fn, job_id, *args)
    if done:
        conn.held.pop(job_id, None)
    return result


def holds_jobs(cc: ClusterClient) -> bool:
    """This greenlet's client holds reserved jobs (handed out, not yet done)."""
    return any(conn.held for conns in session(cc).conns.values() for conn in conns)


def make_tube(cc: ClusterClient, tube: str) -> None:
    """Make ``tube`` exist on its owner node: this greenlet's connection there uses it."""
    pool = cc._pool
    member = pool.members[cc.node_for(tube)]
    pool.call(member, Client.use, tube)


def has_buffered(cc: ClusterClient) -> bool:
    return bool(session(cc).buffer)


def give_back(cc: ClusterClient) -> int:
    return cc.return_buffered()


def per_node(cc: ClusterClient, fn: Callable, *args) -> dict:
    """``{node: fn(client, *args)}`` over live nodes (failover drops the dead)."""
    return cc._pool.each(fn, *args)


def all_draining(cc: ClusterClient) -> bool:
    """Every live member answered DRAINING lately (a put then gets DRAINING)."""
    pool = cc._pool
    live = pool.live()
    return bool(live) and all(pool.draining(m) for m in live)
