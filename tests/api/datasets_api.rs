//! Registering datasets through the API: only under the data roots, checked, nothing stored
//! on failure.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::path::Path;

/// Writes a small Hateful Memes folder with real images; `broken` adds a line without a label
/// and one whose image is missing.
fn memes_folder(root: &Path, broken: bool) {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut train = Vec::new();
    for i in 0..6 {
        image::RgbImage::from_pixel(20, 10, image::Rgb([i as u8 * 40, 0, 0]))
            .save(root.join(format!("img/{i}.png")))
            .unwrap();
        train.push(json!({"id": i, "img": format!("img/{i}.png"), "text": format!("caption {i}"), "label": i % 2}).to_string());
    }
    if broken {
        train.push(json!({"id": 90, "img": "img/0.png", "text": "no label here"}).to_string());
        train.push(
            json!({"id": 91, "img": "img/gone.png", "text": "lost picture", "label": 1})
                .to_string(),
        );
    }
    std::fs::write(root.join("train.jsonl"), train.join("\n")).unwrap();
    std::fs::write(root.join("dev_seen.jsonl"), train[..2].join("\n")).unwrap();
    std::fs::write(
        root.join("test_unseen.jsonl"),
        json!({"id": 7, "img": "img/1.png", "text": "who knows"}).to_string(),
    )
    .unwrap();
}

async fn dataset_count(app: &TestApp) -> usize {
    app.get("/api/v1/datasets").await.1["datasets"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_folder_under_the_data_dir_registers_with_its_splits_and_labels() {
    let app = TestApp::new().await;
    let folder = app.dir.path().join("data/elsewhere/memes");
    memes_folder(&folder, false);
    let (status, body) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "my-memes", "path": folder}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["format"], "hateful_memes", "recognised from the files");
    let (status, d) = app.get("/api/v1/datasets/my-memes").await;
    assert_eq!(status, StatusCode::OK);
    let splits = &d["info"]["splits"];
    assert_eq!(splits["train"]["examples"], 6);
    assert_eq!(splits["train"]["label_counts"], json!([3, 3]));
    assert_eq!(splits["dev"]["file"], "dev_seen.jsonl");
    assert_eq!(
        (
            splits["test"]["examples"].as_u64(),
            splits["test"]["labeled"].as_u64()
        ),
        (Some(1), Some(0)),
        "prediction-only test"
    );
    assert_eq!(d["info"]["label_names"], json!(["0", "1"]));
    // it can be trained on
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "my-memes", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(
        run.status,
        modalbench::store::runs::RunStatus::Succeeded,
        "{:?}",
        run.error
    );
    assert_eq!(
        run.summary.unwrap().split,
        modalbench::data::Split::Dev,
        "the test split has no labels"
    );
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.to_string().contains("the test split has no labels"),
        "the run says so"
    );
}

#[tokio::test]
async fn paths_outside_the_data_roots_are_refused_however_they_are_spelled() {
    let app = TestApp::new().await;
    let outside = tempfile::tempdir().unwrap();
    memes_folder(outside.path(), false);
    let data = app.dir.path().join("data");
    let link = data.join("link-out");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    // up to `/` with `..`s, then down to the outside folder
    let ups = "../".repeat(data.components().count());
    let dotdot = data
        .join(ups)
        .join(outside.path().strip_prefix("/").unwrap());
    for path in [
        outside.path().to_path_buf(),
        link,
        dotdot,
        data.join("datasets/../../.."),
    ] {
        let (status, err) = app
            .post("/api/v1/datasets", json!({"name": "escape", "path": path}))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{} -> {err}",
            path.display()
        );
        assert_eq!(err["error"]["field"], "path");
        assert_eq!(err["error"]["code"], "outside_data_roots", "{err}");
    }
    let (status, err) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "nowhere", "path": data.join("no-such-folder")}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("path"))
    );
    assert_eq!(dataset_count(&app).await, 2, "only the demos");
}

