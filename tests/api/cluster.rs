//! The Slurm executor against a real single-node Slurm cluster (`scripts/cluster.sh up`, which
//! `make test` runs first; `MODALBENCH_TEST_SLURM_CONF` points here at its configuration): a
//! run asking for two GPUs becomes a `gres/gpu:2` job, trains on the node and streams its
//! metrics back over HTTP to the leaderboard; a waiting run is cancelled with `scancel` behind
//! the scenes; a run whose worker is killed on the node is requeued and finishes; a restarted
//! service follows the jobs it had submitted.

use crate::lifecycle::{Server, folder, points};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The test cluster's `slurm.conf`.
fn slurm_conf() -> PathBuf {
    let conf = std::env::var("MODALBENCH_TEST_SLURM_CONF").unwrap_or_else(|_| {
        panic!(
            "MODALBENCH_TEST_SLURM_CONF is not set: the Slurm tests need the test cluster \
             (`scripts/cluster.sh up`, then `eval \"$(scripts/cluster.sh env)\"`; `make test` does both)"
        )
    });
    let conf = PathBuf::from(conf);
    assert!(conf.is_file(), "{} does not exist", conf.display());
    conf
}

/// A Slurm client command against the test cluster; its stdout.
fn slurm(conf: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("SLURM_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration file naming the Slurm executor, looking at the queue every 0.5 s, with
/// `more` lines of `[executor.slurm]`.
fn slurm_config(dir: &Path, more: &str) -> PathBuf {
    let path = dir.join("modalbench.toml");
    let text =
        format!("[executor]\nkind = \"slurm\"\n[executor.slurm]\npoll_seconds = 0.5\n{more}\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// The run's cluster jobs, oldest attempt first.
fn jobs(server: &Server, id: i64) -> Vec<Value> {
    server.get(&format!("/api/v1/runs/{id}/jobs"))["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `ok` holds; the failure says what was awaited and, from `about`, how things
/// stood.
fn wait_for(what: &str, secs: u64, about: &dyn Fn() -> String, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s; {}",
            about()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ended(r: &Value) -> bool {
    !matches!(
        r["status"].as_str(),
        Some("queued" | "running" | "interrupted")
    )
}

#[test]
fn runs_become_slurm_jobs_that_report_over_http_are_cancelled_and_requeued() {
    let conf = slurm_conf();
    let dir = folder();
    let config = slurm_config(dir.path(), "cpus_per_task = 1");
    let conf_s = conf.to_str().unwrap();
    // one address for both lives of the service: the workers' tickets name it
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let start = || {
        Server::start_with(
            dir.path(),
            &["--addr", &addr, "--config", config.to_str().unwrap()],
            &[("SLURM_CONF", conf_s)],
        )
    };
    let server = start();

    // the state of a run, its jobs and its log, for a failure's message
    let about = |id: i64| {
        format!(
            "run {id}: {}\njobs: {:?}\nlog: {}",
            server.run(id),
            jobs(&server, id),
            server.get(&format!("/api/v1/runs/{id}/logs?tail=50"))
        )
    };

    // 1. two GPUs: a gres/gpu:2 job that holds both of the node's (fake) GPUs while it runs
    let first = server.submit(json!({
        "model": "bert-tiny", "dataset": "demo-news", "gpus": 2, "epochs": 3, "batch_size": 8,
        "max_length": 32, "eval_every": 50, "learning_rate": 1e-3, "max_steps": 150,
        "slurm_partition": "debug", "slurm_time_limit": 30
    }));
    wait_for("the first run's job to run", 120, &|| about(first), || {
        jobs(&server, first)
            .first()
            .is_some_and(|j| j["state"] == "RUNNING")
    });
    let job = jobs(&server, first)[0].clone();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    // suspended, the first job keeps both GPUs however fast it would otherwise train, so the
    // second one is certain to be seen waiting for them
    let first_job = |verb: &str| {
        let status = Command::new("scontrol")
            .args([verb, &job_id])
            .env("SLURM_CONF", &conf)
            .status()
            .unwrap();
        assert!(status.success(), "scontrol {verb} {job_id}: {status}");
    };
    first_job("suspend");
    // 2. also two GPUs: it waits for the first one's, and is cancelled while it waits
    let second = server.submit(json!({
        "model": "bert-tiny", "dataset": "demo-news", "gpus": 2, "max_steps": 5
    }));
    let shown = slurm(&conf, "scontrol", &["show", "job", "-o", &job_id]);
    assert!(
        shown.contains("gres/gpu:2") || shown.contains("gres:gpu:2"),
        "{shown}"
    );
    assert!(shown.contains("JobName=modalbench-run-"), "{shown}");
    // the run's own Slurm options
    assert!(shown.contains("Partition=debug"), "{shown}");
    assert!(shown.contains("TimeLimit=00:30:00"), "{shown}");

    wait_for(
        "the second run's job to wait for resources",
        90,
        &|| about(second),
        || {
            jobs(&server, second).first().is_some_and(|j| {
                // the reason comes with the scheduler's first look at the job
                j["state"] == "PENDING"
                    && j["position"].as_i64() >= Some(1)
                    && j["reason"].is_string()
            })
        },
    );
    let (status, body) = server.call("POST", &format!("/api/v1/runs/{second}/cancel"), None);
    assert_eq!(status, 200, "{body}");
    let cancelled = server.wait_run(second, 60, "cancelled", ended);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let second_job = jobs(&server, second)[0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(
        "Slurm to say the job was cancelled",
        30,
        &|| about(second),
        || {
            slurm(&conf, "scontrol", &["show", "job", "-o", &second_job])
                .contains("JobState=CANCELLED")
        },
    );
    first_job("resume");

    // the first trains on the node and its metrics reach the service over HTTP
    let done = server.wait_run(first, 600, "an end", ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    // the run ends when its worker reports; the job's end follows on the run's record
    wait_for("the job to show COMPLETED", 60, &|| about(first), || {
        jobs(&server, first)[0]["state"] == "COMPLETED"
    });
    let job = jobs(&server, first)[0].clone();
    assert_eq!(job["node"], "mbnode", "{job}");
    assert_eq!(job["exit_code"], "0:0", "{job}");
    let pts = points(&server, first);
    let losses = pts.iter().filter(|p| p.0 == "train/loss").count();
    assert!(losses >= 5, "{losses} train/loss points");
    assert!(pts.iter().any(|p| p.0 == "eval/accuracy"));
    // every point once: (key, step, attempt) is unique
    let mut keys: Vec<_> = pts.iter().map(|p| (p.0.clone(), p.1, p.2)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), pts.len());
    let board = server.get("/api/v1/leaderboard?dataset=demo-news");
    let rows = board["boards"][0]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["run_id"] == first), "{board}");
    let preds = server.get(&format!(
        "/api/v1/runs/{first}/predictions?split=test&limit=5"
    ));
    assert!(
        !preds["predictions"].as_array().unwrap().is_empty(),
        "{preds}"
    );

    // 3. killed on the node: requeued as a new job, resumed, finished
    let third = server.submit(json!({
        "model": "bert-tiny", "dataset": "demo-news", "epochs": 4, "batch_size": 8,
        "max_length": 32, "eval_every": 24, "learning_rate": 1e-3
    }));
    server.wait_run(third, 300, "progress on the node", |r| {
        r["progress"].as_f64().unwrap_or(0.0) > 0.05
    });
    let ticket = dir
        .path()
        .join(format!("data/runs/{third}/slurm/ticket-1.json"));
    let killed = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("worker --ticket .*{}", ticket.display()),
        ])
        .status()
        .unwrap();
    assert!(killed.success(), "no worker of run {third} to kill");
    let done = server.wait_run(third, 900, "an end", ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let attempts = jobs(&server, third);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["state"], "FAILED", "{attempts:?}");
    assert_ne!(attempts[0]["job_id"], attempts[1]["job_id"]);
    let logs = server.get(&format!("/api/v1/runs/{third}/logs?tail=1000"));
    assert!(logs.to_string().contains("requeued"), "{logs}");
    let (status, page) = server.call("GET", &format!("/runs/{third}"), None);
    assert_eq!(status, 200);
    assert!(
        page.contains("Slurm jobs") && page.contains("FAILED"),
        "{page}"
    );
    for j in &attempts {
        let cell = format!("<td>{}</td>", j["job_id"].as_str().unwrap());
        assert!(page.contains(&cell), "{cell} not on the run page");
    }
    assert!(points(&server, third).iter().any(|p| p.2 == 2));

    // 4. the service restarts while a job runs: the job runs on and is followed again
    let fourth = server.submit(json!({
        "model": "bert-tiny", "dataset": "demo-news", "epochs": 2, "batch_size": 8,
        "max_length": 32, "learning_rate": 1e-3
    }));
    server.wait_run(fourth, 300, "progress on the node", |r| {
        r["progress"].as_f64().unwrap_or(0.0) > 0.05
    });
    drop(server);
    let server = start();
    let done = server.wait_run(fourth, 600, "an end", ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(jobs(&server, fourth).len(), 1);
    // what the worker logged while the service was away arrived after it: a loss point at
    // least every fifth of an epoch, over both epochs
    let losses = points(&server, fourth)
        .iter()
        .filter(|p| p.0 == "train/loss")
        .count();
    assert!(losses >= 10, "{losses} train/loss points");
}

#[test]
fn worker_events_need_their_attempts_token_and_are_applied_once() {
    let conf = slurm_conf();
    let dir = folder();
    // held jobs stay pending: only this test reports
    let config = slurm_config(dir.path(), r#"sbatch_args = ["--hold"]"#);
    let server = Server::start_with(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        &[("SLURM_CONF", conf.to_str().unwrap())],
    );
    let id = server.submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 3}));
    wait_for("the held job", 60, &|| server.run(id).to_string(), || {
        !jobs(&server, id).is_empty()
    });
    let ticket: Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join(format!("data/runs/{id}/slurm/ticket-1.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let token = ticket["token"].as_str().unwrap();
    let url = format!("/api/v1/worker/runs/{id}/events");
    let metric = |step: u64| json!({"event": "metric", "key": "train/loss", "step": step, "epoch": 0.1, "value": 1.0 / step as f64});
    let post = |auth: Option<&str>, body: Value| {
        let raw = server.call_with("POST", &url, Some(&body), auth);
        (
            raw.0,
            serde_json::from_str::<Value>(&raw.1).unwrap_or(Value::Null),
        )
    };
    let batch = |first: i64, events: Vec<Value>| json!({"attempt": 1, "first_seq": first, "events": events});

    // no token, a wrong one, the API's: refused
    assert_eq!(post(None, batch(1, vec![metric(1)])).0, 401);
    assert_eq!(
        post(Some("not-the-token"), batch(1, vec![metric(1)])).0,
        401
    );
    // applied once, even when sent again (an answer lost), and overlapping batches add only
    // what is new
    let (status, ack) = post(Some(token), batch(1, vec![metric(1), metric(2)]));
    assert_eq!(
        (status, ack["last_seq"].as_i64(), ack["applied"].as_i64()),
        (200, Some(2), Some(2))
    );
    let (status, ack) = post(Some(token), batch(1, vec![metric(1), metric(2)]));
    assert_eq!(
        (status, ack["last_seq"].as_i64(), ack["applied"].as_i64()),
        (200, Some(2), Some(0))
    );
    let log = json!({"event": "log", "message": "hello from the node"});
    let (status, ack) = post(
        Some(token),
        batch(2, vec![metric(2), log.clone(), metric(3)]),
    );
    assert_eq!(
        (status, ack["last_seq"].as_i64(), ack["applied"].as_i64()),
        (200, Some(4), Some(2))
    );
    let (status, ack) = post(Some(token), batch(2, vec![metric(2), log, metric(3)]));
    assert_eq!((status, ack["applied"].as_i64()), (200, Some(0)));
    // a hole is refused
    let (status, body) = post(Some(token), batch(7, vec![metric(7)]));
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("from 5"), "{body}");

    let pts = points(&server, id);
    let steps: Vec<i64> = pts
        .iter()
        .filter(|p| p.0 == "train/loss")
        .map(|p| p.1)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);
    let logs = server
        .get(&format!("/api/v1/runs/{id}/logs?tail=1000"))
        .to_string();
    assert_eq!(logs.matches("hello from the node").count(), 1, "{logs}");

    // once the run is cancelled the attempt is over: its worker is told so
    let (status, _) = server.call("POST", &format!("/api/v1/runs/{id}/cancel"), None);
    assert_eq!(status, 200);
    let (status, body) = post(Some(token), batch(5, vec![metric(5)]));
    assert_eq!(status, 410, "{body}");
}
