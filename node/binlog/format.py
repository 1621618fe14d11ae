"""The on-disk format of bsnode's binlog: segment headers, framed msgpack records.

How this works
--------------
A binlog is a directory of segment files ``binlog.N`` (N = 1, 2, ...), read in
order of N.  Every segment starts with a 32-byte header (format 2)::

    magic     8 bytes  b"BSNWAL\\r\\n"   (the CRLF catches text-mode mangling)
    u16       version  FORMAT_VERSION, big-endian
    u16       flags    0
    u32       N        the segment's own number
    u32       prev     the segment written before this one, 0 if none (or unknown)
    u32       next     the segment written after this one, 0 while it is written
    u64       prev_end where prev's records end (its size once finished)

``prev``/``prev_end`` are filled in when the segment becomes the one being
written, ``next`` when it is finished: the links let replay tell a segment
that was removed (compaction) from one that went missing, or lost its end.
Format 1 segments (16 bytes: magic, version, flags, N) are still read; they
carry no links.

followed by records, each one frame::

    0xCE  u32 length   (big-endian; msgpack's own uint32 encoding)
    0xCE  u32 crc32    (zlib CRC-32 of the payload)
    payload            one msgpack array, ``length`` bytes

so a segment after its header is a plain msgpack stream (length, crc,
record, length, crc, record, ...) that msgpack's C unpacker reads at full
speed once the CRCs are checked.  The two 0xCE bytes also let a scan
re-synchronise after damage.  A segment may end in zeros (space the writer
allocated and has not used yet): a zero byte where a frame should start is
the end of the data, provided nothing valid follows.

Records (the first element says which):

    FULL    [1, id, tube, pri, delay, ttr, body, state, deadline_ms,
             created_ms, reserves, timeouts, releases, buries, kicks]
    UPDATE  [2, id, pri, delay, state, deadline_ms,
             reserves, timeouts, releases, buries, kicks]
    DELETE  [3, id]
    MARK    [4, next_id]        ids below next_id have been issued
    HEAD    [5, N]              segments below N are no longer needed (format 2)

``deadline_ms`` is the wall-clock time (ms since the epoch) at which a
delayed job becomes ready, 0 otherwise; ``created_ms`` the wall-clock time
the job was put.  ``state`` is a STATE_* code.  A FULL record is written when
a job is put and again when compaction moves it; UPDATE after each state
change; DELETE when it goes.  Replay applies them in order: an UPDATE or
DELETE for an id with no FULL record seen is ignored (its FULL record was in
a segment already removed, so the job was moved or deleted since).

A reader trusts nothing: payloads are decoded with explicit limits (no maps,
no extensions, short arrays) and every field must have the type and range a
put could have made (``problem``); a right CRC over a wrong field is damage.

Nothing here touches files or the store: bytes in, records out.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack
from bsclient.protocol import (
    MAX_JOB_SIZE_LIMIT,
    MAX_TUBE_NAME,
    U32_MAX,
    U64_MAX,
    valid_tube_name,
)

from ..lifecycle import BURIED, DELAYED, READY, RESERVED

MAGIC = b"BSNWAL\r\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER = struct.Struct(">8sHHIIIQ")
HEADER_SIZE = HEADER.size  # 32: where a new segment's records start
HEADER_V1 = struct.Struct(">8sHHI")  # format 1: no links
FRAME = struct.Struct(">BIBI")
FRAME_SIZE = FRAME.size  # 10
FRAME_TAG = 0xCE

FULL, UPDATE, DELETE, MARK, HEAD = 1, 2, 3, 4, 5
RECORD_NAMES = {FULL: "full", UPDATE: "update", DELETE: "delete", MARK: "mark", HEAD: "head"}
RECORD_LENGTHS = {FULL: 15, UPDATE: 11, DELETE: 2, MARK: 2, HEAD: 2}

STATE_READY, STATE_DELAYED, STATE_BURIED, STATE_RESERVED = 1, 2, 3, 4
# the job states (node/lifecycle.py owns them) as the log writes them
STATE_CODES = {READY: STATE_READY, DELAYED: STATE_DELAYED,
               BURIED: STATE_BURIED, RESERVED: STATE_RESERVED}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}

# Largest DELETE (or MARK) frame: [3, id] with id a uint64.
SMALL_RECORD_MAX = FRAME_SIZE + 1 + 1 + 9
# No payload is larger than the biggest job body plus its fields.
MAX_PAYLOAD = MAX_JOB_SIZE_LIMIT + 4096

UNPACK_LIMITS = dict(
    raw=False,
    max_bin_len=MAX_JOB_SIZE_LIMIT,
    max_str_len=MAX_TUBE_NAME * 4,
    max_array_len=16,
    max_map_len=0,
    max_ext_len=0,
)


class FormatError(Exception):
    """Bytes that are not a valid record where one should be."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


