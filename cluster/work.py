"""`bscluster work MODULE:FUNCTION`: run a handler over a cluster's jobs with bsclient.Worker.

How this works
--------------
The command resolves its target (``--server`` for one beanstalkd-protocol
server, else the cluster's nodes as ``bscluster`` itself resolves them:
``--config``, ``BSCLUSTER_*``, ./bscluster.toml, defaults), sets up
timestamped logging, in gevent mode monkey-patches before anything of the
user's is imported, imports the handler with the current directory on
``sys.path`` (a console script does not put it there), and hands over to
``Worker.run``, which owns signals, retries and keep-alive
(bsclient/worker.py).  Exit status: 0 after a graceful stop, EXIT_FORCED
when a second signal (or ``--grace``) handed back jobs whose handlers had
not finished, 1 when the worker could not start.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

import click
from bsclient import retry
from bsclient.client import Client
from bsclient.cluster import ClusterClient
from bsclient.config import read_tls_context
from bsclient.errors import BeanstalkError
from bsclient.worker import DEFAULT_CONCURRENCY, MODES, Worker
from bscluster.config import ConfigError, load_config
from bscluster.truth import cluster_view
from bsnode.logstamp import log_to_stderr

EXIT_FORCED = 3  # a forced stop handed back jobs whose handlers had not finished
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")

HELP = f"""Run FUNCTION from MODULE on every job of the given tubes.

MODULE:FUNCTION is imported with the current directory on the path, like
`python -m` would (e.g. `myapp.tasks:send_email`); FUNCTION is called with a
bsclient Job (.body, .handle, .id, .node). When it returns, the job is
deleted. When it raises, the job is released with an exponential backoff
delay (--backoff doubling up to --backoff-max, with jitter) and its own
priority; the attempt that reaches --max-attempts buries the job (or deletes
it: --on-exhausted delete). Raise bsclient.Retry(delay) or bsclient.Bury()
to choose. Each failure is logged as one line with the job handle, tube,
attempt and exception. A job whose handler runs longer than its TTR is kept
reserved with `touch`.

The first SIGTERM or Ctrl-C stops taking jobs and waits for running handlers
to finish; a second one (or --grace running out) hands their jobs back to the
queue at once. Exit status: 0 after a graceful stop, {EXIT_FORCED} after a
forced one, 1 if the worker could not start. SIGHUP reads the [tls] files
again (rotated certificates): connections opened from then on use them.

