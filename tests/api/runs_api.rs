//! The JSON API: submissions, validation errors naming their field, 404s, listings.

use crate::helpers::TestApp;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

async fn run_count(app: &TestApp) -> usize {
    let (status, body) = app.get("/api/v1/runs").await;
    assert_eq!(status, StatusCode::OK);
    body["runs"].as_array().unwrap().len()
}

/// Asserts a 422 whose error names `field`, and that nothing was stored.
async fn assert_rejected(app: &TestApp, body: Value, field: &str, code: &str) {
    let (status, err) = app.post("/api/v1/runs", body.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
    assert_eq!(err["error"]["field"], field, "{body} -> {err}");
    assert_eq!(err["error"]["code"], code, "{body} -> {err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains(field),
        "{err}"
    );
    assert_eq!(
        run_count(app).await,
        0,
        "a rejected submission stored a run"
    );
}

#[tokio::test]
async fn submitting_a_run_queues_it_with_defaults_filled_in() {
    let app = TestApp::new().await;
    let (status, run) = app
        .post(
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 2, "priority": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["model"], "bert-tiny");
    assert_eq!(run["config"]["epochs"], 2);
    assert_eq!(run["config"]["batch_size"], 16);
    assert_eq!(run["config"]["learning_rate"], 2e-5);
    assert_eq!(run["priority"], 3);
    assert!(run["summary"].is_null());
    let id = run["id"].as_i64().unwrap();
    let (status, fetched) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["id"], id);
    assert_eq!(fetched["config"], run["config"]);
}

#[tokio::test]
async fn a_new_run_answers_with_its_location() {
    let app = TestApp::new().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"model": "bert-tiny", "dataset": "demo-news"}"#,
        ))
        .unwrap();
    let res = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()[header::LOCATION], "/api/v1/runs/1");
}

#[tokio::test]
async fn unknown_models_and_datasets_are_rejected_with_422_naming_the_field() {
    let app = TestApp::new().await;
    assert_rejected(
        &app,
        json!({"model": "gpt-17", "dataset": "demo-news"}),
        "model",
        "unknown_model",
    )
    .await;
    assert_rejected(
        &app,
        json!({"model": "bert-tiny", "dataset": "nope"}),
        "dataset",
        "unknown_dataset",
    )
    .await;
    assert_rejected(
        &app,
        json!({"model": "../models/bert-tiny", "dataset": "demo-news"}),
        "model",
        "unknown_model",
    )
    .await;
    let (_, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "gpt-17", "dataset": "demo-news"}),
        )
        .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bert-tiny"),
        "lists known models: {err}"
    );
}

#[tokio::test]
async fn out_of_range_hyper_parameters_are_rejected_naming_the_field() {
    let app = TestApp::new().await;
    let base = |k: &str, v: Value| {
        let mut b = json!({"model": "bert-tiny", "dataset": "demo-news"});
        b[k] = v;
        b
    };
    for (field, value) in [
        ("epochs", json!(0)),
        ("epochs", json!(-3)),
        ("batch_size", json!(0)),
        ("learning_rate", json!(0.0)),
        ("learning_rate", json!(-2e-5)),
        ("learning_rate", json!(5.0)),
        ("max_length", json!(100_000)),
        ("warmup_ratio", json!(1.5)),
        ("weight_decay", json!(-0.1)),
        ("max_steps", json!(0)),
    ] {
        assert_rejected(&app, base(field, value), field, "invalid_value").await;
    }
}

#[tokio::test]
async fn a_learning_rate_too_large_for_a_float_is_rejected_naming_the_field() {
    let app = TestApp::new().await;
    let req = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"model": "bert-tiny", "dataset": "demo-news", "learning_rate": 1e999}"#,
        ))
        .unwrap();
    let (status, body) = app.send(req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["field"], "learning_rate");
    assert_eq!(run_count(&app).await, 0);
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422_and_broken_json_is_400() {
    let app = TestApp::new().await;
    assert_rejected(
        &app,
        json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": "three"}),
        "epochs",
        "invalid_value",
    )
    .await;
    assert_rejected(
        &app,
        json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 1.5}),
        "epochs",
        "invalid_value",
    )
    .await;
    assert_rejected(
        &app,
        json!({"model": "bert-tiny", "dataset": "demo-news", "lr": 0.1}),
        "lr",
        "unknown_field",
    )
    .await;
    assert_rejected(
        &app,
        json!({"dataset": "demo-news"}),
        "model",
        "invalid_value",
    )
    .await;
    for broken in [
        r#"{"model": "bert-tiny", "dataset": "#,
        "not json",
        r#"{"model": "bert-tiny"} {}"#,
    ] {
        let req = Request::post("/api/v1/runs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(broken))
            .unwrap();
        let (status, body) = app.send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{broken} -> {body}");
        let err: Value = serde_json::from_str(&body).expect("errors are JSON");
        assert_eq!(err["error"]["code"], "invalid_json");
    }
    let req = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(run_count(&app).await, 0);
}

