"""A notebook's use of the stock `mlflow` client against modalbench's MLflow-compatible API.

Run with MLFLOW_TRACKING_URI set to a modalbench server. Asserts what the client reads back
against what it logged, and prints a JSON summary of the runs for the caller to check on
modalbench's own API and pages.
"""

import json
import math
import os

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

uri = os.environ["MLFLOW_TRACKING_URI"]
mlflow.set_tracking_uri(uri)
client = MlflowClient()

# set_experiment looks the name up (404 RESOURCE_DOES_NOT_EXIST), then creates it
exp = mlflow.set_experiment("notebook-news")
assert exp.name == "notebook-news" and exp.lifecycle_stage == "active", exp
assert mlflow.set_experiment("notebook-news").experiment_id == exp.experiment_id
client.set_experiment_tag(exp.experiment_id, "project", "modality")
assert client.get_experiment(exp.experiment_id).tags["project"] == "modality"

summary = {"experiment_id": exp.experiment_id, "runs": []}
for seed, lr, acc in [(0, 1e-3, 0.81), (1, 1e-3, 0.79), (2, 1e-4, 0.62)]:
    with mlflow.start_run(run_name=f"distilbert-lr{lr}-s{seed}") as run:
        mlflow.log_params({"model": "distilbert", "dataset": "demo-news", "lr": lr, "seed": seed})
        mlflow.set_tag("team", "nlp")
        losses = [round(1.0 / (step + 1 + seed), 6) for step in range(20)]
        for step, loss in enumerate(losses):
            mlflow.log_metric("train/loss", loss, step=step)
        mlflow.log_metrics({"eval_accuracy": acc - 0.01, "eval_f1": acc - 0.05}, step=20)
        mlflow.log_metric("test/accuracy", acc)
        mlflow.log_metric("diverged", float("nan"))
        run_id = run.info.run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED", got.info
    assert got.info.run_name == f"distilbert-lr{lr}-s{seed}", got.info
    assert got.data.params == {"model": "distilbert", "dataset": "demo-news", "lr": str(lr),
                               "seed": str(seed)}, got.data.params
    assert got.data.tags["team"] == "nlp" and got.data.tags["mlflow.runName"] == got.info.run_name
    assert got.data.metrics["test/accuracy"] == acc, got.data.metrics
    assert got.data.metrics["train/loss"] == losses[-1], got.data.metrics
    assert math.isnan(got.data.metrics["diverged"]), got.data.metrics
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(20)), history
    assert [m.value for m in history] == losses, history
    summary["runs"].append({"run_id": run_id, "lr": str(lr), "seed": seed, "accuracy": acc,
                            "losses": losses})

# a run that fails: the context manager ends it FAILED
try:
    with mlflow.start_run(run_name="crashes") as run:
        mlflow.log_param("model", "distilbert")
        failed_id = run.info.run_id
        raise RuntimeError("out of memory")
except RuntimeError:
    pass
assert client.get_run(failed_id).info.status == "FAILED"
summary["failed_run_id"] = failed_id

# several values at one step are all kept, in order
with mlflow.start_run(run_name="repeats") as run:
    for v in [0.5, 0.25, 0.125]:
        mlflow.log_metric("loss", v)  # no step: step 0 each time
    repeats_id = run.info.run_id
assert [m.value for m in client.get_metric_history(repeats_id, "loss")] == [0.5, 0.25, 0.125]
client.delete_run(repeats_id)
assert client.get_run(repeats_id).info.lifecycle_stage == "deleted"

# one batch, two keys interleaved, every value at one step and one timestamp: each key's
# values come back in the order they were given
with mlflow.start_run(run_name="interleaved") as run:
    values = [(i * 7919 % 1009) / 1009 for i in range(200)]
    client.log_batch(run.info.run_id, metrics=[
        Metric("a" if i % 2 == 0 else "b", v, 1_700_000_000_000, 3) for i, v in enumerate(values)
    ])
    interleaved_id = run.info.run_id
assert [m.value for m in client.get_metric_history(interleaved_id, "a")] == values[0::2]
assert [m.value for m in client.get_metric_history(interleaved_id, "b")] == values[1::2]
client.delete_run(interleaved_id)

