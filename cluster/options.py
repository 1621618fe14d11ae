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
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
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
