"""Reading a binlog directory back: which jobs are live, and where the damage is.

How this works
--------------
Segments are read whole, in order of their number.  One pass over each
checks every frame (length, CRC) on the bytes while msgpack's C unpacker,
fed the rest of the segment, decodes the same frames as (length, crc,
record) triples (``_read``).  Records are applied to a dict ``live``: id ->
``[full record (updated in place), full frame size, last update frame size,
segment index]``, kept in the order of each job's latest record, so
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
import zlib
from dataclasses import dataclass, field

import msgpack
from bsclient.protocol import U32_MAX

from . import binlog_format as F

log = logging.getLogger("bsnode")

SEGMENT_NAME = re.compile(r"binlog\.(\d+)$")
PROGRESS_MIN_BYTES = 32 << 20  # logs smaller than this replay silently
PROGRESS_EVERY = 1.0  # seconds between progress lines


class LogError(Exception):
    """The log cannot be read; the message names the file."""


class CorruptLog(LogError):
    """Damage in the middle of the log."""

    def __init__(self, path: str, offset: int, reason: str, follows: bool = False) -> None:
        # "valid records follow" only where they do: it is why damage in the
        # middle is refused, while a foreign file or a record whose CRC is
        # right but whose fields are wrong is refused whatever follows it.
        tail = " and valid records follow, so this is not a torn last write" if follows else ""
        super().__init__(
            f"binlog {path} is damaged at offset {offset} ({reason}){tail}; refusing to start")
        self.path = path
        self.offset = offset
        self.reason = reason
        self.follows = follows


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
    marks: int = 0  # how many of them are not about a job (MARK, HEAD)
    max_id: int = 0  # highest id named by a record (or a MARK) in it
    header: F.Header | None = None  # None: no valid header (a torn or foreign file)


@dataclass
class Replay:
    segments: list[SegmentInfo] = field(default_factory=list)
    live: dict = field(default_factory=dict)
    max_id: int = 0
    records: int = 0
    torn: list[Damage] = field(default_factory=list)
    skipped: list[Damage] = field(default_factory=list)
    tubes: set = field(default_factory=set)  # tube names seen, all valid
    head: int = 0  # the latest HEAD record: segments below it are not needed
    lost: list[str] = field(default_factory=list)  # missing or cut segments, when recovering


def list_segments(dirpath: str) -> list[tuple[int, str]]:
    """The ``binlog.N`` files in ``dirpath``, by N."""
    found = []
    for name in os.listdir(dirpath):
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(dirpath, name)))
    found.sort()
    return found


def replay(dirpath: str, recover: bool = False, max_segment: int | None = None) -> Replay:
    """Read every segment of the binlog in ``dirpath``.

    A file bigger than ``max_segment`` (the biggest segment a node writes) is
    refused before it is read: a sparse file may claim any size."""
    r = Replay()
    files = list_segments(dirpath)
    sizes = {p: os.path.getsize(p) for _, p in files}
    if max_segment is not None:
        for _, p in files:
            if sizes[p] > max_segment:
                raise LogError(f"binlog {p} is {sizes[p]} bytes, bigger than any segment "
                               f"bsnode writes ({max_segment} at most); refusing to start")
    total = sum(sizes.values())
    progress = _Progress(total) if total >= PROGRESS_MIN_BYTES else None
    pending: list[Damage] = []  # damage not yet known to be torn or corrupt
    for index, (num, path) in enumerate(files):
        with open(path, "rb") as f:
            data = f.read()
        info = SegmentInfo(num, path, len(data), 0)
        r.segments.append(info)
        _segment(r, info, index, data, pending, recover)
        if progress is not None:
            progress.advance(len(data), r.records)
    r.torn = pending
    check_links(r, recover)
    return r


def _segment(r: Replay, info: SegmentInfo, index: int, data: bytes, pending: list[Damage],
             recover: bool) -> None:
    """Apply one segment's records; note its damage in ``pending``."""
    num, path = info.num, info.path
    try:
        hdr = F.read_header(data)
        if hdr.num != num:
            raise F.FormatError(0, f"header does not say segment {num}")
        info.header = hdr
        pos = hdr.size
    except F.FormatError as e:
        nz = F.nonzero_end(data, 0)
        # a crash while the segment was created: a prefix of its first header
        torn_header = nz < F.HEADER_SIZE and data[:nz] == F.header(num)[:nz]
        nxt = F.next_frame(data, 0)
        if not torn_header and nxt == -1:
            # not ours at all (a beanstalkd binlog, say): never treat as a torn tail
            raise CorruptLog(path, 0, e.reason) from None
        end = nxt if nxt != -1 else nz
        pending.append(Damage(index, path, 0, end, data[:end], whole_file=True))
        if nxt == -1:
            return
        pos = nxt
    while True:
        if pending and F.frame_end(data, pos, len(data)) != -1:
            _corrupt(r, pending, recover)  # valid records after the damage
        pos = _read(r, info, index, data, pos)
        info.end = max(info.end, pos)
        nz = F.nonzero_end(data, pos)
        if nz == pos:  # a clean end (zeros are space not written yet)
            return
        nxt = F.next_frame(data, pos + 1)
        end = nxt if nxt != -1 else nz
        pending.append(Damage(index, path, pos, end, data[pos:end]))
        if nxt == -1:
            return
        pos = nxt