#[tokio::test]
async fn unknown_runs_are_404_with_a_json_error() {
    let app = TestApp::new().await;
    for uri in [
        "/api/v1/runs/99",
        "/api/v1/runs/abc",
        "/api/v1/runs/99/metrics",
        "/api/v1/runs/99/logs",
        "/api/v1/nothing-here",
    ] {
        let (status, err) = app.get(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(err["error"]["code"], "not_found", "{uri}: {err}");
    }
    let (status, err) = app.call(Method::POST, "/api/v1/runs/99/cancel", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    let (status, _) = app.page("/runs/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listing_filters_by_model_dataset_and_status() {
    let app = TestApp::new().await;
    app.add_dataset("tiny", [&[("a", 0), ("b", 1)], &[("c", 0)], &[("d", 1)]])
        .await;
    let a = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let b = app
        .submit(json!({"model": "bert-tiny", "dataset": "tiny"}))
        .await;
    let ids = |v: &Value| {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&app.get("/api/v1/runs").await.1),
        vec![b, a],
        "newest first"
    );
    assert_eq!(ids(&app.get("/api/v1/runs?dataset=tiny").await.1), vec![b]);
    assert_eq!(
        ids(&app
            .get("/api/v1/runs?model=bert-tiny&status=queued")
            .await
            .1),
        vec![b, a]
    );
    assert!(ids(&app.get("/api/v1/runs?status=running").await.1).is_empty());
    let (status, err) = app.get("/api/v1/runs?status=done").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "status");
    let (status, err) = app.get("/api/v1/runs?limit=0").await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit"))
    );
}

#[tokio::test]
async fn models_and_datasets_are_listed_with_what_runs_need() {
    let app = TestApp::new().await;
    let (status, body) = app.get("/api/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let tiny = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bert-tiny")
        .unwrap()
        .clone();
    assert_eq!(tiny["architecture"], "bert");
    assert_eq!(tiny["modality"], "text");
    assert_eq!(tiny["usable"], true);
    // the preset's size, counted independently from its config: embeddings
    // (vocab + 512 positions + 2 types) x 64 + LayerNorm, 2 layers, pooler
    let vocab = std::fs::read_to_string(app.dir.path().join("models/bert-tiny/vocab.txt"))
        .unwrap()
        .lines()
        .count() as i64;
    let layer = 4 * (64 * 64 + 64) + 2 * 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64);
    let expected = (vocab + 512 + 2) * 64 + 2 * 64 + 2 * layer + 64 * 64 + 64;
    assert_eq!(tiny["num_parameters"], expected);

    let (status, body) = app.get("/api/v1/datasets").await;
    assert_eq!(status, StatusCode::OK);
    let news = body["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "demo-news")
        .unwrap();
    assert_eq!(news["name"], "demo-news");
    assert_eq!(news["format"], "hateful_memes");
    assert_eq!(news["num_labels"], 4);
    assert_eq!(news["info"]["splits"]["train"]["examples"], 384);
    assert_eq!(
        news["info"]["splits"]["train"]["label_counts"],
        json!([96, 96, 96, 96])
    );
    assert_eq!(
        app.get("/api/v1/datasets/nope").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_model_folder_with_an_unknown_architecture_is_listed_as_unusable_and_rejected() {
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(
        odd.path().join("config.json"),
        r#"{"model_type": "mamba", "hidden_size": 8}"#,
    )
    .unwrap();
    let app = TestApp::with_models(&[("mamba-8", odd.path())]).await;
    let (_, body) = app.get("/api/v1/models").await;
    let m = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mamba-8")
        .unwrap()
        .clone();
    assert_eq!(m["usable"], false);
    assert!(
        m["problem"]
            .as_str()
            .unwrap()
            .contains("unsupported model_type `mamba`"),
        "{m}"
    );
    assert_rejected(
        &app,
        json!({"model": "mamba-8", "dataset": "demo-news"}),
        "model",
        "unusable_model",
    )
    .await;
}

#[tokio::test]
async fn leaderboard_parameters_are_checked() {
    let app = TestApp::new().await;
    let (status, body) = app.get("/api/v1/leaderboard?dataset=demo-news").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["metric"], "auroc");
    assert_eq!(body["boards"][0]["dataset"], "demo-news");
    assert!(body["boards"][0]["rows"].as_array().unwrap().is_empty());
    let (status, err) = app.get("/api/v1/leaderboard?metric=bleu").await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metric"))
    );
    let (status, err) = app.get("/api/v1/leaderboard?dataset=nope").await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("dataset"))
    );
}

