"""bsclient: clients for beanstalkd-protocol servers and for bscluster.

``Client`` talks to one server; ``ClusterClient`` shards tubes over many
independent nodes.  See docs/CLIENT.md.
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
from .ring import Ring

__all__ = [
    "Client", "ClusterClient", "Job", "Ring", "NodeAddress", "ConfigError",
    "FAILOVER", "FAIL_FAST",
    "BeanstalkError", "ReplyError", "NotFoundError", "BuriedError", "DeadlineSoonError",
    "TimedOutError", "JobTooBigError", "DrainingError", "BadFormatError",
    "UnknownCommandError", "ExpectedCrlfError", "OutOfMemoryError", "InternalError",
    "NotIgnoredError", "ConcurrentUseError", "ConnectionLostError", "SocketTimeoutError", "NoNodeAvailableError",
    "UnexpectedReplyError",
]