def _corrupt(r: Replay, pending: list[Damage], recover: bool) -> None:
    d = pending[0]
    reason = "bad header" if d.whole_file else "not a valid record"
    if not recover:
        raise CorruptLog(d.path, d.offset, reason, follows=True)
    for d in pending:
        log.warning("binlog: skipping %d damaged bytes in %s at offset %d (recovery asked for)",
                    d.end - d.offset, d.path, d.offset)
    r.skipped.extend(pending)
    pending.clear()


def _read(r: Replay, info: SegmentInfo, index: int, data: bytes, pos: int) -> int:
    """Apply the valid frames from ``pos`` on; returns the offset where they stop.

    One pass: each frame's length and CRC are checked on the bytes while
    msgpack's C unpacker, fed the whole rest of the segment, decodes the same
    frames as (length, crc, record) triples; the two must agree.  A frame
    whose CRC is right but whose record is not well formed is corruption.
    """
    end = len(data)
    limit = end - F.FRAME_SIZE
    view = memoryview(data)
    unpack_from = F.FRAME.unpack_from
    crc32 = zlib.crc32
    tag = F.FRAME_TAG
    hs = F.FRAME_SIZE
    start = pos
    up = msgpack.Unpacker(max_buffer_size=max(end - pos, 1), **F.UNPACK_LIMITS)
    up.feed(view[pos:])
    nxt = up.__next__
    skip_header = up.read_bytes
    live = r.live
    pop = live.pop
    u32 = U32_MAX
    tubes = r.tubes
    full, update, delete, mark, head = F.FULL, F.UPDATE, F.DELETE, F.MARK, F.HEAD
    max_id = info.max_id
    seen = r.max_id  # the highest id of the segments before
    count = 0
    while pos <= limit:
        tag1, length, tag2, crc = unpack_from(data, pos)
        body = pos + hs
        stop = body + length
        if (tag1 != tag or tag2 != tag or length == 0 or stop > end
                or crc32(view[body:stop]) != crc):
            break
        try:
            skip_header(hs)
            rec = nxt()
            kind = rec[0]
            jid = rec[1]
            # The rules of binlog_format.problem(), inline and cheap: any doubt
            # goes to the careful path below, which names the frame and field.
            # (msgpack ints are within -2**63..2**64-1 already; OR-ing ints is
            # negative iff one of them is, and over u32 iff one of them is.)
            if kind == full:
                _, _, tube, pri, delay, ttr, body, state, dl, cr, c1, c2, c3, c4, c5 = rec
                if (body.__class__ is not bytes
                        or not (int is jid.__class__ is pri.__class__ is delay.__class__
                                is ttr.__class__ is state.__class__ is dl.__class__
                                is cr.__class__ is c1.__class__ is c2.__class__
                                is c3.__class__ is c4.__class__ is c5.__class__)
                        or (small := pri | delay | ttr | c1 | c2 | c3 | c4 | c5) > u32
                        or (small | dl | cr) < 0 or jid <= 0 or ttr == 0 or not 0 < state <= 4
                        or tube not in tubes and not _new_tube(tube, tubes)):
                    raise ValueError("malformed full record")
                if jid <= max_id or jid <= seen:  # seen before: moved (compaction)
                    pop(jid, None)
                live[jid] = [rec, stop - pos, 0, index]
            elif kind == update:
                _, _, pri, delay, state, dl, c1, c2, c3, c4, c5 = rec
                if (not (int is jid.__class__ is pri.__class__ is delay.__class__
                         is state.__class__ is dl.__class__ is c1.__class__ is c2.__class__
                         is c3.__class__ is c4.__class__ is c5.__class__)
                        or (small := pri | delay | c1 | c2 | c3 | c4 | c5) > u32
                        or (small | dl) < 0 or jid <= 0 or not 0 < state <= 4):
                    raise ValueError("malformed update record")
                e = pop(jid, None)
                if e is not None:
                    job = e[0]
                    job[3] = rec[2]
                    job[4] = rec[3]
                    job[7] = rec[4]
                    job[8] = rec[5]
                    job[10:15] = rec[6:11]
                    e[2] = stop - pos
                    live[jid] = e
            elif kind == delete and len(rec) == 2 and jid.__class__ is int and jid > 0:
                pop(jid, None)
            elif kind == mark and len(rec) == 2 and jid.__class__ is int and jid > 0:
                jid -= 1  # ids below rec[1] were issued
                info.marks += 1
            elif kind == head and len(rec) == 2 and jid.__class__ is int and 0 < jid <= u32:
                if jid > r.head:
                    r.head = jid
                info.marks += 1
                jid = 0  # a segment number, not an id
            else:
                raise ValueError("unknown record")
            if jid > max_id:
                max_id = jid
        except Exception:  # noqa: BLE001 - whatever it was, name the frame
            _name_bad_frame(info.path, data, start, stop)
        count += 1
        pos = stop
    if up.tell() != pos - start:  # a record that was not exactly its frame
        _name_bad_frame(info.path, data, start, pos)
    info.records += count
    info.max_id = max_id
    r.records += count
    r.max_id = max(r.max_id, max_id)
    return pos


