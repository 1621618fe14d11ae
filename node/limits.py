"""The node's limits on what clients and the machine can make it hold.

How this works
--------------
Two guards, used by the network shell (server.py) and the metrics
endpoint (metrics.py):

* ``ReplyBudget``: the replies held for clients that do not take them
  (sends the kernel did not take whole), summed over every connection.
  Past the budget each connection sends every reply before it runs its
  next command and reads little at a time, so a client that never reads
  costs one reply, as with beanstalkd, instead of a batch per connection.
* ``AcceptBrake``: out of descriptors (EMFILE), accept() fails for as long
  as the shortage lasts; the listener is left alone until a connection
  closes or a doubling back-off runs out (beanstalkd's brake), and the
  failure is logged at a bounded rate rather than once per attempt.
"""

from __future__ import annotations

import errno

from .ratelog import Complaints

REPLY_BUDGET = 4 << 20  # replies held for clients not taking them, all connections
ACCEPT_BRAKE_MIN = 0.01  # seconds without accepting after accept() lacks a descriptor
ACCEPT_BRAKE_MAX = 1.0  # ... doubling up to this while the shortage lasts
ACCEPT_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ReplyBudget:
    """The replies the node holds for clients that have not taken them yet
    (a send the kernel did not take whole), summed over every connection.

    While ``held`` is under ``limit`` a connection batches up to SEND_BATCH
    of replies to one read's commands and reads RECV_SIZE at a time
    (server.py); past it, each connection sends every reply before it runs
    its next command, and reads little: a client that does not read then
    holds the node to one reply of its own, as beanstalkd does, and stops
    being read."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int = REPLY_BUDGET) -> None:
        self.held = 0
        self.limit = limit


class AcceptBrake:
    """For a gevent StreamServer (mixed in before it): beanstalkd's brake
    for a descriptor shortage, in place of gevent's traceback per failure.

    When accept() fails for want of a descriptor or of memory (EMFILE,
    ENFILE, ENOBUFS, ENOMEM) the listener is not watched for a while (a
    readable listener would otherwise wake the loop again at once): it is
    watched again as soon as a connection closes (``unbrake``: a descriptor
    is free), or after a back-off that doubles from ACCEPT_BRAKE_MIN to
    ACCEPT_BRAKE_MAX seconds.  The shortage is logged through
    ``complaints`` (rate-limited); connections already accepted are served
    on meanwhile.  bsnode's protocol listener and its --metrics one use it."""

    complaints: Complaints
    braked = 0  # accept() failures for want of a resource
    _brake_delay = ACCEPT_BRAKE_MIN
    _brake_timer = None

    def do_read(self):
        try:
            got = super().do_read()
        except OSError as e:
            if e.errno not in ACCEPT_SHORTAGE:
                raise
            self._brake(e)
            return None
        if got is not None:
            self._brake_delay = ACCEPT_BRAKE_MIN
        return got

    def _brake(self, err: OSError) -> None:
        self.braked += 1
        self.complaints.error("accept", "accept: %s; not accepting for up to %.2f s, or "
                              "until a connection closes", err.strerror or err,
                              self._brake_delay)
        self.stop_accepting()
        self._cancel_brake()
        self._brake_timer = self.loop.timer(self._brake_delay)
        self._brake_timer.start(self.unbrake)
        self._brake_delay = min(ACCEPT_BRAKE_MAX, self._brake_delay * 2)

    def unbrake(self) -> None:
        """Accept again, if braked (a connection closed, or the back-off ran out)."""
        if self._brake_timer is None:
            return
        self._cancel_brake()
        if self.started:
            self.start_accepting()

    def _cancel_brake(self) -> None:
        if self._brake_timer is not None:
            self._brake_timer.stop()
            self._brake_timer.close()
            self._brake_timer = None

    def stop(self, timeout=None) -> None:
        self._cancel_brake()
        super().stop(timeout=timeout)
