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
    let app = TestApp::new().await;
    let (_, run) = app
        .post("/api/v1/runs/external", json!({"name": "busy"}))
        .await;
    let id = run["id"].as_i64().unwrap();
    // another process holds the database's write lock for a while
    let mut other = hold_write_lock(&app).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_held_past_the_busy_timeout_gives_503s_to_retry_and_writes_nothing() {
    // PostgreSQL waits for a lock without a timeout; SQLite gives up after its busy timeout
    if crate::helpers::on_postgres() {
        return;
    }
    let app = TestApp::new().await;
    let (_, run) = app
        .post("/api/v1/runs/external", json!({"name": "locked-out"}))
        .await;
    let id = run["id"].as_i64().unwrap();
    let requests = [
        (
            format!("/api/v1/runs/{id}/metrics"),
            json!({"points": [{"key": "native", "value": 1.0, "step": 1}]}),
        ),
        (
            "/api/2.0/mlflow/runs/log-batch".to_string(),
            json!({"run_id": id.to_string(), "metrics": [
                {"key": "compat", "value": 2.0, "timestamp": 1, "step": 1}]}),
        ),
        (
            "/api/v1/runs".to_string(),
            json!({"model": "bert-tiny", "dataset": "demo-news"}),
        ),
    ];
    let send_all = || {
        requests.iter().map(|(uri, body)| {
            let req = axum::http::Request::post(uri.as_str())
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            tokio::spawn(tower::ServiceExt::oneshot(app.router.clone(), req))
        })
    };
    // another process holds the write lock past SQLite's busy timeout (10 s)
    let mut other = hold_write_lock(&app).await;
    let answers: Vec<_> = send_all().collect();
    let mut bodies = Vec::new();
    for a in answers {
        let res = a.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
        bodies.push(serde_json::from_slice::<Value>(&body.to_bytes()).unwrap());
    }
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    assert_eq!(bodies[0]["error"]["code"], "database_busy", "{}", bodies[0]);
    assert!(
        bodies[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{}",
        bodies[0]
    );
    assert_eq!(
        bodies[1]["error_code"], "TEMPORARILY_UNAVAILABLE",
        "{}",
        bodies[1]
    );
    assert_eq!(bodies[2]["error"]["code"], "database_busy", "{}", bodies[2]);
    // nothing was written: no points, no run beside the external one
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert_eq!(series["series"], json!({}), "{series}");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    // the same requests succeed once the lock is free
    for a in send_all() {
        let res = a.await.unwrap().unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert_eq!(series["series"].as_object().unwrap().len(), 2, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_logged_at_once_share_a_commit_and_keep_their_own_answers() {
    let app = TestApp::new().await;
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let (status, run) = app
            .post(
                "/api/v1/runs/external",
                json!({"name": name, "params": {"lr": "1"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        runs.push(run["id"].as_i64().unwrap());
    }
    let (a, b) = (runs[0], runs[1]);
    let counters = |text: &str| -> (f64, f64) {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        (
            value("modalbench_logged_batches_total"),
            value("modalbench_logged_batch_transactions_total"),
        )
    };
    let before = if crate::helpers::on_postgres() {
        None
    } else {
        Some(counters(&app.page("/metrics").await.1))
    };

    // the write lock is held elsewhere while the batches arrive, so that they wait together
    let mut other = hold_write_lock(&app).await;
    let metrics = |key: &str| -> Vec<Value> {
        (0..100)
            .map(|i| json!({"key": key, "value": i as f64 / 8.0, "timestamp": 1_700_000_000_000i64 + i, "step": i}))
            .collect()
    };
    let mut bodies = Vec::new();
    for w in 0..8 {
        bodies.push(json!({"run_id": a.to_string(), "metrics": metrics(&format!("a{w}"))}));
    }
    for w in 0..4 {
        bodies.push(json!({"run_id": b.to_string(), "metrics": metrics(&format!("b{w}"))}));
    }
    // refused: an unknown run (twice: both are told); a parameter changed (its tag and
    // points go nowhere either)
    bodies.push(json!({"run_id": "99999", "metrics": metrics("lost")}));
    bodies.push(json!({"run_id": "99999", "metrics": metrics("lost-too")}));
    bodies.push(
        json!({"run_id": a.to_string(), "metrics": metrics("conflict"),
                       "params": [{"key": "lr", "value": "2"}],
                       "tags": [{"key": "note", "value": "never"}]}),
    );
    // a new parameter and a tag, with points, among the rest
    bodies.push(
        json!({"run_id": a.to_string(), "metrics": metrics("guarded"),
                       "params": [{"key": "seed", "value": "7"}],
                       "tags": [{"key": "note", "value": "kept"}]}),
    );
    let mut writers = Vec::new();
    for body in bodies {
        let router = app.router.clone();
        writers.push(tokio::spawn(async move {
            let req = axum::http::Request::post("/api/2.0/mlflow/runs/log-batch")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let mut answers = Vec::new();
    for w in writers {
        answers.push(w.await.unwrap());
    }
    for (status, body) in &answers[..12] {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    for (status, body) in &answers[12..14] {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");
        assert!(
            body["message"].as_str().unwrap().contains("99999"),
            "{body}"
        );
    }
    assert_eq!(answers[14].0, StatusCode::BAD_REQUEST, "{}", answers[14].1);
    assert_eq!(answers[14].1["error_code"], "INVALID_PARAMETER_VALUE");
    assert!(
        answers[14].1["message"].as_str().unwrap().contains("lr"),
        "{}",
        answers[14].1
    );
    assert_eq!(answers[15].0, StatusCode::OK, "{}", answers[15].1);

    // every accepted batch whole, nothing of the refused ones
    let keys = |id: i64| {
        let app = &app;
        async move {
            let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
            let series = series["series"].as_object().unwrap().clone();
            for (k, points) in &series {
                let values: Vec<f64> = points
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["value"].as_f64().unwrap())
                    .collect();
                let want: Vec<f64> = (0..100).map(|i| i as f64 / 8.0).collect();
                assert_eq!(values, want, "{k}");
            }
            let mut keys: Vec<String> = series.keys().cloned().collect();
            keys.sort();
            keys
        }
    };
    let mut want_a: Vec<String> = (0..8).map(|w| format!("a{w}")).collect();
    want_a.push("guarded".into());
    want_a.sort();
    assert_eq!(keys(a).await, want_a);
    assert_eq!(keys(b).await, ["b0", "b1", "b2", "b3"]);
    let (_, got) = app
        .get(&format!("/api/2.0/mlflow/runs/get?run_id={a}"))
        .await;
    let pairs = |field: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = got["run"]["data"][field]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["key"].as_str().unwrap().to_string(),
                    p["value"].as_str().unwrap().to_string(),
                )
            })
            .filter(|(k, _)| !k.starts_with("mlflow."))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        pairs("params"),
        [
            ("lr".to_string(), "1".to_string()),
            ("seed".into(), "7".into())
        ]
    );
    assert_eq!(pairs("tags"), [("note".to_string(), "kept".to_string())]);

    // on SQLite the waiting batches went in together
    if let Some((batches0, transactions0)) = before {
        let (batches, transactions) = counters(&app.page("/metrics").await.1);
        assert_eq!(batches - batches0, 16.0);
        assert!(
            transactions - transactions0 < 16.0,
            "{} transactions for 16 batches",
            transactions - transactions0
        );
    }
}

#[tokio::test]
async fn points_stored_one_a_row_by_an_older_server_are_packed_when_the_database_opens() {
    use sqlx::Connection;
    let app = TestApp::new().await;
    let (status, run) = app
        .post("/api/v1/runs/external", json!({"name": "before-packing"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_i64().unwrap();
    // the table as migrations before packing made it, with points in no particular order:
    // (id, key, value (NULL for NaN), timestamp, step)
    let rows: [(i64, &str, Option<f64>, i64, i64); 7] = [
        (10, "loss", Some(0.5), 1_000, 2),
        (11, "loss", Some(0.25), 1_000, 1),
        (12, "acc", Some(0.75), 1_001, 1),
        (13, "loss", None, 999, 2),
        (14, "loss", Some(0.125), 1_000, 2),
        (15, "loss", Some(1.0), 900, 0),
        (16, "acc", Some(0.8), 1_002, 2),
    ];
    let url = app.state.settings.database_url().unwrap();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE external_metrics (id BIGINT PRIMARY KEY, \
         run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, key TEXT NOT NULL, \
         value DOUBLE PRECISION, timestamp BIGINT NOT NULL, step BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (row, key, value, timestamp, step) in rows {
        sqlx::query(
            "INSERT INTO external_metrics (id, run_id, key, value, timestamp, step) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(row)
        .bind(id)
        .bind(key)
        .bind(value)
        .bind(timestamp)
        .bind(step)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
    // another server opening the database packs them
    modalbench::store::Store::connect(&url).await.unwrap();
    for key in ["loss", "acc"] {
        // MLflow's order of a history: step, timestamp, then row id
        let mut want: Vec<_> = rows.iter().filter(|r| r.1 == key).collect();
        want.sort_by_key(|r| (r.4, r.3, r.0));
        let (status, got) = app
            .get(&format!(
                "/api/2.0/mlflow/metrics/get-history?run_id={id}&metric_key={key}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let got = got["metrics"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["step"].as_i64(), Some(w.4), "{got:?}");
            assert_eq!(g["timestamp"].as_i64(), Some(w.3), "{got:?}");
            match w.2 {
                Some(v) => assert_eq!(g["value"].as_f64(), Some(v), "{got:?}"),
                None => assert_eq!(g["value"], "NaN", "{got:?}"),
            }
        }
    }
    // the old table is gone, so opening again has nothing to do
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let gone = sqlx::query("SELECT COUNT(*) FROM external_metrics")
        .execute(&mut conn)
        .await;
    assert!(gone.is_err(), "the old table is still there");
    modalbench::store::Store::connect(&url).await.unwrap();
    let (_, again) = app
        .get(&format!(
            "/api/2.0/mlflow/metrics/get-history?run_id={id}&metric_key=loss"
        ))
        .await;
    assert_eq!(again["metrics"].as_array().unwrap().len(), 5, "{again}");
}

/// Another connection holding the database's write lock until it commits (on PostgreSQL,
/// exclusive locks on the tables the writers write).
async fn hold_write_lock(app: &TestApp) -> sqlx::AnyConnection {
    use sqlx::Connection;
    let mut other = sqlx::AnyConnection::connect(&app.state.settings.database_url().unwrap())
        .await
        .unwrap();
    let lock = if crate::helpers::on_postgres() {
        "BEGIN; LOCK TABLE runs, external_metric_chunks, experiments IN EXCLUSIVE MODE"
    } else {
        "BEGIN IMMEDIATE"
    };
    sqlx::raw_sql(lock).execute(&mut other).await.unwrap();
    other
}
