//! A finished run's cost and checkpoints through the service: the cost on the run, its page
//! and the leaderboard; the best and last checkpoints as archives transformers loads; a
//! checkpoint registered as a model and fine-tuned again; requests the devices cannot honour.

use crate::dataset_pages::get_bytes;
use crate::helpers::{TestApp, run_python};
use axum::http::StatusCode;
use modalbench::store::runs::RunStatus;
use serde_json::json;
use std::ffi::OsStr;

async fn bytes(app: &TestApp, uri: &str) -> (StatusCode, Vec<u8>) {
    let (status, _, _, body) = get_bytes(app, uri).await;
    (status, body)
}

#[tokio::test]
async fn a_run_reports_its_cost_and_serves_checkpoints_transformers_loads_and_that_train_again() {
    let app = TestApp::new().await;
    let id = app
        .submit(
            json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 2,
                       "batch_size": 32, "learning_rate": 1e-3, "eval_every": 5}),
        )
        .await;
    let run = app.run_to_end(id, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let s = run.summary.unwrap();
    let c = &s.cost;
    assert!(c.peak_rss_bytes.unwrap() > 50 << 20, "{c:?}");
    assert_eq!(c.peak_gpu_bytes, None, "no GPU here");
    assert!(c.trainable_parameters > 0 && c.trainable_parameters <= s.num_parameters);
    assert_eq!(c.devices, 1);
    assert!((c.device_hours - s.total_seconds / 3600.0).abs() < 1e-9);
    assert!((c.flops_per_second * s.train_seconds - c.train_flops).abs() < 1e-6 * c.train_flops);
    assert!(c.epoch_seconds.unwrap() > 0.0 && c.eval_samples_per_second.unwrap() > 0.0);
    // every fifth step, and the last
    let (_, m) = app
        .get(&format!("/api/v1/runs/{id}/metrics?key=eval/accuracy"))
        .await;
    let steps: Vec<i64> = m["series"]["eval/accuracy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, [5, 10, 15, 20, 24]);
    let best = c.best_step.unwrap();
    assert!(steps.contains(&(best as i64)), "best step {best}");

    // the cost on the run page and the leaderboard
    let (_, page) = app.page(&format!("/runs/{id}")).await;
    for label in [
        "peak host memory",
        "device-hours",
        "training FLOPs (est.)",
        "time per epoch",
    ] {
        assert!(page.contains(label), "{label} not on the run page");
    }
    let (_, board) = app.get("/api/v1/leaderboard?dataset=demo-news").await;
    let row = &board["boards"][0]["rows"][0];
    assert_eq!(row["peak_memory_bytes"], json!(c.peak_rss_bytes.unwrap()));
    assert!(row["device_hours"].as_f64().unwrap() > 0.0);
    assert!(app.page("/leaderboard").await.1.contains("peak memory"));

    // both checkpoints download as tar archives that transformers loads
    let dir = app.dir.path().join("downloads");
    std::fs::create_dir_all(&dir).unwrap();
    for which in ["best", "last"] {
        let (status, tar) =
            bytes(&app, &format!("/api/v1/runs/{id}/checkpoint?which={which}")).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&tar));
        std::fs::write(dir.join(format!("{which}.tar")), tar).unwrap();
    }
    let check = r#"
import sys, tarfile, torch, transformers
out = sys.argv[1]
for which in ["best", "last"]:
    with tarfile.open(f"{out}/{which}.tar") as t:
        names = t.getnames()
        t.extractall(out, filter="data")
    folder = f"{out}/run-{sys.argv[2]}-{which}"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    logits = model(**tok(["shares rally on profit"], return_tensors="pt")).logits
    assert logits.shape == (1, 4), logits.shape
    assert model.config.id2label[0], model.config.id2label
    if which == "last":
        # the run ended: its last checkpoint keeps the progress, not the AdamW moments
        assert any(n.endswith("trainer_state.json") for n in names), names
        assert not any(n.endswith("optimizer.safetensors") for n in names), names
print("ok")
"#;
    run_python(
        "loading the checkpoints with transformers",
        [
            OsStr::new("-c"),
            OsStr::new(check),
            dir.as_os_str(),
            OsStr::new(&id.to_string()),
        ],
    );

    // registered as a model, the checkpoint fine-tunes again, keeping its head
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "news-tuned"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "news-tuned"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/register"),
            json!({"name": "../escape"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!app.state.settings.models_dir.join("../escape").exists());
    let again = app
        .submit(json!({"model": "news-tuned", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(again, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let (_, logs) = app.get(&format!("/api/v1/runs/{again}/logs")).await;
    assert!(
        !logs.to_string().contains("newly initialised"),
        "the registered model's head was kept: {logs}"
    );
    // a run that wrote no checkpoint has none to give
    let (status, _) = bytes(&app, "/api/v1/runs/999/checkpoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_the_devices_cannot_honour_are_422_saying_why() {
    let app = TestApp::new().await;
    let (status, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "mixed_precision": "fp16"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "mixed_precision", "{err}");
    assert!(err.to_string().contains("needs a CUDA device"), "{err}");
    let (status, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "gpus": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err.to_string()
            .contains("`gpus` is 4 but this service has 1 device slot(s) (cpu:0)"),
        "{err}"
    );
    let (status, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "lr_scheduler": "step"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err.to_string()
            .contains("expected one of `linear`, `cosine`, `constant_with_warmup`"),
        "{err}"
    );
    // bf16 on this CPU: accepted where it has native bfloat16, refused with the reason elsewhere
    let (status, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "bert-tiny", "dataset": "demo-news", "mixed_precision": "bf16", "max_steps": 1}),
        )
        .await;
    if modalbench::train::precision::cpu_has_native_bf16() {
        assert_eq!(status, StatusCode::CREATED, "{err}");
    } else {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert!(err.to_string().contains("avx512_bf16"), "{err}");
    }
}
