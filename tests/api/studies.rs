//! Studies: queued as the cross product of models, datasets, seeds and a grid, each run
//! resolved as a single run is; refused whole with the field at fault; followed live; cancelled
//! as a whole; the demo study is one.

use crate::helpers::TestApp;
use crate::pages::serve;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn a_study_queues_its_cross_product_and_is_cancelled_as_a_whole() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (status, body) = app
        .post(
            "/api/v1/studies",
            json!({"name": "lr sweep", "models": ["bert-tiny", "clip-tiny"],
                   "datasets": ["demo-news"], "seeds": [0, 1],
                   "grid": {"learning_rate": [1e-3, 5e-4]},
                   "base": {"epochs": 500, "max_length": 32}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    assert_eq!(body["counts"]["queued"], 8);
    // models outermost, then the grid, then seeds; each run knows its study and cell
    let cell = |r: &Value| {
        (
            r["model"].as_str().unwrap().to_string(),
            r["config"]["learning_rate"].as_f64().unwrap(),
            r["config"]["seed"].as_u64().unwrap(),
        )
    };
    assert_eq!(cell(&runs[0]), ("bert-tiny".into(), 1e-3, 0));
    assert_eq!(cell(&runs[3]), ("bert-tiny".into(), 5e-4, 1));
    assert_eq!(cell(&runs[4]), ("clip-tiny".into(), 1e-3, 0));
    assert!(
        runs.iter()
            .all(|r| r["study_id"] == id && r["config"]["epochs"] == 500)
    );
    assert_eq!(runs[2]["grid"], json!({"learning_rate": 5e-4}));
    let (_, list) = app.get("/api/v1/studies").await;
    assert_eq!(list["studies"][0]["name"], "lr sweep");

    // the study's events: a run starting shows as a status event with its id
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /api/v1/studies/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let head = lines.next_line().await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    app.state.scheduler.tick().await.unwrap();
    let first = runs[0]["id"].as_i64().unwrap();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data).unwrap();
                if v["run_id"] == first && v["status"] == "running" {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("no status event for the study's first run");

    // cancelled as a whole: the running run's worker is stopped, the waiting ones never start
    let (status, study) = app
        .post(&format!("/api/v1/studies/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{study}");
    assert_eq!(study["counts"]["cancelled"], 8, "{study}");
    assert!(study["cancelled_at"].is_string());
    let (_, shown) = app.get(&format!("/api/v1/studies/{id}")).await;
    assert!(
        shown["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "cancelled")
    );
    assert!(app.state.scheduler.tick().await.unwrap().is_empty());
    let (status, _) = app.post("/api/v1/studies/99/cancel", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_study_is_refused_whole_naming_the_field() {
    let app = TestApp::new().await;
    let base = json!({"name": "s", "models": ["bert-tiny"], "datasets": ["demo-news"]});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (body, field, says) in [
        (
            with(
                json!({"seeds": (0..100).collect::<Vec<u64>>(), "grid": {"epochs": [1, 2, 3, 4, 5, 6]}}),
            ),
            "grid",
            "the study would queue 600 runs",
        ),
        (
            with(json!({"models": ["bert-tiny", "gpt-17"]})),
            "models",
            "run 2 of the study (gpt-17 on demo-news, seed 0): unknown model `gpt-17`",
        ),
        (
            with(json!({"datasets": ["demo-nope"]})),
            "datasets",
            "unknown dataset `demo-nope`",
        ),
        (
            with(json!({"grid": {"learning_rate": [1e-3, -1.0]}})),
            "grid.learning_rate",
            "`learning_rate` must be a number in (0, 1], got -1",
        ),
        (
            with(json!({"base": {"epochs": 0}})),
            "base.epochs",
            "`epochs` must be between 1 and 1000, got 0",
        ),
        (
            with(json!({"grid": {"lr": [1e-3]}})),
            "grid.lr",
            "`lr` is not a run option",
        ),
        (with(json!({"extra": 1})), "", "unknown field `extra`"),
    ] {
        let (status, err) = app.post("/api/v1/studies", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{err}");
        }
        assert!(
            err["error"]["message"].as_str().unwrap().contains(says),
            "{err}"
        );
    }
    let (_, list) = app.get("/api/v1/studies").await;
    assert_eq!(list["studies"], json!([]), "nothing stored");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"], json!([]), "no run stored");
}

#[tokio::test]
async fn the_study_form_queues_what_the_api_queues_and_the_page_shows_its_grid() {
    let app = TestApp::new().await;
    let (_, form) = app.page("/studies/new").await;
    assert!(
        form.contains(r#"name="models" value="bert-tiny""#),
        "{form}"
    );
    assert!(form.contains(r#"name="datasets" value="demo-news""#));
    let post = |body: &'static str| crate::helpers::form_post("/studies/new", body);
    let (status, _) = app
        .send(post(
            "name=form+study&models=bert-tiny&models=clip-tiny&datasets=demo-news&seeds=0%2C+1\
             &grid=learning_rate+%3D+1e-3%2C+5e-4&epochs=2&max_length=32&lr_scheduler=cosine",
        ))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, by_api) = app
        .post(
            "/api/v1/studies",
            json!({"name": "form study", "models": ["bert-tiny", "clip-tiny"],
                   "datasets": ["demo-news"], "seeds": [0, 1],
                   "grid": {"learning_rate": [1e-3, 5e-4]},
                   "base": {"epochs": 2, "max_length": 32, "lr_scheduler": "cosine"}}),
        )
        .await;
    let (_, by_form) = app.get("/api/v1/studies/1").await;
    assert_eq!(by_form["spec"], by_api["spec"], "the form reads as the API");
    let configs = |v: &Value| -> Vec<Value> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["config"].clone())
            .collect()
    };
    assert_eq!(configs(&by_form), configs(&by_api));

    // the study page: a row per model, a column per dataset, a link per run with its cell
    let (status, page) = app.page("/studies/1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<th>demo-news</th>") && page.contains("<th>clip-tiny</th>"));
    let first = by_form["runs"][0]["id"].as_i64().unwrap();
    assert!(
        page.contains(&format!(r#"href="/runs/{first}" data-run-id="{first}""#)),
        "{page}"
    );
    assert!(page.contains("seed 1, learning_rate=0.0005"), "{page}");
    assert!(app.page("/studies").await.1.contains("form study"));
    let (_, run_page) = app.page(&format!("/runs/{first}")).await;
    assert!(
        run_page.contains(r#"<a href="/studies/1">study #1</a>"#),
        "{run_page}"
    );

    // a bad form comes back with the message and the field marked
    let (status, page) = app
        .send(post(
            "name=x&models=bert-tiny&datasets=demo-news&seeds=0%2C+one",
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("`seeds`: `one` is not a whole number"),
        "{page}"
    );
    let (status, page) = app
        .send(post(
            "name=x&models=bert-tiny&datasets=demo-news&grid=epochs+%3D+0",
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("`epochs` must be between 1 and 1000, got 0"),
        "{page}"
    );
    let (_, list) = app.get("/api/v1/studies").await;
    assert_eq!(
        list["studies"].as_array().unwrap().len(),
        2,
        "refused forms store nothing"
    );
}

#[tokio::test]
async fn the_verdict_of_a_study_compares_the_best_of_each_side_by_the_printed_rule() {
    let app = TestApp::new().await;
    let (status, body) = app
        .post(
            "/api/v1/studies",
            json!({"name": "memes", "models": ["bert-tiny", "clip-tiny"],
                   "datasets": ["demo-memes"], "seeds": [0, 1],
                   "base": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-3, "max_length": 32}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    for r in body["runs"].as_array().unwrap() {
        let run = app.run_to_end(r["id"].as_i64().unwrap(), 300).await;
        assert_eq!(
            run.status,
            modalbench::store::runs::RunStatus::Succeeded,
            "{:?}",
            run.error
        );
    }
    // the images decide demo-memes: the text+image side gains, clearly
    let (status, v) = app
        .get(&format!("/api/v1/studies/{id}/verdict?max_cost_ratio=1000"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["datasets"][0];
    assert_eq!(d["dataset"], "demo-memes");
    assert_eq!(d["text_only"]["model"], "bert-tiny");
    assert_eq!(d["text_image"]["model"], "clip-tiny");
    assert_eq!(d["text_only"]["accuracy"]["n"], 2);
    let gain = &d["difference"];
    assert!(gain["low"].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(d["outcome"], "image_helps", "{d}");
    // the gain is the difference of the two sides' mean accuracies
    let means = d["text_image"]["accuracy"]["mean"].as_f64().unwrap()
        - d["text_only"]["accuracy"]["mean"].as_f64().unwrap();
    assert!((gain["estimate"].as_f64().unwrap() - means).abs() < 1e-12);
    assert_eq!(
        d["text_image"]["image_reliance"][0]["probe"], "images_shuffled",
        "{d}"
    );
    // the same numbers, a cost rule the text+image side breaks, but the
    // text-only side answers no better than the majority class (half of the balanced test
    // split), so it is no alternative and the image still simply helps
    assert_eq!(d["majority_rate"], 0.5, "{d}");
    assert!(
        d["text_only"]["accuracy_low"].as_f64().unwrap() <= 0.5,
        "{d}"
    );
    // (tiny models train in about the same time, whichever is faster depending on the
    // machine's load: the text+image runs' recorded training time is made three times the
    // text-only runs' longest, so that the rule is broken whatever the load)
    let slowest: (f64,) =
        sqlx::query_as("SELECT MAX(train_seconds) FROM runs WHERE model = 'bert-tiny'")
            .fetch_one(app.state.store.pool())
            .await
            .unwrap();
    let set_summary = if crate::helpers::on_postgres() {
        "CAST(jsonb_set(CAST(summary AS jsonb), '{train_seconds}', to_jsonb($1)) AS TEXT)"
    } else {
        "json_set(summary, '$.train_seconds', $1)"
    };
    sqlx::query(&format!(
        "UPDATE runs SET summary = {set_summary}, train_seconds = $1 WHERE model = 'clip-tiny'"
    ))
    .bind(slowest.0 * 3.0)
    .execute(app.state.store.pool())
    .await
    .unwrap();
    let (_, slower) = app.get(&format!("/api/v1/studies/{id}/verdict")).await;
    let ratio = slower["datasets"][0]["cost_ratios"]["train_time"]
        .as_f64()
        .unwrap();
    assert!(ratio >= 3.0, "{slower}");
    let (_, strict) = app
        .get(&format!("/api/v1/studies/{id}/verdict?max_cost_ratio=2"))
        .await;
    let strict = &strict["datasets"][0];
    assert_eq!(strict["outcome"], "image_helps", "{strict}");
    assert!(
        strict["reason"]
            .as_str()
            .unwrap()
            .contains("no alternative"),
        "{strict}"
    );
    // and a minimum gain above what was measured
    let (_, demanding) = app
        .get(&format!("/api/v1/studies/{id}/verdict?min_gain=1"))
        .await;
    assert_eq!(demanding["datasets"][0]["outcome"], "text_suffices");

    // the page prints the rule and the verdict; the exports carry the same table
    let (status, page) = app
        .page(&format!("/studies/{id}/verdict?max_cost_ratio=1000"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("the image helps"), "{page}");
    assert!(page.contains("a gain whose interval reaches zero is not evidence"));
    // the interval plot: the gain and the probes' drops, each with its hover text
    let gain_hover = format!(
        "<title>gain of the image: {:+.3} (95% interval {:+.3} to {:+.3})</title>",
        gain["estimate"].as_f64().unwrap(),
        gain["low"].as_f64().unwrap(),
        gain["high"].as_f64().unwrap()
    );
    assert!(page.contains(r#"<svg class="interval-plot""#), "{page}");
    assert!(page.contains(&gain_hover), "{gain_hover} not in {page}");
    assert!(page.contains("<title>drop, images shuffled: "), "{page}");
    let (_, md) = app
        .get(&format!(
            "/api/v1/studies/{id}/verdict?format=md&max_cost_ratio=1000"
        ))
        .await;
    let md = md.as_str().unwrap().to_string();
    assert!(
        md.starts_with("| dataset | majority class | text-only"),
        "{md}"
    );
    assert!(
        md.contains("| demo-memes | 0.500 | bert-tiny") && md.contains("| the image helps |"),
        "{md}"
    );
    let (_, csv) = app
        .get(&format!("/api/v1/studies/{id}/verdict?format=csv"))
        .await;
    assert_eq!(csv.as_str().unwrap().lines().count(), 2, "{csv}");
    let (status, err) = app
        .get(&format!("/api/v1/studies/{id}/verdict?min_gain=-1"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "min_gain");
}
