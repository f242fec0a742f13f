//! The scheduler and its worker processes: order, crashes, cancellation, restarts.

use crate::helpers::{TestApp, kill_worker_after_first_checkpoint, status_of};
use axum::http::{Method, StatusCode};
use modalbench::store::runs::RunStatus;
use serde_json::json;
use std::time::Duration;

fn pid_alive(pid: u32) -> bool {
    // signal 0 checks existence; a zombie still exists until reaped, so also look at its state
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true);
    exists && !zombie
}

/// A bert-tiny run long enough to still be training when the test acts on it.
fn long_run() -> serde_json::Value {
    json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 500, "learning_rate": 1e-3})
}

#[tokio::test]
async fn the_highest_priority_then_oldest_run_starts_first() {
    let app = TestApp::new().await;
    let low = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "priority": 0}))
        .await;
    let high_old = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "priority": 5}))
        .await;
    let high_new = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "priority": 5}))
        .await;
    let started = app.state.scheduler.tick().await.unwrap();
    assert_eq!(
        started,
        vec![high_old],
        "one slot: only the best run starts"
    );
    assert_eq!(app.state.scheduler.running(), vec![high_old]);
    assert!(
        app.state.scheduler.tick().await.unwrap().is_empty(),
        "no free slot"
    );
    assert_eq!(status_of(&app, high_new).await, RunStatus::Queued);
    assert_eq!(status_of(&app, low).await, RunStatus::Queued);
    for id in [high_old, high_new, low] {
        app.state.scheduler.cancel(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_run_trains_to_the_end_with_metrics_a_summary_and_a_checkpoint() {
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 2, "learning_rate": 1e-3, "batch_size": 32}))
        .await;
    let run = app.run_to_end(id, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let s = run.summary.unwrap();
    assert_eq!(s.steps, 2 * 384 / 32);
    assert_eq!(s.test_examples, 160);
    // throughput is the examples trained (two passes over 384) over the training time
    assert!(s.train_seconds > 0.0);
    let trained = s.samples_per_second * s.train_seconds;
    assert!(
        (trained - 2.0 * 384.0).abs() < 1e-6 * 768.0,
        "{} samples/s over {} s is {trained} examples, not 768",
        s.samples_per_second,
        s.train_seconds
    );
    let (_, m) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    let series = &m["series"];
    assert_eq!(
        series["eval/accuracy"].as_array().unwrap().len(),
        2,
        "one dev evaluation per epoch"
    );
    assert_eq!(series["eval/loss"][1]["step"], 24);
    assert!(series["train/loss"].as_array().unwrap().len() >= 2);
    // the worker's start milestones, in order (the stored times are fixed-width RFC 3339, so
    // text order is time order), the first step being the first train/loss point's
    let t = run.timings.expect("the worker reported its start");
    assert_eq!(
        Some(t.first_step),
        series["train/loss"][0]["step"].as_u64(),
        "{t:?}"
    );
    let started = run.started_at.unwrap();
    let order = [
        &run.created_at,
        &started,
        &t.worker_started_at,
        &t.loaded_at,
        &t.first_step_at,
    ];
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    assert_eq!(
        series["test/accuracy"][0]["value"].as_f64().unwrap(),
        s.accuracy
    );
    let (_, one) = app
        .get(&format!("/api/v1/runs/{id}/metrics?key=eval/f1"))
        .await;
    assert_eq!(
        one["series"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["eval/f1"]
    );
    // the stored test predictions agree with the summary's accuracy
    let (_, p) = app.get(&format!("/api/v1/runs/{id}/predictions")).await;
    let preds = p["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 160);
    let correct = preds.iter().filter(|r| r["label"] == r["pred"]).count();
    assert_eq!(correct as f64 / 160.0, s.accuracy);
    let ckpt = app.state.settings.run_dir(id).join("checkpoint/best");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 4);
    let reloaded = modalbench::models::load(&ckpt, None, tch::Device::Cpu).unwrap();
    assert_eq!(reloaded.head, modalbench::models::Head::Classifier(4));
    assert!(
        reloaded.report.fresh.is_empty(),
        "the saved head is loaded, not re-initialised"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_run_fails_the_run_and_frees_the_slot() {
    let app = TestApp::new().await;
    let mut events = app.state.hub.subscribe();
    let doomed = app.submit(long_run()).await;
    let next = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    app.state.scheduler.tick().await.unwrap();
    app.wait_for_progress(&mut events, doomed).await;
    let pid = app
        .state
        .scheduler
        .worker_pid(doomed)
        .expect("a worker process");
    // what the kernel's out-of-memory killer does
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = app
        .state
        .scheduler
        .wait_finished(doomed, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status, Some(RunStatus::Failed));
    let run = app.state.store.get_run(doomed).await.unwrap().unwrap();
    let error = run.error.unwrap();
    assert!(error.contains("killed by signal 9"), "{error}");
    // the server is fine and the slot is free: the next run starts and succeeds
    let run = app.run_to_end(next, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(app.get("/api/v1/runs").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_worker_that_panics_fails_its_run_with_the_panic_message() {
    // a checkpoint whose config.json declares fewer token embeddings than its tokenizer
    // produces: libtorch raises an index error inside the forward pass and the worker panics
    let broken = tempfile::tempdir().unwrap();
    let tiny = TestApp::new().await;
    let src = tiny.dir.path().join("models/bert-tiny");
    for f in ["tokenizer.json", "vocab.txt"] {
        std::fs::copy(src.join(f), broken.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = json!(8);
    std::fs::write(broken.path().join("config.json"), config.to_string()).unwrap();
    let c: modalbench::models::bert::Config = serde_json::from_value(config).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _m = modalbench::models::bert::BertModel::new(vs.root(), &c);
    modalbench::models::checkpoint::save_safetensors(&vs, &broken.path().join("model.safetensors"))
        .unwrap();

    let app = TestApp::with_models(&[("bert-small-vocab", broken.path())]).await;
    let id = app
        .submit(json!({"model": "bert-small-vocab", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(error.starts_with("worker panicked at "), "{error}");
    assert!(
        error.contains("index out of range"),
        "the message says why: {error}"
    );
    assert!(
        !error.contains("Exception raised from"),
        "without libtorch's C++ stack: {error}"
    );
    assert!(app.state.scheduler.running().is_empty());
}

#[tokio::test]
async fn a_checkpoint_broken_after_submission_fails_the_run_with_a_message_naming_the_tensor() {
    // a copy of bert-tiny that loses a tensor between submission and start
    let copy = tempfile::tempdir().unwrap();
    let app0 = TestApp::new().await;
    let src = app0.dir.path().join("models/bert-tiny");
    for f in ["tokenizer.json", "config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), copy.path().join(f)).unwrap();
    }
    let app = TestApp::with_models(&[("bert-copy", copy.path())]).await;
    let id = app
        .submit(json!({"model": "bert-copy", "dataset": "demo-news"}))
        .await;
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(src.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k != "encoder.layer.1.attention.self.key.weight")
            .collect();
    tch::Tensor::write_safetensors(&tensors, copy.path().join("model.safetensors")).unwrap();
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("no tensor `encoder.layer.1.attention.self.key.weight`"),
        "{error}"
    );
    assert!(
        !app.state.settings.run_dir(id).join("checkpoint").exists(),
        "nothing half-written"
    );
}

#[tokio::test]
async fn cancelling_a_running_run_kills_its_worker() {
    let app = TestApp::new().await;
    let mut events = app.state.hub.subscribe();
    let id = app.submit(long_run()).await;
    app.state.scheduler.tick().await.unwrap();
    app.wait_for_progress(&mut events, id).await;
    let pid = app.state.scheduler.worker_pid(id).unwrap();
    let (status, run) = app
        .call(Method::POST, &format!("/api/v1/runs/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "cancelled");
    assert!(!pid_alive(pid), "worker {pid} still running");
    assert!(app.state.scheduler.running().is_empty());
    let (status, err) = app
        .call(Method::POST, &format!("/api/v1/runs/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
}

#[tokio::test]
async fn cancelling_a_queued_run_means_it_never_starts() {
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let (status, run) = app
        .call(Method::POST, &format!("/api/v1/runs/{id}/cancel"), None)
        .await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert!(app.state.scheduler.tick().await.unwrap().is_empty());
}

#[tokio::test]
async fn runs_left_running_by_a_dead_server_are_interrupted_and_run_again() {
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 3}))
        .await;
    // the first server claims the run and dies before the worker reports anything
    let claimed = app
        .state
        .store
        .claim_next_run("cpu:0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, id);
    let dir = app.dir;
    drop(app.state);
    let app = TestApp::open(dir).await;
    assert_eq!(status_of(&app, id).await, RunStatus::Interrupted);
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempts, 2);
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.to_string().contains("interrupted: the server stopped"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_run_interrupted_too_often_is_failed_instead_of_restarted() {
    let mut app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    for _ in 0..modalbench::queue::MAX_ATTEMPTS {
        app.state
            .store
            .claim_next_run("cpu:0")
            .await
            .unwrap()
            .unwrap();
        let dir = app.dir;
        drop(app.state);
        app = TestApp::open(dir).await;
    }
    assert!(app.state.scheduler.tick().await.unwrap().is_empty());
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("interrupted 3 times"));
}

#[tokio::test]
async fn a_store_that_refuses_writes_fails_the_run_with_the_reason_and_the_server_carries_on() {
    let app = TestApp::new().await;
    // the database refuses metric points, as a full disk would: a real failed write, made by
    // the database itself
    let (refuse, allow) = if crate::helpers::on_postgres() {
        (
            "CREATE FUNCTION refuse_points() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'no space left for metric points'; END $$; \
             CREATE TRIGGER refuse_points BEFORE INSERT ON metrics \
             FOR EACH ROW EXECUTE FUNCTION refuse_points()",
            "DROP TRIGGER refuse_points ON metrics",
        )
    } else {
        (
            "CREATE TRIGGER refuse_points BEFORE INSERT ON metrics \
             BEGIN SELECT RAISE(ABORT, 'no space left for metric points'); END",
            "DROP TRIGGER refuse_points",
        )
    };
    sqlx::raw_sql(refuse)
        .execute(app.state.store.pool())
        .await
        .unwrap();
    let id = app.submit(long_run()).await;
    let run = app.run_to_end(id, 180).await;
    assert_eq!(
        run.status,
        RunStatus::Failed,
        "the run does not stay running"
    );
    let error = run.error.unwrap();
    assert!(
        error.contains("could not store the run's metric points")
            && error.contains("no space left for metric points"),
        "{error}"
    );
    assert!(
        app.state.scheduler.running().is_empty(),
        "the worker was stopped and its slot freed"
    );
    // once the store takes writes again, the next run trains as usual
    sqlx::raw_sql(allow)
        .execute(app.state.store.pool())
        .await
        .unwrap();
    let next = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(next, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
}

#[tokio::test]
async fn an_interrupted_run_resumes_from_its_last_checkpoint_keeping_the_earlier_points() {
    let app = TestApp::new().await;
    let id = app
        .submit(
            json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 2,
                       "batch_size": 8, "eval_every": 4, "learning_rate": 1e-3}),
        )
        .await;
    // the first server's worker writes a checkpoint, then the server dies with it
    let run = app
        .state
        .store
        .claim_next_run("cpu:0")
        .await
        .unwrap()
        .unwrap();
    let spec = modalbench::protocol::JobSpec::new(
        id,
        &run.resolved().unwrap(),
        modalbench::protocol::Device::Cpu,
        1,
        app.state.settings.run_dir(id).join("checkpoint"),
        None,
    );
    let saved = kill_worker_after_first_checkpoint(&spec);
    let resumed_at = saved["progress"]["step"].as_i64().unwrap();
    // a point the first attempt reported before its checkpoint, and one after it
    app.state
        .store
        .insert_metric_points(
            id,
            1,
            &[
                modalbench::store::metrics::NewPoint {
                    key: modalbench::eval::MetricKey::TRAIN_LOSS,
                    step: resumed_at,
                    epoch: 0.1,
                    value: 123.0,
                },
                modalbench::store::metrics::NewPoint {
                    key: modalbench::eval::MetricKey::TRAIN_LOSS,
                    step: resumed_at + 1,
                    epoch: 0.1,
                    value: 456.0,
                },
            ],
        )
        .await
        .unwrap();
    let dir = app.dir;
    drop(app.state);

    let app = TestApp::open(dir).await;
    let run = app.run_to_end(id, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.summary.unwrap().steps, 2 * 384 / 8);
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.to_string().contains(&format!(
            "resumed from the last checkpoint at step {resumed_at}"
        )),
        "{logs}"
    );
    let (_, m) = app
        .get(&format!("/api/v1/runs/{id}/metrics?key=train/loss"))
        .await;
    let points = m["series"]["train/loss"].as_array().unwrap();
    let values: Vec<f64> = points
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert!(
        values.contains(&123.0),
        "the point before the checkpoint is kept"
    );
    let steps: Vec<i64> = points.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "one point a step: {steps:?}"
    );
    // the second attempt's points are the ones read for the steps it reported again, the
    // first attempt's stay as its history
    let (_, all) = app
        .get(&format!(
            "/api/v1/runs/{id}/metrics?key=train/loss&all_attempts=true"
        ))
        .await;
    let all = all["series"]["train/loss"].as_array().unwrap();
    let of = |attempt: i64| -> Vec<(i64, f64)> {
        all.iter()
            .filter(|p| p["attempt"] == attempt)
            .map(|p| (p["step"].as_i64().unwrap(), p["value"].as_f64().unwrap()))
            .collect()
    };
    assert!(of(1).contains(&(resumed_at + 1, 456.0)), "{all:?}");
    let second = of(2);
    assert!(
        !second.is_empty() && second.iter().all(|(s, _)| *s > resumed_at),
        "{second:?}"
    );
    for p in points {
        let step = p["step"].as_i64().unwrap();
        if let Some((_, v)) = second.iter().find(|(s, _)| *s == step) {
            assert_eq!(p["attempt"], 2, "{p}");
            assert_eq!(p["value"].as_f64().unwrap(), *v);
        } else {
            assert_eq!(p["attempt"], 1, "{p}");
        }
    }
}

#[tokio::test]
async fn a_data_parallel_run_holds_as_many_slots_as_it_has_replicas() {
    let app = TestApp::with_cpu_slots(2).await;
    let wide = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "gpus": 2, "max_steps": 4}))
        .await;
    let narrow = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    // the two-slot run takes both slots: the next waits for one to free
    assert_eq!(app.state.scheduler.tick().await.unwrap(), [wide]);
    let run = app.run_to_end(wide, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.device.as_deref(), Some("cpu:0+cpu:1"));
    assert_eq!(run.summary.unwrap().cost.devices, 2);
    let run = app.run_to_end(narrow, 180).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.device.as_deref(), Some("cpu:0"));
}

/// A worker program: a shell script that, the first time it is started as a worker, reads its
/// job and does `body`; every later start, and every other command (inspecting the models), is
/// the real worker program.
fn odd_worker(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("odd-worker.sh");
    let marker = dir.join("started-once");
    let real = env!("CARGO_BIN_EXE_modalbench-worker");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" != worker ] || [ -e {m} ]; then exec {real} \"$@\"; fi\ntouch {m}\nread -r job\n{body}\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_hung_worker_is_stopped_after_the_timeout_and_the_next_run_starts() {
    let scripts = tempfile::tempdir().unwrap();
    let exe = odd_worker(scripts.path(), "sleep 600");
    let app = TestApp::with_settings(|s| {
        s.worker_exe = Some(exe);
        s.worker_timeout = 2;
    })
    .await;
    let hung = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let next = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(hung, 60).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(error.contains("reported nothing for 2 s"), "{error}");
    // the slot is free again: the next run starts after the hung one ended (whether a real
    // worker speaks within 2 s here depends on the machine's load, so not how it ends)
    let after = app.run_to_end(next, 120).await;
    assert_eq!(after.attempts, 1);
    assert!(after.started_at.unwrap() >= run.finished_at.unwrap());
}

#[tokio::test]
async fn a_worker_writing_garbage_fails_its_run_with_the_reason() {
    let scripts = tempfile::tempdir().unwrap();
    let garbage = odd_worker(
        scripts.path(),
        "echo 'this is not an event'; echo '{\"event\": \"bogus\", \"step\": [}'; exit 0",
    );
    let app = TestApp::with_settings(|s| s.worker_exe = Some(garbage)).await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let next = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 60).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("2 line(s) on stdout that are not events")
            && error.contains("without reporting a result"),
        "{error}"
    );
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(logs.to_string().contains("this is not an event"), "{logs}");
    let run = app.run_to_end(next, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
}

#[tokio::test]
async fn a_worker_writing_an_endless_line_is_stopped_without_exhausting_memory() {
    let scripts = tempfile::tempdir().unwrap();
    // 80 MiB without a newline, more than a line may hold
    let flood = odd_worker(
        scripts.path(),
        "head -c 83886080 /dev/zero | tr '\\\\0' x; sleep 600",
    );
    let app = TestApp::with_settings(|s| s.worker_exe = Some(flood)).await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("longer than 64 MiB on its stdout"),
        "{error}"
    );
}

#[tokio::test]
async fn a_run_takes_the_worker_started_ahead_for_its_slot_and_another_is_started() {
    let app = TestApp::new().await;
    app.state.scheduler.warm_up();
    let waiting = app.state.scheduler.waiting_workers();
    assert_eq!(waiting.len(), 1, "one worker for the one slot");
    // a second call starts no more
    app.state.scheduler.warm_up();
    assert_eq!(app.state.scheduler.waiting_workers(), waiting);
    let mut events = app.state.hub.subscribe();
    let id = app.submit(long_run()).await;
    app.state.scheduler.tick().await.unwrap();
    app.wait_for_progress(&mut events, id).await;
    assert_eq!(app.state.scheduler.worker_pid(id), Some(waiting[0]));
    assert!(app.state.scheduler.waiting_workers().is_empty());
    let (status, run) = app
        .call(Method::POST, &format!("/api/v1/runs/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    // the slot is free again and a new worker waits for it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.state.scheduler.waiting_workers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let next = app.state.scheduler.waiting_workers();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0], waiting[0]);
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
}

#[tokio::test]
async fn without_warm_workers_none_waits() {
    let app = TestApp::with_settings(|s| s.warm_workers = false).await;
    app.state.scheduler.warm_up();
    assert!(app.state.scheduler.waiting_workers().is_empty());
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert!(app.state.scheduler.waiting_workers().is_empty());
}

// two threads, as the server runs: the supervisor goes on while this test's task wakes
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_woken_by_a_runs_end_finds_its_slot_free() {
    let app = TestApp::new().await;
    let mut events = app.state.hub.subscribe();
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    app.state.scheduler.tick().await.unwrap();
    let ended = async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.run_id == id
                && matches!(&ev.kind, modalbench::live::LiveKind::Status { status, .. } if !status.is_active())
            {
                // checked at once, while the supervisor's task may still be running
                return app.state.scheduler.running();
            }
        }
    };
    let running = tokio::time::timeout(std::time::Duration::from_secs(120), ended)
        .await
        .expect("the run ends within 120 s");
    assert!(
        !running.contains(&id),
        "the slot is still held by run {id} when its end is announced"
    );
}
