"""Change one setting in bscluster.toml, keeping the rest of the file as written.

How this works
--------------
`bscluster remove` must change the file clients read (mark a node
``leaving``, then take it out), and a TOML writer would drop the user's
comments.  So the file is edited as lines: a ``key = value`` line inside
the right table is replaced, or added at the end of that table, or the
table is appended.  Only the two shapes `bscluster init` writes are
understood (``[cluster]`` and ``[nodes.nodeN]`` tables with one key per
line); after every edit the new text is parsed and checked to say exactly
what was asked, and the file is replaced atomically.  Anything else is an
``EditError`` that tells the user which line to change by hand.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.\"-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


class EditError(Exception):
    """The file could not be changed safely; the message says what to do by hand."""


def _table_of(header: str) -> str:
    return header.replace('"', "").replace(" ", "")


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_key(text: str, table: str, key: str, value) -> str:
    """``text`` with ``key = value`` in ``[table]`` (None: the key removed)."""
    lines = text.splitlines(keepends=True)
    start = end = None
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m and start is None and _table_of(m.group(1)) == table:
            start = i
        elif m and start is not None and end is None:
            end = i
    new = None if value is None else f"{key} = {_literal(value)}\n"
    if start is None:
        if new is None:
            return text
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + f"[{table}]\n" + new
    end = len(lines) if end is None else end
    for i in range(start + 1, end):
        m = _KEY.match(lines[i])
        if m and m.group(1) == key:
            lines[i:i + 1] = [] if new is None else [new]
            return "".join(lines)
    if new is not None:
        last = end
        while last > start + 1 and lines[last - 1].strip()[:1] in ("", "#"):
            last -= 1  # after the table's last key, before blank lines and comments
        if last and not lines[last - 1].endswith("\n"):
            lines[last - 1] += "\n"
        lines.insert(last, new)
    return "".join(lines)


def drop_table(text: str, table: str) -> str:
    """``text`` without ``[table]`` and its keys."""
    lines = text.splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        m = _HEADER.match(line)
        if m:
            skipping = _table_of(m.group(1)) == table
        if not skipping:
            out.append(line)
    return "".join(out)


def edit_file(path: Path, changes: list[tuple[str, str, object]],
              drop: tuple[str, ...] = ()) -> None:
    """Apply ``[(table, key, value), ...]`` (and drop tables) to the file, atomically."""
    text = path.read_text()
    for table in drop:
        text = drop_table(text, table)
    for table, key, value in changes:
        text = set_key(text, table, key, value)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EditError(f"editing {path} would make it invalid TOML ({e}); make the change "
                        f"by hand: {_describe(changes, drop)}") from None
    for table, key, value in changes:
        node = doc
        for part in table.split("."):
            node = node.get(part, {})
        if node.get(key) != value:
            raise EditError(f"could not edit {path} safely (its layout is unusual); make the "
                            f"change by hand: {_describe(changes, drop)}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def _describe(changes, drop) -> str:
    parts = [f"[{t}] {k} = {_literal(v)}" if v is not None else f"[{t}] remove {k}"
             for t, k, v in changes]
    parts += [f"delete the [{t}] table" for t in drop]
    return "; ".join(parts)