# --- writing ------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    num: int
    version: int
    size: int  # where the records start
    flags: int = 0
    prev: int = 0  # 0: none, or not known (format 1)
    next: int = 0
    prev_end: int = 0


def header(num: int, flags: int = 0, prev: int = 0, next_num: int = 0,
           prev_end: int = 0) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, flags, num, prev, next_num, prev_end)


def frame(payload: bytes) -> bytes:
    return FRAME.pack(FRAME_TAG, len(payload), FRAME_TAG, zlib.crc32(payload)) + payload


# A new job's FULL record, the one record every put writes, is built with
# ``struct`` rather than msgpack's packer (a third of the instructions): the
# same array in fixed-width msgpack types, which any msgpack reader decodes
# to the same values.  ``full_head(tube)`` packs its start, up to the body's
# bin32 header (marker, id, tube, pri, delay, ttr, body length); ``FULL_TAIL``
# its end (state, deadline_ms, created_ms; the five counters of a new job
# are 0, the pad bytes).
FULL_TAIL = struct.Struct(">BBQBQ5x")  # state, 0xCF, deadline_ms, 0xCF, created_ms, zeros
FULL_MARK = bytes((0x9F, FULL, 0xCF))  # array of 15, FULL, uint64 tag of the id


def full_head(tube: str):
    """(pack, name) for the start of a new job's FULL payload in ``tube``, packed
    as ``pack(FULL_MARK, id, name, 0xCE, pri, 0xCE, delay, 0xCE, ttr, 0xC6, len(body))``
    (``name`` is the tube's msgpack str)."""
    name = msgpack.packb(tube)
    return struct.Struct(f">3sQ{len(name)}sBIBIBIBI").pack, name


def mark(next_id: int) -> bytes:
    return frame(msgpack.packb((MARK, next_id)))


def head(first_needed: int) -> bytes:
    """HEAD: segments numbered below ``first_needed`` are no longer needed."""
    return frame(msgpack.packb((HEAD, first_needed)))


# A DELETE record, [3, id], in fixed-width msgpack: always SMALL_RECORD_MAX bytes framed.
DELETE_PAYLOAD = struct.Struct(">3sQ")
DELETE_MARK = bytes((0x92, DELETE, 0xCF))  # array of 2, DELETE, uint64 tag of the id


def delete(job_id: int) -> bytes:
    return frame(DELETE_PAYLOAD.pack(DELETE_MARK, job_id))


# --- reading ------------------------------------------------------------------
def read_header(data: bytes) -> Header:
    """``data``'s header (format 1 or 2); FormatError if it has none."""
    if len(data) < HEADER_V1.size:
        raise FormatError(0, f"short header ({len(data)} bytes)")
    magic, version, flags, num = HEADER_V1.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(0, "not a bsnode binlog segment (bad magic)")
    if version not in READABLE_VERSIONS:
        raise FormatError(0, f"unsupported format version {version}")
    if version == 1:
        return Header(num, 1, HEADER_V1.size, flags)
    if len(data) < HEADER_SIZE:
        raise FormatError(0, f"short header ({len(data)} bytes)")
    _, _, _, _, prev, next_num, prev_end = HEADER.unpack_from(data)
    return Header(num, version, HEADER_SIZE, flags, prev, next_num, prev_end)


