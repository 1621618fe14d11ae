"""Reading a binlog directory back: which jobs are live, and where the damage is.

How this works
--------------
Segments are read whole, in order of their number.  For each one the frames
are checked (length and CRC) up to the first bytes that are not a valid
frame, and the checked run is decoded in one go by msgpack's C unpacker
(``binlog_format.decode``).  Records are applied to a dict ``live``: id ->
``[full record (updated in place), segment index, full frame size, last
update frame size]``, kept in the order of each job's latest record, so
buried jobs come back in the order they were buried.

Damage is judged by what follows it.  Bytes that are not a valid frame,
with no valid frame anywhere after them in the log, are a torn tail (a
crash in the middle of a write): they are reported in ``torn`` for the
caller to cut off.  Damage followed by valid frames is corruption in the
middle of the log: ``replay`` raises ``CorruptLog`` naming the file and
offset, unless ``recover`` is set, in which case the damaged bytes are
skipped (and reported in ``skipped``) and reading goes on at the next valid
frame.  Zeros at the end of a segment are unused space, not damage.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field

from . import binlog_format as F

log = logging.getLogger("bsnode")

SEGMENT_NAME = re.compile(r"binlog\.(\d+)$")
PROGRESS_MIN_BYTES = 32 << 20  # logs smaller than this replay silently
PROGRESS_EVERY = 1.0  # seconds between progress lines


class CorruptLog(Exception):
    """Damage in the middle of the log."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"binlog {path} is damaged at offset {offset} ({reason}) and valid records "
            "follow, so this is not a torn last write; refusing to start")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass
class Damage:
    """A stretch of bytes that are not records."""

    index: int  # which segment (position in Replay.segments)
    path: str
    offset: int
    end: int
    data: bytes
    whole_file: bool = False  # the header itself is torn: the file is all damage


@dataclass
class SegmentInfo:
    num: int
    path: str
    size: int  # bytes in the file
    end: int  # end of the last valid record
    records: int = 0
    max_id: int = 0  # highest id named by a record (or a MARK) in it


@dataclass
class Replay:
    segments: list[SegmentInfo] = field(default_factory=list)
    live: dict = field(default_factory=dict)
    max_id: int = 0
    records: int = 0
    torn: list[Damage] = field(default_factory=list)
    skipped: list[Damage] = field(default_factory=list)


def list_segments(dirpath: str) -> list[tuple[int, str]]:
    """The ``binlog.N`` files in ``dirpath``, by N."""
    found = []
    for name in os.listdir(dirpath):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(dirpath, name)))
    found.sort()
    return found


def replay(dirpath: str, recover: bool = False) -> Replay:
    """Read every segment of the binlog in ``dirpath``."""
    r = Replay()
    files = list_segments(dirpath)
    total = sum(os.path.getsize(p) for _, p in files)
    progress = _Progress(total) if total >= PROGRESS_MIN_BYTES else None
    pending: list[Damage] = []  # damage not yet known to be torn or corrupt
    for index, (num, path) in enumerate(files):
        with open(path, "rb") as f:
            data = f.read()
        info = SegmentInfo(num, path, len(data), 0)
        r.segments.append(info)
        for start, sizes, damage in _runs(data, num, index, path):
            if sizes:
                if pending:
                    _corrupt(r, pending, recover)
                _apply(r, info, index, data, start, sizes)
            info.end = max(info.end, start + sum(sizes))
            if damage is not None:
                pending.append(damage)
        if progress is not None:
            progress.advance(len(data), r.records)
    r.torn = pending
    return r


def _runs(data: bytes, num: int, index: int, path: str):
    """Yield (start, frame sizes, damage after them or None) for one segment."""
    try:
        if F.parse_header(data) != num:
            raise F.FormatError(0, f"header does not say segment {num}")
        pos = F.HEADER_SIZE
    except F.FormatError as e:
        nz = F.nonzero_end(data, 0)
        torn_header = nz < F.HEADER_SIZE and data[:nz] == F.header(num)[:nz]
        if not torn_header and F.next_frame(data, 0) == -1:
            # not ours at all (a beanstalkd binlog, say): never treat as a torn tail
            raise CorruptLog(path, 0, e.reason) from None
        nxt = F.next_frame(data, 0)
        yield 0, [], Damage(index, path, 0, nxt if nxt != -1 else nz,
                            data[:nxt if nxt != -1 else nz], whole_file=True)
        if nxt == -1:
            return
        pos = nxt
    while True:
        sizes, stop = F.scan_frames(data, pos)
        nz = F.nonzero_end(data, stop)
        if nz == stop:  # clean end (possibly zeros)
            yield pos, sizes, None
            return
        nxt = F.next_frame(data, stop + 1)
        end = nxt if nxt != -1 else nz
        yield pos, sizes, Damage(index, path, stop, end, data[stop:end])
        if nxt == -1:
            return
        pos = nxt


def _corrupt(r: Replay, pending: list[Damage], recover: bool) -> None:
    d = pending[0]
    reason = "bad header" if d.whole_file else "not a valid record"
    if not recover:
        raise CorruptLog(d.path, d.offset, reason)
    for d in pending:
        log.warning("binlog: skipping %d damaged bytes in %s at offset %d (recovery asked for)",
                    d.end - d.offset, d.path, d.offset)
    r.skipped.extend(pending)
    pending.clear()


def _apply(r: Replay, info: SegmentInfo, index: int, data: bytes, start: int,
           sizes: list[int]) -> None:
    try:
        records = F.decode(data, start, sizes)
    except F.FormatError as e:
        raise CorruptLog(info.path, e.offset, e.reason) from None
    live = r.live
    pop = live.pop
    max_id = 0
    full, update, delete = F.FULL, F.UPDATE, F.DELETE
    for rec, size in zip(records, sizes, strict=True):
        kind = rec[0]
        jid = rec[1]
        if kind == full:
            pop(jid, None)
            live[jid] = [rec, index, size, 0]
        elif kind == update:
            e = pop(jid, None)
            if e is not None:
                job = e[0]
                job[3] = rec[2]
                job[4] = rec[3]
                job[7] = rec[4]
                job[8] = rec[5]
                job[10:15] = rec[6:11]
                e[3] = size
                live[jid] = e
        elif kind == delete:
            pop(jid, None)
        else:  # MARK: ids below rec[1] were issued
            jid -= 1
        if jid > max_id:
            max_id = jid
    info.records += len(records)
    info.max_id = max(info.max_id, max_id)
    r.records += len(records)
    r.max_id = max(r.max_id, max_id)


class _Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = self.last = time.monotonic()
        log.info("binlog: replaying %.1f MB", total / 1e6)

    def advance(self, nbytes: int, records: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY or self.done >= self.total:
            self.last = now
            log.info("binlog: replayed %d%% (%d records, %.1f s)",
                     100 * self.done // max(self.total, 1), records, now - self.started)
