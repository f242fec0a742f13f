//! One way to ask for a run: the API, the form, the demo study and `modalbench train` read the
//! same options and resolve them the same way.

use crate::helpers::TestApp;
use axum::http::StatusCode;
use modalbench::live::LiveKind;
use modalbench::runs::options::{Bound, Kind, Range};
use modalbench::runs::{QueueConfig, TrainConfig, option_values};
use modalbench::store::runs::RunStatus;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

/// Options whose allowed values depend on the worker pool (a CPU pool refuses `fp16`, and
/// `gpus` is bounded by its slots) or on the model (`bert-tiny` has no image encoder to
/// freeze): tested on their own, kept at their defaults here.
const POOL_BOUND: [&str; 3] = ["mixed_precision", "gpus", "freeze_image_encoder"];

/// Every declared option with an allowed value other than its default, picked from the
/// declaration (so a new option is covered without editing this test).
fn every_option() -> Vec<(&'static str, String)> {
    option_values(&TrainConfig::default(), &QueueConfig::default())
        .into_iter()
        // the Slurm job's options: refused by a service that trains here (tested below)
        .filter(|(spec, _)| !spec.name.starts_with("slurm_"))
        .map(|(spec, default)| {
            let value = match (spec.range, spec.kind) {
                _ if POOL_BOUND.contains(&spec.name) => default.unwrap(),
                (Range::OneOf(names), _) => {
                    let d = default.unwrap();
                    names.iter().rev().find(|n| **n != d).unwrap().to_string()
                }
                (_, Kind::Boolean) => (default.unwrap() != "true").to_string(),
                (Range::Integers { min, max }, _) => {
                    let d = default.map_or(min, |d| d.parse::<i128>().unwrap());
                    (if d + 2 <= max { d + 2 } else { d - 1 }).to_string()
                }
                (Range::Any, Kind::Integer) => {
                    (default.map_or(0, |d| d.parse::<u64>().unwrap()) + 7).to_string()
                }
                (Range::Numbers { min, max }, _) => {
                    let end = |b: Bound| match b {
                        Bound::Closed(v) | Bound::Open(v) => v,
                    };
                    // a point inside the interval that is not the default
                    let v = (end(min) + 3.0 * end(max)) / 4.0;
                    let d = default.map(|d| d.parse::<f64>().unwrap());
                    let v = if Some(v) == d {
                        (end(min) + end(max)) / 2.0
                    } else {
                        v
                    };
                    format!("{v}")
                }
                (Range::Any, _) => "0.5".to_string(),
            };
            (spec.name, value)
        })
        .collect()
}

