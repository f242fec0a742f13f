"""Section 2: time to accuracy, end to end. The same fine-tuning (MiniLM-L6, the same epochs,
batch, learning rate, warm-up, weight decay, clipping, maximum length and seed) done by
modalbench from `POST /api/v1/runs` to the finished run (dev, test and shuffled-image
evaluation included), by a transformers `Trainer` script with dynamic padding, and by the
original study's recipe (every text padded to 512 tokens), on `demo-news` and on a generated
news dataset of realistic article lengths."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

import harness

TRAINER = str(Path(__file__).resolve().parent / "trainer_script.py")
TOPICS = {
    "world": "minister parliament election treaty embassy border summit diplomat sanctions refugees "
             "ceasefire coalition referendum governor protest capital ambassador vote",
    "sports": "striker goalkeeper league championship coach tournament season transfer stadium "
              "injury final penalty medal marathon referee playoff squad",
    "business": "shares investors revenue quarterly merger startup inflation earnings market bank "
                "acquisition dividend profit retailer supply tariff",
    "science": "researchers telescope genome laboratory climate species vaccine physics particle "
               "orbit fossil experiment neurons satellite enzyme quantum",
}
FILLER = ("the a of to in and on for with by at from that this was were is are has have had "
          "said after before during while when where which who their its they it more most "
          "new first last week year month people officials report reported according also "
          "about over under between against into through across around since until "
          "statement analysts sources early late monday tuesday wednesday thursday friday "
          "local national international major small large several many some").split()


def article(rng: random.Random, topic: str) -> str:
    """An article of realistic length: log-normal, median ~110 words, long tail to ~700."""
    words = max(12, min(700, int(rng.lognormvariate(math.log(110), 0.7))))
    vocab = TOPICS[topic].split()
    # the topic shows in ~10% of the words; another topic's words leak in too
    other = TOPICS[rng.choice([t for t in TOPICS if t != topic])].split()
    out = []
    for _ in range(words):
        r = rng.random()
        out.append(rng.choice(vocab) if r < 0.10 else rng.choice(other) if r < 0.12 else rng.choice(FILLER))
    return " ".join(out)


def make_news(folder: Path, sizes: dict[str, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        with (folder / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label"])
            for i in range(n):
                topic = list(TOPICS)[i % len(TOPICS)]
                w.writerow([f"{split}-{i}", article(rng, topic), topic])


def demo_as_csv(demo: Path, out: Path) -> None:
    """demo-news (JSON lines, integer labels named in modalbench.toml) as the CSV the Trainer
    script reads."""
    names = json.loads(re.search(r"label_names\s*=\s*(\[.*\])", (demo / "modalbench.toml").read_text()).group(1))
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (demo / f"{split}.jsonl").read_text().splitlines() if line]
        with (out / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label"])
            for r in rows:
                w.writerow([r["id"], r["text"], names[r["label"]]])


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [harness.binary(), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data),
         "--models-dir", str(harness.ROOT / "models")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={k: v for k, v in os.environ.items() if k != "MODALBENCH_API_TOKEN"})
    m = re.search(r"http://([0-9.:]+)/", proc.stdout.readline())
    if not m:
        proc.kill()
        raise RuntimeError("the server did not start")
    return proc, f"http://{m.group(1)}"


def modalbench_run(url: str, dataset: str, opts: dict) -> tuple[float, float]:
    """Seconds from submission to the run's end, and its last dev accuracy."""
    t = time.perf_counter()
    r = requests.post(f"{url}/api/v1/runs", json={"model": "minilm-l6", "dataset": dataset, **opts}, timeout=30)
    r.raise_for_status()
    run_id = r.json()["id"]
    while True:
        run = requests.get(f"{url}/api/v1/runs/{run_id}", timeout=30).json()
        if run["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.05)
    secs = time.perf_counter() - t
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('error')}")
    pts = requests.get(f"{url}/api/v1/runs/{run_id}/metrics", params={"key": "eval/accuracy"}, timeout=30).json()
    acc = [p["value"] for p in pts["series"].get("eval/accuracy", [])]
    return secs, acc[-1] if acc else float("nan")


def trainer_run(data: Path, opts: dict, threads: int, pad_to: int = 0) -> tuple[float, float]:
    cmd = [harness.PYTHON, TRAINER, str(data), str(harness.ROOT / "models" / "minilm-l6"),
           "--epochs", str(opts["epochs"]), "--batch", str(opts["batch_size"]), "--lr", str(opts["learning_rate"]),
           "--max-length", str(opts["max_length"]), "--seed", str(opts["seed"]), "--threads", str(threads)]
    if pad_to:
        cmd += ["--pad-to", str(pad_to)]
    out = harness.run(cmd)
    return harness.figure(out, "seconds"), harness.figure(out, "dev_accuracy")