class IncompleteLog(LogError):
    """A segment the log needs is missing, or lost its end."""


def check_links(r: Replay, recover: bool) -> None:
    """Check that every segment the log still needs is there, whole.

    Each segment's header names the one written before it and where that
    one's records end (``prev``, ``prev_end``), and the one written after it
    once it is finished (``next``); HEAD records say which segments
    compaction removed (those below ``r.head``).  So every segment a link
    names, down to the head, must be present, with records up to where the
    link says (a ``next`` may be gone only if a later start linked past it).  A missing, emptied or cut segment is refused
    (IncompleteLog, naming the file), or with ``recover`` logged, counted in
    ``r.lost``, and started past.  Format 1 segments carry no links.  The
    newest segment itself cut at a record boundary (down to its header)
    cannot be told from a crash: its end is where the last write stopped.
    """
    present = {info.num: info for info in r.segments if info.header is not None}
    named = {info.num for info in r.segments}
    problems: list[str] = []
    floor = r.head
    if floor and floor not in named:
        problems.append(f"binlog.{floor} is missing (the log says segments from "
                        f"{floor} on are needed)")
    for info in r.segments:
        hdr = info.header
        if hdr is None or hdr.num < floor:
            continue
        if hdr.prev and hdr.prev >= floor:
            problems.extend(_link_problems(r, info, present, named))
    followed = {info.header.prev for info in r.segments if info.header is not None}
    for info in r.segments:
        hdr = info.header
        # a finished segment names the next; that one may be gone only if it
        # held nothing (removed at a start, which linked the new segment here)
        if (hdr is not None and hdr.num >= floor and hdr.next and hdr.next not in named
                and hdr.num not in followed):
            problems.append(f"binlog.{hdr.next} is missing (the log continued in it after "
                            f"{info.path})")
    for info in r.segments:  # named by a link but not a segment any more (emptied)
        if info.header is None and any(
                i.header is not None and info.num in (i.header.prev, i.header.next)
                and info.num >= floor for i in r.segments):
            problems.append(f"{info.path} lost its header and records (it was written: "
                            f"the next segment names it)")
    if not problems:
        return
    if not recover:
        raise IncompleteLog(f"binlog in {os.path.dirname(r.segments[0].path) or '.'} is "
                            f"incomplete: {'; '.join(problems)}; refusing to start")
    for p in problems:
        log.warning("binlog: %s; starting without it (recovery asked for)", p)
    r.lost.extend(problems)


