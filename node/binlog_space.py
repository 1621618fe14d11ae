"""The segment files of a binlog and the disk space they hold.

How this works
--------------
``SegmentFiles`` owns the files: the log (``segments``, oldest first, the
last one ``cur`` being written), *spares* allocated ahead, and segments
removed from the log but not yet unlinked (``_doomed``).  It does not read
or write records; ``binlog.Binlog`` builds the job log on top of it (and
keeps in each ``Segment`` the jobs whose home it is).

A segment is created whole: allocated (``posix_fallocate``) and given its
header, so writing inside it cannot meet a full disk.  Free space is counted
in *slots* of ``SLOT`` bytes, room for one DELETE record; ``_room(n, keep)``
makes cur able to take ``n`` bytes now while ``keep`` slots stay free across
cur and the spares, allocating a spare when needed; when cur is full it is
synced, cut back to what was written and closed, and the first spare
becomes cur.  A doomed segment is unlinked once the background sync that
covers what replaced it has completed (-f MS), or at once (-f 0: already
synced; -F: never synced).
"""

from __future__ import annotations

import errno
import logging
import os
import time

from . import binlog_format as F
from .binlog_io import OsIO, Syncer

log = logging.getLogger("bsnode")

MIN_SEGMENT_SIZE = 1024  # smaller -s values are raised to this
SLOT = F.SMALL_RECORD_MAX  # disk kept per live job for its DELETE record
ERROR_LOG_EVERY = 10.0  # seconds between repeats of the same complaint


class Segment:
    __slots__ = ("num", "path", "fd", "map", "size", "used", "order", "cursor", "live",
                 "max_id", "flags", "prev", "next", "prev_end")

    def __init__(self, num: int, path: str, fd: int, size: int, used: int) -> None:
        self.num = num
        self.path = path
        self.fd = fd  # -1 once closed
        self.map = None  # while it is cur: a writable map of the file, if the fs allows
        self.size = size  # bytes the file takes on disk
        self.used = used  # bytes written
        self.order: list = []  # jobs homed here, in write order (None once gone)
        self.cursor = 0  # order[:cursor] are all None
        self.live = 0  # jobs homed here
        self.max_id = 0  # highest id a record here names
        # the header's links (binlog_format): written when it becomes cur / is finished
        self.flags = 0
        self.prev = 0
        self.next = 0
        self.prev_end = 0