#[tokio::test]
async fn a_data_root_flag_allows_a_folder_elsewhere() {
    let outside = tempfile::tempdir().unwrap();
    memes_folder(outside.path(), false);
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        modalbench::config::Settings::new(dir.path().join("data"), dir.path().join("models"));
    settings.data_roots = vec![outside.path().to_path_buf()];
    settings.worker_exe = Some(env!("CARGO_BIN_EXE_modalbench-worker").into());
    let state = modalbench::app::build(settings, modalbench::queue::slots::plan(0, 1, 2))
        .await
        .unwrap();
    let app = TestApp {
        router: modalbench::http::router(state.clone()),
        state,
        dir,
    };
    let (status, body) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "outside", "path": outside.path()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_strict_registration_lists_the_problems_and_stores_nothing_and_report_counts_them() {
    let app = TestApp::new().await;
    let folder = app.dir.path().join("data/broken");
    memes_folder(&folder, true);
    let (status, err) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "broken", "path": folder}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("2 problems"), "{msg}");
    assert!(
        msg.contains("train.jsonl line 7: missing field `label`"),
        "{msg}"
    );
    assert!(
        msg.contains("img/gone.png: train example `91`: image not found in the dataset folder"),
        "{msg}"
    );
    assert_eq!(
        app.get("/api/v1/datasets/broken").await.0,
        StatusCode::NOT_FOUND,
        "nothing stored"
    );

    let (status, body) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "broken", "path": folder, "check": "report"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["info"]["problem_count"], 2);
    assert_eq!(
        body["info"]["splits"]["train"]["examples"], 6,
        "the bad lines are left out"
    );
    assert_eq!(body["info"]["problems"][0]["line"], 7);
}

#[tokio::test]
async fn bad_names_formats_and_layouts_are_rejected_naming_the_field() {
    let app = TestApp::new().await;
    let folder = app.dir.path().join("data/memes");
    memes_folder(&folder, false);
    let empty = app.dir.path().join("data/empty");
    std::fs::create_dir_all(&empty).unwrap();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"name": "../x", "path": folder}),
            "name",
            "invalid_value",
        ),
        (
            json!({"name": ".hidden", "path": folder}),
            "name",
            "invalid_value",
        ),
        (
            json!({"name": "ok", "path": folder, "format": "parquet"}),
            "format",
            "unknown_format",
        ),
        (
            json!({"name": "ok", "path": empty}),
            "format",
            "unknown_format",
        ),
        (
            json!({"name": "ok", "path": folder, "check": "lenient"}),
            "check",
            "invalid_value",
        ),
        (
            json!({"name": "ok", "path": folder, "options": {"labels": []}}),
            "options.labels",
            "unknown_field",
        ),
    ];
    for (body, field, code) in cases {
        let (status, err) = app.post("/api/v1/datasets", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["error"]["field"], field, "{body} -> {err}");
        assert_eq!(err["error"]["code"], code, "{body} -> {err}");
    }
    assert_eq!(dataset_count(&app).await, 2);
    let (status, _) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "demo-news", "path": folder}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a name already used for another folder"
    );
}

#[tokio::test]
async fn a_restart_reads_a_dataset_folder_again_only_when_its_files_changed() {
    let app = TestApp::new().await;
    let folder = app.dir.path().join("data/datasets/memes");
    memes_folder(&folder, false);
    let dir = app.dir;
    drop(app.state);
    let app = TestApp::open(dir).await;
    assert_eq!(
        app.get("/api/v1/datasets/memes").await.0,
        StatusCode::OK,
        "registered at start"
    );
    // an image goes missing, the split files stay as they were: not read again
    std::fs::remove_file(folder.join("img/5.png")).unwrap();
    let dir = app.dir;
    drop(app.state);
    let app = TestApp::open(dir).await;
    assert_eq!(
        app.get("/api/v1/datasets/memes").await.0,
        StatusCode::OK,
        "unchanged files are not read again"
    );
    // a split file changes: read again, now broken, so forgotten rather than kept stale
    let train = std::fs::read_to_string(folder.join("train.jsonl")).unwrap();
    std::fs::write(folder.join("train.jsonl"), train + "\n").unwrap();
    let dir = app.dir;
    drop(app.state);
    let app = TestApp::open(dir).await;
    assert_eq!(
        app.get("/api/v1/datasets/memes").await.0,
        StatusCode::NOT_FOUND,
        "read again, now broken"
    );
}

