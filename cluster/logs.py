"""`bscluster logs [NODE] [-f] [-n N]`: the supervisor's or a node's log, as `supervisorctl tail`.

How this works
--------------
A detached cluster writes its logs into the data dir (runtime.py):
``bscluster.log`` for the supervisor, ``nodeI.log`` for each node.  ``logs``
prints the last N lines of one of them (read backwards in blocks, so a
large log costs only its tail), and with ``-f`` keeps printing what is
appended, as ``tail -F`` does: it polls the file's size, and starts again
from the top when the file was truncated or replaced.  A foreground
cluster has no log files: its terminal shows everything.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
from bscluster import control
from bscluster.options import config_option, data_dir_option, load
from bscluster.runtime import Paths, read_json

DEFAULT_LINES = 20
FOLLOW_POLL = 0.25  # seconds between looks at a followed file
_BLOCK = 65536


def last_lines(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of ``path`` (without line ends)."""
    if count == 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, pos = b"", end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines[-count:]


def follow(path: Path, out, poll: float = FOLLOW_POLL, stop=lambda: False) -> None:
    """Copy what is appended to ``path`` to ``out`` until ``stop()``."""
    f = open(path, "rb")  # noqa: SIM115 - reopened on rotation
    try:
        f.seek(0, os.SEEK_END)
        while not stop():
            chunk = f.read(_BLOCK)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != os.fstat(f.fileno()).st_ino
                                   or st.st_size < f.tell()):
                f.close()  # replaced or truncated: read the new one from the top
                f = open(path, "rb")  # noqa: SIM115
                continue
            time.sleep(poll)
    finally:
        f.close()


def _which(paths: Paths, config, name: str | None) -> Path:
    if name is None:
        return paths.log
    state = control.running_state(paths) or read_json(paths.state) or {}
    known = list(state.get("nodes", {})) or [n.name for n in config.nodes]
    if name not in known and not paths.node_log(name).exists():
        raise click.ClickException(f"no node named {name!r}; the cluster has "
                                   f"{', '.join(known)}")
    return paths.node_log(name)


@click.command()
@config_option
@data_dir_option
@click.argument("name", required=False, metavar="[NODE]")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing lines as they are written.")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=DEFAULT_LINES,
              show_default=True, metavar="N", help="How many of the last lines to print first.")
def logs(config_file, data_dir, name, follow_, lines) -> None:
    """Print the supervisor's log, or NODE's (a detached cluster's log files).

    Every line starts with its time (ISO 8601). Lines of the supervisor's log
    look like `TIME bscluster | node2 RUNNING on ...`; node logs hold what the
    node wrote, and a `--- bscluster: starting` line at each start.
    """
    config = load(config_file, {"data_dir": data_dir})
    paths = Paths(config.data_dir)
    path = _which(paths, config, name)
    if not path.exists():
        state = control.running_state(paths)
        if state is not None and not state["supervisor"].get("detached"):
            raise click.ClickException("the cluster runs in the foreground: its terminal shows "
                                       "every node's output (log files are for `up -d`)")
        raise click.ClickException(f"no log at {path} (has the cluster been started with "
                                   f"`bscluster up -d` from {config.data_dir}?)")
    out = sys.stdout.buffer
    try:
        for line in last_lines(path, lines):
            out.write(line + b"\n")
        out.flush()
        if follow_:
            follow(path, out)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `bscluster logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
