"""`make bench`: the performance suite. Runs each section (both sides of every comparison
alternating, several repetitions), prints a table per section, and rewrites that section of
BENCHMARKS.md between its markers. Never part of CI; a full run takes about an hour on 2 cores.

    .venv/bin/python scripts/bench/run.py                    # every section, written to BENCHMARKS.md
    .venv/bin/python scripts/bench/run.py --only ingest scale --reps 3
    .venv/bin/python scripts/bench/run.py --quick --no-write  # a smoke run of every section

Needs the release build (`cargo build --release`) and the test requirements in .venv
(`bash scripts/setup.sh --test`); the ingestion section installs the stock MLflow server into a
venv of its own the first time.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# in the order they run: training first, on a quiet machine
SECTIONS = ["train_step", "evaluation", "time_to_accuracy", "loader", "ingest", "scale", "schedule"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each side (default 5)")
    ap.add_argument("--quick", action="store_true", help="small sizes and 2 repetitions, a smoke run")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads on both sides of the training comparisons (default: every core)")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    ctx = harness.Context(reps=reps, quick=args.quick, threads=args.threads,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    machine = harness.machine()
    print(f"machine: {machine}\n", flush=True)
    failed = []
    for key in args.only or SECTIONS:
        t = time.monotonic()
        ctx.log(f"-- {key}")
        try:
            section = importlib.import_module(key).run(ctx)
        except Exception:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            failed.append(key)
            continue
        print(section.text(), f"\n   ({time.monotonic() - t:.0f} s)\n", flush=True)
        if not args.no_write and not args.quick:
            harness.write_section(section.markdown(machine, ctx.now()), section.key)
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