class SegmentFiles:
    def __init__(self, dirpath: str, segment_size: int, fsync_ms: int | None,
                 io: OsIO | None, background_sync: bool) -> None:
        self.dir = dirpath
        self.seg_size = max(segment_size, MIN_SEGMENT_SIZE)
        self.fsync_ms = fsync_ms
        self.io = io or OsIO()
        self.segments: list[Segment] = []  # oldest first; the last one is cur
        self.by_num: dict[int, Segment] = {}  # the segments of the log, by number
        self.cur: Segment | None = None
        self.spares: list[Segment] = []
        self.spare_slots = 0
        self.next_num = 1
        self.disk = 0  # bytes of segment files on disk
        # removed from the log; unlinked once the sync numbered with them is done
        self._doomed: list[tuple[int, Segment]] = []
        self.doomed_bytes = 0
        self._syncer = Syncer(self.io) if fsync_ms and background_sync else None
        self._failures = 0
        self._last_complaint = float("-inf")
        # bytes the writer may append to cur with no check (binlog_writer); -1: check all
        self._quick = -1

    def _room(self, n: int, keep: int) -> bool:
        """Make cur able to take ``n`` bytes now and still leave ``keep`` slots free."""
        while True:
            cur = self.cur
            free = cur.size - cur.used
            if free >= n:
                if (free - n) // SLOT + self.spare_slots >= keep:
                    return True
            elif self.spares and self.spares[0].size - self.spares[0].used >= n:
                nxt = self.spares[0]
                nfree = nxt.size - nxt.used
                if (nfree - n) // SLOT + self.spare_slots - nfree // SLOT >= keep:
                    self._roll()
                    return True
            else:  # a record bigger than a segment: the next spare grows to take it
                big = F.HEADER_SIZE + n + SLOT
                if not (self._grow_spare(self.spares[0], big) if self.spares
                        else self._add_spare(big)):
                    return False
                continue
            if not self._add_spare(self.seg_size):
                return False

    def _add_spare(self, size: int) -> bool:
        try:
            seg = self._open_segment(max(size, self.seg_size))
        except OSError as e:
            self._complain("cannot allocate a new segment", e)
            return False
        self.spares.append(seg)
        self.spare_slots += (seg.size - seg.used) // SLOT
        self._quick = -1  # more disk: the bound on disk use is checked again
        return True

    def _grow_spare(self, seg: Segment, size: int) -> bool:
        """Allocate more room in an unused spare.  (Not a new, bigger spare
        placed before it: segments are written in the order of their
        numbers, which is the order replay reads them in.)"""
        header = F.header(seg.num, seg.flags, seg.prev, seg.next, seg.prev_end)
        try:
            self.io.allocate(seg.fd, size)
            # allocating by writing zeros (no fallocate here) zeroed the header too
            self._write_rest(seg.fd, header, 0, self.io.pwrite(seg.fd, header, 0))
        except OSError as e:
            self._complain("cannot allocate a bigger segment", e)
            return False
        self.spare_slots += (size - seg.used) // SLOT - (seg.size - seg.used) // SLOT
        self.disk += size - seg.size
        seg.size = size
        self._quick = -1
        return True

    def _open_segment(self, size: int) -> Segment:
        num = self.next_num
        path = os.path.join(self.dir, f"binlog.{num}")
        io = self.io
        fd = io.create(path)
        try:
            io.allocate(fd, size)
            header = F.header(num)
            self._write_rest(fd, header, 0, io.pwrite(fd, header, 0))
            if self.fsync_ms is not None:
                io.fdatasync(fd)
                io.sync_dir(self.dir)
        except OSError:
            io.close(fd)
            try:
                io.unlink(path)
            except OSError:
                pass
            raise
        self.next_num = num + 1
        self.disk += size
        return Segment(num, path, fd, size, F.HEADER_SIZE)

    def _roll(self) -> None:
        """cur is full: close it and continue in the first spare."""
        old = self.cur
        nxt = self.spares.pop(0)
        self.spare_slots -= (nxt.size - nxt.used) // SLOT
        old.next = nxt.num
        self._link(old)  # synced by _close
        self._close(old)
        self.segments.append(nxt)
        self._make_current(nxt, old)

    def _make_current(self, seg: Segment, prev: Segment | None) -> None:
        """``seg`` is the segment written from now on; ``prev`` the one before it."""
        self.cur = seg
        self._quick = -1
        self.by_num[seg.num] = seg
        if prev is not None:
            seg.prev, seg.prev_end = prev.num, prev.used
            self._link(seg)
        try:
            seg.map = self.io.map(seg.fd, seg.size, self.dir)
        except (OSError, ValueError) as e:  # no map: pwrite works as well, slower
            log.warning("binlog: cannot map %s (%s); writing with pwrite", seg.path, e)
            seg.map = None

    def _link(self, seg: Segment) -> None:
        """Write ``seg``'s header again with its links (inside its allocated
        space, so no full disk can refuse it).  A failure costs replay its
        check of this link, nothing else: logged, not fatal."""
        header = F.header(seg.num, seg.flags, seg.prev, seg.next, seg.prev_end)
        try:
            self._write_rest(seg.fd, header, 0, self.io.pwrite(seg.fd, header, 0))
        except OSError as e:
            log.error("binlog: cannot write the links in the header of %s: %s", seg.path, e)

    def _close(self, seg: Segment) -> None:
        """Sync a finished segment and give back its unused tail."""
        io = self.io
        if seg.map is not None:
            seg.map.close()
            seg.map = None
        try:
            if self.fsync_ms is not None:
                io.fdatasync(seg.fd)
            io.truncate(seg.fd, seg.used)
            self.disk -= seg.size - seg.used
            seg.size = seg.used
        except OSError as e:
            log.error("binlog: closing %s: %s", seg.path, e)
        io.close(seg.fd)
        seg.fd = -1

    def _discard(self, seg: Segment) -> None:
        """Remove an unused spare."""
        try:
            self.io.close(seg.fd)
            self.io.unlink(seg.path)
            self.disk -= seg.size
        except OSError as e:
            log.error("binlog: removing spare %s: %s", seg.path, e)

    def _unlink_doomed(self, everything: bool = False) -> None:
        if not self._doomed:
            return
        done = self._syncer.done if self._syncer is not None else float("inf")
        due = [seg for number, seg in self._doomed if everything or number <= done]
        if not due:
            return
        self._doomed = [(n, seg) for n, seg in self._doomed if seg not in due]
        for seg in due:
            self.doomed_bytes -= seg.size
            try:
                if seg.fd >= 0:
                    self.io.close(seg.fd)
                    seg.fd = -1
                self.io.unlink(seg.path)
                self.disk -= seg.size
            except FileNotFoundError:
                self.disk -= seg.size
            except OSError as e:
                log.error("binlog: cannot remove %s: %s", seg.path, e)
        if self.fsync_ms is not None:
            try:
                self.io.sync_dir(self.dir)
            except OSError as e:
                log.error("binlog: syncing %s: %s", self.dir, e)

    def _write_rest(self, fd: int, data: bytes, at: int, done: int) -> None:
        """After a pwrite of ``data`` at ``at`` that wrote ``done`` bytes: write
        the rest (pwrite may write less than asked), or raise OSError."""
        view = memoryview(data)
        while done < len(data):
            n = self.io.pwrite(fd, view[done:], at + done)
            if n <= 0:
                raise OSError(errno.EIO, f"short write ({done} of {len(data)} bytes)")
            done += n

    def _complain(self, what: str, err: OSError) -> None:
        self._failures += 1
        self._quick = -1
        now = time.monotonic()
        if now - self._last_complaint >= ERROR_LOG_EVERY:
            self._last_complaint = now
            log.error("binlog: %s: %s; puts are answered OUT_OF_MEMORY and writes retried "
                      "until the disk takes them (%d failures so far)",
                      what, err.strerror or err, self._failures)
