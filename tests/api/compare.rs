//! `/compare?runs=...`: options that differ, results with paired intervals from the same
//! statistics the verdict uses, the examples the runs disagree on (checked against their
//! stored predictions), overlaid curves drawn by uPlot in a real browser, and bad requests.

use crate::helpers::TestApp;
use crate::pages::{rendered_dom, serve};
use axum::http::StatusCode;
use modalbench::store::runs::RunStatus;
use serde_json::json;

#[tokio::test]
async fn two_runs_compare_side_by_side_with_intervals_disagreements_and_curves() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for (model, lr) in [("bert-tiny", 1e-3), ("clip-tiny", 3e-3)] {
        let id = app
            .submit(json!({"model": model, "dataset": "demo-memes", "epochs": 1,
                           "batch_size": 32, "learning_rate": lr, "max_length": 32}))
            .await;
        let run = app.run_to_end(id, 300).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        ids.push(id);
    }
    let (a, b) = (ids[0], ids[1]);
    let (status, page) = app.page(&format!("/compare?runs={a},{b}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // the differing options are shown, the equal ones hidden behind the toggle
    assert!(
        page.contains(
            r#"<tr class="option differs"><th>model</th><td>bert-tiny</td><td>clip-tiny</td></tr>"#
        ),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr class="option differs"><th>learning_rate</th>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr class="option same"><th>epochs</th><td>1</td><td>1</td></tr>"#),
        "{page}"
    );
    assert!(page.contains("Options: 2 differ"), "{page}");
    // the accuracy difference with its paired interval
    let acc = page
        .split("<th>test accuracy</th>")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert!(
        acc.contains("<small class=\"delta\">") && acc.contains("p = "),
        "{acc}"
    );
    // the disagreements: as many as the stored predictions say
    let preds = |id: i64| {
        let app = &app;
        async move {
            let (_, p) = app
                .get(&format!(
                    "/api/v1/runs/{id}/predictions?split=test&limit=1000"
                ))
                .await;
            p["predictions"].as_array().unwrap().clone()
        }
    };
    let (pa, pb) = (preds(a).await, preds(b).await);
    assert_eq!(pa.len(), 400);
    let disagree = pa
        .iter()
        .zip(&pb)
        .filter(|(x, y)| {
            assert_eq!(x["example_id"], y["example_id"]);
            x["pred"] != y["pred"]
        })
        .count();
    assert!(
        page.contains(&format!(
            "{disagree} of 400 test examples get different predictions"
        )),
        "{disagree}: {page}"
    );
    if disagree > 0 {
        let thumb = page
            .split(r#"<img class="thumb" src=""#)
            .nth(1)
            .expect("a thumbnail of a disagreeing example")
            .split('"')
            .next()
            .unwrap()
            .to_string();
        assert!(
            thumb.starts_with("/datasets/demo-memes/thumbnail/test/"),
            "{thumb}"
        );
        let (status, _) = app.page(&thumb).await;
        assert_eq!(status, StatusCode::OK, "{thumb}");
    }
    // the run page and the runs list link into it
    let (_, run_page) = app.page(&format!("/runs/{a}")).await;
    assert!(run_page.contains(r#"action="/compare""#));
    let (_, list) = app.page("/runs").await;
    assert!(list.contains(r#"id="compare-selected""#) && list.contains(r#"class="pick""#));

    // curves: one uPlot chart per metric key, a legend entry per run
    let addr = serve(&app).await;
    let dom = tokio::task::spawn_blocking(move || {
        rendered_dom(&format!("http://{addr}/compare?runs={a},{b}"))
    })
    .await
    .unwrap();
    for key in ["train/loss", "eval/accuracy"] {
        assert!(
            dom.contains(&format!(r#"data-key="{key}""#)),
            "no {key} chart:\n{dom}"
        );
    }
    assert!(dom.contains("uplot"), "uPlot did not draw:\n{dom}");
    assert!(dom.contains(&format!("#{a} bert-tiny")) && dom.contains(&format!("#{b} clip-tiny")));

    // bad requests say what is wrong
    for (query, status) in [
        ("runs=abc", StatusCode::UNPROCESSABLE_ENTITY),
        ("runs=", StatusCode::UNPROCESSABLE_ENTITY),
        ("runs=,,", StatusCode::UNPROCESSABLE_ENTITY),
        ("runs=1,2,3,4,5,6,7,8,9", StatusCode::UNPROCESSABLE_ENTITY),
        ("runs=999999", StatusCode::NOT_FOUND),
        ("runs=1&colour=red", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (got, body) = app.page(&format!("/compare?{query}")).await;
        assert_eq!(got, status, "{query}: {body}");
    }
}
