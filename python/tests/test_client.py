"""The Python client against the real service.

``ClientAgainstALiveServer`` starts the binary named by ``MODALBENCH_BIN`` (``modalbench
serve`` on a free port, its own data and models folders in a temporary folder), registers a
small text dataset through the client, trains the built-in ``bert-tiny`` preset for one epoch
and checks what the client reads against the service's raw JSON answers. ``ClientAgainstAStub``
checks the request headers and error parsing against a stub HTTP server (no binary needed).

Run from the repository root:
    MODALBENCH_BIN=target/debug/modalbench .venv/bin/python -m unittest discover -s python/tests -v
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import requests

import modalbench
from modalbench import ApiError, Client, RunFailed
from modalbench.client import METRIC_COLUMNS

try:
    import pandas
except ImportError:
    pandas = None

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    matplotlib = None

try:
    import tqdm
except ImportError:
    tqdm = None

POSITIVE = [
    "a wonderful, moving film",
    "great acting and a clever plot",
    "i loved every minute",
    "superb and delightful",
]
NEGATIVE = [
    "a dull, boring mess",
    "terrible acting and no plot",
    "i hated every minute",
    "awful and tedious",
]
# train: 6 copies of the 8 reviews (48 examples: 6 steps of 8), dev and test: one copy each
COPIES = {"train": 6, "dev": 1, "test": 1}
BATCH_SIZE = 8


def write_reviews(root: Path) -> None:
    """A text-only dataset in the Hateful Memes layout (``{id, text, label}`` lines), as
    ``tests/api/helpers.rs`` ``add_dataset`` writes one."""
    root.mkdir(parents=True)
    next_id = 1
    for split, copies in COPIES.items():
        with open(root / f"{split}.jsonl", "w") as f:
            for _ in range(copies):
                for texts, label in ((POSITIVE, 1), (NEGATIVE, 0)):
                    for text in texts:
                        f.write(json.dumps({"id": next_id, "text": text, "label": label}) + "\n")
                        next_id += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``modalbench serve`` in its own process group, on a free port, over ``dir``."""

    def __init__(self, binary: str, dir: Path) -> None:
        self.binary, self.dir = binary, dir
        self.log_path = dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, ready_within: float = 120) -> None:
        # the service's flags, not whatever MODALBENCH_* the caller's environment holds
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODALBENCH_")}
        env.setdefault("RUST_LOG", "warn")
        for _ in range(3):  # the free port may be taken between the probe and the bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            argv = [
                self.binary,
                "serve",
                "--addr",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(self.dir / "data"),
                "--models-dir",
                str(self.dir / "models"),
                "--cpu-slots",
                "1",
            ]
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the file
                self.proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # its workers too are ended with it in stop()
                )
            deadline = time.monotonic() + ready_within
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return
                except requests.ConnectionError:
                    pass
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(
                    f"the server was not ready within {ready_within} s:\n{self.log()}"
                )
            if b"in use" not in self.log_path.read_bytes():
                break
        raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def run_waited(mb: Client, plain_bar: bool, **options: Any) -> tuple[modalbench.Run, str]:
    """Submits a bert-tiny run on `reviews` and waits for it; returns the run and what the
    progress bar wrote on stderr (tqdm's bar, or the plain one when `plain_bar`)."""
    run = mb.submit("bert-tiny", "reviews", epochs=1, batch_size=BATCH_SIZE, **options)
    err = io.StringIO()
    no_tqdm = mock.patch("modalbench.progress._tqdm_class", return_value=None)
    with contextlib.redirect_stderr(err), no_tqdm if plain_bar else contextlib.nullcontext():
        done = mb.wait(run, poll=0.1, timeout=300)
    return done, err.getvalue()


