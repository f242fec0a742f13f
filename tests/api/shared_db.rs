//! Several servers on one PostgreSQL database (the test server `MODALBENCH_TEST_DATABASE_URL`
//! names, started by `scripts/cluster.sh up`): a run is claimed by one of them only, both
//! schedule, a cancel sent to either stops the run wherever it trains, and the runs of a
//! server killed with `kill -9` are taken over by the other.

use crate::helpers::fresh_database;
use crate::lifecycle::{Server, folder};
use modalbench::runs::{DatasetRef, ModelRef, QueueConfig, ResolvedRun, TrainConfig};
use modalbench::store::Store;
use serde_json::json;
use sqlx::Connection;
use std::collections::BTreeMap;

/// A fresh database on the test PostgreSQL server.
async fn database() -> String {
    let server = std::env::var("MODALBENCH_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "MODALBENCH_TEST_DATABASE_URL is not set: these tests need the test PostgreSQL \
             server (`scripts/cluster.sh up`, then `eval \"$(scripts/cluster.sh env)\"`; \
             `make test` does both)"
        )
    });
    fresh_database(&server).await
}

/// (id, owner, attempts, status) of every run, read from the database itself.
fn runs_in(url: &str) -> Vec<(i64, Option<String>, i64, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as("SELECT id, owner, attempts, status FROM runs ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap()
    })
}

fn queued_run(i: usize) -> ResolvedRun {
    ResolvedRun {
        model: ModelRef {
            name: "bert-tiny".into(),
            dir: "/nonexistent/bert-tiny".into(),
        },
        dataset: DatasetRef {
            name: format!("d{i}"),
            source: serde_json::from_value(json!({"format": "jsonl", "root": "/nonexistent"}))
                .unwrap(),
        },
        config: TrainConfig::default(),
        queue: QueueConfig::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_database_claim_every_run_exactly_once() {
    let url = database().await;
    let (a, b) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    assert_ne!(a.server_id(), b.server_id());
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(a.insert_run(&queued_run(i)).await.unwrap().id);
    }
    // eight claimers, four a store, race through the queue
    let mut claimers = Vec::new();
    for c in 0..8 {
        let store = if c % 2 == 0 { a.clone() } else { b.clone() };
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(run) = store.claim_next_run(&format!("cpu:{c}")).await.unwrap() {
                got.push((run.id, store.server_id().to_string()));
            }
            got
        }));
    }
    let mut claimed: Vec<(i64, String)> = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let mut got: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
    got.sort_unstable();
    assert_eq!(got, ids, "every run claimed once, none twice");
    let by: BTreeMap<&str, usize> = claimed.iter().fold(BTreeMap::new(), |mut m, (_, s)| {
        *m.entry(s.as_str()).or_default() += 1;
        m
    });
    assert_eq!(by.len(), 2, "both stores claimed runs: {by:?}");
    // the database agrees: each run running once, owned by the store that claimed it
    let rows = tokio::task::spawn_blocking(move || runs_in(&url))
        .await
        .unwrap();
    for (id, owner, attempts, status) in rows {
        let claimer = &claimed.iter().find(|(c, _)| *c == id).unwrap().1;
        assert_eq!(owner.as_deref(), Some(claimer.as_str()), "run {id}");
        assert_eq!((attempts, status.as_str()), (1, "running"), "run {id}");
    }
}

/// Two `modalbench serve` processes over their own folders and one database.
fn two_servers() -> (String, [tempfile::TempDir; 2], [Server; 2]) {
    let url = tokio::runtime::Runtime::new().unwrap().block_on(database());
    let dirs = [folder(), folder()];
    for d in &dirs {
        std::fs::write(d.path().join("database-url"), &url).unwrap();
    }
    let servers = [Server::start(dirs[0].path()), Server::start(dirs[1].path())];
    (url, dirs, servers)
}

fn short_run() -> serde_json::Value {
    json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 3, "max_length": 32})
}

fn long_run() -> serde_json::Value {
    json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 50, "batch_size": 8,
           "max_length": 32, "eval_every": 1000})
}

#[test]
fn two_servers_on_one_database_run_every_run_once() {
    let (url, _dirs, servers) = two_servers();
    let ids: Vec<i64> = (0..6).map(|i| servers[i % 2].submit(short_run())).collect();
    for &id in &ids {
        // either server answers for any run
        servers[(id % 2) as usize].wait_run(id, 300, "succeeds", |r| r["status"] == "succeeded");
    }
    let rows = runs_in(&url);
    assert_eq!(rows.len(), 6);
    for (id, _, attempts, status) in &rows {
        assert_eq!(
            (*attempts, status.as_str()),
            (1, "succeeded"),
            "run {id} ran once"
        );
        let points = crate::lifecycle::points(&servers[0], *id);
        assert!(!points.is_empty(), "run {id} logged metrics");
        assert!(
            points.iter().all(|p| p.2 == 1),
            "run {id}: one attempt's points"
        );
    }
    let owners: std::collections::BTreeSet<_> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(owners.len(), 2, "both servers trained runs: {owners:?}");
}