def parse_header(data: bytes) -> int:
    """The segment number in ``data``'s header; FormatError if it has none."""
    return read_header(data).num


def frame_end(data, pos: int, end: int) -> int:
    """End offset of a valid frame starting at ``pos``, or -1."""
    if pos + FRAME_SIZE > end:
        return -1
    tag1, length, tag2, crc = FRAME.unpack_from(data, pos)
    if tag1 != FRAME_TAG or tag2 != FRAME_TAG or not 0 < length <= MAX_PAYLOAD:
        return -1
    stop = pos + FRAME_SIZE + length
    if stop > end or zlib.crc32(memoryview(data)[pos + FRAME_SIZE:stop]) != crc:
        return -1
    return stop


def scan_frames(data, start: int = HEADER_SIZE) -> tuple[list[int], int]:
    """Check frames from ``start``; returns (frame sizes, offset where they stop).

    They stop at the end of ``data`` or at the first bytes that are not a
    valid frame (zeros, a torn write, damage).
    """
    sizes = []
    add = sizes.append
    unpack_from = FRAME.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    end = len(data)
    pos = start
    limit = end - FRAME_SIZE
    while pos <= limit:
        tag1, length, tag2, crc = unpack_from(data, pos)
        body = pos + FRAME_SIZE
        stop = body + length
        if (tag1 != FRAME_TAG or tag2 != FRAME_TAG or length == 0 or stop > end
                or crc32(view[body:stop]) != crc):
            break
        add(stop - pos)
        pos = stop
    return sizes, pos


def next_frame(data, start: int) -> int:
    """Offset of the first valid frame at or after ``start``, or -1."""
    end = len(data)
    pos = data.find(FRAME_TAG, start)
    while pos != -1:
        if frame_end(data, pos, end) != -1:
            return pos
        pos = data.find(FRAME_TAG, pos + 1)
    return -1


def decode(data, start: int, sizes: list[int]) -> list:
    """The records of the checked frames of ``sizes`` from ``start``, in order.

    Fast path: those frames are one msgpack stream of (length, crc, record)
    triples.  Raises FormatError naming the first frame whose payload is not
    one well-formed record.
    """
    if not sizes:
        return []
    stop = start + sum(sizes)
    up = msgpack.Unpacker(max_buffer_size=stop - start, **UNPACK_LIMITS)
    try:
        up.feed(memoryview(data)[start:stop])
        objs = list(up)
    except Exception:  # noqa: BLE001 - any decoding failure: find the frame below
        objs = None
    if objs is not None and len(objs) == 3 * len(sizes):
        records = objs[2::3]
        if _shapes_ok(records):
            return records
    return [decode_one(data, pos) for pos in offsets(start, sizes)]


def offsets(start: int, sizes: list[int]) -> list[int]:
    """Frame offsets from the first one and the sizes."""
    out = [start]
    for size in sizes[:-1]:
        out.append(out[-1] + size)
    return out


def decode_one(data, pos: int) -> list:
    """The record in the (checked) frame at ``pos``; FormatError if malformed."""
    _, length, _, _ = FRAME.unpack_from(data, pos)
    payload = bytes(memoryview(data)[pos + FRAME_SIZE:pos + FRAME_SIZE + length])
    try:
        rec = msgpack.unpackb(payload, **UNPACK_LIMITS)
    except Exception as e:  # noqa: BLE001
        # some msgpack errors (the nesting limit) have an empty message: name the kind too
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise FormatError(pos, f"record does not decode: {detail}") from None
    why = problem(rec)
    if why is not None:
        raise FormatError(pos, f"a record with {why}")
    return rec