#[tokio::test]
async fn the_form_rerenders_with_the_message_on_bad_input_and_redirects_on_success() {
    let app = TestApp::new().await;
    let form = |body: &str| crate::helpers::form_post("/runs/new", body);
    let (status, html) = app
        .send(form(
            "model=bert-tiny&dataset=demo-news&epochs=1&learning_rate=-0.5",
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("`learning_rate` must be a number in (0, 1], got -0.5"),
        "{html}"
    );
    assert!(
        html.contains(r#"name="learning_rate" value="-0.5""#),
        "keeps what was typed"
    );
    assert!(html.contains(r#"<option value="bert-tiny" selected>"#));
    let (status, html) = app
        .send(form("model=bert-tiny&dataset=demo-news&epochs=two"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("`epochs` must be an integer, got `two`"),
        "{html}"
    );
    assert_eq!(run_count(&app).await, 0);

    let res = tower::ServiceExt::oneshot(
        app.router.clone(),
        form("model=bert-tiny&dataset=demo-news&epochs=1&max_steps="),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/runs/1");
    let (_, run) = app.get("/api/v1/runs/1").await;
    assert_eq!(run["config"]["epochs"], 1);
    assert!(run["config"]["max_steps"].is_null());
}

#[tokio::test]
async fn the_form_offers_the_known_models_and_datasets() {
    let app = TestApp::new().await;
    let (status, html) = app.page("/runs/new").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"<option value="bert-tiny""#), "{html}");
    assert!(html.contains("bert-tiny (bert, text, "));
    assert!(html.contains(r#"<option value="demo-news""#));
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::new().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["slots"], app.state.scheduler.slots().len());
    // with the database gone, not ready, and still JSON
    app.state.store.pool().close().await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status.as_str(), "succeeded");
    app.submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let (_, ext) = app
        .post("/api/v1/runs/external", json!({"name": "from a script"}))
        .await;
    let ext = ext["id"].as_i64().unwrap();
    app.post(
        &format!("/api/v1/runs/{ext}/metrics"),
        json!({"points": [{"key": "a", "value": 1.0}, {"key": "a", "value": 2.0, "step": 1},
                          {"key": "b", "value": 3.0}]}),
    )
    .await;
    let (_, missing) = app.get("/api/v1/runs/99999").await;
    assert_eq!(missing["error"]["code"], "not_found");

    let res = tower::ServiceExt::oneshot(
        app.router.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(
        axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("modalbench_runs{status=\"succeeded\"}"), 1.0);
    // the external run is running (logged from elsewhere); the second native one waits
    assert_eq!(value("modalbench_runs{status=\"running\"}"), 1.0);
    assert_eq!(value("modalbench_queue_depth"), 1.0);
    assert_eq!(value("modalbench_slots"), 1.0);
    assert_eq!(
        value("modalbench_points_ingested_total{source=\"external\"}"),
        3.0
    );
    let (_, series) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    let native: usize = series["series"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s.as_array().unwrap().len())
        .sum();
    assert_eq!(
        value("modalbench_points_ingested_total{source=\"native\"}"),
        native as f64
    );
    // the histogram: cumulative buckets, +Inf equal to the count, every request counted
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("modalbench_http_request_duration_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let count = value("modalbench_http_request_duration_seconds_count");
    assert_eq!(*buckets.last().unwrap(), count);
    // 5 API calls before this one; the 404 among them
    assert!(count >= 5.0, "{count}");
    assert!(value("modalbench_http_requests_total{class=\"4xx\"}") >= 1.0);
}