#[test]
fn a_cancel_sent_to_either_server_stops_the_run_and_a_killed_servers_run_is_taken_over() {
    let (url, _dirs, mut servers) = two_servers();
    let first = servers[0].submit(long_run());
    let second = servers[0].submit(long_run());
    for id in [first, second] {
        servers[0].wait_run(id, 120, "runs", |r| {
            r["status"] == "running" && r["progress"].as_f64().is_some_and(|p| p > 0.0)
        });
    }
    let rows = runs_in(&url);
    let owner = |id: i64| rows.iter().find(|r| r.0 == id).unwrap().1.clone().unwrap();
    // one slot each: the two runs train on different servers
    assert_ne!(owner(first), owner(second));
    let pid_of = |owner: &str| owner.split(':').nth(1).unwrap().parse::<i32>().unwrap();
    let holder = |id: i64| {
        servers
            .iter()
            .position(|s| s.pid() == pid_of(&owner(id)))
            .unwrap()
    };
    // cancelled through the server that does not train it
    let (cancelled, other) = (first, 1 - holder(first));
    let (status, body) =
        servers[other].call("POST", &format!("/api/v1/runs/{cancelled}/cancel"), None);
    assert_eq!(status, 200, "{body}");
    servers[other].wait_run(cancelled, 60, "is cancelled", |r| {
        r["status"] == "cancelled"
    });
    // the server training the second run dies; the other takes the run over and finishes it
    let victim = holder(second);
    let survivor = 1 - victim;
    unsafe { libc::kill(servers[victim].pid(), libc::SIGKILL) };
    let _ = servers[victim].child.wait();
    servers[survivor].wait_run(second, 120, "is taken over and started again", |r| {
        r["attempts"].as_i64() == Some(2) && r["status"] == "running"
    });
    let (status, body) =
        servers[survivor].call("POST", &format!("/api/v1/runs/{second}/cancel"), None);
    assert_eq!(status, 200, "{body}");
    let rows = runs_in(&url);
    let (_, owner, attempts, status) = rows.iter().find(|r| r.0 == second).unwrap();
    assert_eq!((*attempts, status.as_str()), (2, "cancelled"));
    assert_eq!(pid_of(owner.as_deref().unwrap()), servers[survivor].pid());
}

/// `serve` with a database it cannot use: the message names the problem, never the password.
fn serve_refuses(database: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modalbench"))
        .args(["serve", "--addr", "127.0.0.1:0", "--database", database])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{database} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_database_url_the_service_cannot_use_is_refused_with_the_reason() {
    let err = serve_refuses("mysql://root:hunter2@127.0.0.1/modalbench");
    assert!(
        err.contains("unsupported database URL scheme `mysql:`"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // nothing listens on port 9 of loopback: the connection error names the (redacted) URL
    let err = serve_refuses("postgres://modalbench:hunter2@127.0.0.1:9/modalbench");
    assert!(
        err.contains("connecting to database postgres://modalbench:***@127.0.0.1:9/modalbench"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_run_trained_by_one_server_is_followed_live_through_the_other() {
    let (url, _dirs, servers) = two_servers();
    let id = servers[0].submit(json!({"model": "bert-tiny", "dataset": "demo-news",
        "epochs": 2, "batch_size": 8, "max_length": 32, "eval_every": 1000}));
    servers[0].wait_run(id, 120, "trains", |r| {
        r["status"] == "running" && r["progress"].as_f64().is_some_and(|p| p > 0.0)
    });
    let owner = runs_in(&url)
        .into_iter()
        .find(|r| r.0 == id)
        .and_then(|r| r.1)
        .unwrap();
    let pid: i32 = owner.split(':').nth(1).unwrap().parse().unwrap();
    let other = servers.iter().position(|s| s.pid() != pid).unwrap();
    // the other server's event stream of the run: it ends with the run's end, which only the
    // relay from the training server can tell it
    let addr = servers[other].addr.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /api/v1/runs/{id}/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let _ = tx.send(String::from_utf8_lossy(&raw).into_owned());
    });
    let body = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the other server's event stream ended with the run");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("event: progress"), "{body}");
    assert!(body.contains("event: metric"), "{body}");
    let last = body
        .split("event: status")
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("succeeded"), "{body}");
}
