"""Print a binlog's records for an operator: ``bsnode-dump DIR|FILE...``.

``python -m bsnode.binlog_dump`` is the same tool.  Each segment is listed
with its header, then one line per record (offset, kind, fields; bodies
shortened unless ``--bodies``), and one line for every damaged stretch, so a
refused start can be looked at before deciding to recover past it.
``--json`` prints one JSON object per line instead.  It only reads; it takes
no lock, so it can look at the log of a running node.  Exit status 1 when
any damage was found, 2 when a path cannot be read or is a directory
without segments (``binlog.N`` files).  Output cut short by its reader
(``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

from . import binlog_format as F
from .binlog_replay import list_segments

FIELDS = {
    F.FULL: ("id", "tube", "pri", "delay", "ttr", "body", "state", "deadline_ms",
             "created_ms", "reserves", "timeouts", "releases", "buries", "kicks"),
    F.UPDATE: ("id", "pri", "delay", "state", "deadline_ms",
               "reserves", "timeouts", "releases", "buries", "kicks"),
    F.DELETE: ("id",),
    F.MARK: ("next_id",),
}
BODY_PREVIEW = 40


def segment_paths(paths: list[str]) -> list[str]:
    """The segment files named or found in the directories named; OSError when a
    directory holds none."""
    out = []
    for p in paths:
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = [path for _, path in list_segments(p)]
        if not found:
            raise OSError(f"{p} holds no binlog segments (binlog.N files); name a node's "
                          f"binlog directory (bsnode -b DIR) or segment files")
        out.extend(found)
    return out


def describe(data: bytes) -> Iterator[dict]:
    """One dict per header, record or damaged stretch of one segment's bytes."""
    try:
        num = F.parse_header(data)
        yield {"offset": 0, "kind": "header", "segment": num, "version": F.FORMAT_VERSION,
               "bytes": len(data)}
        start = F.HEADER_SIZE
    except F.FormatError as e:
        yield {"offset": 0, "kind": "damaged", "size": F.HEADER_SIZE, "reason": e.reason}
        start = 0
    for offset, size, rec in F.iter_frames(data, start):
        if isinstance(rec, F.FormatError):
            yield {"offset": offset, "kind": "damaged", "size": size, "reason": rec.reason}
            continue
        item = {"offset": offset, "kind": F.RECORD_NAMES[rec[0]], "size": size}
        item.update(zip(FIELDS[rec[0]], rec[1:], strict=True))
        if "state" in item:
            item["state"] = F.STATE_NAMES[item["state"]]
        yield item


def _text(item: dict, bodies: bool) -> str:
    kind = item["kind"]
    if kind == "header":
        return f"{item['offset']:>10}  header   segment {item['segment']}, " \
               f"format {item['version']}, {item['bytes']} bytes"
    if kind == "damaged":
        return f"{item['offset']:>10}  DAMAGED  {item['size']} bytes: {item['reason']}"
    parts = []
    for k, v in item.items():
        if k in ("offset", "kind", "size"):
            continue
        if k == "body":
            v = repr(v if bodies or len(v) <= BODY_PREVIEW else v[:BODY_PREVIEW] + b"...")
            parts.append(f"body({len(item['body'])})={v}")
        else:
            parts.append(f"{k}={v}")
    return f"{item['offset']:>10}  {kind:<8} " + " ".join(parts)


def _json(item: dict) -> str:
    if "body" in item:
        item = dict(item, body=item["body"].decode("latin-1"))
    return json.dumps(item)


def main(argv: list[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not prog.startswith("bsnode-dump"):
        prog = "python -m bsnode.binlog_dump"
    ap = argparse.ArgumentParser(prog=prog, description="Print the records of a bsnode binlog.")
    ap.add_argument("paths", nargs="+", help="binlog directory or segment files")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--bodies", action="store_true", help="print job bodies in full")
    args = ap.parse_args(argv)
    try:
        paths = segment_paths(args.paths)
    except OSError as e:
        ap.error(str(e))
    try:
        return _dump(ap, paths, args)
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dump(ap: argparse.ArgumentParser, paths: list[str], args: argparse.Namespace) -> int:
    damaged = False
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            ap.error(str(e))
        if not args.json:
            print(path)
        for item in describe(data):
            damaged |= item["kind"] == "damaged"
            print(_json(dict(item, file=path)) if args.json else _text(item, args.bodies))
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
