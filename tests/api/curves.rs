//! Long curves are downsampled on the server: a run page's charts fetch at most the page's
//! bound of points per series, and the metrics API ships the whole series only when not
//! asked for fewer.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use modalbench::eval::MetricKey;
use modalbench::protocol::Summary;
use modalbench::runs::TrainConfig;
use modalbench::store::metrics::NewPoint;
use modalbench::store::runs::{FinishedRun, RunStatus};

#[tokio::test]
async fn a_run_page_of_a_100k_point_run_fetches_at_most_its_bound_of_points() {
    let app = TestApp::new().await;
    let ids = app
        .state
        .store
        .insert_finished_runs(&[FinishedRun {
            model: "bert-tiny".into(),
            dataset: "demo-news".into(),
            status: RunStatus::Succeeded,
            config: TrainConfig::default(),
            summary: Summary::default(),
        }])
        .await
        .unwrap();
    let id = ids[0];
    // a falling curve with one spike up at step 77,777 and one down at step 33,333
    let points: Vec<NewPoint> = (0..100_000)
        .map(|step| NewPoint {
            key: MetricKey::TRAIN_LOSS,
            step,
            epoch: 0.0,
            value: match step {
                77_777 => 50.0,
                33_333 => -50.0,
                s => 1.0 / (1.0 + s as f64),
            },
        })
        .collect();
    app.state
        .store
        .insert_metric_points(id, 1, &points)
        .await
        .unwrap();

    let (status, page) = app.page(&format!("/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let bound: usize = page
        .split("data-max-points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the page names the charts' bound");
    assert!(bound <= 2000, "a bound of {bound} points");
    assert!(page.len() < 100_000, "the page itself carries no curve");

    let (status, body) = app
        .get(&format!("/api/v1/runs/{id}/metrics?max_points={bound}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let curve = body["series"]["train/loss"].as_array().unwrap();
    assert!(curve.len() <= bound, "{} points", curve.len());
    assert!(curve.len() >= bound - 2, "{} points", curve.len());
    let steps: Vec<i64> = curve.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert_eq!(steps[0], 0);
    assert_eq!(*steps.last().unwrap(), 99_999);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "in step order");
    assert!(
        steps.contains(&77_777) && steps.contains(&33_333),
        "spikes kept"
    );

    let (status, body) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["series"]["train/loss"].as_array().unwrap().len(),
        100_000
    );

    let (status, body) = app
        .get(&format!("/api/v1/runs/{id}/metrics?max_points=3"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "max_points");
}

#[tokio::test]
async fn a_downsampled_curve_asked_again_after_new_points_shows_them() {
    let app = TestApp::new().await;
    let (status, opened) = app
        .post("/api/v1/runs/external", serde_json::json!({"name": "live"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["id"].as_i64().unwrap();
    let log = |from: i64, to: i64| {
        let points: Vec<serde_json::Value> = (from..to)
            .map(|s| serde_json::json!({"key": "loss", "value": s as f64, "step": s}))
            .collect();
        serde_json::json!({ "points": points })
    };
    let last_step = |body: &serde_json::Value| {
        let curve = body["series"]["loss"].as_array().unwrap();
        (curve.len(), curve.last().unwrap()["step"].as_i64().unwrap())
    };
    let uri = format!("/api/v1/runs/{id}/metrics?max_points=10");
    let (status, _) = app
        .post(&format!("/api/v1/runs/{id}/metrics"), log(0, 100))
        .await;
    assert_eq!(status, StatusCode::OK);
    // asked twice, so that the second answer may be a kept one
    for _ in 0..2 {
        let (status, body) = app.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(last_step(&body), (10, 99));
    }
    let (status, _) = app
        .post(&format!("/api/v1/runs/{id}/metrics"), log(100, 200))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.get(&uri).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        last_step(&body),
        (10, 199),
        "the new points are in the answer"
    );
}
