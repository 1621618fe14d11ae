"""Where the transcripts live, and the suite loaded once."""

from __future__ import annotations

from pathlib import Path

from .dsl import Transcript, load_all

TRANSCRIPT_DIR = Path(__file__).parent / "transcripts"


def transcripts() -> list[Transcript]:
    return load_all(TRANSCRIPT_DIR)
