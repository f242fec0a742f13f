"""Load test: concurrent clients read pages and the API, log metric batches to external runs,
and submit runs, for a fixed time; prints request counts, errors, latency percentiles and
metric points per second.

    .venv/bin/python scripts/load.py                     # starts its own server (release build)
    .venv/bin/python scripts/load.py --url http://127.0.0.1:8080 --clients 50 --seconds 60

Without --url it serves a fresh data folder with the demo datasets from
$CARGO_TARGET_DIR/release/modalbench (build it first: `cargo build --release`).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import requests

POINTS_PER_BATCH = 100


def start_server(binary: str, folder: str) -> tuple[subprocess.Popen, str]:
    data = os.path.join(folder, "data")
    subprocess.run([binary, "data", "demo", "--out", os.path.join(data, "datasets")], check=True,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--models-dir",
         os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={k: v for k, v in os.environ.items() if k != "MODALBENCH_API_TOKEN"})
    line = proc.stdout.readline()
    m = re.search(r"http://([0-9.:]+)/", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, f"http://{m.group(1)}"


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--token", default=os.environ.get("MODALBENCH_API_TOKEN"))
    args = ap.parse_args()

    proc = folder = None
    url = args.url
    if not url:
        target = os.environ.get("CARGO_TARGET_DIR", "target")
        binary = os.path.join(target, "release", "modalbench")
        folder = tempfile.mkdtemp(prefix="modalbench-load-")
        proc, url = start_server(binary, folder)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    api = url + "/api/v1"

    # one external run per client for its metric batches, and a finished native run to read
    runs = []
    for c in range(args.clients):
        r = requests.post(f"{api}/runs/external", json={"experiment": "load", "name": f"client-{c}",
                                                        "model": "load-model", "dataset": "demo-news"},
                          headers=headers, timeout=30)
        r.raise_for_status()
        runs.append(r.json()["id"])

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    examples: list[str] = []
    points = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(c: int) -> None:
        s = requests.Session()
        s.headers.update(headers)
        rng = random.Random(c)
        step = 0
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < 0.30:
                op, method, path, body = "metric batch", "POST", f"/api/v1/runs/{runs[c]}/metrics", {
                    "points": [{"key": "train/loss", "value": 1.0 / (step + i + 1), "step": step + i}
                               for i in range(POINTS_PER_BATCH)]}
                step += POINTS_PER_BATCH
            elif roll < 0.31:
                op, method, path, body = "submit run", "POST", "/api/v1/runs", {
                    "model": "bert-tiny", "dataset": "demo-news", "max_steps": 1, "max_length": 16}
            elif roll < 0.55:
                op, method, path, body = "list runs", "GET", "/api/v1/runs?limit=50", None
            elif roll < 0.70:
                op, method, path, body = "run", "GET", f"/api/v1/runs/{rng.choice(runs)}", None
            elif roll < 0.80:
                op, method, path, body = "leaderboard", "GET", "/api/v1/leaderboard", None
            elif roll < 0.90:
                op, method, path, body = "runs page", "GET", "/runs", None
            else:
                op, method, path, body = "metrics", "GET", f"/api/v1/runs/{rng.choice(runs)}/metrics", None
            t = time.perf_counter()
            try:
                r = s.request(method, url + path, json=body, timeout=60)
                ok = r.status_code < 400
                why = f"{op}: {r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                ok, why = False, f"{op}: {e}"
            dt = time.perf_counter() - t
            with lock:
                latencies[op].append(dt)
                if not ok:
                    errors[op] += 1
                    if len(examples) < 5:
                        examples.append(why)
                elif op == "metric batch":
                    points[0] += POINTS_PER_BATCH

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    all_lat = [x for xs in latencies.values() for x in xs]
    total = len(all_lat)
    print(f"{args.clients} clients, {elapsed:.1f} s, against {url}")
    print(f"{'operation':<14}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for op in sorted(latencies):
        xs = latencies[op]
        print(f"{op:<14}{len(xs):>10}{errors[op]:>8}{1000 * statistics.median(xs):>9.1f}"
              f"{1000 * percentile(xs, 0.99):>9.1f}")
    print(f"{'all':<14}{total:>10}{sum(errors.values()):>8}{1000 * statistics.median(all_lat):>9.1f}"
          f"{1000 * percentile(all_lat, 0.99):>9.1f}")
    print(f"throughput: {total / elapsed:.0f} requests/s, {points[0] / elapsed:.0f} metric points/s")
    for e in examples:
        print("error:", e)
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if sum(errors.values()) else 0)


if __name__ == "__main__":
    main()