Jobs come from the cluster that `bscluster up` would run with the same
--config and BSCLUSTER_* environment, or from one beanstalkd or bsnode given
with --server.
"""


def import_handler(target: str):
    """The callable named by "module:function" ("pkg.mod:obj.attr" works too)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{target!r} is not MODULE:FUNCTION (e.g. myapp.tasks:handle)",
                                 param_hint="MODULE:FUNCTION")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise click.ClickException(
                f"no module named {e.name!r} (looked in {cwd} and the installed packages); "
                f"run from your project's directory or install it") from None
        raise _import_failed(module_name, e) from None
    except Exception as e:
        raise _import_failed(module_name, e) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.ClickException(
                f"module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise click.ClickException(f"{target} is a {type(obj).__name__}, not a function")
    return obj


def _import_failed(module_name: str, e: Exception) -> click.ClickException:
    sys.stderr.write("".join(traceback.format_exception(e)))
    return click.ClickException(f"importing {module_name!r} failed: {type(e).__name__}: {e} "
                                "(traceback above)")


def _source(server: str | None, config_file: str | None):
    """The worker's client factory, a description of where jobs come from, and what
    reads the TLS files again on SIGHUP."""
    if server is not None:
        if config_file is not None:
            raise click.UsageError("give --server or --config, not both")
        try:
            Client(server, lazy=True)
            ctx = read_tls_context()  # BSCLUSTER_TLS_*, BSCLUSTER_CONFIG's [tls]
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--server") from None
        return (lambda: Client(server, lazy=True, ssl_context=ctx)), server, \
            read_tls_context
    try:
        config = load_config(config_file, {})
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    try:
        ctx = config.ssl_context()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    view = cluster_view(config)
    layout = view.layout()  # where the nodes listen; the config's ring
    where = (f"config {config.path}" if config.path else
             f"the cluster running from {config.data_dir}" if view.state is not None else
             "the default cluster")
    names = [n.name for n in layout.nodes]
    return (lambda: ClusterClient.from_layout(layout, ssl_context=ctx)), \
        f"{names[0]}..{names[-1]} ({where})", lambda: load_config(config_file, {}).ssl_context()


@click.command("work", help=HELP)
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option("--tube", "-t", "tubes", multiple=True, metavar="TUBE",
              help="Take jobs from TUBE; repeat for several [default: default].")
@click.option("--concurrency", "-n", type=click.IntRange(1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Handlers running at once (threads or greenlets).")
@click.option("--mode", type=click.Choice(MODES), default=MODES[0], show_default=True,
              help="thread: handlers may block or use the CPU; gevent: many I/O-bound "
                   "handlers cheaply (the process is monkey-patched).")
@click.option("--config", "-c", "config_file", metavar="PATH",
              help="The cluster's config file [env BSCLUSTER_CONFIG; default "
                   "./bscluster.toml if present].")
@click.option("--server", metavar="HOST:PORT",
              help="Work on one beanstalkd-protocol server instead of a cluster.")
@click.option("--max-attempts", type=click.IntRange(1), default=retry.DEFAULT_MAX_ATTEMPTS,
              show_default=True,
              help="Attempts a job gets; when the last one fails, --on-exhausted applies.")
@click.option("--on-exhausted", type=click.Choice(retry.ON_EXHAUSTED), default=retry.BURY,
              show_default=True, help="What happens to a job out of attempts.")
@click.option("--backoff", type=click.FloatRange(0), default=retry.DEFAULT_BACKOFF_BASE,
              show_default=True, metavar="SECONDS",
              help="Delay before the first retry; doubles with each failure (jitter takes "
                   f"off up to {retry.DEFAULT_JITTER:.0%}).")
@click.option("--backoff-max", type=click.FloatRange(0), default=retry.DEFAULT_BACKOFF_CAP,
              show_default=True, metavar="SECONDS", help="Longest delay before a retry.")
@click.option("--grace", type=click.FloatRange(0), metavar="SECONDS",
              help="After a stop signal, wait at most this long for handlers, then hand "
                   "their jobs back [default: wait until they finish].")
@click.option("--traceback", "tracebacks", is_flag=True,
              help="Log each failure's traceback under its line.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              help="Failures log at warning, starts and stops at info.")
def work(target, tubes, concurrency, mode, config_file, server, max_attempts, on_exhausted,
         backoff, backoff_max, grace, tracebacks, log_level) -> None:
    source, where, tls_loader = _source(server, config_file)
    if mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    handler = import_handler(target)
    tubes = list(tubes) or ["default"]
    try:
        worker = Worker(source, handler, tubes, concurrency=concurrency, mode=mode,
                        max_attempts=max_attempts, on_exhausted=on_exhausted,
                        backoff=retry.Backoff(backoff, backoff_max), tracebacks=tracebacks)
    except (ValueError, TypeError, BeanstalkError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    worker.tls_loader = tls_loader  # SIGHUP: read [tls] again (rotated certificates)
    log_to_stderr(LOG_FORMAT, log_level.upper())  # (ISO 8601, as every bscluster log)
    logging.getLogger("bscluster.work").info(
        "working: %s on tube(s) %s of %s, %d %s slot(s), pid %d; SIGTERM or Ctrl-C stops",
        target, ", ".join(tubes), where, concurrency, mode, os.getpid())
    finished = worker.run(grace=grace)
    logging.getLogger("bscluster.work").info(
        "stopped: %s", ", ".join(f"{k} {v}" for k, v in sorted(worker.counts.items())) or
        "no jobs")
    sys.exit(0 if finished else EXIT_FORCED)
