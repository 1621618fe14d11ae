"""Bounded soak: producers and consumers on a 3-node cluster while nodes are SIGKILLed.

How this works
--------------
Three ``bsnode -b DIR -f 0`` processes listen on fixed loopback ports (chosen
free at start, kept across restarts) and are started with bscluster/procs.py.
Producer threads put uniquely numbered, self-checking bodies through their
own ``ClusterClient`` (failover policy); consumer threads reserve through
theirs and delete.  A killer thread SIGKILLs a random node every
``--kill-every`` seconds (jittered), leaves it down for up to ``--down-max``
seconds and starts it again on the same port and binlog.  After ``--duration``
seconds or ``--ops`` acknowledged puts the producers and the killer stop; the
consumers drain until every acknowledged job has been delivered and every
node is empty; the drain gives up (and the run is reported as not completed,
exit status 2) if no job is delivered for ``--stall`` seconds or it takes
longer than ``--drain-timeout``.  The backlog when the load stopped is
reported: producers may outpace consumers, which is not a fault.

Every outcome is recorded, and ``check`` (bscluster/delivery_check.py, a pure
function of that history, in the style of Jepsen's queue checker) decides:

* lost: a put was acknowledged (INSERTED reached the producer) and the job
  was never delivered -- must be 0;
* duplicated: a job delivered more than once.  Allowed only when every
  earlier delivery's delete was not acknowledged (the consumer died with it,
  or its node did); a delivery after an acknowledged delete is a *resurrected*
  job -- must be 0;
* corrupt: a delivered body that does not match its checksum -- must be 0;
* phantom: a delivered body no producer tried to put -- must be 0;
* a put whose connection broke after it was sent has an unknown fate: it may
  or may not be delivered, and either is fine.

The report (text, or JSON with ``--json``) gives jobs put, acknowledged,
reserved, deleted, lost, duplicated, kills survived; the exit status is 0 when
nothing was lost or broken, 1 when something was, 2 when the run itself
could not be done (a node did not come back, say).

    python bench/soak.py --duration 300 --kill-every 2      # five minutes
    python bench/soak.py --duration 8 --json                # what CI runs
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
from bsclient import (  # noqa: E402
    BeanstalkError,
    Client,
    ClusterClient,
    ConnectionLostError,
    DeadlineSoonError,
    NoNodeAvailableError,
    TimedOutError,
)
from bscluster.delivery_check import Delivery, History, Report, check, make_body, parse_body  # noqa: E402
from bscluster.procs import Server, free_port, start_bsnode  # noqa: E402

TUBES = [f"soak{i}" for i in range(8)]
TTR = 120  # long enough that no job times out while its consumer works
RESTART_TRIES = 5
CLIENT_TIMEOUT = 5.0  # seconds a reply may take before the client gives up on a node
DEAD_TIMEOUT = 0.5  # a node marked dead is retried this soon (they come back fast here)


# --- the cluster ------------------------------------------------------------------------
class Node:
    """One bsnode on a fixed port and binlog directory; killed and restarted."""

    def __init__(self, name: str, data_dir: Path, fsync_ms: int) -> None:
        self.name = name
        self.port = free_port()
        self.flags = ("-p", str(self.port), "-b", str(data_dir / name), "-f", str(fsync_ms))
        self.server: Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        last = None
        for _ in range(RESTART_TRIES):
            try:
                self.server = start_bsnode(*self.flags)
                return
            except RuntimeError as e:  # e.g. the port is briefly held: try again
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start again: {last}")

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class Soak:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.nodes = [Node(f"node{i + 1}", data_dir, args.fsync_ms) for i in range(args.nodes)]
        self.addresses = {n.name: n.address for n in self.nodes}
        self.history = History()
        self.producing = threading.Event()
        self.consuming = threading.Event()
        self.killing = threading.Event()
        self.node_lock = threading.Lock()
        self.backlog = 0  # acknowledged, not yet delivered, when the load stopped
        self.drain_seconds = 0.0

    def client(self, **kw) -> ClusterClient:
        return ClusterClient(self.addresses, dead_timeout=DEAD_TIMEOUT, failure_threshold=1,
                             connect_timeout=2.0, timeout=CLIENT_TIMEOUT, **kw)

    # --- workers ----------------------------------------------------------------
    def produce(self, n: int) -> None:
        h, args = self.history, self.args
        rng = random.Random(self.rng.random())
        with self.client() as cc:
            seq = 0
            while self.producing.is_set() and len(h.acked) < args.ops:
                seq += 1
                body = make_body(n, seq, rng, args.body_max)
                key = parse_body(body)[0]
                cc.use(rng.choice(TUBES))
                with h.lock:
                    h.attempted.add(key)
                try:
                    handle = cc.put(body, ttr=TTR)
                except NoNodeAvailableError as e:
                    with h.lock:
                        (h.unknown if e.sent else h.refused).add(key)
                    time.sleep(0.01)
                    continue
                except ConnectionLostError as e:
                    with h.lock:
                        (h.unknown if e.sent else h.refused).add(key)
                    continue
                except BeanstalkError:  # OUT_OF_MEMORY, DRAINING...: not stored
                    with h.lock:
                        h.refused.add(key)
                    continue
                with h.lock:
                    h.acked[key] = handle

    def consume(self) -> None:
        h = self.history
        with self.client(watch=TUBES) as cc:
            while self.consuming.is_set():
                try:
                    job = cc.reserve(timeout=1)
                except (TimedOutError, DeadlineSoonError):
                    continue
                except (NoNodeAvailableError, ConnectionLostError):
                    time.sleep(0.02)
                    continue
                key, intact = parse_body(job.body)
                d = Delivery(key, time.monotonic(), intact)
                with h.lock:
                    h.deliveries.append(d)
                try:
                    cc.delete(job)
                    d.deleted = True
                except BeanstalkError:  # lost connection, NOT_FOUND: not acknowledged
                    d.deleted = False

    def kill_loop(self) -> None:
        args, h = self.args, self.history
        while True:
            if _sleep_unless(self.killing, self.rng.uniform(0.5, 1.5) * args.kill_every):
                return
            node = self.rng.choice(self.nodes)
            with self.node_lock:
                node.kill()
                h.kills += 1
                h.kill_log.append((round(time.monotonic() - self.started, 2), node.name))
                time.sleep(self.rng.uniform(0, args.down_max))
                try:
                    node.start()
                except RuntimeError as e:
                    h.errors.append(str(e))
                    self.killing.clear()
                    return
                h.restarts += 1

    # --- the run ------------------------------------------------------------------
    def run(self) -> Report:
        args, h = self.args, self.history
        self.started = time.monotonic()
        for node in self.nodes:
            node.start()
        threads = []
        try:
            self.producing.set()
            self.consuming.set()
            self.killing.set()
            threads = [_spawn(self.produce, i) for i in range(args.producers)]
            threads += [_spawn(self.consume) for _ in range(args.consumers)]
            killer = _spawn(self.kill_loop)
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline and len(h.acked) < args.ops and not h.errors:
                time.sleep(0.1)
            self.killing.clear()
            killer.join(30)
            self.producing.clear()
            for t in threads[:args.producers]:
                t.join(30)
            self.backlog = len(h.acked.keys() - {d.key for d in h.deliveries})
            self._drain()
        finally:
            self.producing.clear()
            self.consuming.clear()
            self.killing.clear()
            for t in threads:
                t.join(30)
            for node in self.nodes:
                node.stop()
        return check(h)

    def _drain(self) -> None:
        """Wait until drained, while deliveries keep coming."""
        args, h = self.args, self.history
        start = last_progress = time.monotonic()
        seen = len(h.deliveries)
        while not h.errors and not self._drained():
            now = time.monotonic()
            if len(h.deliveries) > seen:
                seen, last_progress = len(h.deliveries), now
            if now - last_progress > args.stall:
                h.errors.append(f"drain stalled: no delivery for {args.stall:g}s")
            elif now - start > args.drain_timeout:
                h.errors.append(f"not drained within {args.drain_timeout:g}s")
            else:
                time.sleep(0.2)
        self.drain_seconds = time.monotonic() - start
        if h.errors:
            h.stranded = self._leftovers()

    def _drained(self) -> bool:
        h = self.history
        with h.lock:
            delivered = {d.key for d in h.deliveries}
            pending = [d for d in h.deliveries if d.deleted is None]
        if not h.acked.keys() <= delivered or pending:
            return False
        try:
            with self.client() as cc:
                stats = cc.stats()
        except BeanstalkError:
            return False
        return all(stats.get(f"current-jobs-{s}", 1) == 0
                   for s in ("ready", "reserved", "delayed", "buried"))


    def _leftovers(self) -> dict:
        """Jobs each node still holds, by state (what a failed drain left)."""
        out = {}
        for node in self.nodes:
            try:
                with Client(node.address, timeout=CLIENT_TIMEOUT) as c:
                    s = c.stats()
                out[node.name] = {k[13:]: s[k] for k in s if k.startswith("current-jobs-")}
            except BeanstalkError as e:
                out[node.name] = {"error": str(e)}
        return out


def _spawn(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def _sleep_unless(running: threading.Event, seconds: float) -> bool:
    """Sleep; True if ``running`` was cleared meanwhile (time to stop)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not running.is_set():
            return True
        time.sleep(min(0.05, end - time.monotonic()))
    return not running.is_set()