class ClientAgainstALiveServer(unittest.TestCase):
    """One server for the class: two runs trained in ``setUpClass``, read by every test."""

    @classmethod
    def setUpClass(cls) -> None:
        binary = os.environ.get("MODALBENCH_BIN")
        if not binary or not os.access(binary, os.X_OK):
            raise RuntimeError(
                f"MODALBENCH_BIN must name the modalbench binary (got {binary!r}); "
                "e.g. MODALBENCH_BIN=target/debug/modalbench"
            )
        cls.tmp = tempfile.TemporaryDirectory(prefix="modalbench-client-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.server = Server(binary, Path(cls.tmp.name))
        # cleanups run even when setUpClass fails half-way, unlike tearDownClass
        cls.addClassCleanup(cls.server.stop)
        cls.server.start()
        cls.url = cls.server.url
        cls.mb = Client(cls.url, timeout=30)

        folder = Path(cls.tmp.name) / "data" / "mine" / "reviews"
        write_reviews(folder)
        cls.dataset = cls.mb.register_dataset("reviews", str(folder))
        # two runs in different groups of the leaderboard, each waited for with one kind of bar
        cls.run_a, cls.bar_a = run_waited(cls.mb, plain_bar=tqdm is None, learning_rate=1e-3)
        cls.run_b, cls.bar_b = run_waited(cls.mb, plain_bar=True, learning_rate=5e-4, seed=1)

    def raw(self, path: str, **params: Any) -> Any:
        """The service's own JSON answer, without the client."""
        r = requests.get(f"{self.url}/api/v1{path}", params=params, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    # --- catalog --------------------------------------------------------------------------

    def test_registering_a_folder_recognises_its_format_and_splits(self) -> None:
        self.assertEqual(self.dataset["name"], "reviews")
        self.assertEqual(self.dataset["format"], "hateful_memes")
        splits = self.dataset["info"]["splits"]
        self.assertEqual(
            {s: splits[s]["examples"] for s in COPIES}, {s: 8 * n for s, n in COPIES.items()}
        )
        self.assertIn("reviews", [d["name"] for d in self.mb.datasets()])
        self.assertEqual(self.mb.dataset("reviews")["root"], self.dataset["root"])

    def test_models_lists_the_usable_presets(self) -> None:
        models = {m["name"]: m for m in self.mb.models()}
        self.assertEqual(models, {m["name"]: m for m in self.raw("/models")["models"]})
        self.assertTrue(models["bert-tiny"]["usable"])
        self.assertEqual(self.mb.model("bert-tiny")["architecture"], "bert")

    # --- runs -----------------------------------------------------------------------------

    def test_a_run_submitted_through_the_client_trains_to_success(self) -> None:
        run = self.run_a
        self.assertEqual(run.status, "succeeded", run.error)
        self.assertTrue(run.done and run.succeeded)
        self.assertEqual(run.progress, 1.0)
        self.assertEqual((run.model, run.dataset), ("bert-tiny", "reviews"))
        self.assertEqual(run.config["epochs"], 1)
        self.assertEqual(run.config["learning_rate"], 1e-3)
        # 48 training examples in batches of 8: one epoch is 6 steps
        self.assertEqual(run.summary["steps"], 48 // BATCH_SIZE)
        again = self.mb.run(run.id)
        self.assertEqual(again.raw, self.raw(f"/runs/{run.id}"))
        self.assertEqual(again.summary, run.summary)

    def test_wait_shows_a_progress_bar_that_ends_at_100_percent(self) -> None:
        # tqdm's bar (or the plain one where tqdm is not installed)
        self.assertIn(f"run {self.run_a.id} bert-tiny on reviews", self.bar_a)
        self.assertIn("100%", self.bar_a)
        # the plain bar: one line redrawn with \r, ended with a newline
        self.assertTrue(self.bar_b.startswith("\r"), repr(self.bar_b))
        self.assertTrue(self.bar_b.endswith("] 100% succeeded\n"), repr(self.bar_b))
        self.assertIn("[" + "#" * 30 + "]", self.bar_b)
        self.assertEqual(self.bar_b.count("\n"), 1)

    def test_runs_lists_and_filters_like_the_api(self) -> None:
        runs = self.mb.runs(dataset="reviews", status="succeeded", limit=1000)
        ids = [r.id for r in runs]
        self.assertIn(self.run_a.id, ids)
        self.assertIn(self.run_b.id, ids)
        self.assertTrue(all(r.status == "succeeded" and r.dataset == "reviews" for r in runs))
        raw = self.raw("/runs", dataset="reviews", status="succeeded", limit=1000)["runs"]
        self.assertEqual(ids, [r["id"] for r in raw])
        with self.assertRaises(ApiError) as e:
            self.mb.runs(status="finished")
        self.assertEqual((e.exception.status, e.exception.field), (422, "status"))

    def test_metrics_are_the_points_the_api_gives(self) -> None:
        series = self.raw(f"/runs/{self.run_a.id}/metrics")["series"]
        rows = self.mb.metrics(self.run_a, as_frame=False)
        self.assertEqual(
            rows,
            [{"key": k, **p} for k, points in series.items() for p in points],
        )
        # the run page's loss curve: a point per optimisation step
        loss = [r for r in rows if r["key"] == "train/loss"]
        self.assertEqual([r["step"] for r in loss], list(range(1, self.run_a.summary["steps"] + 1)))
        self.assertEqual([r["value"] for r in loss], [p["value"] for p in series["train/loss"]])
        # the test scores are points too, equal to the summary
        test_accuracy = [r["value"] for r in rows if r["key"] == "test/accuracy"]
        self.assertEqual(test_accuracy, [self.run_a.summary["accuracy"]])
        only = self.mb.metrics(self.run_a.id, key="train/loss", as_frame=False)
        self.assertEqual(only, loss)

    def test_an_unknown_metric_key_is_an_api_error(self) -> None:
        with self.assertRaises(ApiError) as e:
            self.mb.metrics(self.run_a, key="train/happiness")
        self.assertEqual((e.exception.status, e.exception.field), (422, "key"))

    @unittest.skipIf(pandas is None, "pandas is not installed")
    def test_metrics_are_a_dataframe_with_pandas(self) -> None:
        series = self.raw(f"/runs/{self.run_a.id}/metrics")["series"]
        df = self.mb.metrics(self.run_a)
        self.assertIsInstance(df, pandas.DataFrame)
        self.assertEqual(list(df.columns), METRIC_COLUMNS)
        self.assertEqual(len(df), sum(len(p) for p in series.values()))
        loss = df[df["key"] == "train/loss"]
        self.assertEqual(loss["step"].tolist(), [p["step"] for p in series["train/loss"]])
        self.assertEqual(loss["epoch"].tolist(), [p["epoch"] for p in series["train/loss"]])
        self.assertEqual(loss["value"].tolist(), [p["value"] for p in series["train/loss"]])
        self.assertTrue(pandas.api.types.is_datetime64_any_dtype(df["time"]))
        self.assertEqual(
            loss["time"].tolist(),
            pandas.to_datetime([p["time"] for p in series["train/loss"]], utc=True).tolist(),
        )

    def test_metrics_are_a_list_of_dicts_without_pandas(self) -> None:
        with mock.patch.dict(sys.modules, {"pandas": None}):
            rows = self.mb.metrics(self.run_a, key="train/loss")
            with self.assertRaises(ImportError):
                self.mb.metrics(self.run_a, as_frame=True)
        self.assertIsInstance(rows, list)
        self.assertEqual(set(rows[0]), set(METRIC_COLUMNS))

    def test_predictions_score_the_test_split_as_the_summary_says(self) -> None:
        preds = self.mb.predictions(self.run_a, split="test", as_frame=False)
        summary = self.run_a.summary
        self.assertEqual(len(preds), summary["test_examples"])
        for p in preds:
            self.assertAlmostEqual(sum(p["probs"]), 1.0, places=5)
            self.assertEqual(p["pred"], max(range(len(p["probs"])), key=p["probs"].__getitem__))
        accuracy = sum(p["pred"] == p["label"] for p in preds) / len(preds)
        self.assertEqual(accuracy, summary["accuracy"])
        with self.assertRaises(ApiError) as e:
            self.mb.predictions(self.run_a, split="validation")
        self.assertEqual((e.exception.status, e.exception.field), (422, "split"))

    def test_logs_are_the_run_log_lines(self) -> None:
        lines = self.mb.logs(self.run_a, tail=50)
        raw = self.raw(f"/runs/{self.run_a.id}/logs", tail=50)["lines"]
        self.assertEqual(lines, [l["line"] for l in raw])
        self.assertTrue(lines)

    # --- errors ---------------------------------------------------------------------------

    def test_an_unknown_model_is_an_api_error_naming_it(self) -> None:
        before = len(self.mb.runs(limit=1000))
        with self.assertRaises(ApiError) as e:
            self.mb.submit("gpt-17", "reviews", epochs=1)
        err = e.exception
        self.assertEqual(err.status, 422)
        self.assertEqual(err.code, "unknown_model")
        self.assertEqual(err.field, "model")
        self.assertIn("gpt-17", err.message)
        self.assertIn("bert-tiny", err.message)  # the known ones are listed
        self.assertIn("gpt-17", str(err))
        self.assertEqual(len(self.mb.runs(limit=1000)), before, "nothing is stored")

    def test_a_bad_option_is_an_api_error_naming_the_field(self) -> None:
        with self.assertRaises(ApiError) as e:
            self.mb.submit("bert-tiny", "reviews", learning_rate=2.0)
        self.assertEqual((e.exception.status, e.exception.field), (422, "learning_rate"))
        self.assertEqual(e.exception.code, "invalid_value")

    def test_an_unknown_run_is_a_404(self) -> None:
        with self.assertRaises(ApiError) as e:
            self.mb.run(10**9)
        self.assertEqual((e.exception.status, e.exception.code), (404, "not_found"))

    def test_a_cancelled_run_makes_wait_raise_run_failed(self) -> None:
        # long enough to be queued or running when it is cancelled
        run = self.mb.submit("bert-tiny", "reviews", epochs=500, learning_rate=1e-3)
        cancelled = self.mb.cancel(run)
        self.assertEqual(cancelled.status, "cancelled")
        with self.assertRaises(RunFailed) as e:
            self.mb.wait(run, progress=False, poll=0.1, timeout=60)
        self.assertEqual(e.exception.run.status, "cancelled")
        self.assertIn(f"run {run.id}", str(e.exception))
        back = self.mb.wait(run.id, progress=False, raise_on_failure=False)
        self.assertEqual(back.status, "cancelled")
        with self.assertRaises(ApiError) as again:
            self.mb.cancel(run)
        self.assertEqual((again.exception.status, again.exception.code), (409, "conflict"))

    def test_wait_gives_up_after_its_timeout(self) -> None:
        run = self.mb.submit("bert-tiny", "reviews", epochs=500, learning_rate=1e-3)
        try:
            started = time.monotonic()
            with self.assertRaises(TimeoutError):
                self.mb.wait(run, progress=False, poll=0.1, timeout=0.3)
            self.assertLess(time.monotonic() - started, 10)
            self.assertFalse(self.mb.run(run).done, "the run goes on after the wait gives up")
        finally:
            self.mb.cancel(run)

    # --- leaderboard ----------------------------------------------------------------------

    def test_leaderboard_shows_each_run_with_its_own_accuracy(self) -> None:
        rows = self.mb.leaderboard("reviews", metric="accuracy", as_frame=False)
        raw = [
            r
            for b in self.raw("/leaderboard", dataset="reviews", metric="accuracy")["boards"]
            for r in b["rows"]
        ]
        self.assertEqual([r["run_id"] for r in rows], [r["run_id"] for r in raw])
        for run in (self.run_a, self.run_b):
            row = next(r for r in rows if r["run_id"] == run.id)
            self.assertEqual(
                (row["model"], row["dataset"], row["runs"]), ("bert-tiny", "reviews", 1)
            )
            for metric in ("accuracy", "f1", "auroc", "loss"):
                self.assertEqual(row[f"{metric}_mean"], run.summary[metric], metric)
                self.assertEqual(row[f"{metric}_n"], 1)
            self.assertEqual(row["configuration"].split(", ")[0], "epochs=1")

    @unittest.skipIf(pandas is None, "pandas is not installed")
    def test_leaderboard_is_a_dataframe_with_pandas(self) -> None:
        df = self.mb.leaderboard("reviews", metric="accuracy")
        self.assertIsInstance(df, pandas.DataFrame)
        row = df[df["run_id"] == self.run_a.id].iloc[0]
        self.assertEqual(row["accuracy_mean"], self.run_a.summary["accuracy"])
        self.assertEqual(row["modality"], "text")

    def test_an_unknown_dataset_on_the_leaderboard_is_an_api_error(self) -> None:
        with self.assertRaises(ApiError) as e:
            self.mb.leaderboard("no-such-dataset")
        self.assertEqual((e.exception.status, e.exception.code), (422, "unknown_dataset"))

    # --- plots ----------------------------------------------------------------------------

    @unittest.skipIf(matplotlib is None, "matplotlib is not installed")
    def test_plot_draws_the_run_page_curves(self) -> None:
        series = self.raw(f"/runs/{self.run_a.id}/metrics")["series"]
        ax = self.mb.plot(self.run_a)
        try:
            lines = {l.get_label(): l for l in ax.get_lines()}
            self.assertEqual(
                sorted(lines),
                sorted(k for k in series if k == "train/loss" or k.startswith("eval/")),
            )
            loss = lines["train/loss"]
            self.assertEqual(list(loss.get_xdata()), [p["step"] for p in series["train/loss"]])
            self.assertEqual(list(loss.get_ydata()), [p["value"] for p in series["train/loss"]])
        finally:
            plt.close(ax.figure)
        fig, ax = plt.subplots()
        try:
            self.assertIs(
                self.mb.plot(self.run_a.id, keys=["train/learning_rate"], ax=ax, x="epoch"), ax
            )
            (line,) = ax.get_lines()
            self.assertEqual(
                list(line.get_xdata()), [p["epoch"] for p in series["train/learning_rate"]]
            )
        finally:
            plt.close(fig)

    def test_plot_without_matplotlib_says_what_to_install(self) -> None:
        no_matplotlib = {"matplotlib": None, "matplotlib.pyplot": None}
        with mock.patch.dict(sys.modules, no_matplotlib), self.assertRaises(ImportError) as e:
            self.mb.plot(self.run_a)
        self.assertIn("pip install matplotlib", str(e.exception))

    # --- studies --------------------------------------------------------------------------

    def test_a_study_is_queued_and_waited_for(self) -> None:
        study = self.mb.submit_study(
            "client study",
            ["bert-tiny"],
            ["reviews"],
            seeds=[0, 1],
            base={"max_steps": 2, "batch_size": BATCH_SIZE},
        )
        self.assertEqual(len(study.runs), 2)
        self.assertEqual(sorted(r.config["seed"] for r in study.runs), [0, 1])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            done = self.mb.wait_study(study, poll=0.1, timeout=300)
        self.assertEqual(done.counts["succeeded"], 2, done.counts)
        self.assertTrue(done.done)
        self.assertTrue(all(r.succeeded and r.study_id == study.id for r in done.runs))
        self.assertIn("2/2 runs ended", err.getvalue())
        self.assertIn(study.id, [s.id for s in self.mb.studies()])
        verdict = self.mb.verdict(study)
        self.assertEqual(verdict, self.raw(f"/studies/{study.id}/verdict"))

    def test_a_study_refused_names_the_field(self) -> None:
        with self.assertRaises(ApiError) as e:
            self.mb.submit_study("bad", ["bert-tiny", "gpt-17"], ["reviews"])
        self.assertEqual((e.exception.status, e.exception.field), (422, "models"))
        self.assertIn("gpt-17", e.exception.message)


class _Stub(BaseHTTPRequestHandler):
    """Answers a few API paths; records each request's method, path and headers."""

    seen: ClassVar[list[dict[str, Any]]] = []
    drop_first: ClassVar[bool] = False

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        _Stub.seen.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        if self.path.startswith("/api/v1/runs/9") and _Stub.drop_first and len(_Stub.seen) == 1:
            # closed without an answer, as a server closes a connection it had kept alive
            self.close_connection = True
            return
        if self.path.startswith("/api/v1/models"):
            status, ctype, out = 200, "application/json", b'{"models": []}'
        elif self.path.startswith("/api/v1/runs/7"):
            status, ctype = 401, "application/json"
            out = b'{"error": {"code": "unauthorized", "message": "a valid API token is required"}}'
        else:
            status, ctype, out = 502, "text/html", b"<html>Bad Gateway from the proxy</html>"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer


class ClientAgainstAStub(unittest.TestCase):
    """What the client sends and how it reads errors, without the service."""

    def setUp(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.addCleanup(self.httpd.server_close)
        self.addCleanup(self.httpd.shutdown)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        _Stub.seen = []
        _Stub.drop_first = False

    def test_a_read_is_sent_again_when_the_connection_closes_without_an_answer(self) -> None:
        _Stub.drop_first = True
        with self.assertRaises(ApiError) as e:
            Client(self.url).run(9)
        # the first GET got no answer; the second reached the handler and got its 502
        self.assertEqual(e.exception.status, 502)
        self.assertEqual([s["method"] for s in _Stub.seen], ["GET", "GET"])

    def test_a_write_is_not_sent_twice_when_the_connection_closes_without_an_answer(self) -> None:
        _Stub.drop_first = True
        with self.assertRaises(requests.ConnectionError):
            Client(self.url).cancel(9)
        self.assertEqual([s["method"] for s in _Stub.seen], ["POST"])

    def test_a_token_is_sent_as_a_bearer_header_on_every_request(self) -> None:
        mb = Client(self.url, token="s3cret")
        mb.models()
        with self.assertRaises(ApiError):
            mb.submit("bert-tiny", "reviews")
        self.assertEqual([s["method"] for s in _Stub.seen], ["GET", "POST"])
        for s in _Stub.seen:
            self.assertEqual(s["headers"].get("Authorization"), "Bearer s3cret")
        post = _Stub.seen[1]
        self.assertEqual(post["headers"].get("Content-Type"), "application/json")
        self.assertEqual(json.loads(post["body"]), {"model": "bert-tiny", "dataset": "reviews"})

    def test_the_token_comes_from_the_environment_when_not_given(self) -> None:
        with mock.patch.dict(os.environ, {"MODALBENCH_API_TOKEN": "from-env"}):
            Client(self.url).models()
        with mock.patch.dict(os.environ, {}, clear=True):
            Client(self.url).models()
        self.assertEqual(_Stub.seen[0]["headers"].get("Authorization"), "Bearer from-env")
        self.assertNotIn("Authorization", _Stub.seen[1]["headers"])

    def test_a_url_ending_in_the_api_prefix_is_accepted(self) -> None:
        Client(self.url + "/api/v1/").models()
        self.assertEqual(_Stub.seen[0]["path"], "/api/v1/models")

    def test_a_json_error_is_parsed(self) -> None:
        with self.assertRaises(ApiError) as e:
            Client(self.url).run(7)
        err = e.exception
        self.assertEqual((err.status, err.code, err.field), (401, "unauthorized", None))
        self.assertEqual(err.message, "a valid API token is required")
        self.assertEqual(str(err), "401 unauthorized: a valid API token is required")

    def test_an_error_that_is_not_json_falls_back_to_its_text(self) -> None:
        with self.assertRaises(ApiError) as e:
            Client(self.url).run(8)
        err = e.exception
        self.assertEqual((err.status, err.code, err.field), (502, None, None))
        self.assertEqual(err.message, "<html>Bad Gateway from the proxy</html>")
        self.assertIsInstance(err.body, str)


if __name__ == "__main__":
    unittest.main()
