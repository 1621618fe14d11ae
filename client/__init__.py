"""bsclient: clients for beanstalkd-protocol servers and for bscluster.

``Client`` talks to one server; ``ClusterClient`` shards tubes over many
independent nodes (docs/CLIENT.md); ``Worker`` runs a handler over their
jobs (docs/WORKER.md).
"""

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

__all__ = [
    "Client", "ClusterClient", "Job", "Ring", "NodeAddress", "ConfigError",
    "FAILOVER", "FAIL_FAST", "Worker", "Retry", "Bury", "Backoff",
    "BeanstalkError", "ReplyError", "NotFoundError", "BuriedError", "DeadlineSoonError",
    "TimedOutError", "JobTooBigError", "DrainingError", "BadFormatError",
    "UnknownCommandError", "ExpectedCrlfError", "OutOfMemoryError", "InternalError",
    "NotIgnoredError", "InvalidTubeNameError", "ConcurrentUseError", "ConnectionLostError", "SocketTimeoutError", "NoNodeAvailableError",
    "UnexpectedReplyError",
]
