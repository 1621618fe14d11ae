"""bsnode's defaults that other programs read too (bscluster's config, the
binlog, `stats`): one owner, importing nothing, so reading them loads no
server code."""

DEFAULT_FSYNC_MS = 50  # -f: fsync at most once every MS milliseconds
DEFAULT_BINLOG_SIZE = 10485760  # -s: the size of each binlog file (beanstalkd's default)
