"""Click options and helpers every bscluster command shares.

How this works
--------------
Options default to None so "not given" is visible to ``config.load_config``,
which applies flag > environment > file > default in one place.  ``load``
turns a ``ConfigError`` into the ``click.ClickException`` the CLI prints.
"""

from __future__ import annotations

import click
from bscluster.config import (
    CLUSTER_DEFAULTS,
    DEFAULT_CONFIG_PATH,
    DEFAULT_PROXY_LISTEN,
    DEFAULT_WEB_LISTEN,
    ENV_CONFIG,
    NODE_COMMAND_HELP,
    ClusterConfig,
    ConfigError,
    load_config,
)


def config_option(f):
    return click.option(
        "--config", "-c", "config_file", metavar="PATH",
        help=f"Config file [env {ENV_CONFIG}; default ./{DEFAULT_CONFIG_PATH} if present].",
    )(f)


def data_dir_option(f):
    return click.option("--data-dir", metavar="DIR",
                        help="Where state, logs and binlogs live [env BSCLUSTER_DATA_DIR].")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def load(config_file: str | None, flags: dict) -> ClusterConfig:
    try:
        return load_config(config_file, flags)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


_D = CLUSTER_DEFAULTS  # what the help texts say the defaults are

# the options that say what the nodes are (init, up, route take the first three)
NODE_OPTIONS = [
    click.option("--nodes", "-n", type=int, help="Number of nodes, named node1..nodeN."),
    click.option("--host", metavar="ADDR", help=f"Address the nodes listen on ({_D['host']})."),
    click.option("--base-port", type=int, metavar="PORT",
                 help=f"nodeI listens on base-port + I - 1 ({_D['base_port']})."),
    click.option("--binlog/--no-binlog", default=None,
                 help="Keep a write-ahead log so jobs survive restarts "
                      f"({'on' if _D['binlog'] else 'off'})."),
    click.option("--fsync-ms", type=int, metavar="MS",
                 help=f"fsync the binlog at most every MS ms; -1 = never ({_D['fsync_ms']})."),
    click.option("--max-job-size", type=int, metavar="BYTES", help=f"Largest job body ({_D['max_job_size']})."),
    click.option("--binlog-size", type=int, metavar="BYTES",
                 help=f"Size of each binlog file ({_D['binlog_size']})."),
    click.option("--node-command", metavar="CMD",
                 help="Program that runs one node [env BSCLUSTER_NODE_COMMAND] "
                      f"({NODE_COMMAND_HELP})."),
    click.option("--metrics-base-port", type=int, metavar="PORT",
                 help="Give nodeI `--metrics METRICS_HOST:PORT+I-1` (bsnode only); 0 = off "
                      f"({_D['metrics_base_port']})."),
    click.option("--metrics-host", metavar="ADDR",
                 help=f"Address the nodes' metrics endpoints listen on ({_D['metrics_host']})."),
    click.option("--crash-limit", type=int, metavar="N",
                 help="A node crashing N times within --crash-window is FATAL; 0 = never "
                      f"({_D['crash_limit']})."),
    click.option("--crash-window", type=int, metavar="SECONDS",
                 help=f"The window --crash-limit counts crashes in ({_D['crash_window']})."),
]


def web_option(f):
    f = click.option(
        "--web-max-tubes", type=int, metavar="N", default=None,
        help=f"Tubes the dashboard lists and keeps a history for, busiest first "
        f"({_D['web_max_tubes']}) [env BSCLUSTER_WEB_MAX_TUBES].")(f)
    return click.option(
        "--web", metavar="[ADDR:PORT]", is_flag=False, flag_value=DEFAULT_WEB_LISTEN,
        default=None, help=f"Serve the dashboard and the cluster's /metrics from the "
        f"supervisor (--web alone: {DEFAULT_WEB_LISTEN}; --web off: none) [env BSCLUSTER_WEB].",
    )(f)


def proxy_option(f):
    f = click.option(
        "--proxy-tls/--no-proxy-tls", default=None,
        help="The proxy serves TLS only, with [tls] node_cert/node_key, and requires "
        "client certificates when [tls] client_auth = true, as the nodes do (off: plain TCP, "
        "for a sidecar on 127.0.0.1) [env BSCLUSTER_PROXY_TLS].")(f)
    return click.option(
        "--proxy", metavar="[ADDR:PORT]", is_flag=False, flag_value=DEFAULT_PROXY_LISTEN,
        default=None, help=f"Also run `bscluster proxy` (one beanstalkd address for the whole "
        f"cluster, docs/PROXY.md) and restart it if it dies (--proxy alone: "
        f"{DEFAULT_PROXY_LISTEN}; --proxy off: none) [env BSCLUSTER_PROXY].",
    )(f)


def node_options(f):
    for option in reversed(NODE_OPTIONS):
        f = option(f)
    return data_dir_option(f)
