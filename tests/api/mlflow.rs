//! The MLflow-compatible tracking API, driven by the stock `mlflow` client, and the native
//! external-run endpoints: logged runs show beside native ones in lists, leaderboards and
//! comparisons.

use crate::helpers::{TestApp, python};
use axum::http::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mlflow_client_logs_runs_that_show_beside_native_ones() {
    let app = TestApp::new().await;
    let url = app.listen().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/mlflow_notebook.py"
    );
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("MLFLOW_TRACKING_URI", &url)
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the notebook failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let logged: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let runs = logged["runs"].as_array().unwrap();
    let ids: Vec<i64> = runs
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().parse().unwrap())
        .collect();

    // the run list: external runs, marked, the deleted one left out
    let (status, list) = app.get("/api/v1/runs?source=external").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed: Vec<i64> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let failed: i64 = logged["failed_run_id"].as_str().unwrap().parse().unwrap();
    let mut want = ids.clone();
    want.push(failed);
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, want, "{list}");
    let (_, run) = app.get(&format!("/api/v1/runs/{}", ids[0])).await;
    assert_eq!(run["source"], "external");
    assert_eq!(run["model"], "distilbert");
    assert_eq!(run["dataset"], "demo-news");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["config"]["lr"], "0.001");
    let (_, failed_run) = app.get(&format!("/api/v1/runs/{failed}")).await;
    assert_eq!(failed_run["status"], "failed");

    // its series as the run page's charts read them
    let (_, series) = app
        .get(&format!("/api/v1/runs/{}/metrics?key=train/loss", ids[1]))
        .await;
    let values: Vec<f64> = series["series"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    let losses: Vec<f64> = runs[1]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values, losses);

    // the leaderboard groups the two seeds of lr 1e-3, their mean accuracy from test/accuracy
    let (status, board) = app
        .get("/api/v1/leaderboard?dataset=demo-news&model=distilbert")
        .await;
    assert_eq!(status, StatusCode::OK, "{board}");
    let rows = board["boards"][0]["rows"].as_array().expect("rows");
    let group = rows
        .iter()
        .find(|r| r["runs"] == 2)
        .unwrap_or_else(|| panic!("no group of two seeds: {board}"));
    let mean =
        (runs[0]["accuracy"].as_f64().unwrap() + runs[1]["accuracy"].as_f64().unwrap()) / 2.0;
    assert!(
        (group["accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{group}"
    );
    assert_eq!(rows.len(), 2, "the lr 1e-4 run is its own group: {board}");
    assert!(rows.iter().all(|r| r["external"] == true), "{board}");
    let (_, page) = app.page("/leaderboard?dataset=demo-news").await;
    assert!(page.contains("badge external"), "{page}");

    // the pages: the run page marks it and charts its metrics; a comparison shows its params
    let (status, page) = app.page(&format!("/runs/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("external"), "{page}");
    assert!(page.contains(r#"data-keys="train/loss""#), "{page}");
    let (status, page) = app
        .page(&format!("/compare?runs={},{}", ids[0], ids[2]))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("0.0001") && page.contains("0.001"), "{page}");
}

#[tokio::test]
async fn metric_batches_go_in_whole_or_not_at_all() {
    let app = TestApp::new().await;
    let (status, run) = app
        .post(
            "/api/v1/runs/external",
            json!({"experiment": "scripts", "name": "sweep-1", "model": "my-bert",
                   "dataset": "demo-news", "params": {"lr": "3e-5", "seed": "1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["source"], "external");
    assert_eq!(run["model"], "my-bert");
    let points: Vec<Value> = (0..5000)
        .map(|i| json!({"key": "train/loss", "value": 1.0 / (i + 1) as f64, "step": i}))
        .chain([json!({"key": "test/accuracy", "value": 0.875, "step": 5000})])
        .collect();
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/metrics"),
            json!({ "points": points }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["logged"], 5001);
    // a bad point anywhere leaves the batch out entirely
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/metrics"),
            json!({"points": [{"key": "x", "value": 1.0}, {"key": "", "value": 2.0}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "points[1].key", "{body}");
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert!(series["series"].get("x").is_none(), "{series}");
    let loss = series["series"]["train/loss"].as_array().unwrap();
    assert_eq!(loss.len(), 5000);
    assert_eq!(loss[4999]["value"].as_f64().unwrap(), 1.0 / 5000.0);
    // too many points in one request
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"key": "k", "value": 0.0, "step": i}))
        .collect();
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/metrics"),
            json!({ "points": many }),
        )
        .await;
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::PAYLOAD_TOO_LARGE,
        "{status} {body}"
    );
    // ending it puts its test accuracy on the leaderboard
    let (status, ended) = app.post(&format!("/api/v1/runs/{id}/end"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "succeeded");
    let (_, board) = app.get("/api/v1/leaderboard?dataset=demo-news").await;
    let row = board["boards"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "my-bert")
        .unwrap_or_else(|| panic!("{board}"));
    assert_eq!(row["accuracy"]["mean"].as_f64().unwrap(), 0.875);
    // a native run's metrics belong to its worker
    let native = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{native}/metrics"),
            json!({"points": [{"key": "train/loss", "value": 1.0}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // the scheduler never claims an external run: the native one ran, the external is as left
    let done = app.run_to_end(native, 300).await;
    assert_eq!(done.status.as_str(), "succeeded");
    let (_, again) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["attempts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_a_locked_database_never_give_a_server_error() {
    use sqlx::Connection;
    let app = TestApp::new().await;
    let (_, run) = app
        .post("/api/v1/runs/external", json!({"name": "busy"}))
        .await;
    let id = run["id"].as_i64().unwrap();
    // another process holds the database's write lock for a while (on PostgreSQL, exclusive
    // locks on the tables the writers write)
    let mut other = sqlx::AnyConnection::connect(&app.state.settings.database_url().unwrap())
        .await
        .unwrap();
    let lock = if crate::helpers::on_postgres() {
        "BEGIN; LOCK TABLE runs, external_metrics, experiments IN EXCLUSIVE MODE"
    } else {
        "BEGIN IMMEDIATE"
    };
    sqlx::raw_sql(lock).execute(&mut other).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..24 {
        let router = app.router.clone();
        writers.push(tokio::spawn(async move {
            let (uri, body) = match w % 3 {
                0 => (
                    format!("/api/v1/runs/{id}/metrics"),
                    json!({"points": (0..200).map(|i| json!({"key": format!("w{w}"), "value": i as f64, "step": i})).collect::<Vec<_>>()}),
                ),
                1 => (
                    "/api/2.0/mlflow/experiments/create".to_string(),
                    json!({"name": format!("exp-{w}")}),
                ),
                _ => (
                    "/api/v1/runs".to_string(),
                    json!({"model": "bert-tiny", "dataset": "demo-news"}),
                ),
            };
            let req = axum::http::Request::post(uri)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
            res.status()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    for w in writers {
        let status = w.await.unwrap();
        assert!(status.is_success(), "a writer got {status}");
    }
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert_eq!(series["series"].as_object().unwrap().len(), 8);
}
