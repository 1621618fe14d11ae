"""bsnode's binlog (``-b DIR``): every job on disk, in a log that stays bounded.

The package's layout (which module owns what) is in ``facade``'s docstring
and docs/BINLOG.md.  What other modules use is re-exported here.
"""

from .facade import (
    COMPACT_CREDIT,
    DEFAULT_SEGMENT_SIZE,
    RECOVER_ENV,
    RETRY_EVERY,
    SLOT,
    Binlog,
    BinlogError,
    attach,
    lock_dir,
)

__all__ = ["COMPACT_CREDIT", "DEFAULT_SEGMENT_SIZE", "RECOVER_ENV", "RETRY_EVERY", "SLOT",
           "Binlog", "BinlogError", "attach", "lock_dir"]
