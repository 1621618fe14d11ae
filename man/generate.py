"""Write the man pages of bscluster and bsnode from the programs' own help.

    python man/generate.py          # rewrite man/bscluster.1 and man/bsnode.1
    python man/generate.py --check  # exit 1 if they differ from the help (a test runs this)

How this works
--------------
The help texts are the one source: bscluster's come from its click
commands (each command's help, options and epilog), bsnode's from its
usage text.  They are turned into roff (man(7) macros) with the text
escaped, so `man` shows the same words as `--help`.  setup.cfg installs the
pages into share/man/man1 of the environment, where `man` finds them for a
program on PATH (man derives MANPATH from PATH: .venv/bin -> .venv/share/man).
"""

from __future__ import annotations

import re
import sys
from datetime import date
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
SECTION = "1"
SOURCE = "bscluster 0.1.0"


def esc(text: str) -> str:
    """Roff-safe text: backslashes, hyphens, and lines starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln[:1] in (".", "'") else ln for ln in text.splitlines())


def header(name: str, summary: str) -> list[str]:
    return [f'.TH {name.upper()} {SECTION} "{date(2026, 1, 1):%B %Y}" "{SOURCE}" '
            f'"User Commands"', ".SH NAME", f"{name} \\- {esc(summary)}"]


def paragraphs(text: str) -> list[str]:
    """click help text -> roff paragraphs; \\b blocks stay as written."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", click.unstyle(text).strip()):
        if block.startswith("\b"):
            out += [".PP", ".nf", esc(block[1:].strip("\n")), ".fi"]
        else:
            out += [".PP", esc(" ".join(ln.strip() for ln in block.splitlines()))]
    return out


def options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        flags, text = record
        out += [".TP", f"\\fB{esc(flags)}\\fR", esc(text or "")]
    return out


def bscluster_page() -> str:
    from bscluster.cli import cli

    ctx = click.Context(cli, info_name="bscluster")
    lines = header("bscluster", "run and inspect a cluster of beanstalkd-compatible nodes")
    lines += [".SH SYNOPSIS", "\\fBbscluster\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
              ".SH DESCRIPTION", *paragraphs(cli.help or "")]
    lines += [".SH COMMANDS"]
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        usage = " ".join(cmd.collect_usage_pieces(sub))
        lines += [f".SS bscluster {name} {esc(usage)}", *paragraphs(cmd.help or "")]
        lines += options(cmd, sub)
        if cmd.epilog:
            lines += paragraphs(cmd.epilog)
    lines += [".SH SHELL COMPLETION",
              ".PP", "bash: add to ~/.bashrc:", ".nf",
              'eval "$(_BSCLUSTER_COMPLETE=bash_source bscluster)"', ".fi",
              ".PP", "zsh: _BSCLUSTER_COMPLETE=zsh_source; fish: _BSCLUSTER_COMPLETE=fish_source "
              "(docs/CLUSTER.md).",
              ".SH SEE ALSO", "\\fBbsnode\\fR(1), docs/CLUSTER.md in the source"]
    return "\n".join(lines) + "\n"


def bsnode_page() -> str:
    from bsnode.cli import _usage

    usage = _usage("bsnode")
    head, _, rest = usage.partition("\nOptions:\n")
    opts, _, tail = rest.partition("\n\n")
    lines = header("bsnode", "a beanstalkd-compatible work queue server")
    lines += [".SH SYNOPSIS", "\\fBbsnode\\fR [\\fIOPTIONS\\fR]", ".SH OPTIONS",
              ".nf", esc(opts), ".fi"]
    for block in re.split(r"\n\s*\n", tail.strip()):
        title, _, body = block.partition("\n")
        if title.endswith(":"):
            lines += [f".SS {esc(title[:-1])}", ".nf", esc(body), ".fi"]
        else:
            lines += [".SH DESCRIPTION", *paragraphs(block)]
    lines += [".SH SEE ALSO", "\\fBbscluster\\fR(1), \\fBbeanstalkd\\fR(1), "
              "\\fBbsnode\\-dump\\fR (print a binlog)"]
    return "\n".join(lines) + "\n"


PAGES = {"bscluster.1": bscluster_page, "bsnode.1": bsnode_page}


def main(argv: list[str]) -> int:
    stale = []
    for name, make in PAGES.items():
        text, path = make(), HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python man/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
