"""bsclient: clients for beanstalkd-protocol servers and for bscluster.

``Client`` talks to one server; ``ClusterClient`` shards tubes over many
independent nodes (docs/CLIENT.md); ``Worker`` runs a handler over their
jobs (docs/WORKER.md).
"""

from typing import TYPE_CHECKING

# name -> the module that defines it, imported on first use (PEP 562): a program that
# needs only part of the package (bsnode imports the codec) does not load the rest
_WHERE = {
    "Client": "client", "Job": "client",
    "ClusterClient": "cluster", "FAILOVER": "cluster", "FAIL_FAST": "cluster",
    "ConfigError": "config", "NodeAddress": "config",
    "Retry": "retry", "Bury": "retry", "Backoff": "retry",
    "Ring": "ring", "Worker": "worker",
    **dict.fromkeys((
        "BadFormatError", "BeanstalkError", "BuriedError", "ConcurrentUseError",
        "ConnectionLostError", "DeadlineSoonError", "DrainingError", "ExpectedCrlfError",
        "InternalError", "InvalidTubeNameError", "JobTooBigError", "NoNodeAvailableError",
        "NotFoundError", "NotIgnoredError", "OutOfMemoryError", "ReplyError",
        "SocketTimeoutError", "TimedOutError", "UnexpectedReplyError",
        "UnknownCommandError"), "errors"),
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bsclient' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # (the next lookup does not come here)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, for type checkers and editors (``_WHERE`` rules)
    from .client import Client, Job
    from .cluster import FAIL_FAST, FAILOVER, ClusterClient
    from .config import ConfigError, NodeAddress
    from .errors import (
        BadFormatError,
        BeanstalkError,
        BuriedError,
        ConcurrentUseError,
        ConnectionLostError,
        DeadlineSoonError,
        DrainingError,
        ExpectedCrlfError,
        InternalError,
        InvalidTubeNameError,
        JobTooBigError,
        NoNodeAvailableError,
        NotFoundError,
        NotIgnoredError,
        OutOfMemoryError,
        ReplyError,
        SocketTimeoutError,
        TimedOutError,
        UnexpectedReplyError,
        UnknownCommandError,
    )
    from .retry import Backoff, Bury, Retry
    from .ring import Ring
    from .worker import Worker

__all__ = sorted(_WHERE)
