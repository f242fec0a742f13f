//! The grouped leaderboard against a direct computation over the same runs: groups by model
//! and options but the seed, mean ± std, n and the t-interval (the reference `statistics`
//! computation in Rust: `stats::spread` and `stats::mean_interval`, themselves checked
//! against scipy), the best run by the board's metric, sorting, filters and the CSV export.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use modalbench::eval::stats;
use modalbench::protocol::Summary;
use modalbench::runs::TrainConfig;
use modalbench::store::runs::{FinishedRun, RunStatus};
use serde_json::Value;

fn close(a: f64, b: &Value, what: &str) {
    let b = b.as_f64().unwrap_or_else(|| panic!("{what}: {b}"));
    assert!((a - b).abs() < 1e-9, "{what}: expected {a}, board says {b}");
}

#[tokio::test]
async fn the_leaderboard_groups_seeds_of_a_configuration_with_their_spread_and_interval() {
    let app = TestApp::new().await;
    let mut x: u64 = 7;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f64 / 1000.0
    };
    let mut runs = Vec::new();
    for i in 0..90 {
        let dataset = if i % 2 == 0 {
            "demo-news"
        } else {
            "demo-memes"
        };
        let model = ["bert-tiny", "clip-tiny", "minilm-x"][i % 3];
        let status = if i % 7 == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let config = TrainConfig {
            learning_rate: [2e-5, 1e-4][(i / 6) % 2],
            seed: i as u64,
            ..Default::default()
        };
        // clip-tiny on demo-memes never has an AUROC (a one-class test split)
        let auroc = (!(model == "clip-tiny" && dataset == "demo-memes")).then(&mut next);
        let summary = Summary {
            accuracy: next(),
            f1: next(),
            auroc,
            loss: next(),
            train_seconds: 10.0 + 100.0 * next(),
            ..Default::default()
        };
        runs.push(FinishedRun {
            model: model.into(),
            dataset: dataset.into(),
            status,
            config,
            summary,
        });
    }
    let ids = app.state.store.insert_finished_runs(&runs).await.unwrap();

    let (status, lb) = app.get("/api/v1/leaderboard?metric=accuracy").await;
    assert_eq!(status, StatusCode::OK, "{lb}");
    let mut groups = 0;
    for board in lb["boards"].as_array().unwrap() {
        let rows = board["rows"].as_array().unwrap();
        for row in rows {
            groups += 1;
            let lr = row["options"]["learning_rate"].as_f64().unwrap();
            assert!(row["options"].get("seed").is_none(), "{row}");
            let members: Vec<(i64, &FinishedRun)> = ids
                .iter()
                .copied()
                .zip(&runs)
                .filter(|(_, r)| {
                    r.status == RunStatus::Succeeded
                        && r.dataset == board["dataset"]
                        && r.model == row["model"]
                        && r.config.learning_rate == lr
                })
                .collect();
            assert_eq!(row["runs"], members.len(), "{row}");
            let acc: Vec<f64> = members.iter().map(|(_, r)| r.summary.accuracy).collect();
            let s = stats::spread(&acc);
            close(s.mean, &row["accuracy"]["mean"], "mean");
            close(s.std, &row["accuracy"]["std"], "std");
            let iv = stats::mean_interval(&acc).unwrap();
            close(iv.low, &row["accuracy"]["ci_low"], "interval");
            close(iv.high, &row["accuracy"]["ci_high"], "interval");
            let secs: Vec<f64> = members
                .iter()
                .map(|(_, r)| r.summary.train_seconds)
                .collect();
            close(
                stats::spread(&secs).mean,
                &row["train_seconds"],
                "train time",
            );
            // the best run by the board's metric
            let best = members
                .iter()
                .max_by(|a, b| a.1.summary.accuracy.total_cmp(&b.1.summary.accuracy))
                .unwrap();
            assert_eq!(row["run_id"], best.0, "{row}");
            let expected = if lr == 2e-5 {
                String::new()
            } else {
                "learning_rate=1e-4".to_string()
            };
            assert_eq!(row["configuration"], expected, "{row}");
            if row["model"] == "clip-tiny" && board["dataset"] == "demo-memes" {
                assert_eq!(row["auroc"]["n"], 0, "{row}");
                assert!(row["auroc"]["mean"].is_null(), "{row}");
            }
        }
        // best mean accuracy first
        let means: Vec<f64> = rows
            .iter()
            .map(|r| r["accuracy"]["mean"].as_f64().unwrap())
            .collect();
        assert!(means.windows(2).all(|w| w[0] >= w[1]), "{means:?}");
    }
    assert_eq!(groups, 2 * 3 * 2, "datasets x models x learning rates");

    // sorted by a cost column, filtered, one dataset
    let (_, lb) = app
        .get("/api/v1/leaderboard?dataset=demo-news&sort=train_seconds&order=asc&modality=text%2Bimage&min_runs=2")
        .await;
    let rows = lb["boards"][0]["rows"].as_array().unwrap();
    assert_eq!(lb["boards"].as_array().unwrap().len(), 1);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["modality"] == "text+image"), "{lb}");
    let times: Vec<f64> = rows
        .iter()
        .map(|r| r["train_seconds"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let (_, lb) = app.get("/api/v1/leaderboard?model=BERT&sort=model").await;
    let models: Vec<&str> = lb["boards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["rows"].as_array().unwrap())
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models.len(), 4, "{lb}");
    assert!(models.iter().all(|m| *m == "bert-tiny"));

    // CSV: a header and a line per group
    let (status, csv) = app
        .send(
            axum::http::Request::get("/api/v1/leaderboard?format=csv&metric=f1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + groups, "{csv}");
    assert!(lines[0].starts_with(
        "dataset,model,modality,configuration,runs,best_run_id,accuracy_mean,accuracy_std"
    ));

    // bad parameters name themselves
    for (query, field) in [
        ("sort=colour", "sort"),
        ("order=up", "order"),
        ("modality=audio", "modality"),
        ("min_runs=0", "min_runs"),
        ("format=xml", "format"),
        ("metric=speed", "metric"),
    ] {
        let (status, err) = app.get(&format!("/api/v1/leaderboard?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {err}");
        assert_eq!(err["error"]["field"], field, "{query}: {err}");
    }

    // the page: sortable headers, the filter form, the export links, grouped rows
    let (status, page) = app.page("/leaderboard?metric=accuracy&model=bert").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("learning_rate=1e-4"), "{page}");
    assert!(
        page.contains(
            r#"href="/leaderboard?metric=accuracy&#38;model=bert&#38;sort=train_seconds""#
        ),
        "{page}"
    );
    assert!(
        page.contains(r#"/api/v1/leaderboard?metric=accuracy&#38;model=bert&#38;format=csv"#),
        "{page}"
    );
    assert!(!page.contains(r#"<td class="model">clip-tiny"#));
}

/// The number of runs behind every row of the all-datasets board.
async fn runs_on_board(app: &TestApp) -> i64 {
    let (status, lb) = app.get("/api/v1/leaderboard?metric=accuracy").await;
    assert_eq!(status, StatusCode::OK, "{lb}");
    lb["boards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["rows"].as_array().unwrap())
        .map(|r| r["runs"].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn the_board_served_after_a_run_is_added_ends_or_is_deleted_shows_the_change() {
    let app = TestApp::new().await;
    let run = |seed: u64| FinishedRun {
        model: "bert-tiny".into(),
        dataset: "demo-news".into(),
        status: RunStatus::Succeeded,
        config: TrainConfig {
            seed,
            ..Default::default()
        },
        summary: Summary {
            accuracy: 0.5,
            ..Default::default()
        },
    };
    app.state
        .store
        .insert_finished_runs(&[run(1), run(2)])
        .await
        .unwrap();
    // asked twice, so that the second answer may come from a kept board
    assert_eq!(runs_on_board(&app).await, 2);
    assert_eq!(runs_on_board(&app).await, 2);

    app.state
        .store
        .insert_finished_runs(&[run(3)])
        .await
        .unwrap();
    assert_eq!(runs_on_board(&app).await, 3, "a run inserted");

    // an external run on the same dataset: on the board once it ends, off once deleted
    let (status, opened) = app
        .post(
            "/api/v1/runs/external",
            serde_json::json!({"model": "ext", "dataset": "demo-news"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/metrics"),
            serde_json::json!({"points": [{"key": "accuracy", "value": 0.9}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        runs_on_board(&app).await,
        3,
        "a running run is not on the board"
    );
    let (status, body) = app
        .post(&format!("/api/v1/runs/{id}/end"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(runs_on_board(&app).await, 4, "a run that ended");

    app.state
        .store
        .set_external_run_stage(id, false)
        .await
        .unwrap();
    assert_eq!(runs_on_board(&app).await, 3, "a run deleted");
}
