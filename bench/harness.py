"""Shared plumbing for the benchmark script: servers, pinning, the load generator.

How this works
--------------
Servers are started with bscluster/procs.py (free 127.0.0.1 ports, readiness
with a deadline) and then pinned to one core with ``sched_setaffinity`` on
every thread of the process.  The compiled load generator is the project's
own ``bench/loadgen.c``: it is built with ``cc -O2`` into ``bench/.build/``
(git-ignored) when the binary is missing or older than the source, or
``$LOADGEN`` names another binary with the same options.  It runs under
``taskset`` with a wall-clock bound; its one JSON line is returned as a dict.
Every subprocess started here is waited for or killed before the function
that started it returns.

``python bench/harness.py [OUT]`` builds the load generator if needed (into
OUT if given) and prints its path; tests/cluster/test_bench.py runs it that way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
from bscluster.procs import (  # noqa: E402
    HAVE_BEANSTALKD,
    Server,
    poll,
    start_beanstalkd,
    start_bsnode,
)

LOADGEN_SOURCE = HERE / "loadgen.c"
LOADGEN_BUILT = HERE / ".build" / "loadgen"
FORWARDER_SOURCE = HERE / "forwarder.c"
FORWARDER_BUILT = HERE / ".build" / "forwarder"
CC_FLAGS = ("-O2", "-std=c99", "-Wall")
CC_HINT = "install a C compiler (Debian: apt-get install gcc libc6-dev)"
SERVER_CORE = 0
CLIENT_CORE = 1
GRACE = 20.0  # seconds a loadgen run may take beyond --seconds to finish in-flight work
KINDS = ("beanstalkd", "bsnode")


class BenchError(RuntimeError):
    """A run could not be done; the message says why."""


def have_beanstalkd() -> bool:
    return HAVE_BEANSTALKD


def cores() -> int:
    return len(os.sched_getaffinity(0))


# --- the compiled programs: the load generator, the bare forwarder ------------------
def find_loadgen(build: bool = True) -> str:
    """Path of the compiled load generator: $LOADGEN, or bench/loadgen.c built
    into bench/.build/ (rebuilt when the source is newer than the binary)."""
    env = os.environ.get("LOADGEN")
    if env:
        if not os.access(env, os.X_OK):
            raise BenchError(f"LOADGEN={env} is not an executable")
        return env
    if not build and not _is_current(LOADGEN_SOURCE, LOADGEN_BUILT):
        raise BenchError(f"{LOADGEN_BUILT} is missing or older than {LOADGEN_SOURCE}")
    return str(ensure_loadgen(LOADGEN_BUILT))


def ensure_loadgen(out: Path) -> Path:
    """``out``, compiled from bench/loadgen.c first if missing or older than it."""
    return ensure_built(LOADGEN_SOURCE, out, "the load generator")


def find_forwarder() -> str:
    """Path of bench/forwarder.c (a bare TCP forwarder, bench_proxy.py --forwarder)
    built into bench/.build/ when missing or older than the source."""
    return str(ensure_built(FORWARDER_SOURCE, FORWARDER_BUILT, "the bare forwarder"))


def ensure_built(source: Path, out: Path, what: str) -> Path:
    """``out``, compiled from ``source`` (``what`` it is) first if missing or older."""
    return out if _is_current(source, out) else build_c(source, out, what)


def _is_current(source: Path, binary: Path) -> bool:
    try:
        return (os.access(binary, os.X_OK)
                and binary.stat().st_mtime >= source.stat().st_mtime)
    except FileNotFoundError:
        return False


def build_c(source: Path, out: Path, what: str) -> Path:
    """Compile one of bench/'s C programs to ``out`` with ``$CC`` (default cc).

    The binary is written beside ``out`` and renamed into place, so parallel
    builds never leave a half-written file."""
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        raise BenchError(f"no C compiler ({cc!r}) to build {source}: {CC_HINT}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    argv = [cc, *CC_FLAGS, "-o", str(tmp), str(source)]
    print(f"building {what}: {' '.join(argv)}", file=sys.stderr)
    try:
        subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    except subprocess.CalledProcessError as e:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"{' '.join(argv)} failed ({CC_HINT}):\n{e.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"{' '.join(argv)} did not finish in 120 s") from None
    os.replace(tmp, out)
    return out


def loadgen_argv(loadgen: str, port: int, mode: str, *, conns: int, pipeline: int = 1,
                 size: int = 100, seconds: float | None = None, jobs: int | None = None,
                 tubes: int = 1, server_pid: int | None = None, core: int | None = CLIENT_CORE,
                 extra: Sequence[str] = ()) -> list[str]:
    argv = [] if core is None else ["taskset", "-c", str(core)]
    argv += [loadgen, "--host", "127.0.0.1", "--port", str(port), "--mode", mode,
             "--conns", str(conns), "--pipeline", str(pipeline), "--size", str(size),
             "--tubes", str(tubes), "--grace", str(GRACE)]
    if seconds is not None:
        argv += ["--seconds", str(seconds)]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    if server_pid is not None:
        argv += ["--server-pid", str(server_pid)]
    return argv + list(extra)


def parse_loadgen(stdout: str, stderr: str, argv: list[str]) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"loadgen printed no result: {' '.join(argv)}\n{stderr.strip()}")
    result = json.loads(lines[-1])
    if result.get("errors") or result.get("incomplete"):
        samples = "; ".join(result.get("error_samples", []))
        raise BenchError(f"loadgen reported {result.get('errors')} errors "
                         f"(incomplete={result.get('incomplete')}): {samples}")
    return result


def run_loadgen(loadgen: str, port: int, mode: str, *, timeout: float | None = None,
                **kw) -> dict:
    """One loadgen run, bounded in time; returns its JSON result."""
    argv = loadgen_argv(loadgen, port, mode, **kw)
    limit = timeout or (kw.get("seconds") or 600) + GRACE + 15
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BenchError(f"loadgen did not finish in {limit:.0f}s: {' '.join(argv)}") from None
    return parse_loadgen(out.stdout, out.stderr, argv)


@contextmanager
def loadgen_running(loadgen: str, port: int, mode: str, **kw):
    """Start a loadgen in the background; yields a function that waits for its result."""
    argv = loadgen_argv(loadgen, port, mode, **kw)
    limit = (kw.get("seconds") or 600) + GRACE + 15
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result() -> dict:
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            raise BenchError(f"loadgen did not finish in {limit:.0f}s: {' '.join(argv)}") from None
        return parse_loadgen(out, err, argv)

    try:
        yield result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- servers ----------------------------------------------------------------------
def pin(pid: int, core: int | None) -> None:
    """Pin every thread of ``pid`` to ``core`` (None: leave it be)."""
    if core is None:
        return
    tids = os.listdir(f"/proc/{pid}/task")
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), {core})
        except (ProcessLookupError, PermissionError):
            pass


def start_server(kind: str, core: int | None = SERVER_CORE, *flags: str,
                 pythonpath: str | None = None) -> Server:
    """Start ``kind`` ("bsnode" or "beanstalkd") on a free loopback port, pinned.

    ``pythonpath`` runs bsnode from another copy of the package (a directory
    holding a ``bsnode`` package), for trying a change without touching node/."""
    if kind == "beanstalkd":
        if not HAVE_BEANSTALKD:
            raise BenchError("/usr/bin/beanstalkd is not installed")
        server = start_beanstalkd(*flags)
    elif kind == "bsnode":
        env = None
        if pythonpath:
            env = {**os.environ, "PYTHONPATH": pythonpath}
        server = start_bsnode(*flags, env=env)
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    pin(server.pid, core)
    return server


@contextmanager
def servers(kinds: Iterable[str], core: int | None = SERVER_CORE, count: int = 1,
            pythonpath: str | None = None):
    """Start ``count`` servers of each kind; yields {kind: [Server, ...]}; stops them all."""
    started: dict[str, list[Server]] = {}
    try:
        for kind in kinds:
            started[kind] = [start_server(kind, core, pythonpath=pythonpath)
                             for _ in range(count)]
        yield started
    finally:
        for group in started.values():
            for server in group:
                server.stop()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tck, sum(fields) / tck


def raise_nofile(want: int) -> int:
    """Raise our RLIMIT_NOFILE soft limit toward ``want``; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_until(predicate, deadline_s: float, what: str, step: float = 0.05) -> None:
    """Poll ``predicate`` until it is true or the deadline passes."""
    try:
        poll(predicate, deadline_s, what, step)
    except TimeoutError as e:
        raise BenchError(str(e)) from None


def which(cmd: str) -> str | None:
    return shutil.which(cmd)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the load generator (bench/loadgen.c) "
                                 "if it is missing or older than its source; print its path.")
    ap.add_argument("out", nargs="?", type=Path,
                    help=f"where to build it (default: $LOADGEN, else {LOADGEN_BUILT})")
    args = ap.parse_args(argv)
    print(ensure_loadgen(args.out) if args.out else find_loadgen())


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"harness: {e}")