def problem(rec) -> str | None:
    """What is wrong with a decoded record, or None: the careful check.

    Every field of the type and range a put could have made: ids 1..2**64-1,
    pri and delay u32, ttr 1..u32, counters u32, times non-negative ints,
    a valid tube name (protocol.valid_tube_name), a bytes body, a known
    state.  Replay's fast path applies exactly these rules, inline."""
    if rec.__class__ is not list or not rec or rec[0].__class__ is not int:
        return "not a record"
    kind = rec[0]
    if RECORD_LENGTHS.get(kind) != len(rec):
        return f"a record of kind {kind} with {len(rec)} fields"
    if kind == HEAD:
        ok = rec[1].__class__ is int and 0 < rec[1] <= U32_MAX
        return None if ok else f"a bad segment number: {rec[1]!r:.40}"
    if kind in (DELETE, MARK):
        ok = rec[1].__class__ is int and 0 < rec[1] <= U64_MAX
        return None if ok else f"a bad {'id' if kind == DELETE else 'next id'}: {rec[1]!r:.40}"
    if kind == FULL:
        fields = dict(zip(("id", "tube", "pri", "delay", "ttr", "body", "state", "deadline",
                           "created", "reserves", "timeouts", "releases", "buries", "kicks"),
                          rec[1:], strict=True))
        if fields["body"].__class__ is not bytes:
            return "a body that is not bytes"
        if not (fields["tube"].__class__ is str and tube_ok(fields["tube"])):
            return f"a bad tube name: {fields['tube']!r:.40}"
    else:
        fields = dict(zip(("id", "pri", "delay", "state", "deadline", "reserves", "timeouts",
                           "releases", "buries", "kicks"), rec[1:], strict=True))
    ranges = {"id": (1, U64_MAX), "pri": (0, U32_MAX), "delay": (0, U32_MAX),
              "ttr": (1, U32_MAX), "state": (1, 4), "deadline": (0, U64_MAX),
              "created": (0, U64_MAX)}
    for name, value in fields.items():
        if name in ("tube", "body"):
            continue
        low, high = ranges.get(name, (0, U32_MAX))
        if value.__class__ is not int or not low <= value <= high:
            return f"a bad {name}: {value!r:.40}"
    return None


def tube_ok(name: str) -> bool:
    try:
        return valid_tube_name(name.encode("ascii"))
    except UnicodeEncodeError:
        return False


def _shapes_ok(records: list) -> bool:
    return all(problem(rec) is None for rec in records)


# --- damage -------------------------------------------------------------------
def nonzero_end(data, start: int) -> int:
    """Offset just past the last non-zero byte at or after ``start`` (or ``start``)."""
    end = len(data)
    while end > start:
        chunk = bytes(memoryview(data)[max(start, end - 65536):end])
        stripped = chunk.rstrip(b"\0")
        if stripped:
            return end - len(chunk) + len(stripped)
        end -= len(chunk)
    return start


def iter_frames(data, start: int = HEADER_SIZE) -> Iterator[tuple[int, int, object]]:
    """Every frame for a reader that wants to see damage too (the dump tool).

    Yields (offset, size, record) for valid frames and (offset, size,
    FormatError) for each damaged stretch, re-synchronising after it; zeros
    at the end are not reported.
    """
    end = nonzero_end(data, start)
    pos = start
    while pos < end:
        stop = frame_end(data, pos, len(data))
        if stop != -1:
            try:
                rec = decode_one(data, pos)
            except FormatError as e:
                rec = e
            yield pos, stop - pos, rec
            pos = stop
            continue
        nxt = next_frame(data, pos + 1)
        bad_end = end if nxt == -1 else nxt
        yield pos, bad_end - pos, FormatError(pos, "damaged or torn bytes")
        pos = bad_end
