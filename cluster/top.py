"""`bscluster top`: the whole cluster in a terminal, refreshed every second.

How this works
--------------
``render(view, ...)`` is a pure function from a monitor view (see
``monitor.make_view``) to the lines of one screen: cluster totals, one row
per node (down nodes first), one row per tube sorted by the chosen key —
by default what needs attention (buried jobs, ready jobs nobody watches,
paused tubes).  ``run`` is the terminal shell: the alternate screen, stdin
in cbreak mode (no echo, keys arrive at once, Ctrl-C still works), one
poll and one full redraw per interval, and a ``select`` on stdin in between
so a key acts at once.  Plain ANSI escapes, no curses; the terminal is
restored however the loop ends.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Mapping, Sequence

import click
from bscluster.monitor import (
    POLL_INTERVAL,
    Monitor,
    MonitorError,
    cluster_ssl_context,
    resolve_nodes,
    tube_sort_key,
    watch_options,
)
from bscluster.report import human_duration
from bscluster.truth import EXIT_NO_CLUSTER, EXIT_NODES_DOWN, EXIT_OK

# key -> (label, sort key for tube rows)
SORTS = {
    "a": ("attention", tube_sort_key),
    "r": ("ready", lambda r: (-r["ready"], r["name"])),
    "u": ("reserved", lambda r: (-r["reserved"], r["name"])),
    "d": ("delayed", lambda r: (-r["delayed"], r["name"])),
    "b": ("buried", lambda r: (-r["buried"], r["name"])),
    "w": ("waiting", lambda r: (-r["waiting"], r["name"])),
    "o": ("ops/s", lambda r: (-(r["ops"] or 0.0), r["name"])),
    "n": ("name", lambda r: r["name"]),
}
SORT_NAMES = {label: key for key, (label, _) in SORTS.items()}
QUIT_KEYS = ("q", "Q", "\x1b")
HELP = "q quit  a attention  r ready  u reserved  d delayed  b buried  w waiting  o ops  n name"

# ANSI
BOLD, REVERSE, RED, YELLOW, RESET = "\x1b[1m", "\x1b[7m", "\x1b[31m", "\x1b[33m", "\x1b[0m"
ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide the cursor
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME_CLEAR = "\x1b[H\x1b[2J"
CLEAR_EOL = "\x1b[K"


def _n(v) -> str:
    return "-" if v is None else str(v)


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).isdigit()


def _cols(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    return "  ".join(c.rjust(w) if r else c.ljust(w)
                     for c, w, r in zip(cells, widths, right, strict=True)).rstrip()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns; numbers right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = [bool(rows) and all(_numeric(r[i]) for r in rows) for i in range(len(headers))]
    return [_cols(headers, widths, right)] + [_cols(r, widths, right) for r in rows]


def node_lines(view: Mapping) -> tuple[list[str], list[bool]]:
    nodes = sorted(view["nodes"], key=lambda r: (r["up"], r["name"]))
    rows, down = [], []
    for r in nodes:
        if r["up"]:
            rows.append([r["name"], r["address"], r["state"], *(_n(r[s]) for s in
                         ("ready", "reserved", "delayed", "buried", "connections", "workers",
                          "waiting")), _rate(r["ops"]), human_duration(r["uptime"])])
        else:
            rows.append([r["name"], r["address"], r["state"], *["-"] * 8, "-"])
        down.append(not r["up"])
    lines = _table(["NODE", "ADDRESS", "STATE", "READY", "RESERVED", "DELAYED", "BURIED",
                    "CONNS", "WORKERS", "WAITING", "OPS/S", "UPTIME"], rows)
    for r in nodes:
        if not r["up"]:
            lines.append(f"  {r['name']}: {r['error']}")
            down.append(True)
    return lines, [False] + down


def tube_lines(view: Mapping, sort: str) -> tuple[list[str], list[Mapping]]:
    """The tube table (header first) and its rows in the same order."""
    tubes = sorted(view["tubes"], key=SORTS[SORT_NAMES[sort]][1])
    rows = [[t["name"], ",".join(t["nodes"]), *(str(t[s]) for s in
             ("ready", "reserved", "delayed", "buried", "waiting", "watching")),
             _rate(t["puts"]), _rate(t["deletes"]),
             f"paused {t['paused']}s" if t["paused"] else "", t["why"]] for t in tubes]
    return _table(["TUBE", "NODES", "READY", "RESERVED", "DELAYED", "BURIED", "WAITING",
                   "WATCHING", "PUT/S", "DEL/S", "", "ATTENTION"], rows), tubes


def render(view: Mapping | None, sort: str = "attention", width: int = 120, height: int = 40,
           color: bool = True, message: str = "") -> list[str]:
    """One screen of `top`, at most ``height`` lines of at most ``width`` columns."""
    b, rv, red, yel, z = (BOLD, REVERSE, RED, YELLOW, RESET) if color else ("",) * 5
    clock = time.strftime("%H:%M:%S")
    if view is None:
        return [f"bscluster top  {clock}  waiting for the first poll...", message][:height]
    t = view["totals"]
    title = (f"bscluster top  {clock}  {t['nodes_up']}/{t['nodes']} nodes up, "
             f"{t['tubes']} tubes  sort: {sort}")
    summary = (f"jobs  ready {t['ready']}  reserved {t['reserved']}  delayed {t['delayed']}  "
               f"buried {t['buried']}  urgent {t['urgent']}   connections {t['connections']}  "
               f"workers {t['workers']}  waiting {t['waiting']}   ops/s {_rate(t['ops'])} "
               f"(put {_rate(t['puts'])}, reserve {_rate(t['reserves'])}, "
               f"delete {_rate(t['deletes'])})")
    bar = rv + title.ljust(width)[:width] + z if color else title[:width]
    out = [bar, summary[:width], ""]
    nlines, flags = node_lines(view)
    for i, (line, is_down) in enumerate(zip(nlines, flags, strict=True)):
        line = line[:width]
        out.append(b + line + z if i == 0 else (red + line + z if is_down else line))
    out.append("")
    tlines, tubes = tube_lines(view, sort)
    shown = tlines[:max(height - len(out) - 2, 1)]
    out.append(b + shown[0][:width] + z)
    for line, row in zip(shown[1:], tubes, strict=False):
        out.append(yel + line[:width] + z if row["attention"] >= 2 else line[:width])
    if len(tlines) > len(shown):
        out.append(f"... {len(tlines) - len(shown)} more tubes (resize the terminal to see them)")
    out.append((message or HELP)[:width])
    return out[:height]


# --- the terminal -----------------------------------------------------------------------------
def _draw(lines: list[str]) -> None:
    sys.stdout.write(HOME_CLEAR + "\r\n".join(line + CLEAR_EOL for line in lines))
    sys.stdout.flush()


def _read_keys(fd: int, timeout: float) -> str:
    ready, _, _ = select.select([fd], [], [], max(timeout, 0))
    if not ready:
        return ""
    data = os.read(fd, 64)
    return data.decode(errors="ignore") if data else "q"  # EOF: the terminal went away


def _terminal_size() -> tuple[int, int]:
    """The terminal's size now (it may have been resized), ignoring $COLUMNS/$LINES."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        size = shutil.get_terminal_size()
    return size.columns, size.lines