def _link_problems(r: Replay, info: SegmentInfo, present: dict, named: set) -> list[str]:
    hdr = info.header
    prev = present.get(hdr.prev)
    if prev is None:
        if hdr.prev in named:
            return []  # there, but with no header: reported as emptied by the caller
        return [f"binlog.{hdr.prev} is missing ({info.path} was written after it)"]
    if prev.end < hdr.prev_end:
        return [f"{prev.path} lost its end: its records stop at offset {prev.end}, but "
                f"{info.path} was begun after it reached {hdr.prev_end} "
                f"({hdr.prev_end - prev.end} bytes of records lost)"]
    return []


def save_damage(damage: list[Damage], kind: str, truncate: bool, sync: bool) -> None:
    """Save damaged bytes beside the log; for a torn tail, cut it off."""
    for d in damage:
        if not d.data:  # a segment created, then the crash: nothing to keep
            if truncate and d.whole_file:
                os.unlink(d.path)
            continue
        saved = f"{d.path}.{kind}-at-{d.offset}"
        n = 0
        while os.path.exists(saved):
            n += 1
            saved = f"{d.path}.{kind}-at-{d.offset}.{n}"
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, d.data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if truncate:
            if d.whole_file:
                os.unlink(d.path)
            else:
                fd = os.open(d.path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, d.offset)
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            log.warning("binlog: %s ends in a torn record at offset %d (a crash mid-write): "
                        "cut %d bytes, saved in %s", d.path, d.offset, len(d.data), saved)
        else:
            log.warning("binlog: %d damaged bytes of %s at offset %d saved in %s",
                        len(d.data), d.path, d.offset, saved)
    if damage and sync:
        dirs = {os.path.dirname(d.path) for d in damage}
        for dirpath in dirs:
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _new_tube(name, tubes: set) -> bool:
    """Is ``name`` a valid tube name?  Valid ones are remembered in ``tubes``."""
    if name.__class__ is not str or not F.tube_ok(name):
        return False
    tubes.add(name)
    return True


def _name_bad_frame(path: str, data: bytes, start: int, stop: int) -> None:
    """Raise CorruptLog for the first frame in [start, stop) whose record is malformed."""
    sizes, _ = F.scan_frames(data, start)
    for at in F.offsets(start, sizes):
        if at >= stop:
            break
        try:
            F.decode_one(data, at)
        except F.FormatError as e:
            after = F.frame_end(data, at, len(data))
            follows = after != -1 and F.next_frame(data, after) != -1
            raise CorruptLog(path, at, e.reason, follows) from None
    follows = stop < len(data) and F.next_frame(data, stop) != -1
    raise CorruptLog(path, start, "records do not line up with their frames", follows)


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
