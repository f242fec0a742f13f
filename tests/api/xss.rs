//! Every page escapes what users supplied: dataset example texts, study names, external runs'
//! names, parameters, tags and metric keys, all carrying script payloads, are shown as text.

use crate::helpers::TestApp;
use crate::pages::rendered_dom;
use axum::http::StatusCode;
use serde_json::json;

/// Payloads that set the page title if they ever run.
const SCRIPT: &str = "<script>document.title='pwned'</script>";
const ATTRIBUTE: &str = "\"><img src=x onerror=\"document.title='pwned'\">";

/// Whether `html` holds a payload as markup rather than as escaped text.
fn injected(html: &str) -> bool {
    html.contains("<script>document.title")
        || html.contains("<img src=x")
        || html.contains("<img src=\"x\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_supplied_text_reaches_pages_escaped() {
    let app = TestApp::new().await;
    let rows: Vec<(String, u32)> = (0..24)
        .map(|i| {
            let payload = if i % 2 == 0 { SCRIPT } else { ATTRIBUTE };
            (format!("review {i} {payload}"), (i % 2) as u32)
        })
        .collect();
    let rows: Vec<(&str, u32)> = rows.iter().map(|(t, l)| (t.as_str(), *l)).collect();
    app.add_dataset("xss", [&rows, &rows[..8], &rows[..8]])
        .await;

    // a native run on it (its predictions show example texts on comparisons)
    let native = app
        .submit(json!({"model": "bert-tiny", "dataset": "xss", "epochs": 1}))
        .await;
    // an external run whose every text field carries a payload
    let (status, ext) = app
        .post(
            "/api/v1/runs/external",
            json!({"experiment": format!("exp {SCRIPT}"), "name": format!("run {ATTRIBUTE}"),
                   "model": format!("model {SCRIPT}"), "dataset": "xss",
                   "params": {"note": ATTRIBUTE, "lr": "1e-3"},
                   "tags": {"who": SCRIPT}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ext}");
    let ext = ext["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{ext}/metrics"),
            json!({"points": [{"key": format!("loss {SCRIPT}"), "value": 0.5, "step": 1},
                              {"key": "test/accuracy", "value": 0.75, "step": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.post(&format!("/api/v1/runs/{ext}/end"), json!({}))
        .await;
    // a study named with a payload
    let (status, study) = app
        .post(
            "/api/v1/studies",
            json!({"name": format!("study {ATTRIBUTE}"), "models": ["bert-tiny"],
                   "datasets": ["xss"], "seeds": [0], "base": {"epochs": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{study}");
    let study = study["id"].as_i64().unwrap();
    let run = app.run_to_end(native, 300).await;
    assert_eq!(run.status.as_str(), "succeeded", "{:?}", run.error);

    // each page shows the payload, escaped, and never as markup
    let escaped = ["&lt;script&gt;", "&#60;script&#62;", "&lt;img", "&#60;img"];
    for (uri, shows) in [
        ("/".to_string(), true),
        ("/runs".to_string(), true),
        (format!("/runs/{ext}"), true),
        (format!("/runs/{native}"), false),
        (format!("/compare?runs={native},{ext}"), true),
        ("/leaderboard".to_string(), true),
        ("/leaderboard?dataset=xss".to_string(), true),
        ("/studies".to_string(), true),
        (format!("/studies/{study}"), true),
        (format!("/studies/{study}/verdict"), true),
        ("/datasets".to_string(), false),
        ("/datasets/xss".to_string(), true),
        ("/datasets/xss?split=dev".to_string(), true),
        ("/runs/new".to_string(), false),
    ] {
        let (status, html) = app.page(&uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(!injected(&html), "{uri} holds a payload as markup");
        if shows {
            assert!(
                escaped.iter().any(|e| html.contains(e)),
                "{uri} does not show the payload at all"
            );
        }
    }

    // once its curves are kept (read through the API), the run page carries them in a
    // `<script>` element, where a metric key cannot close it (on SQLite: on PostgreSQL, which
    // other servers may write, no curves are kept and the page's script fetches them)
    let (status, _) = app
        .get(&format!("/api/v1/runs/{ext}/metrics?max_points=1000"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, html) = app.page(&format!("/runs/{ext}")).await;
    let kept = app.state.store.engine() == modalbench::store::Engine::Sqlite;
    assert_eq!(
        html.contains("id=\"run-curves\""),
        kept,
        "the page embeds its kept curves"
    );
    assert!(
        !injected(&html),
        "the embedded curves hold a payload as markup"
    );
    if kept {
        assert!(
            html.contains("loss \\u003cscript\\u003e"),
            "the key is in the embedded JSON"
        );
    }

    // and in a real browser, with the pages' scripts run, nothing executes
    let url = app.listen().await;
    for uri in [
        format!("/runs/{ext}"),
        format!("/compare?runs={native},{ext}"),
        "/datasets/xss".to_string(),
    ] {
        let dom = rendered_dom(&format!("{url}{uri}"));
        assert!(!dom.contains("<title>pwned"), "{uri}: a payload ran");
        assert!(!injected(&dom), "{uri}: a payload became markup");
        assert!(
            dom.contains("&lt;script&gt;") || dom.contains("&lt;img"),
            "{uri}"
        );
    }
}
