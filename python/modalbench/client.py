"""The client of modalbench's JSON API (``/api/v1``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import ApiError, RunFailed, StudyFailed
from .progress import make_bar
from .resources import Run, Study

RunRef = Union[int, Run]
StudyRef = Union[int, Study]

#: Environment variable holding the API token when none is passed to :class:`Client`.
TOKEN_ENV = "MODALBENCH_API_TOKEN"

#: Columns of :meth:`Client.metrics`.
METRIC_COLUMNS = ["key", "step", "epoch", "value", "time", "attempt"]
#: The leaderboard's aggregated metrics, each flattened into ``<name>_mean``, ``_std``, ``_n``,
#: ``_ci_low``, ``_ci_high`` columns (as the service's CSV export names them).
BOARD_METRICS = ("accuracy", "f1", "auroc", "loss")


def _pandas() -> Any:
    """pandas if it can be imported, else ``None``."""
    try:
        import pandas
    except ImportError:
        return None
    return pandas


def _want_frame(as_frame: bool | None) -> Any:
    """pandas when a DataFrame should be returned, else ``None``."""
    if as_frame is False:
        return None
    pd = _pandas()
    if pd is None and as_frame:
        raise ImportError(
            "as_frame=True needs pandas: pip install pandas (or 'modalbench[pandas]')"
        )
    return pd


def _run_id(run: RunRef) -> int:
    return run.id if isinstance(run, Run) else int(run)


def _study_id(study: StudyRef) -> int:
    return study.id if isinstance(study, Study) else int(study)


class Client:
    """A connection to a modalbench service.

    >>> mb = Client("http://127.0.0.1:8080")
    >>> run = mb.submit("bert-tiny", "demo-news", epochs=1)
    >>> run = mb.wait(run)            # a progress bar until it ends
    >>> mb.metrics(run)               # a DataFrame when pandas is installed

    ``token`` (or the ``MODALBENCH_API_TOKEN`` environment variable) is sent as
    ``Authorization: Bearer <token>`` on every request. Non-2xx answers raise
    :class:`~modalbench.ApiError`; connection problems raise ``requests``' own exceptions,
    after reads have been retried (a write is never sent twice).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        timeout: float = 30,
    ) -> None:
        url = url.rstrip("/")
        url = url.removesuffix("/api/v1")
        self.url = url
        """The service's address, without ``/api/v1``."""
        self.timeout = timeout
        """Seconds each request may take."""
        self.session = requests.Session()
        """The ``requests`` session every call goes through."""
        # A kept-alive connection the server has just closed as idle fails the next request
        # sent on it; reads (GET and the other idempotent methods) are sent again on a fresh
        # connection, writes are not (the service may have acted on them).
        retry = Retry(
            total=3,
            connect=3,
            read=2,
            status=0,
            other=0,
            backoff_factor=0.1,
            allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- plumbing -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> requests.Response:
        """Sends ``method`` to ``/api/v1{path}``; raises :class:`ApiError` on a non-2xx answer.

        Parameters whose value is ``None`` are left out.
        """
        if params is not None:
            params = {k: v for k, v in params.items() if v is not None}
        response = self.session.request(
            method,
            f"{self.url}/api/v1{path}",
            params=params,
            json=json,
            timeout=self.timeout,
        )
        if not response.ok:
            raise ApiError.from_response(response)
        return response

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def _post(self, path: str, body: Any = None) -> Any:
        # the service wants a JSON body (and its Content-Type) on every POST
        return self.request("POST", path, json=body if body is not None else {}).json()

    # --- catalog --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Installed checkpoints: ``name``, ``architecture``, ``modality``, ``num_parameters``,
        ``max_length``, ``usable`` and the ``problem`` that makes one unusable."""
        return self._get("/models")["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One checkpoint by name."""
        return self._get(f"/models/{name}")

    def datasets(self) -> list[dict[str, Any]]:
        """Registered datasets with their format, labels, splits and problems."""
        return self._get("/datasets")["datasets"]

    def dataset(self, name: str) -> dict[str, Any]:
        """One registered dataset by name."""
        return self._get(f"/datasets/{name}")

    def register_dataset(
        self,
        name: str,
        path: str,
        format: str | None = None,
        options: dict[str, Any] | None = None,
        check: str | None = None,
    ) -> dict[str, Any]:
        """Registers the dataset folder ``path`` (on the service's machine, inside its data
        roots) under ``name``.

        ``format`` (``hateful_memes``, ``snli_ve``, ``vqa_v2``, ``news``) is recognised from
        the folder when left out; ``options`` are the format's options (``images``,
        ``columns``, ``label_names``, ``top_k``, ``splits``); ``check`` is ``"strict"`` (the
        service's default: any problem refuses the folder) or ``"report"`` (bad lines are
        skipped and counted). Returns the registered dataset.
        """
        body: dict[str, Any] = {"name": name, "path": str(path)}
        if format is not None:
            body["format"] = format
        if options is not None:
            body["options"] = options
        if check is not None:
            body["check"] = check
        return self._post("/datasets", body)

    # --- runs -----------------------------------------------------------------------------

    def submit(self, model: str, dataset: str, **options: Any) -> Run:
        """Queues a run of ``model`` on ``dataset``; ``options`` are the run options
        (``epochs=3, learning_rate=2e-5, seed=0, priority=0, ...``), the others take their
        defaults. A bad name or option raises :class:`ApiError` (422, naming the field)."""
        return Run.from_json(self._post("/runs", {"model": model, "dataset": dataset, **options}))

    def run(self, run: RunRef) -> Run:
        """The run as it is now."""
        return Run.from_json(self._get(f"/runs/{_run_id(run)}"))

    def runs(
        self,
        *,
        dataset: str | None = None,
        model: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally of one ``dataset``, ``model`` or ``status``
        (``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``, ``interrupted``);
        ``limit`` defaults to 100 on the service (at most 1000)."""
        body = self._get(
            "/runs", dataset=dataset, model=model, status=status, limit=limit, offset=offset
        )
        return [Run.from_json(r) for r in body["runs"]]

    def cancel(self, run: RunRef) -> Run:
        """Cancels a queued or running run; a run that already ended is a 409 ApiError."""
        return Run.from_json(self._post(f"/runs/{_run_id(run)}/cancel"))

    def wait(
        self,
        run: RunRef,
        progress: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Run:
        """Waits until the run ends, showing its ``progress`` as a bar (tqdm when installed,
        else a one-line bar on stderr), and returns the ended run.

        A run that ends ``failed`` or ``cancelled`` raises :class:`~modalbench.RunFailed`
        (its ``.run`` is the run, ``.run.error`` the reason), so that a notebook cell stops
        there rather than going on to read metrics that are not there; pass
        ``raise_on_failure=False`` to get the run back whatever its status. After ``timeout``
        seconds, :class:`TimeoutError` (the run goes on). Interrupting the wait does not
        cancel the run.
        """
        run_id = _run_id(run)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                current = self.run(run_id)
                if bar is None:
                    bar = make_bar(f"run {run_id} {current.model} on {current.dataset}", progress)
                done = 100.0 if current.succeeded else 100.0 * (current.progress or 0.0)
                bar.update(done, current.status)
                if current.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"run {run_id} is still {current.status} after {timeout} s")
                time.sleep(
                    poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
                )
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and not current.succeeded:
            raise RunFailed(current)
        return current

    def metrics(
        self,
        run: RunRef,
        key: str | None = None,
        as_frame: bool | None = None,
        all_attempts: bool = False,
    ) -> Any:
        """The run's metric points, one row per point: ``key`` (``train/loss``,
        ``eval/accuracy``, ``test/f1``, ...), ``step``, ``epoch``, ``value``, ``time`` and
        ``attempt`` (the run's attempt that reported it; a resumed run reports the steps after
        its checkpoint again: each step's latest attempt, or every attempt's with
        ``all_attempts``).

        Only ``key``'s points when it is given (an unknown key is a 422 ApiError). A pandas
        DataFrame when pandas is installed (``time`` as UTC timestamps), else a list of dicts
        (``time`` as the service's RFC 3339 text); ``as_frame`` forces either.
        """
        params: dict[str, Any] = {"key": key}
        if all_attempts:
            params["all_attempts"] = "true"
        series = self._get(f"/runs/{_run_id(run)}/metrics", **params)["series"]
        rows = [
            {
                "key": k,
                "step": p["step"],
                "epoch": p.get("epoch"),
                "value": p["value"],
                "time": p.get("time"),
                "attempt": p.get("attempt", 1),
            }
            for k, points in series.items()
            for p in points
        ]
        pd = _want_frame(as_frame)
        if pd is None:
            return rows
        df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
        df["time"] = pd.to_datetime(df["time"], utc=True)
        return df

    def predictions(
        self,
        run: RunRef,
        split: str = "test",
        limit: int | None = None,
        offset: int | None = None,
        as_frame: bool | None = None,
    ) -> Any:
        """Per-example predictions of the run's best checkpoint on ``split`` (``train``,
        ``dev`` or ``test``): ``example_id``, ``label`` (``None`` when unlabeled), ``pred``,
        ``probs``. At most ``limit`` (the service's default 1000) from ``offset``. A DataFrame
        when pandas is installed, else a list of dicts; ``as_frame`` forces either."""
        body = self._get(
            f"/runs/{_run_id(run)}/predictions", split=split, limit=limit, offset=offset
        )
        rows = body["predictions"]
        pd = _want_frame(as_frame)
        if pd is None:
            return rows
        return pd.DataFrame(rows, columns=["example_id", "label", "pred", "probs"])

    def logs(self, run: RunRef, tail: int | None = None) -> list[str]:
        """The last ``tail`` (default 200) lines of the run's log."""
        body = self._get(f"/runs/{_run_id(run)}/logs", tail=tail)
        return [line["line"] for line in body["lines"]]

    def plot(
        self,
        run: RunRef,
        keys: Sequence[str] | None = None,
        ax: Any = None,
        x: str = "step",
    ) -> Any:
        """Plots the run's curves with matplotlib and returns the Axes.

        ``keys`` defaults to what the run page shows: ``train/loss`` and every ``eval/``
        series. ``x`` is ``step``, ``epoch`` or ``time``. Draws on ``ax`` when given, else on
        a new figure.
        """
        if x not in ("step", "epoch", "time"):
            raise ValueError(f"x must be step, epoch or time, got {x!r}")
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "Client.plot needs matplotlib: pip install matplotlib (or 'modalbench[plot]')"
            ) from e
        rows = self.metrics(run, as_frame=False)
        if keys is None:
            keys = [
                k
                for k in dict.fromkeys(r["key"] for r in rows)
                if k == "train/loss" or k.startswith("eval/")
            ]
        if ax is None:
            _, ax = plt.subplots()
        for key in keys:
            points = [r for r in rows if r["key"] == key]
            if x == "time":
                from datetime import datetime

                xs: list[Any] = [
                    datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in points
                ]
            else:
                xs = [r[x] for r in points]
            ax.plot(
                xs,
                [r["value"] for r in points],
                label=key,
                marker="." if len(points) < 30 else None,
            )
        ax.set_xlabel(x)
        ax.set_title(f"run {_run_id(run)}")
        if keys:
            ax.legend()
        return ax

    # --- studies --------------------------------------------------------------------------

    def submit_study(
        self,
        name: str,
        models: Sequence[str],
        datasets: Sequence[str],
        seeds: Iterable[int] | None = None,
        grid: dict[str, Sequence[Any]] | None = None,
        base: dict[str, Any] | None = None,
        per_model: dict[str, dict[str, Any]] | None = None,
    ) -> Study:
        """Queues a study: a run for every model × dataset × seed × combination of ``grid``
        values, each with the ``base`` options and its model's ``per_model`` options.
        ``seeds`` defaults to ``[0]`` on the service. If any run would be refused, nothing is
        queued and an ApiError (422) names the field and the run. Returns the study with its
        runs."""
        body: dict[str, Any] = {"name": name, "models": list(models), "datasets": list(datasets)}
        if seeds is not None:
            body["seeds"] = list(seeds)
        if grid is not None:
            body["grid"] = {k: list(v) for k, v in grid.items()}
        if base is not None:
            body["base"] = base
        if per_model is not None:
            body["per_model"] = per_model
        return Study.from_json(self._post("/studies", body))

    def study(self, study: StudyRef) -> Study:
        """The study with its runs."""
        return Study.from_json(self._get(f"/studies/{_study_id(study)}"))

    def studies(self, limit: int | None = None, offset: int | None = None) -> list[Study]:
        """Studies, with their run counts (not their runs)."""
        body = self._get("/studies", limit=limit, offset=offset)
        return [Study.from_json(s) for s in body["studies"]]

    def cancel_study(self, study: StudyRef) -> Study:
        """Cancels every run of the study that has not ended."""
        return Study.from_json(self._post(f"/studies/{_study_id(study)}/cancel"))

    def wait_study(
        self,
        study: StudyRef,
        progress: bool = True,
        poll: float = 2.0,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> Study:
        """Waits until every run of the study has ended, with one bar for the whole study (the
        runs' progress summed), and returns the study with its runs.

        Unlike :meth:`wait`, failed or cancelled runs do not raise by default: a study's
        verdict is still made from the runs that succeeded; look at ``study.counts``. Pass
        ``raise_on_failure=True`` to get :class:`~modalbench.StudyFailed` instead.
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        study_id = _study_id(study)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                current = self.study(study_id)
                if bar is None:
                    bar = make_bar(f"study {study_id} {current.name}", progress)
                runs = current.runs
                done = sum(1.0 if r.done else (r.progress or 0.0) for r in runs)
                ended = sum(1 for r in runs if r.done)
                bar.update(100.0 * done / max(len(runs), 1), f"{ended}/{len(runs)} runs ended")
                if all(r.done for r in runs):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"study {study_id}: {len(runs) - ended} runs still to end after {timeout} s"
                    )
                time.sleep(
                    poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
                )
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and any(r.status in ("failed", "cancelled") for r in current.runs):
            raise StudyFailed(current)
        return current

    def verdict(
        self,
        study: StudyRef,
        min_gain: float | None = None,
        max_cost_ratio: float | None = None,
    ) -> dict[str, Any]:
        """The study's verdict per dataset: does the image help? (JSON as the service gives
        it; ``min_gain`` and ``max_cost_ratio`` change the rule's thresholds)."""
        return self._get(
            f"/studies/{_study_id(study)}/verdict", min_gain=min_gain, max_cost_ratio=max_cost_ratio
        )

    # --- leaderboard ----------------------------------------------------------------------

    def leaderboard(
        self,
        dataset: str | None = None,
        *,
        metric: str | None = None,
        sort: str | None = None,
        order: str | None = None,
        model: str | None = None,
        modality: str | None = None,
        min_runs: int | None = None,
        as_frame: bool | None = None,
    ) -> Any:
        """The leaderboard: succeeded runs grouped by dataset, model and options but the seed,
        one row per group, in the service's order.

        Parameters are the service's: ``metric`` picks each group's best run and the default
        order (``auroc``, ``accuracy``, ``f1``, ``loss``), ``sort`` a column, ``order`` ``asc``
        or ``desc``, ``model`` a name substring, ``modality`` ``text`` or ``text+image``,
        ``min_runs`` a least group size. Each row has ``dataset``, ``model``, ``modality``,
        ``configuration``, ``options``, ``runs``, ``run_id`` (the best run), then
        ``accuracy_mean``, ``accuracy_std``, ``accuracy_n``, ``accuracy_ci_low``,
        ``accuracy_ci_high`` and the same for ``f1``, ``auroc`` and ``loss``, then the costs
        (``train_seconds``, ``samples_per_second``, ``num_parameters``,
        ``peak_memory_bytes``, ``device_hours``): the columns of the service's CSV export. A
        DataFrame when pandas is installed, else a list of dicts; ``as_frame`` forces either.
        """
        body = self._get(
            "/leaderboard",
            dataset=dataset,
            metric=metric,
            sort=sort,
            order=order,
            model=model,
            modality=modality,
            min_runs=min_runs,
        )
        rows = []
        for board in body["boards"]:
            for r in board["rows"]:
                row: dict[str, Any] = {}
                for k, v in r.items():  # in the service's order, each metric expanded in place
                    if k in BOARD_METRICS and isinstance(v, dict):
                        row.update({f"{k}_{part}": value for part, value in v.items()})
                    else:
                        row[k] = v
                rows.append(row)
        pd = _want_frame(as_frame)
        if pd is None:
            return rows
        return pd.DataFrame(rows)
