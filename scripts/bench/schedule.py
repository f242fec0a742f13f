"""Scheduling: from `POST /api/v1/runs` to the worker's first optimisation step, minus model
and data loading, on a fresh release server with one CPU slot; and the idle server's memory.
Each run is `bert-tiny` on `demo-news` for one step; the run's JSON carries when it was
submitted (`created_at`) and claimed (`started_at`), and the worker's start milestones
(`timings`: process began, model and data loaded, first step logged), which split the time
into queue claim, process start, loading and the first step.

    .venv/bin/python scripts/bench/run.py --only schedule
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import service  # noqa: E402

RUN = {"model": "bert-tiny", "dataset": "demo-news", "max_steps": 1, "max_length": 16}
ACTIVE = {"queued", "running", "interrupted"}
# seconds between one run's end and the next submission
GAP = 1.0


def ms(t: str) -> float:
    """Milliseconds since 1970 of a stored time (`2024-01-01T00:00:00.000Z`)."""
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1e3


def one_run(c: service.Client) -> dict[str, float]:
    """Submits a run, waits for it to end; its phases in ms."""
    t0 = time.time() * 1e3
    run = c.post("/api/v1/runs", RUN)
    answered = time.time() * 1e3
    rid = run["id"]
    end = time.monotonic() + 300
    while run["status"] in ACTIVE and time.monotonic() < end:
        time.sleep(0.05)
        run = json.loads(c.get(f"/api/v1/runs/{rid}"))
    if run["status"] != "succeeded" or "timings" not in run:
        raise RuntimeError(f"run {rid} ended {run['status']}: {run.get('error')}")
    t = run["timings"]
    if t["first_step"] != 1:
        raise RuntimeError(f"run {rid}: the first logged step is {t['first_step']}, not 1")
    created, claimed = ms(run["created_at"]), ms(run["started_at"])
    began, loaded, stepped = ms(t["worker_started_at"]), ms(t["loaded_at"]), ms(t["first_step_at"])
    return {
        "submission answered": answered - t0,
        "queue claim": claimed - created,
        "process start": began - claimed,
        "loading (subtracted)": loaded - began,
        "first step": stepped - loaded,
        "submission to first step": stepped - created,
        "submission to first step, minus loading": (stepped - created) - (loaded - began),
    }


def run(ctx: harness.Context) -> harness.Section:
    folder = Path(tempfile.mkdtemp(prefix="modalbench-schedule-"))
    try:
        # the idle figure first, on a server that has done nothing yet
        server = service.Server(folder / "data", ["--cpu-slots", "1"])
        try:
            c = service.Client(server.url)
            c.get("/healthz")
            time.sleep(2)
            idle_rss = server.rss_bytes()
            waiting_rss = server.children_rss_bytes()
            c.get("/leaderboard")
            c.get("/runs")
            pages_rss = server.rss_bytes()
            one_run(c)  # warm-up: the page cache holds the binary, libtorch and the model
            phases: dict[str, list[float]] = {}
            for r in range(ctx.reps * 2):
                # a free slot, as a run finds it when it is submitted (its worker started ahead
                # has loaded)
                time.sleep(GAP)
                for k, v in one_run(c).items():
                    phases.setdefault(k, []).append(v)
                ctx.log(f"  run {r + 1}: {phases['submission to first step, minus loading'][-1]:.0f} ms"
                        f" without loading")
            after_rss = server.rss_bytes()
        finally:
            server.stop()
        # the same without workers started ahead: each run starts its worker process
        server = service.Server(folder / "cold", ["--cpu-slots", "1", "--warm-workers", "false"])
        try:
            c = service.Client(server.url)
            one_run(c)
            cold: dict[str, list[float]] = {}
            for _ in range(ctx.reps):
                time.sleep(GAP)
                for k, v in one_run(c).items():
                    cold.setdefault(k, []).append(v)
        finally:
            server.stop()
    finally:
        harness.run(["rm", "-rf", str(folder)])

    stats = {k: harness.Stats(v) for k, v in phases.items()}
    rows = [[k, s.fmt(1)] for k, s in stats.items()]
    rows += [[f"{k}, workers not started ahead", harness.Stats(cold[k]).fmt(1)]
             for k in ("process start", "submission to first step, minus loading")]
    mib = 1 << 20
    rows += [["idle server RSS, MiB (after start, no runs)", f"{idle_rss / mib:.1f}"],
             ["worker waiting for the slot's next run, RSS MiB", f"{waiting_rss / mib:.1f}"],
             ["RSS after a leaderboard and a runs page, MiB", f"{pages_rss / mib:.1f}"],
             [f"RSS after {len(phases['first step']) + 1} runs, MiB", f"{after_rss / mib:.1f}"]]
    key = stats["submission to first step, minus loading"]
    targets = [
        ("submission to first step, minus loading < 100 ms", key.median < 100,
         f"{key.fmt(1)} ms"),
        ("idle server memory < 60 MB", idle_rss < 60e6, f"{idle_rss / 1e6:.1f} MB"),
    ]
    notes = f"""
Milliseconds, median (min–max) of {len(phases['first step'])} runs after one warm-up run, one at
a time (each waits for the previous to end, so the slot is free). `bert-tiny` on `demo-news`,
one step of batch 16 at 16 tokens on one CPU slot. Times come from the server's clock
(`created_at`, `started_at`) and the worker's (`timings`), the same machine's; "submission
answered" is the client's round trip of the `POST`. The first step runs as the worker's
`train/loss` point of step 1 is reported (the training loop logs step 1 when a run has few
steps per epoch).

Each run is submitted {GAP:.0f} s after the previous one ended, so it finds its slot free and the
slot's worker started ahead. "process start" is then from the claim to the worker reading its
job: handing the job to a waiting worker instead of starting one. The service is `modalbench`,
which does not load libtorch; the worker waiting for the slot is `modalbench-worker`, whose
memory is libtorch's, counted apart above. "Workers not started ahead" is a second server
with `--warm-workers false` ({ctx.reps} runs, the same gap), where each run starts its worker
process: `modalbench-worker` loading libtorch before its `main`.

What the profile had shown: `modalbench --help`, which did nothing, took 0.3–0.4 s and peaked at
120 MB resident when the service and the workers were one binary linked against libtorch.
`perf record` put 57% of its samples in `libtorch_cpu.so` and 6% in `libc10.so` (libtorch's
static constructors registering its operators, before `main`) and 17% in the kernel (page
faults of those libraries). Every worker paid that before its `main`, and the idle server
carried libtorch's memory. Since the split, `modalbench --help` takes a few milliseconds at
7 MB, and the start is paid ahead, while the slot is idle.
"""
    return harness.Section(
        key="schedule", title="Scheduling: submission to first step, and idle memory",
        commands=[".venv/bin/python scripts/bench/run.py --only schedule"],
        header=["phase", "ms"], rows=rows, notes=notes, targets=targets)
