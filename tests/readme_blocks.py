"""README.md's code blocks, read at test time so the tests run what README says.

How this works
--------------
``blocks`` splits a Markdown text into its fenced code blocks, each with the
section (the last ``## `` heading) it sits in.  The helpers below pick the
blocks tests/e2e/test_readme.py runs (the first command, the Python snippet,
the kill -9 demo and the output README shows for it) and take them apart the
way a person reading them would: comment lines dropped, ``sudo`` left out
(README: as root, leave out the word sudo), ``&&`` steps in order.  Nothing
here runs anything.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    section: str  # the "## " heading above it ("" before the first)
    start: int  # offset in the README, for "the block after this one"


def blocks(text: str) -> list[Block]:
    out = []
    for m in _FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        out.append(Block(m.group(1), m.group(2), headings[-1] if headings else "", m.start()))
    return out


def read() -> str:
    return README.read_text()


def in_section(text: str, section: str, lang: str | None = None) -> list[Block]:
    return [b for b in blocks(text)
            if b.section.startswith(section) and (lang is None or b.lang == lang)]


def first_command(text: str) -> str:
    """README's first shell block as one command line, comments dropped."""
    first = next(b for b in blocks(text) if b.lang == "sh")
    lines = [line for line in first.text.splitlines() if line.strip() and
             not line.lstrip().startswith("#")]
    return " ".join(lines)


def as_root(command: str) -> str:
    """The command as README tells root to type it: without the word sudo."""
    return " ".join(w for w in command.split(" ") if w != "sudo")


def steps(command: str) -> list[list[str]]:
    """The ``&&``-joined steps of a command, each split like a shell would."""
    return [shlex.split(part) for part in command.split("&&")]


def python_snippet(text: str) -> str:
    """The producer/consumer snippet of "Use it from Python"."""
    (snippet,) = in_section(text, "Use it from Python", "python")
    return snippet.text


def durability_demo(text: str) -> tuple[str, list[str]]:
    """The kill -9 demo (a shell script) and the lines README says it prints."""
    section = in_section(text, "Durability")
    demo = next(b for b in section if b.lang == "sh")
    shown = next(b for b in section if b.lang == "" and b.start > demo.start)
    return demo.text, shown.text.splitlines()