#[tokio::test]
async fn the_form_offers_every_declared_option_and_stores_what_the_api_stores() {
    let app = TestApp::new().await;
    let (_, html) = app.page("/runs/new").await;
    for (name, _) in every_option() {
        assert!(
            html.contains(&format!(r#"name="{name}""#)),
            "no field for `{name}`"
        );
    }
    assert!(
        html.contains(r#"name="learning_rate" value="2e-5""#),
        "defaults shown"
    );

    let mut body = json!({"model": "bert-tiny", "dataset": "demo-news"});
    let mut form = String::from("model=bert-tiny&dataset=demo-news");
    for (name, value) in every_option() {
        body[name] = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value.clone()));
        form.push_str(&format!("&{name}={value}"));
    }
    let by_api = app.submit(body).await;
    let req = crate::helpers::form_post("/runs/new", &form);
    let (status, _) = app.send(req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let api = app.state.store.get_run(by_api).await.unwrap().unwrap();
    let by_form = app.state.store.get_run(by_api + 1).await.unwrap().unwrap();
    assert_eq!(by_form.config, api.config);
    assert_eq!(by_form.priority, api.priority);
    assert_ne!(
        *api.train_config().unwrap(),
        TrainConfig::default(),
        "the options were read, not defaulted"
    );
    // every option as given, stored and listed on the run page
    let page = app.page(&format!("/runs/{}", by_form.id)).await.1;
    let stored = option_values(api.train_config().unwrap(), &api.queue_config());
    for ((name, given), (spec, value)) in every_option().into_iter().zip(stored) {
        assert_eq!(name, spec.name);
        let value = value.unwrap();
        let same = match (value.parse::<f64>(), given.parse::<f64>()) {
            (Ok(v), Ok(g)) => v == g,
            _ => value == given,
        };
        assert!(same, "`{name}` stored as {value}, given {given}");
        assert!(
            page.contains(&format!("<th>{name}</th><td>{value}</td>")),
            "`{name}` = {value} not in the config table"
        );
    }
    // a field given twice is named as such, and nothing is stored
    let req = crate::helpers::form_post(
        "/runs/new",
        "model=bert-tiny&dataset=demo-news&epochs=1&epochs=2",
    );
    let (status, html) = app.send(req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("duplicate field `epochs`"), "{html}");
    assert!(app.state.store.get_run(by_api + 2).await.unwrap().is_none());

    // a Slurm job's options, on a service that trains on its own devices: a 422 naming the
    // option, nothing stored
    for (field, value) in [
        ("slurm_partition", json!("gpu")),
        ("slurm_mem_gb", json!(16)),
    ] {
        let mut req = json!({"model": "bert-tiny", "dataset": "demo-news"});
        req[field] = value;
        let (status, body) = app.post("/api/v1/runs", req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--executor slurm"), "{body}");
    }
    assert!(app.state.store.get_run(by_api + 2).await.unwrap().is_none());
}

#[tokio::test]
async fn unknown_splits_and_metric_keys_in_queries_are_422_naming_the_parameter() {
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    for (query, field, says) in [
        (
            format!("/api/v1/runs/{id}/predictions?split=validation"),
            "split",
            "`validation` is not a split; use train, dev or test",
        ),
        (
            format!("/api/v1/runs/{id}/metrics?key=eval/bleu"),
            "key",
            "`eval/bleu` is not a metric key",
        ),
    ] {
        let (status, err) = app.get(&query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(says),
            "{err}"
        );
    }
    let (status, body) = app
        .get(&format!("/api/v1/runs/{id}/predictions?split=dev"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["split"], "dev");
}

#[tokio::test]
async fn the_demo_study_is_submitted_like_any_run() {
    let app = TestApp::new().await;
    let mut rx = app.state.hub.subscribe();
    let ids = modalbench::app::queue_demo_study(&app.state).await.unwrap();
    // the test models root has the four tiny presets, not minilm-l6 nor the fusion presets
    // built on it: those are left out, the rest run on both demo datasets with one seed
    assert_eq!(ids.len(), 4 * 2, "{ids:?}");
    let mut announced = BTreeSet::new();
    while let Ok(ev) = rx.try_recv() {
        if let LiveKind::Status {
            status: RunStatus::Queued,
            ..
        } = ev.kind
        {
            announced.insert(ev.run_id);
        }
    }
    assert_eq!(
        announced,
        ids.iter().copied().collect(),
        "each run announced as queued"
    );
    for id in &ids {
        let run = app.state.store.get_run(*id).await.unwrap().unwrap();
        let resolved = run.resolved().expect("resolved when submitted");
        assert_eq!(
            resolved.model.dir,
            app.state.settings.models_dir.join(&run.model)
        );
        assert_eq!(resolved.dataset.name, run.dataset);
        assert_eq!(
            (
                run.train_config().unwrap().epochs,
                run.train_config().unwrap().max_length
            ),
            (3, 48)
        );
        // one study, each model with its own learning rate
        let study = app
            .state
            .store
            .get_study(run.study_id.expect("in the demo study"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(study.name, "demo");
        assert_eq!(study.counts.queued as usize, ids.len());
        let (_, lr, frozen) = modalbench::app::DEMO_STUDY
            .iter()
            .find(|(m, _, _)| *m == run.model)
            .unwrap();
        assert_eq!(run.train_config().unwrap().learning_rate, *lr);
        assert_eq!(run.train_config().unwrap().freeze_image_encoder, *frozen);
    }
    assert!(
        modalbench::app::queue_demo_study(&app.state)
            .await
            .unwrap()
            .is_empty(),
        "queued once only"
    );
}

/// Runs `modalbench train` with `args` over the test app's folders.
fn train_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modalbench"))
        .arg("train")
        .args([
            "--models-dir",
            &app.state.settings.models_dir.to_string_lossy(),
        ])
        .args(["--data-dir", &app.state.settings.data_dir.to_string_lossy()])
        // the app's database (its PostgreSQL one when the tests run on PostgreSQL)
        .args(["--database", &app.state.settings.database_url().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn modalbench_train_reads_the_same_options_and_refuses_the_same_values() {
    let app = TestApp::new().await;
    let news = app.state.settings.datasets_dir().join("demo-news");
    let news = news.to_string_lossy();
    let out = train_cli(
        &app,
        &[
            "--model",
            "bert-tiny",
            "--dataset",
            &news,
            "--learning-rate",
            "-0.5",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`learning_rate` must be a number in (0, 1], got -0.5"),
        "{err}"
    );
    let out = train_cli(&app, &["--model", "gpt-17", "--dataset", &news]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown model `gpt-17` (known: ") && err.contains("bert-tiny"),
        "{err}"
    );

    let ckpt = app.dir.path().join("cli-checkpoint");
    let out = train_cli(
        &app,
        &[
            "--model",
            "bert-tiny",
            "--dataset",
            &news,
            "--max_steps",
            "2",
            "--batch_size",
            "8",
            "--warmup-ratio",
            "0.5",
            "--output",
            &ckpt.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("test accuracy "), "{printed}");
    // the best checkpoint (by the dev split) and the last, with its progress (and no
    // optimiser state: training ended)
    let saved = modalbench::models::load(&ckpt.join("best"), None, tch::Device::Cpu).unwrap();
    assert_eq!(saved.head, modalbench::models::Head::Classifier(4));
    assert!(ckpt.join("last/trainer_state.json").is_file());
    assert!(!ckpt.join("last/optimizer.safetensors").exists());

    // the seed's command line: a dataset by name, flags in snake_case, recorded in the store
    // the service reads, so the run shows in its run list and leaderboard
    let out = train_cli(
        &app,
        &[
            "--model",
            "bert-tiny",
            "--dataset",
            "demo-news",
            "--epochs",
            "1",
            "--batch_size",
            "32",
            "--learning_rate",
            "1e-3",
            "--gradient_checkpointing",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let id: i64 = err
        .split("run ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run id in {err}"));
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert!(run.device.as_deref().unwrap().starts_with("cli:"));
    assert!(
        run.train_config().unwrap().gradient_checkpointing
            && run.train_config().unwrap().epochs == 1
    );
    let s = run.summary.unwrap();
    assert!(
        (printed_accuracy(&out.stdout) - s.accuracy).abs() < 5e-5,
        "the printed summary is the stored one"
    );
    let (_, m) = app
        .get(&format!("/api/v1/runs/{id}/metrics?key=eval/accuracy"))
        .await;
    assert_eq!(m["series"]["eval/accuracy"].as_array().unwrap().len(), 1);
    let (_, p) = app.get(&format!("/api/v1/runs/{id}/predictions")).await;
    assert_eq!(p["predictions"].as_array().unwrap().len(), 160);
    let (_, board) = app.get("/api/v1/leaderboard?dataset=demo-news").await;
    assert_eq!(board["boards"][0]["rows"][0]["run_id"], id, "{board}");
    assert!(
        app.state
            .settings
            .run_dir(id)
            .join("checkpoint/best/model.safetensors")
            .is_file(),
        "the run's checkpoints are where the service keeps them"
    );
    // a dataset name nobody registered is refused with the known ones
    let out = train_cli(&app, &["--model", "bert-tiny", "--dataset", "demo-nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown dataset `demo-nope` (known: ") && err.contains("demo-news"),
        "{err}"
    );
}

/// The accuracy `modalbench train` printed last (`test accuracy 0.8125 ...`).
fn printed_accuracy(stdout: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(stdout);
    text.split("accuracy ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}
