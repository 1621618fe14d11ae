"""Where the transcripts live, and the suite loaded once."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from .dsl import Transcript, load_all

TRANSCRIPT_DIR = Path(__file__).parent / "transcripts"


@cache
def _load() -> tuple[Transcript, ...]:
    return tuple(load_all(TRANSCRIPT_DIR))


def transcripts() -> list[Transcript]:
    return list(_load())
