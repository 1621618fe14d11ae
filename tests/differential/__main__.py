"""Play transcripts against fresh servers and print what disagrees.

    cd tests && python -m differential [--kind beanstalkd|bsnode|both] [NAME ...]

With ``both`` (the default) each transcript runs on beanstalkd and bsnode and
the differences between them are printed too.  Names filter by substring.
"""

from __future__ import annotations

import argparse
import sys
import time

from .dsl import load_all
from .pristine import STARTERS
from .runner import compare, run
from .suite import TRANSCRIPT_DIR


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m differential")
    ap.add_argument("--kind", choices=("beanstalkd", "bsnode", "both"), default="both")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every outcome")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    kinds = ("beanstalkd", "bsnode") if args.kind == "both" else (args.kind,)
    bad = 0
    t0 = time.monotonic()
    chosen = [t for t in load_all(TRANSCRIPT_DIR)
              if not args.names or any(n in t.name for n in args.names)]
    for t in chosen:
        runs = {}
        for kind in kinds:
            with STARTERS[kind](*t.flags) as server:
                runs[kind] = r = run(t, server.host, server.port, server.pid)
            for p in r.problems:
                print(f"[{kind}] {p}")
            bad += bool(r.problems)
            if args.verbose:
                for o in r.outcomes:
                    print(f"  {kind} {r.where(o.index)} {o.conn}: {o.reply.text}")
        if len(runs) == 2:
            for d in compare(runs["beanstalkd"], runs["bsnode"]):
                print(f"[diff] {d}")
                bad += 1
    print(f"{len(chosen)} transcripts, {bad} problems, {time.monotonic() - t0:.1f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