#[tokio::test]
async fn paths_inside_dataset_files_and_options_stay_in_the_folder_and_reads_are_bounded() {
    let app = TestApp::new().await;
    let data = app.dir.path().join("data");
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .save(&secret)
        .unwrap();
    let register = |name: &str, path: &Path, options: Value| {
        let body =
            json!({"name": name, "path": path, "format": "hateful_memes", "options": options});
        let app = &app;
        async move { app.post("/api/v1/datasets", body).await }
    };

    // split files named in the options: a device, an absolute path, `..`
    let root = data.join("opts");
    memes_folder(&root, false);
    for (file, why) in [
        ("/dev/zero", "not inside the dataset folder"),
        ("/etc/passwd", "not inside the dataset folder"),
        (
            "../../../../../../etc/passwd",
            "not inside the dataset folder",
        ),
        ("/no/such/file", "not inside the dataset folder"),
    ] {
        let (status, err) = register("opts", &root, json!({"splits": {"train": file}})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{file}: {err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{file}: {msg}");
        assert!(
            !msg.contains("No such file"),
            "{file}: existence leaked: {msg}"
        );
    }
    let (status, err) = register("opts", &root, json!({"images": "../.."})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("options.images"),
        "{err}"
    );

    // image paths inside the JSONL file, and a symlink out of the folder
    let root = data.join("escape");
    memes_folder(&root, false);
    std::os::unix::fs::symlink(&secret, root.join("img/link.png")).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(root.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let ups = "../".repeat(root.components().count());
    for (i, img) in [
        secret.display().to_string(),
        format!("{ups}{}", secret.strip_prefix("/").unwrap().display()),
        "img/link.png".to_string(),
        "/no/such/picture.png".to_string(),
    ]
    .iter()
    .enumerate()
    {
        lines.push(json!({"id": 100 + i, "img": img, "text": "t", "label": 0}).to_string());
    }
    // and a label that would make a million classes
    lines.push(json!({"id": 200, "img": "img/0.png", "text": "t", "label": 1_000_000}).to_string());
    std::fs::write(root.join("train.jsonl"), lines.join("\n")).unwrap();
    let (status, err) = register("escape", &root, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("5 problems"), "{msg}");
    for id in 100..104 {
        assert!(
            msg.contains(&format!(
                "example `{id}`: image not found in the dataset folder"
            )),
            "{id}: {msg}"
        );
    }
    assert!(
        msg.contains("must be an integer from 0 to 9999, found 1000000"),
        "{msg}"
    );
    // reported, the escaping examples are dropped and nothing outside is ever read
    let (status, body) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "escape", "path": root, "format": "hateful_memes", "check": "report"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["info"]["splits"]["train"]["examples"], 6, "{body}");
    assert_eq!(body["num_labels"], 2, "{body}");

    // a registration `path` outside the roots: the same answer whether or not it exists
    let (_, a) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "x", "path": secret_dir.path()}),
        )
        .await;
    let (_, b) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "x", "path": "/no/such/folder"}),
        )
        .await;
    assert_eq!(a["error"]["code"], "outside_data_roots");
    assert_eq!(b["error"]["code"], "outside_data_roots");
    let strip = |v: &Value, p: &str| v["error"]["message"].as_str().unwrap().replace(p, "P");
    assert_eq!(
        strip(&a, &secret_dir.path().display().to_string()),
        strip(&b, "/no/such/folder")
    );
}

#[tokio::test]
async fn a_dataset_whose_folder_disappeared_is_named_not_a_server_error() {
    let app = TestApp::new().await;
    let rows: Vec<(&str, u32)> = (0..12)
        .map(|i| (if i % 2 == 0 { "good" } else { "bad" }, i % 2))
        .collect();
    app.add_dataset("vanishing", [&rows, &rows, &rows]).await;
    std::fs::remove_dir_all(app.dir.path().join("data/datasets/vanishing")).unwrap();
    for uri in [
        "/datasets/vanishing",
        "/datasets/vanishing?split=dev",
        "/datasets/vanishing/thumbnail/train/0",
    ] {
        let (status, page) = app.page(uri).await;
        assert!(status.is_client_error(), "{uri}: {status}");
        assert!(page.contains("vanishing"), "{uri}: {page}");
    }
    let (status, body) = app.get("/api/v1/datasets/vanishing").await;
    assert!(
        status.is_success() || status.is_client_error(),
        "{status} {body}"
    );
    let (status, body) = app
        .post(
            "/api/v1/runs",
            serde_json::json!({"model": "bert-tiny", "dataset": "vanishing"}),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vanishing"),
        "{body}"
    );
}