def run(monitor: Monitor, sort: str = "attention", interval: float = POLL_INTERVAL) -> None:
    """The interactive loop; returns when a quit key is pressed."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    sys.stdout.write(ENTER)
    try:
        tty.setcbreak(fd)
        next_poll = 0.0
        view = None
        while True:
            now = time.monotonic()
            if now >= next_poll:
                view = monitor.poll()
                next_poll = now + interval
            columns, lines = _terminal_size()
            _draw(render(view, sort, columns, lines))
            keys = _read_keys(fd, next_poll - time.monotonic())
            for key in keys:
                if key in QUIT_KEYS:
                    return
                if key in SORTS:
                    sort = SORTS[key][0]
    except KeyboardInterrupt:
        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write(LEAVE)
        sys.stdout.flush()


@click.command()
@watch_options
@click.option("--sort", type=click.Choice(list(SORT_NAMES)), default="attention",
              show_default=True, help="How tubes are ordered at first (keys change it).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=POLL_INTERVAL,
              show_default=True, metavar="SECONDS", help="Time between refreshes.")
@click.option("--once", is_flag=True, help="Print one screen (no colours) and exit.")
def top(config_file, data_dir, node_flags, sort, interval, once) -> None:
    """Live view of every node and tube, refreshed every second.

    Keys: q quit; a attention (default: buried jobs first, then ready jobs no
    worker watches, then paused tubes), r ready, u reserved, d delayed,
    b buried, w waiting, o ops/s, n name.

    With --once (or no terminal), the exit status says what it saw: 0 every
    node answers, 3 some does not, 4 none does.
    """
    try:
        monitor = Monitor(resolve_nodes(config_file, data_dir, node_flags), interval=interval,
                          ssl_context=cluster_ssl_context(config_file))
    except MonitorError as e:
        raise click.ClickException(str(e)) from None
    if once or not (sys.stdin.isatty() and sys.stdout.isatty()):
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 10_000
        view = monitor.poll()
        click.echo("\n".join(render(view, sort, width, 10_000, color=False,
                                    message=" ")).rstrip())
        up = [node["up"] for node in view["nodes"]]
        sys.exit(EXIT_OK if all(up) else EXIT_NODES_DOWN if any(up) else EXIT_NO_CLUSTER)
    run(monitor, sort, interval)