# search: filters on metrics, params, tags and attributes, ordering, paging
ids = [r["run_id"] for r in summary["runs"]]
found = client.search_runs(
    [exp.experiment_id],
    filter_string="metrics.`test/accuracy` > 0.7 and params.lr = '0.001' and tags.team = 'nlp'",
    order_by=["metrics.`test/accuracy` DESC"],
)
assert [r.info.run_id for r in found] == [ids[0], ids[1]], [r.info.run_id for r in found]
found = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FAILED'")
assert [r.info.run_id for r in found] == [failed_id]
found = client.search_runs([exp.experiment_id], filter_string="attributes.run_name LIKE 'distil%'",
                           order_by=["params.seed ASC"])
assert [r.info.run_id for r in found] == ids
page1 = client.search_runs([exp.experiment_id], max_results=2, order_by=["params.seed ASC"],
                           filter_string="params.model = 'distilbert'")
assert len(page1) == 2 and page1.token, page1
page2 = client.search_runs([exp.experiment_id], max_results=2, order_by=["params.seed ASC"],
                           filter_string="params.model = 'distilbert'", page_token=page1.token)
seen = [r.info.run_id for r in page1] + [r.info.run_id for r in page2]
assert sorted(seen) == sorted(ids + [failed_id]) and page2.token is None, seen
# a deleted run is found only when asked for
from mlflow.entities import ViewType  # noqa: E402

assert repeats_id not in [r.info.run_id for r in client.search_runs([exp.experiment_id])]
assert repeats_id in [r.info.run_id for r in
                      client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)]
exps = client.search_experiments(filter_string="name LIKE 'notebook%'")
assert [e.name for e in exps] == ["notebook-news"], exps

# tags can be deleted; parameters cannot change
client.set_tag(ids[2], "note", "lr too low")
client.delete_tag(ids[2], "note")
assert "note" not in client.get_run(ids[2]).data.tags
try:
    client.log_param(ids[0], "lr", "0.5")
    raise AssertionError("a changed parameter was accepted")
except MlflowException as e:
    assert e.error_code == "INVALID_PARAMETER_VALUE", e.error_code
try:
    client.get_run("999999")
    raise AssertionError("an unknown run was found")
except MlflowException as e:
    assert e.error_code == "RESOURCE_DOES_NOT_EXIST", e.error_code
# log_batch through the client: metrics, params and tags at once
client.log_batch(ids[2], metrics=[Metric("extra", 1.5, 1700000000000, 3)],
                 params=[Param("warmup", "0.1")], tags=[RunTag("stage", "ablation")])
got = client.get_run(ids[2])
assert got.data.metrics["extra"] == 1.5 and got.data.params["warmup"] == "0.1"
assert got.data.tags["stage"] == "ablation"

# the REST API directly: MLflow's limits, int64 as strings, the /ajax-api prefix
api = uri + "/api/2.0/mlflow"
too_many = {"run_id": ids[2], "metrics": [{"key": "m", "value": 1, "timestamp": 0, "step": i}
                                           for i in range(1001)]}
r = requests.post(api + "/runs/log-batch", json=too_many)
assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text
r = requests.post(api + "/runs/log-metric", json={"run_id": ids[2], "key": "strings",
                                                  "value": "2.5", "timestamp": "1700000000001",
                                                  "step": "7"})
assert r.status_code == 200, r.text
h = requests.get(api + "/metrics/get-history", params={"run_id": ids[2], "metric_key": "strings"})
assert h.json()["metrics"] == [{"key": "strings", "value": 2.5, "timestamp": 1700000000001,
                                "step": 7}], h.text
r = requests.get(uri + "/ajax-api/2.0/mlflow/experiments/get-by-name",
                 params={"experiment_name": "notebook-news"})
assert r.json()["experiment"]["experiment_id"] == exp.experiment_id, r.text
r = requests.get(api + "/experiments/get-by-name", params={"experiment_name": "nope"})
assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", r.text
r = requests.post(api + "/runs/log-metric", data="{not json", headers={"Content-Type": "application/json"})
assert r.status_code == 400 and "error_code" in r.json(), r.text
r = requests.post(api + "/runs/log-metric", json={"run_id": ids[2], "key": "../escape", "value": 1})
assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text

print(json.dumps(summary))
