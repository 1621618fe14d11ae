"""Reproduce every performance target of issue 6, side by side with beanstalkd.

    python bench/run_benchmarks.py                 # everything (about 10 minutes)
    python bench/run_benchmarks.py --only throughput,memory --runs 5
    python bench/run_benchmarks.py --quick         # tiny sizes: checks the plumbing only

How this works
--------------
Every section starts its own servers on free 127.0.0.1 ports (bsnode, and
/usr/bin/beanstalkd when installed; without it the bsnode column is still
measured and ratios are left empty), pins each server to core 0 and the
compiled load generator (bench/loadgen.c, built by harness.py) to core 1,
and alternates the two servers run by run so that noise from the rest of the
machine hits both alike.  Figures are
medians over ``--runs`` runs.  Beside ops/s it records the server's CPU time
per command (from /proc, via ``loadgen --server-pid``), which is far less
sensitive to other processes stealing the cores than ops/s is.

Sections (``--only``):
  throughput  put-reserve-delete 10 conns pipeline 16 and 1, produce-consume
              100 conns pipeline 1, put 100 conns pipeline 16; p99 at c=10 p=1
  memory      RSS before and after a fill of --memory-jobs ready jobs, one tube
  scale       hot path on a fresh server vs one holding --idle-conns mostly
              idle connections over --idle-tubes tubes, some in blocking reserve
  delayed     --delayed-jobs delayed jobs, deadlines spread out: lateness, CPU
  nodes       2 nodes vs 1, load generators sharing the cores (nothing pinned)

The result is a Markdown table on stdout (progress goes to stderr) and,
with ``--json PATH``, every raw figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness as H

HERE = Path(__file__).resolve().parent
SECTIONS = ("throughput", "memory", "scale", "delayed", "nodes")

# (key, mode, conns, pipeline, target ratio bsnode/beanstalkd or None)
THROUGHPUT = (
    ("prd-c10-p16", "put-reserve-delete", 10, 16, 1.5),
    ("prd-c10-p1", "put-reserve-delete", 10, 1, 0.40),
    ("pc-c100-p1", "produce-consume", 100, 1, 0.33),
    ("put-c100-p16", "put", 100, 16, None),  # the issue's reference row, no target
)
P99_KEY = "prd-c10-p1"
P99_MAX_RATIO = 2.0
MEMORY_MAX_BYTES_PER_JOB = 300
SCALE_MAX_SLOWDOWN = 0.20
SCALE_LOADS = (("prd-c10-p1", 10, 1), ("prd-c10-p16", 10, 16))
DELAYED_MAX_LATE_MS = 50.0
NODES_MIN_RATIO = 1.3
NODES_LOAD = ("put-reserve-delete", 10, 16)  # per load generator; one generator per node


@dataclass
class Settings:
    runs: int = 3
    seconds: float = 3.0
    warmup: float = 1.0
    size: int = 100
    memory_jobs: int = 1_000_000
    idle_conns: int = 10_000
    idle_tubes: int = 10_000
    idle_waiting: int = 1_000
    delayed_jobs: int = 1_000_000
    delayed_start: float = 60.0
    delayed_spread: float = 30.0
    kinds: tuple = ("beanstalkd", "bsnode")
    bsnode_path: str | None = None  # run bsnode from this copy (PYTHONPATH) instead


QUICK = dict(runs=1, seconds=0.5, warmup=0.2, memory_jobs=2000, idle_conns=40, idle_tubes=40,
             idle_waiting=4, delayed_jobs=400, delayed_start=1.5, delayed_spread=1.0)


@dataclass
class Bench:
    """Runs the sections, counting and announcing each run."""

    s: Settings
    loadgen: str
    total: int = 0
    done: int = 0
    results: dict = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def step(self, text: str) -> None:
        self.done += 1
        print(f"run {self.done}/{self.total}: {text} ...", file=sys.stderr, flush=True)

    def lg(self, server, mode: str, conns: int, pipeline: int, seconds: float, **kw) -> dict:
        r = H.run_loadgen(self.loadgen, server.port, mode, conns=conns, pipeline=pipeline,
                          size=self.s.size, seconds=seconds, server_pid=server.pid, **kw)
        self.say(f"    {r['ops_per_s']:>9,.0f} ops/s  p99 {r['p99_us']:>8.0f} us  "
                 f"server {r.get('server_cpu_us_per_op', float('nan')):5.2f} us/op")
        return r

    # --- throughput -------------------------------------------------------------
    def count_throughput(self) -> int:
        return len(THROUGHPUT) * len(self.s.kinds) * (self.s.runs + 1)

    def throughput(self) -> None:
        out = self.results.setdefault("throughput", {})
        for key, mode, conns, pipeline, _ in THROUGHPUT:
            with H.servers(self.s.kinds, pythonpath=self.s.bsnode_path) as srv:
                for kind in self.s.kinds:
                    self.step(f"{kind} {mode} c={conns} p={pipeline} (warm-up)")
                    self.lg(srv[kind][0], mode, conns, pipeline, self.s.warmup)
                runs: dict[str, list] = {k: [] for k in self.s.kinds}
                for rep in range(self.s.runs):
                    for kind in self.s.kinds:
                        self.step(f"{kind} {mode} c={conns} p={pipeline} #{rep + 1}")
                        runs[kind].append(self.lg(srv[kind][0], mode, conns, pipeline,
                                                  self.s.seconds))
            out[key] = runs

    # --- memory -----------------------------------------------------------------
    def count_memory(self) -> int:
        return len(self.s.kinds)

    def memory(self) -> None:
        out = self.results.setdefault("memory", {})
        n = self.s.memory_jobs
        for kind in self.s.kinds:
            self.step(f"{kind} fill {n} ready jobs of {self.s.size} bytes, one tube")
            with H.servers([kind], pythonpath=self.s.bsnode_path) as srv:
                server = srv[kind][0]
                time.sleep(0.3)  # let start-up allocations settle before the baseline
                before = H.rss_kb(server.pid)
                r = H.run_loadgen(self.loadgen, server.port, "fill", conns=10, pipeline=64,
                                  size=self.s.size, jobs=n, server_pid=server.pid,
                                  timeout=900)
                after = H.rss_kb(server.pid)
                from bsclient import Client
                with Client(server.address) as c:
                    ready = int(c.stats()["current-jobs-ready"])
                if ready != n:
                    raise H.BenchError(f"{kind}: {ready} ready jobs after a fill of {n}")
            per_job = (after - before) * 1024 / n
            out[kind] = {"jobs": n, "rss_before_kb": before, "rss_after_kb": after,
                         "bytes_per_job": per_job, "over_body": per_job - self.s.size,
                         "fill_ops_per_s": r["ops_per_s"]}
            self.say(f"    RSS {before} -> {after} kB: {per_job:.0f} bytes/job, "
                     f"{per_job - self.s.size:.0f} over the body")

    # --- scale ------------------------------------------------------------------
    def count_scale(self) -> int:
        return len(self.s.kinds) * (1 + self.s.runs * len(SCALE_LOADS) * 2)

    def _idle(self, server):
        s = self.s
        argv = ["taskset", "-c", str(H.CLIENT_CORE), sys.executable, str(HERE / "idle_conns.py"),
                "--port", str(server.port), "--conns", str(s.idle_conns),
                "--tubes", str(s.idle_tubes), "--waiting", str(s.idle_waiting)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60 + s.idle_conns / 100
        line = ""
        while not line:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise H.BenchError(f"idle_conns did not get ready (exit {proc.returncode})")
            if select.select([proc.stdout], [], [], min(left, 1.0))[0]:
                line = proc.stdout.readline()
        return proc, line.split()

    def scale(self) -> None:
        out = self.results.setdefault("scale", {})
        s = self.s
        H.raise_nofile(s.idle_conns + 1024)  # servers started from here inherit it
        for kind in s.kinds:
            with H.servers([kind], count=2, pythonpath=self.s.bsnode_path) as srv:
                fresh, loaded = srv[kind]
                self.step(f"{kind} open {s.idle_conns} idle connections over "
                          f"{s.idle_tubes} tubes, {s.idle_waiting} in blocking reserve")
                proc, ready = self._idle(loaded)
                try:
                    from bsclient import Client
                    with Client(loaded.address) as c:
                        st = c.stats()
                    held = {"connections": int(st["current-connections"]),
                            "tubes": int(st["current-tubes"]),
                            "waiting": int(st["current-waiting"]),
                            "setup_s": float(ready[4]) if len(ready) > 4 else None}
                    self.say(f"    holding {held}")
                    if held["waiting"] < s.idle_waiting or held["tubes"] < s.idle_tubes:
                        raise H.BenchError(f"{kind}: idle load not in place: {held}")
                    runs = {"held": held}
                    for key, conns, pipeline in SCALE_LOADS:
                        per: dict[str, list] = {"fresh": [], "loaded": []}
                        for rep in range(s.runs):
                            for which, server in (("fresh", fresh), ("loaded", loaded)):
                                self.step(f"{kind} ({which}) put-reserve-delete c={conns} "
                                          f"p={pipeline} #{rep + 1}")
                                per[which].append(self.lg(server, "put-reserve-delete",
                                                          conns, pipeline, s.seconds))
                        runs[key] = per
                finally:
                    proc.stdin.close()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            out[kind] = runs

    # --- delayed ----------------------------------------------------------------
    def count_delayed(self) -> int:
        return len(self.s.kinds)

    def delayed(self) -> None:
        out = self.results.setdefault("delayed", {})
        s = self.s
        for kind in s.kinds:
            self.step(f"{kind} {s.delayed_jobs} delayed jobs, deadlines "
                      f"{s.delayed_start:.0f}..{s.delayed_start + s.delayed_spread:.0f}s")
            with H.servers([kind], pythonpath=self.s.bsnode_path) as srv:
                server = srv[kind][0]
                argv = ["taskset", "-c", str(H.CLIENT_CORE), sys.executable,
                        str(HERE / "delayed_promotion.py"), "--port", str(server.port),
                        "--pid", str(server.pid), "--jobs", str(s.delayed_jobs),
                        "--start", str(s.delayed_start), "--spread", str(s.delayed_spread),
                        "--size", str(s.size)]
                limit = s.delayed_start + s.delayed_spread + 120 + s.delayed_jobs / 5000
                try:
                    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True,
                                          timeout=limit, check=True)
                except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                    raise H.BenchError(f"delayed_promotion failed: {e}") from None
                r = json.loads(done.stdout.strip().splitlines()[-1])
            out[kind] = r
            self.say(f"    late by at most {r['late_max_ms']:.1f} ms (at least "
                     f"{r['late_max_lo_ms']:.1f}); CPU mean {r['cpu_mean_pct'] or 0:.0f}% "
                     f"peak {r['cpu_peak_pct'] or 0:.0f}%")

    # --- nodes ------------------------------------------------------------------
    def count_nodes(self) -> int:
        return len(self.s.kinds) * self.s.runs * 2

    def nodes(self) -> None:
        out = self.results.setdefault("nodes", {})
        mode, conns, pipeline = NODES_LOAD
        for kind in self.s.kinds:
            per: dict[str, list] = {"one": [], "two": []}
            with H.servers([kind], core=None, count=2,
                           pythonpath=self.s.bsnode_path) as srv:
                a, b = srv[kind]
                for rep in range(self.s.runs):
                    for which, targets in (("one", (a, a)), ("two", (a, b))):
                        self.step(f"{kind} {which} node(s), 2 load generators "
                                  f"{mode} c={conns} p={pipeline} #{rep + 1}")
                        per[which].append(self._together(targets, mode, conns, pipeline))
            out[kind] = per

    def _together(self, targets, mode: str, conns: int, pipeline: int) -> dict:
        """Run one unpinned load generator per target at the same time; sums ops/s."""
        kw = dict(conns=conns, pipeline=pipeline, size=self.s.size, seconds=self.s.seconds,
                  core=None)
        pids = sorted({t.pid for t in targets})
        cpu0 = [H.cpu_seconds(p) for p in pids]
        busy0, total0 = H.machine_cpu()
        with H.loadgen_running(self.loadgen, targets[0].port, mode, **kw) as r1, \
                H.loadgen_running(self.loadgen, targets[1].port, mode, **kw) as r2:
            got = [r1(), r2()]
        busy1, total1 = H.machine_cpu()
        servers = sum(H.cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
        ops = sum(g["ops"] for g in got)
        elapsed = max(g["elapsed_s"] for g in got)
        ncpu = os.cpu_count() or 1
        # cores in use during the run: ours (servers + generators) and everybody else's
        wall = (total1 - total0) / ncpu
        used = (busy1 - busy0) / wall if wall > 0 else float("nan")
        generators = sum(g["client_cpu_s"] for g in got) / elapsed
        r = {"ops_per_s": ops / elapsed, "server_cores": servers / elapsed,
             "generator_cores": generators, "other_cores": used - servers / elapsed - generators,
             "server_cpu_us_per_op": servers * 1e6 / ops if ops else float("nan"), "runs": got}
        self.say(f"    {r['ops_per_s']:>9,.0f} ops/s in total; cores used: servers "
                 f"{r['server_cores']:.2f}, generators {generators:.2f}, "
                 f"other processes {r['other_cores']:.2f}")
        return r


# --- the report -------------------------------------------------------------------
def _med(runs: list, key: str) -> float:
    return H.median([r[key] for r in runs if key in r])


def _paired(a_runs: list, b_runs: list, key: str) -> float | None:
    """Median over rounds of b/a: runs of one round were back to back, so a slow
    drift in machine load cancels out (better than a ratio of medians)."""
    ratios = [b[key] / a[key] for a, b in zip(a_runs, b_runs, strict=False)
              if a.get(key) and b.get(key)]
    return H.median(ratios) if ratios else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b != b or a != a or not b:
        return None
    return a / b


def _fmt(v, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if v is None or v != v else format(v, spec) + suffix


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


def report(results: dict, s: Settings) -> str:
    rows = []
    t = results.get("throughput", {})
    for key, mode, conns, pipeline, target in THROUGHPUT:
        if key not in t:
            continue
        b, n = t[key].get("beanstalkd", []), t[key].get("bsnode", [])
        bo, no = (_med(b, "ops_per_s") if b else None), _med(n, "ops_per_s")
        ratio = _paired(b, n, "ops_per_s") if b else None
        cpu = _paired(n, b, "server_cpu_us_per_op") if b else None
        rows.append((f"{mode}, {conns} conns, pipeline {pipeline}: ops/s",
                     f"≥ {target}x" if target else "(reference)",
                     f"{_fmt(bo)} ({_fmt(_med(b, 'server_cpu_us_per_op') if b else None, '.1f')} µs/op)",
                     f"{_fmt(no)} ({_fmt(_med(n, 'server_cpu_us_per_op'), '.1f')} µs/op)",
                     f"{_fmt(ratio, '.2f', 'x')} (CPU/op: {_fmt(cpu, '.2f', 'x')})",
                     _verdict(None if ratio is None or target is None else ratio >= target)))
        if key == P99_KEY:
            bp, np_ = (_med(b, "p99_us") if b else None), _med(n, "p99_us")
            r = _paired(b, n, "p99_us")
            rows.append((f"p99 latency, {conns} conns, pipeline {pipeline}",
                         f"≤ {P99_MAX_RATIO:g}x", _fmt(bp, ",.0f", " µs"),
                         _fmt(np_, ",.0f", " µs"), _fmt(r, ".2f", "x"),
                         _verdict(None if r is None else r <= P99_MAX_RATIO)))
    m = results.get("memory", {})
    if m:
        bm, nm = m.get("beanstalkd"), m.get("bsnode")
        rows.append((f"memory, {nm['jobs']:,} ready jobs of {s.size} B: bytes/job over the body",
                     f"≤ {MEMORY_MAX_BYTES_PER_JOB}",
                     _fmt(bm and bm["over_body"]), _fmt(nm["over_body"]), "",
                     _verdict(nm["over_body"] <= MEMORY_MAX_BYTES_PER_JOB)))
    sc = results.get("scale", {})
    for key, conns, pipeline in SCALE_LOADS if sc else ():
        cells, ok = {}, None
        for kind in ("beanstalkd", "bsnode"):
            if kind in sc:
                runs = sc[kind][key]
                ops = _paired(runs["fresh"], runs["loaded"], "ops_per_s")
                cpu = _paired(runs["loaded"], runs["fresh"], "server_cpu_us_per_op")
                cells[kind] = f"{_fmt(ops, '.2f', 'x')} (CPU/op: {_fmt(cpu, '.2f', 'x')})"
                if kind == "bsnode" and ops is not None and cpu is not None:
                    ok = min(ops, cpu) >= 1 - SCALE_MAX_SLOWDOWN
        held = sc.get("bsnode", {}).get("held", {})
        rows.append((f"scale: prd c={conns} p={pipeline} with {held.get('connections', 0):,} "
                     f"conns / {held.get('tubes', 0):,} tubes / {held.get('waiting', 0):,} "
                     "waiting, vs a fresh server (ops/s and CPU/op as fresh/loaded)",
                     f"≥ {1 - SCALE_MAX_SLOWDOWN:.2f}x",
                     cells.get("beanstalkd", "—"), cells.get("bsnode", "—"), "",
                     _verdict(ok)))
    d = results.get("delayed", {})
    if d:
        bd, nd = d.get("beanstalkd"), d.get("bsnode")

        def late(r):
            if r is None:
                return "—"
            probe = r.get("probe_late_max_ms")
            p99 = r.get("probe_late_p99_ms")
            return (f"probes max {_fmt(probe, '.0f')} ms (p99 {_fmt(p99, '.0f')}); frontier {r['late_max_lo_ms']:.0f}–{r['late_max_ms']:.0f} ms; "
                    f"{r['measured'] / r['jobs']:.0%} measured")

        def cpu(r):
            if r is None or r["cpu_mean_pct"] is None:
                return "—"
            return f"{r['cpu_mean_pct']:.0f}% / {r['cpu_peak_pct']:.0f}%"

        # Verdict: every one of the jobs promoted within the bound (frontier, upper
        # bound) and 99% of the probes; the probes' single worst case is shown beside
        # beanstalkd's, as on a shared machine it measures the OS scheduler too.
        ok = None
        if nd["measured"] >= 0.9 * nd["jobs"] and nd.get("probe_late_p99_ms") is not None:
            ok = (nd["late_max_ms"] <= DELAYED_MAX_LATE_MS and
                  nd["probe_late_p99_ms"] <= DELAYED_MAX_LATE_MS and
                  nd["promoted"] == nd["jobs"])
        rows.append((f"delayed: {nd['jobs']:,} jobs due over {nd['spread_s']:.0f} s, promotion "
                     "lateness (probe jobs due meanwhile; the frontier bracket of all jobs); "
                     "met when the frontier's upper bound and the probes' p99 are within",
                     f"≤ {DELAYED_MAX_LATE_MS:.0f} ms", late(bd), late(nd), "",
                     _verdict(ok) if ok is not None else "not measurable (fill overlapped)"))
        rows.append(("delayed: server CPU while promoting, mean / peak 0.5 s", "no spike",
                     cpu(bd), cpu(nd), "", "—"))
    nd_ = results.get("nodes", {})
    if nd_:
        cells, verdict, other = {}, None, []
        for kind, runs in nd_.items():
            one, two = _med(runs["one"], "ops_per_s"), _med(runs["two"], "ops_per_s")
            r = _ratio(two, one)
            cells[kind] = (f"{_fmt(r, '.2f', 'x')} ({_fmt(one)} → {_fmt(two)} ops/s; server "
                           f"cores {_med(runs['one'], 'server_cores'):.2f} → "
                           f"{_med(runs['two'], 'server_cores'):.2f})")
            other += [x["other_cores"] for x in runs["one"] + runs["two"]]
            if kind == "bsnode" and r is not None:
                verdict = r >= NODES_MIN_RATIO
        mode, conns, pipeline = NODES_LOAD
        rows.append((f"2 nodes vs 1: total ops/s of two generators ({mode} c={conns} "
                     f"p={pipeline} each) on one node or one each, nothing pinned; "
                     "other processes used "
                     f"{H.median(other):.1f} of {os.cpu_count()} cores meanwhile",
                     f"≥ {NODES_MIN_RATIO}x", cells.get("beanstalkd", "—"),
                     cells.get("bsnode", "—"), "", _verdict(verdict)))
    head = ("| measurement | target | beanstalkd 1.12 | bsnode | ratio | verdict |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join("| " + " | ".join(r) + " |\n" for r in rows)


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def shown_path(path: str) -> str:
    """``path`` relative to the repository when it is inside it."""
    root = HERE.parent
    return os.path.relpath(path, root) if Path(path).resolve().is_relative_to(root) else path


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    d = Settings()
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections ({','.join(SECTIONS)})")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the plumbing only")
    ap.add_argument("--runs", type=int, help=f"runs per figure, median taken ({d.runs})")
    ap.add_argument("--seconds", type=float, help=f"seconds per run ({d.seconds})")
    ap.add_argument("--memory-jobs", type=int, help=f"({d.memory_jobs})")
    ap.add_argument("--idle-conns", type=int, help=f"({d.idle_conns})")
    ap.add_argument("--idle-tubes", type=int, help=f"({d.idle_tubes})")
    ap.add_argument("--idle-waiting", type=int, help=f"({d.idle_waiting})")
    ap.add_argument("--delayed-jobs", type=int, help=f"({d.delayed_jobs})")
    ap.add_argument("--delayed-start", type=float,
                    help=f"first deadline, s after the fill starts ({d.delayed_start:g})")
    ap.add_argument("--delayed-spread", type=float, help=f"({d.delayed_spread:g})")
    ap.add_argument("--no-beanstalkd", action="store_true", help="measure bsnode alone")
    ap.add_argument("--bsnode-path", metavar="DIR",
                    help="run bsnode from DIR/bsnode (a copy with a change to try)")
    ap.add_argument("--json", metavar="PATH", help="write every raw figure here")
    ap.add_argument("--report-from", metavar="PATH",
                    help="print the table from a --json file of an earlier run, run nothing")
    args = ap.parse_args(argv)
    s = Settings(**QUICK) if args.quick else Settings()
    for name in ("runs", "seconds", "bsnode_path", "memory_jobs", "idle_conns", "idle_tubes", "idle_waiting",
                 "delayed_jobs", "delayed_start", "delayed_spread"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    if args.no_beanstalkd or not H.have_beanstalkd():
        if not args.no_beanstalkd:
            print("note: /usr/bin/beanstalkd is not installed; measuring bsnode alone",
                  file=sys.stderr)
        s.kinds = ("bsnode",)
    sections = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args, s, sections


def main(argv: list[str] | None = None) -> int:
    args, s, sections = parse_args(argv)
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        s = Settings(**{k: v for k, v in doc["settings"].items() if k != "kinds"})
        print(f"{doc['machine']}\n`{doc['command']}`\n")
        print(report(doc["results"], s))
        return 0
    if H.cores() < 2:
        print("note: fewer than 2 cores: server and load generator share one", file=sys.stderr)
    try:
        bench = Bench(s, H.find_loadgen())
    except H.BenchError as e:
        print(f"run_benchmarks: {e}", file=sys.stderr)
        return 2
    bench.total = sum(getattr(bench, f"count_{name}")() for name in sections)
    started = time.monotonic()
    argv_shown = " ".join(["python", "bench/run_benchmarks.py", *(argv or sys.argv[1:])])
    try:
        for name in sections:
            bench.say(f"== {name}")
            getattr(bench, name)()
    except H.BenchError as e:
        print(f"run_benchmarks: {e}", file=sys.stderr)
        return 1
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"settings": s.__dict__, "results": bench.results, "machine": machine(),
                 "command": argv_shown, "loadgen": shown_path(bench.loadgen)},
                indent=1, default=str))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"{when} — {machine()}\n`{argv_shown}` — medians of {s.runs} runs of {s.seconds:g} s, "
          f"{s.size}-byte bodies, server on core {H.SERVER_CORE}, load generator "
          f"({shown_path(bench.loadgen)}) on core {H.CLIENT_CORE}; took {time.monotonic() - started:.0f} s\n")
    if s.bsnode_path:
        print(f"bsnode run from {s.bsnode_path}/bsnode, not the installed package\n")
    print(report(bench.results, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
