"""The store's write-ahead log, as the store and the server see it: ``Wal``.

How this works
--------------
The store hands every change that must survive a restart to ``store.wal``
(``put``, ``update``, ``delete``) and shows ``file_of`` and ``stats`` in its
replies; the server asks it one question before it serves, ``reply_sync``:
must each reply wait for a sync first (``-f 0``)?  If so the answer is a
``GroupSync``, which the server drives from its own greenlets (one fdatasync
for every write made while the previous one ran); otherwise None, and the
log keeps whatever sync policy it has to itself.  ``NullWal`` (no ``-b``)
takes every write and keeps nothing; ``binlog.Binlog`` is the real one.
"""

from __future__ import annotations

from typing import Protocol


class GroupSync(Protocol):
    """A log whose replies wait for a sync the server runs (group commit)."""

    io: object  # the log's file operations (binlog.fileio.OsIO): fdatasync
    records_written: int  # records written so far
    synced: int  # records_written as of the start of the last good sync

    def sync_start(self) -> tuple[int, int]:
        """(a descriptor of its own for a worker thread to sync and close,
        records_written as that sync covers them); OSError without one."""

    def sync_here(self) -> int:
        """Sync on the caller's thread; returns records_written as covered."""

    def sync_done(self, upto: int, err: OSError | None) -> None:
        """The sync begun at ``upto`` ended (``err`` if it failed)."""


class Wal(Protocol):
    """What the store and the server use of a write-ahead log."""

    def put(self, job, now: float) -> bool:
        """Log a new job before it is acknowledged; False: refused (disk)."""

    def update(self, job, now: float) -> bool:
        """Log a state change; False: not on disk (retried later)."""

    def delete(self, job) -> bool:
        """Log a deletion (never refused for lack of space)."""

    def file_of(self, job) -> int:
        """The number of the file holding the job's record (0: none)."""

    def stats(self) -> dict:
        """The binlog-* figures for stats."""

    def reply_sync(self) -> GroupSync | None:
        """Asked once before serving: what replies wait on, if anything."""

    def close(self) -> None:
        """Write what is owed, sync, let go of the files."""


class NullWal:
    """No binlog: every write succeeds and nothing is kept."""

    def put(self, job, now: float) -> bool:
        return True

    def update(self, job, now: float) -> bool:
        return True

    def delete(self, job) -> bool:
        return True

    def file_of(self, job) -> int:
        return 0

    def stats(self) -> dict:
        return {}

    def reply_sync(self) -> None:
        return None

    def close(self) -> None:
        pass
