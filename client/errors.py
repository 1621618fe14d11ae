"""Exceptions raised by bsclient.

How this works
--------------
Every error reply word of the protocol (``protocol.ERROR_WORDS``) has exactly
one exception class here; ``REPLY_ERRORS`` maps the word to its class and is
checked against the protocol table at import time, so a word added there
without a class here fails loudly.  All of them derive from ``ReplyError``
(the server answered, the connection is fine) and ``BeanstalkError`` (the
root of everything this package raises on purpose).

Transport problems are different: ``ConnectionLostError`` means the
connection is gone and was closed.  Its ``sent`` flag says whether the
command may have reached the server (True: it may or may not have run;
False: it certainly did not, e.g. the connect was refused).
``SocketTimeoutError`` is the ConnectionLostError for "no reply in time" —
not to be confused with ``TimedOutError``, the server's TIMED_OUT reply to
``reserve-with-timeout``.  ``NoNodeAvailableError`` is the cluster client's
ConnectionLostError: "this node cannot be used", naming the node.
"""

from __future__ import annotations

from .protocol import ERROR_WORDS


class BeanstalkError(Exception):
    """Root of every error bsclient raises on purpose."""


# --- the server answered with an error word --------------------------------
class ReplyError(BeanstalkError):
    """The server replied with one of the protocol's error words."""

    word = ""  # the reply word, e.g. "NOT_FOUND"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.word)


class NotFoundError(ReplyError):
    """NOT_FOUND: no such job (or tube), or not reserved by this connection."""

    word = "NOT_FOUND"


class BuriedError(ReplyError):
    """BURIED: the server buried the job instead (out of memory).

    ``job_id`` is the id from ``BURIED <id>`` (put) or None (release).
    """

    word = "BURIED"

    def __init__(self, job_id: int | None = None) -> None:
        self.job_id = job_id
        super().__init__("BURIED" if job_id is None else f"BURIED {job_id}")


class DeadlineSoonError(ReplyError):
    """DEADLINE_SOON: a job reserved by this connection is about to time out."""

    word = "DEADLINE_SOON"


class TimedOutError(ReplyError):
    """TIMED_OUT: reserve-with-timeout found no job in time."""

    word = "TIMED_OUT"


class JobTooBigError(ReplyError):
    """JOB_TOO_BIG: the body is larger than the server's max-job-size."""

    word = "JOB_TOO_BIG"


class DrainingError(ReplyError):
    """DRAINING: the server is in drain mode and takes no new jobs."""

    word = "DRAINING"


class BadFormatError(ReplyError):
    """BAD_FORMAT: the command line was malformed (or a tube name invalid)."""

    word = "BAD_FORMAT"


class InvalidTubeNameError(BadFormatError, ValueError):
    """A tube name the protocol refuses, caught before it is sent.

    A BadFormatError (what the server would answer) and a ValueError (a bad
    argument), so callers catching either keep working.
    """


class UnknownCommandError(ReplyError):
    """UNKNOWN_COMMAND: the server does not know the command."""

    word = "UNKNOWN_COMMAND"


class ExpectedCrlfError(ReplyError):
    """EXPECTED_CRLF: a job body was not followed by CRLF."""

    word = "EXPECTED_CRLF"


class OutOfMemoryError(ReplyError):
    """OUT_OF_MEMORY: the server could not allocate the job."""

    word = "OUT_OF_MEMORY"


class InternalError(ReplyError):
    """INTERNAL_ERROR: a bug in the server."""

    word = "INTERNAL_ERROR"


class NotIgnoredError(ReplyError):
    """NOT_IGNORED: the last watched tube cannot be ignored."""

    word = "NOT_IGNORED"


REPLY_ERRORS: dict[str, type[ReplyError]] = {
    cls.word: cls for cls in ReplyError.__subclasses__()
}
if set(REPLY_ERRORS) != set(ERROR_WORDS):  # pragma: no cover - import-time guard
    raise ImportError(
        f"error classes {sorted(REPLY_ERRORS)} do not match protocol words {sorted(ERROR_WORDS)}"
    )


class ConcurrentUseError(BeanstalkError, RuntimeError):
    """A Client was used by two threads or greenlets at once; nothing was sent."""


class UnexpectedReplyError(BeanstalkError):
    """The server sent a reply this command cannot have; the connection is closed."""


# --- the transport failed --------------------------------------------------
class ConnectionLostError(BeanstalkError):
    """The connection to a server failed and was closed.

    ``sent`` is False when the command certainly never reached the server
    (connect failed), True when it may or may not have been executed.
    """

    def __init__(self, message: str, *, address: str = "", sent: bool = True) -> None:
        super().__init__(message)
        self.address = address
        self.sent = sent


class SocketTimeoutError(ConnectionLostError, TimeoutError):
    """No reply arrived within the socket timeout; the connection was closed."""


class NoNodeAvailableError(ConnectionLostError):
    """ClusterClient: the node named in ``node`` cannot serve the command.

    ``node`` is a node name, or several joined by "," when none of them
    could.  ``sent`` has ConnectionLostError's meaning.
    """

    def __init__(self, node: str, reason: str = "", *, sent: bool = False) -> None:
        self.node = node
        self.reason = reason
        what = f"node {node} is" if "," not in node else f"nodes {node.replace(',', ', ')} are"
        super().__init__(f"{what} not available" + (f": {reason}" if reason else ""), sent=sent)


def reply_error(words: list[bytes]) -> BeanstalkError:
    """The exception for an error reply line, or UnexpectedReplyError."""
    word = words[0].decode("ascii", "replace")
    cls = REPLY_ERRORS.get(word)
    if cls is None:
        text = " ".join(w.decode("ascii", "replace") for w in words)
        if word == "TLS_REQUIRED":  # bsnode's answer to plain TCP on a TLS port
            text += (": the node serves TLS only; connect with ssl_context= "
                     "(or a [tls] table / BSCLUSTER_TLS_CA)")
        return UnexpectedReplyError(text)
    if cls is BuriedError:
        return BuriedError(int(words[1]) if len(words) > 1 and words[1].isdigit() else None)
    return cls()