# --- the command ---------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--ops", type=int, default=10**9, help="stop after this many acked puts")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--consumers", type=int, default=3)
    p.add_argument("--kill-every", type=float, default=2.0,
                   help="mean seconds between SIGKILLs (jittered +-50%%)")
    p.add_argument("--down-max", type=float, default=0.5,
                   help="a killed node stays down up to this many seconds")
    p.add_argument("--fsync-ms", type=int, default=0, help="bsnode -f (default 0: always)")
    p.add_argument("--body-max", type=int, default=512, help="largest random padding")
    p.add_argument("--drain-timeout", type=float, default=900.0,
                   help="longest drain after the load stops (default 900)")
    p.add_argument("--stall", type=float, default=30.0,
                   help="give the drain up after this many seconds without a delivery")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="binlog directories go here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    made = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="bsnode-soak-")) if made else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # finally-blocks stop the nodes
    started = time.monotonic()
    keep = not made
    try:
        soak = Soak(args, data_dir)
        report = soak.run()
        keep = keep or not report.ok or bool(report.errors)
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        keep = True
        return 2
    finally:
        if keep:
            print(f"soak: binlogs kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if keep and not report.ok:
        (data_dir / "kills.json").write_text(json.dumps(soak.history.kill_log))
    extra = {"backlog_at_stop": soak.backlog, "drain_seconds": round(soak.drain_seconds, 1)}
    if args.json:
        print(json.dumps({**asdict(report), **extra, "ok": report.ok,
                          "seconds": round(elapsed, 1), "seed": args.seed}))
    else:
        print_report(report, args, elapsed, extra)
    if report.errors:
        return 2
    return 0 if report.ok else 1


def print_report(r: Report, args: argparse.Namespace, elapsed: float, extra: dict) -> None:
    print(f"soak: {args.nodes} nodes, {args.producers} producers, {args.consumers} consumers, "
          f"{elapsed:.1f} s, seed {args.seed}")
    rows = [
        ("puts attempted", r.put_attempted), ("puts acknowledged", r.put_acknowledged),
        ("puts of unknown fate", r.put_unknown), ("  of which stored", r.unknown_stored),
        ("puts refused", r.put_refused), ("reserved (deliveries)", r.reserved),
        ("jobs delivered", r.delivered_jobs), ("deletes acknowledged", r.deleted),
        ("deletes not acknowledged", r.delete_unacknowledged),
        ("LOST" + (" (drain incomplete: undelivered)" if r.errors else ""), r.lost), ("duplicated", r.duplicated),
        ("  allowed (delete not acknowledged)", r.duplicated_allowed),
        ("RESURRECTED after delete", r.resurrected), ("corrupt bodies", r.corrupt),
        ("phantom bodies", r.phantom), ("SIGKILLs survived", r.kills),
        ("restarts", r.restarts), ("backlog when the load stopped", extra["backlog_at_stop"]),
        ("drain seconds", extra["drain_seconds"]),
    ]
    for name, value in rows:
        print(f"  {name:<38} {value}")
    for e in r.errors:
        print(f"  error: {e}")
    if r.lost_keys:
        print(f"  lost, first ones: {', '.join(r.lost_keys)}")
    if r.resurrected_keys:
        print(f"  resurrected, first ones: {', '.join(r.resurrected_keys)}")
    for node, counts in r.stranded.items():
        print(f"  left on {node}: {counts}")
    print("  verdict:", "OK" if r.ok and not r.errors else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
