"""The transcripts cover every command and every reply word of the protocol.

Read from the transcripts themselves, so a transcript removed or weakened
shows up here rather than as silently lost coverage."""

from __future__ import annotations

import pytest
from bsclient import protocol as p

from .dsl import Expect, IdRef, Send
from .suite import transcripts

pytestmark = pytest.mark.differential

COMMANDS = sorted(v for k, v in vars(p).items() if k.startswith("CMD_"))
# OUT_OF_MEMORY and INTERNAL_ERROR cannot be provoked from outside; the
# "BURIED <id>" reply to put only happens when memory runs out.
REPLIES = sorted({w for w in p.ERROR_WORDS if w not in ("OUT_OF_MEMORY", "INTERNAL_ERROR")} | {
    "INSERTED", "USING", "RESERVED", "DELETED", "RELEASED", "BURIED", "TOUCHED", "WATCHING",
    "FOUND", "KICKED", "OK", "PAUSED",
})


def _text(parts) -> bytes:
    return b"".join(b"#%d" % x.n if isinstance(x, IdRef) else x for x in parts)


def _words_sent() -> set[str]:
    words = set()
    for t in transcripts():
        for s in t.steps:
            if isinstance(s, Send):
                for line in _text(s.text).split(b"\r\n"):
                    words.add(line.split(b" ")[0].decode("latin-1"))
    return words


def _words_expected() -> set[str]:
    words = set()
    for t in transcripts():
        for s in t.steps:
            if isinstance(s, Expect):
                words.add("OK" if s.subset is not None or s.text is None
                          else _text(s.text).split(b"\r\n")[0].split(b" ")[0].decode("latin-1"))
    return words


def test_enough_transcripts():
    assert len(transcripts()) >= 120


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_sent(command: str):
    assert command in _words_sent()


@pytest.mark.parametrize("word", REPLIES)
def test_every_reply_word_is_expected(word: str):
    assert word in _words_expected()
