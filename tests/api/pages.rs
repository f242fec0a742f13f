//! HTML pages: server-rendered content, the run page's charts in a real browser (headless
//! Chromium), and the live event stream over a real socket.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use modalbench::store::runs::RunStatus;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Serves the app on a real socket (port 0); returns the address.
pub(crate) async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("MODALBENCH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "no Chromium at {} (run `make test`, which installs Debian's chromium)",
        path.display()
    );
    path
}

/// The DOM of `url` after its scripts ran, as headless Chromium sees it.
pub(crate) fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn finished_tiny_run(app: &TestApp) -> i64 {
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 2, "learning_rate": 1e-3}))
        .await;
    let run = app.run_to_end(id, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    id
}

#[tokio::test]
async fn the_run_page_draws_its_curves_in_a_real_browser() {
    let app = TestApp::new().await;
    let id = finished_tiny_run(&app).await;
    let addr = serve(&app).await;
    // the first time the charts are drawn client-side from /api/v1/runs/{id}/metrics; that
    // answer is kept, and the second time the page carries it (on SQLite, where curves are kept)
    let (_, first) = app.page(&format!("/runs/{id}")).await;
    assert!(!first.contains(r#"id="run-curves""#));
    for time in ["fetched", "embedded"] {
        let dom =
            tokio::task::spawn_blocking(move || rendered_dom(&format!("http://{addr}/runs/{id}")))
                .await
                .unwrap();
        if time == "embedded" {
            let kept = app.state.store.engine() == modalbench::store::Engine::Sqlite;
            assert_eq!(dom.contains(r#"id="run-curves""#), kept);
        }
        for key in [
            "train/loss",
            "eval/loss",
            "eval/accuracy",
            "eval/f1",
            "eval/auroc",
        ] {
            assert!(
                dom.contains(&format!(r#"data-key="{key}""#)),
                "{time}: no {key} line in:\n{dom}"
            );
        }
        assert!(!dom.contains("no points yet"));
        let evals = dom
            .split(r#"<table id="eval-table">"#)
            .nth(1)
            .unwrap()
            .split("</table>")
            .next()
            .unwrap();
        assert_eq!(
            evals.matches("<tr>").count(),
            1 + 2,
            "{time}: header and one row per epoch:\n{evals}"
        );
    }
}

#[tokio::test]
async fn the_run_page_shows_status_summary_config_and_log() {
    let app = TestApp::new().await;
    let id = finished_tiny_run(&app).await;
    let (status, html) = app.page(&format!("/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    let s = run.summary.unwrap();
    assert!(html.contains(r#"<span id="run-status" class="status succeeded">succeeded</span>"#));
    assert!(
        html.contains(&format!("{:.4}", s.accuracy)),
        "test accuracy shown"
    );
    assert!(
        html.contains("<th>learning_rate</th><td>1e-3</td>"),
        "{html}"
    );
    assert!(html.contains("[system] succeeded"), "log tail shown");
    assert!(
        !html.contains(r#"action="/runs/1/cancel""#),
        "no cancel button on a finished run"
    );
    let (status, html) = app.page("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(&format!(r#"<a href="/runs/{id}">#{id}</a>"#)),
        "recent runs on the overview"
    );
    let (status, html) = app.page("/runs?status=succeeded").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&format!("#{id}")));
    let (_, html) = app.page("/runs?status=failed").await;
    assert!(!html.contains(&format!("#{id}</a>")));
}

#[tokio::test]
async fn a_running_run_streams_progress_and_metrics_as_server_sent_events() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 500, "learning_rate": 1e-3}))
        .await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /api/v1/runs/{id}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    // the subscription exists once the response head arrived
    let head = lines.next_line().await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    app.state.scheduler.tick().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(name) = line.strip_prefix("event: ") {
                seen.insert(name.to_string());
            }
            if let Some(data) = line.strip_prefix("data: ")
                && seen.contains("metric")
                && data.contains(r#""key":"train/loss""#)
            {
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                assert!(v["value"].as_f64().unwrap() > 0.0);
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), read)
        .await
        .expect("no metric event within 120s");
    assert!(seen.contains("status"), "{seen:?}");
    assert!(seen.contains("started"), "{seen:?}");
    app.state.scheduler.cancel(id).await.unwrap();
}

#[tokio::test]
async fn writes_from_other_sites_are_refused_and_responses_carry_security_headers() {
    use axum::body::Body;
    use axum::http::{Request, header};
    let app = TestApp::new().await;
    let form = "model=bert-tiny&dataset=demo-news&epochs=1";
    let post = |extra: &[(&str, &str)]| {
        let mut req = crate::helpers::form_post("/runs/new", form);
        req.headers_mut()
            .insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        for (k, v) in extra {
            req.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        req
    };
    // a form on another site, as a browser sends it
    for headers in [
        vec![
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
    ] {
        let (status, page) = app.send(post(&headers)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {page}");
    }
    assert!(
        app.state
            .store
            .list_runs(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // the same form from this site
    let (status, _) = app
        .send(post(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://127.0.0.1:8080"),
        ]))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // a cross-site API call and a body without a JSON content type
    let req = Request::post("/api/v1/runs")
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"model": "bert-tiny", "dataset": "demo-news"}"#,
        ))
        .unwrap();
    let (status, body) = app.send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains(r#""code":"cross_site""#), "{body}");
    let req = Request::post("/api/v1/runs")
        .body(Body::from(
            r#"{"model": "bert-tiny", "dataset": "demo-news"}"#,
        ))
        .unwrap();
    let (status, body) = app.send(req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body.contains(r#""code":"unsupported_media_type""#),
        "{body}"
    );
    // framework answers on the API are JSON too
    let req = Request::delete("/api/v1/runs").body(Body::empty()).unwrap();
    let res = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    let big = "x".repeat(2 << 20);
    let req = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    let (status, body) = app.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains(r#""code":"payload_too_large""#), "{body}");
    // every response keeps out of frames and to this origin's scripts
    let res = tower::ServiceExt::oneshot(
        app.router.clone(),
        Request::get("/leaderboard").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let h = res.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}