def run(ctx: harness.Context) -> harness.Section:
    tmp = Path(tempfile.mkdtemp(prefix="modalbench-tta-"))
    data = tmp / "data"
    harness.run([harness.binary(), "data", "demo", "--out", str(data / "datasets")])
    sizes = {"train": 96, "dev": 48, "test": 48} if ctx.quick else {"train": 192, "dev": 96, "test": 96}
    make_news(data / "datasets" / "news-long", sizes)
    demo_as_csv(data / "datasets" / "demo-news", tmp / "demo-news-csv")
    lengths = [len(r["text"].split()) for r in csv.DictReader((data / "datasets" / "news-long" / "train.csv").open())]
    server, url = start_server(data)
    rows, results = [], {}
    try:
        cases = [("demo-news", tmp / "demo-news-csv", {"epochs": 3, "max_length": 128}, False),
                 ("news-long", data / "datasets" / "news-long", {"epochs": 2, "max_length": 256}, True)]
        for dataset, csv_dir, extra, pad512 in cases:
            opts = {"batch_size": 16, "learning_rate": 5e-5, "seed": 0, **extra}
            sides = {
                "modalbench": lambda: modalbench_run(url, dataset, {**opts, "group_by_length": True}),
                "Trainer, dynamic padding": lambda: trainer_run(csv_dir, opts, ctx.threads),
            }
            if pad512:
                sides["Trainer, padded to 512 (the seed's recipe)"] = lambda: trainer_run(csv_dir, opts, ctx.threads, 512)
            accs: dict[str, list[float]] = {k: [] for k in sides}
            wrapped = {}
            for name, f in sides.items():
                def timed(f=f, name=name):
                    secs, acc = f()
                    accs[name].append(acc)
                    return secs
                wrapped[name] = timed
            # demo-news takes half a minute a round: three rounds, the median of each side
            reps = 3 if dataset == "demo-news" and not ctx.quick else 1
            stats = harness.alternate(wrapped, reps, log=ctx.log)
            base = stats["modalbench"]
            for name, s in stats.items():
                speed = harness.ratio(s, base)
                rows.append([dataset, name, s.fmt(1) + " s", " ".join(f"{a:.3f}" for a in accs[name]),
                             "1" if name == "modalbench" else f"{speed.median:.2f}×"])
                results[(dataset, name)] = (s, accs[name])
    finally:
        server.terminate()
        try:
            server.wait(timeout=70)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    targets = []
    for dataset in ("demo-news", "news-long"):
        mb = results[(dataset, "modalbench")][0].median
        tr = results[(dataset, "Trainer, dynamic padding")][0].median
        targets.append((f"≥ 2× the Trainer script ({dataset})", tr / mb >= 2.0, f"{tr / mb:.2f}×"))
    lengths.sort()
    notes = (
        "MiniLM-L6 (pretrained), batch 16, learning rate 5e-5, 10% warm-up, weight decay 0.01, "
        "clipping at 1.0, seed 0, evaluation of the dev split after each epoch; `demo-news` 3 epochs "
        "at most 128 tokens, `news-long` 2 epochs at most 256 tokens. modalbench runs with "
        "`group_by_length` on, from its submission to a running server until the run ended "
        "(the dev, test and images-shuffled evaluations and the checkpoint included); the Trainer "
        f"scripts from their process start (imports included). `news-long`: {sizes['train']} "
        f"generated articles for training, {sizes['dev']} dev, four topics, lengths log-normal "
        f"(median {lengths[len(lengths) // 2]} words, 90th percentile {lengths[len(lengths) * 9 // 10]}, "
        f"longest {lengths[-1]}). Dev accuracy after the last epoch beside each time: the runs end "
        "at the same accuracy when the columns agree. `demo-news`: 3 rounds, the sides in turn in "
        "each; `news-long`: one repetition of each side (they take about ten minutes on 2 "
        "cores), run in turn.")
    return harness.Section(
        key="time_to_accuracy", title="Time to accuracy: modalbench against a Trainer script",
        commands=["make bench ARGS='--only time_to_accuracy'",
                  "python scripts/bench/trainer_script.py DATA MODEL --epochs E --batch 16 --lr 5e-5 --max-length L [--pad-to 512]"],
        header=["dataset", "side", "time (median, min–max)", "dev accuracy", "time × modalbench's"],
        rows=rows, notes=notes, targets=targets)
