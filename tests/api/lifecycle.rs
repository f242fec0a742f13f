//! The service as a process that gets killed, stopped and probed: `kill -9` loses no
//! acknowledged metric point and runs resume in queue order; SIGTERM checkpoints running runs,
//! ends event streams and exits; half-sent requests are dropped; event streams end and are
//! bounded.

use crate::helpers::TestApp;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `modalbench serve` on a loopback port over a test folder.
pub(crate) struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[], &[])
    }

    /// With more `serve` arguments and environment variables; `--addr` among them replaces
    /// the default (a free loopback port).
    pub fn start_with(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let addr: &[&str] = if args.contains(&"--addr") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        // the folder's PostgreSQL database when the tests run on PostgreSQL
        let database: Vec<String> = std::fs::read_to_string(dir.join("database-url"))
            .map(|url| vec!["--database".into(), url])
            .unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_modalbench"))
            .arg("serve")
            .args(addr)
            .args(&database)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--models-dir")
            .arg(dir.join("models"))
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("MODALBENCH_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, addr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// One request over a fresh connection; the status and the body.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        self.call_with(method, path, body, None)
    }

    /// [`Server::call`] with a bearer token.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text[9..12].parse().unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        (status, body)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn submit(&self, req: Value) -> i64 {
        let (status, body) = self.call("POST", "/api/v1/runs", Some(&req));
        assert_eq!(status, 201, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    pub fn run(&self, id: i64) -> Value {
        self.get(&format!("/api/v1/runs/{id}"))
    }

    /// Waits until `ok` holds of run `id`.
    pub fn wait_run(&self, id: i64, secs: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let run = self.run(id);
            if ok(&run) {
                return run;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "run {id}: {what} within {secs}s; it is {run}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Every stored point of a run, every attempt's: (key, step, attempt, value).
pub(crate) fn points(server: &Server, id: i64) -> Vec<(String, i64, i64, f64)> {
    let m = server.get(&format!("/api/v1/runs/{id}/metrics?all_attempts=true"));
    let mut out = Vec::new();
    for (key, series) in m["series"].as_object().unwrap() {
        for p in series.as_array().unwrap() {
            out.push((
                key.clone(),
                p["step"].as_i64().unwrap(),
                p["attempt"].as_i64().unwrap(),
                p["value"].as_f64().unwrap(),
            ));
        }
    }
    out
}

fn long_run() -> Value {
    json!({"model": "bert-tiny", "dataset": "demo-news", "epochs": 4, "batch_size": 8,
           "eval_every": 24, "max_length": 32, "learning_rate": 1e-3})
}

pub(crate) fn checkpointed(dir: &Path, id: i64) -> bool {
    dir.join(format!("data/runs/{id}/checkpoint/last/trainer_state.json"))
        .is_file()
}

pub(crate) fn folder() -> tempfile::TempDir {
    // the layout of a test app (presets and demo datasets linked in), served by a process
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::new());
    let dir = app.dir;
    drop(app.state);
    dir
}

#[test]
fn kill_9_loses_no_acknowledged_point_and_the_queue_resumes_in_order() {
    let dir = folder();
    let server = Server::start(dir.path());
    let first = server.submit(long_run());
    let second =
        server.submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 3}));
    let third =
        server.submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 3}));
    server.wait_run(first, 120, "a checkpoint and progress", |r| {
        r["progress"].as_f64().unwrap_or(0.0) > 0.05 && checkpointed(dir.path(), first)
    });
    let acknowledged = points(&server, first);
    assert!(!acknowledged.is_empty());
    // kill -9: no shutdown code runs; the worker dies with its parent
    unsafe { libc::kill(server.pid(), libc::SIGKILL) };
    drop(server);

    let server = Server::start(dir.path());
    let after = points(&server, first);
    for p in &acknowledged {
        assert!(after.contains(p), "{p:?} was acknowledged and is gone");
    }
    for id in [first, second, third] {
        let run = server.wait_run(id, 300, "an end", |r| {
            !matches!(
                r["status"].as_str(),
                Some("queued" | "running" | "interrupted")
            )
        });
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let run = server.run(first);
    assert_eq!(run["attempts"], 2);
    let logs = server.get(&format!("/api/v1/runs/{first}/logs?tail=1000"));
    assert!(
        logs.to_string()
            .contains("resumed from the last checkpoint at step"),
        "{logs}"
    );
    // the interrupted run went first again, then the others in their order
    let started = |id| server.run(id)["started_at"].as_str().unwrap().to_string();
    assert!(started(first) < started(second) && started(second) < started(third));
    // the second attempt's points are filed under it, the first attempt's kept
    let finally = points(&server, first);
    assert!(finally.iter().any(|p| p.2 == 2));
    for p in &acknowledged {
        assert!(finally.contains(p), "{p:?} lost after the resume");
    }
}

#[test]
fn sigterm_checkpoints_running_runs_ends_event_streams_and_exits() {
    let dir = folder();
    let mut server = Server::start(dir.path());
    let id = server.submit(long_run());
    server.wait_run(id, 120, "progress", |r| {
        r["progress"].as_f64().unwrap_or(0.0) > 0.02
    });
    // an open event stream
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/runs/{id}/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let asked = Instant::now();
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the event stream did not end: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("event: status"));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(70));

    // the run waits, checkpointed at the step it stopped on, and resumes from it
    let server = Server::start(dir.path());
    let logs = server.get(&format!("/api/v1/runs/{id}/logs?tail=1000"));
    let text = logs.to_string();
    assert!(text.contains("stopping after step"), "{text}");
    assert!(text.contains("the server shut down"), "{text}");
    let run = server.wait_run(id, 300, "an end", |r| {
        !matches!(
            r["status"].as_str(),
            Some("queued" | "running" | "interrupted")
        )
    });
    assert_eq!(run["status"], "succeeded", "{run}");
    let logs = server
        .get(&format!("/api/v1/runs/{id}/logs?tail=1000"))
        .to_string();
    let stopped: i64 = logs
        .split("stopping after step ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        logs.contains(&format!(
            "resumed from the last checkpoint at step {stopped}"
        )),
        "{logs}"
    );
}

#[test]
fn a_half_sent_request_is_dropped_after_the_header_timeout() {
    let dir = folder();
    let server = Server::start(dir.path());
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /api/v1/runs HTTP/1.1\r\nHost: x\r\n").unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "closed after {waited:?}"
    );
    // closed without a response, or with a 408
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    // and the server still answers
    assert_eq!(server.call("GET", "/healthz", None).0, 200);
}

#[tokio::test]
async fn event_streams_end_with_their_run_and_are_bounded() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    let app = TestApp::new().await;
    let id = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2}))
        .await;
    app.run_to_end(id, 120).await;
    // a finished run's stream says so and ends
    let res = tower::ServiceExt::oneshot(
        app.router.clone(),
        Request::get(format!("/api/v1/runs/{id}/events"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        axum::body::to_bytes(res.into_body(), 1 << 20),
    )
    .await
    .expect("the stream of an ended run ends")
    .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("event: status") && text.contains("succeeded"),
        "{text}"
    );
    // streams are bounded: hold as many as allowed open, the next is a 503
    let queued = app
        .submit(json!({"model": "bert-tiny", "dataset": "demo-news"}))
        .await;
    let mut open = Vec::new();
    for _ in 0..modalbench::live::MAX_STREAMS {
        let res = tower::ServiceExt::oneshot(
            app.router.clone(),
            Request::get(format!("/api/v1/runs/{queued}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        open.push(res);
    }
    let (status, body) = app.get(&format!("/api/v1/runs/{queued}/events")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");
    // a closed stream frees its place
    open.pop();
    let res = tower::ServiceExt::oneshot(
        app.router.clone(),
        Request::get(format!("/api/v1/runs/{queued}/events"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[test]
fn the_demo_serves_from_relative_folders_as_make_demo_starts_it() {
    // `make demo` runs `modalbench serve --demo` with the default `./data` and `./models`
    let dir = folder();
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_modalbench"))
        .args(["serve", "--demo", "--addr", "127.0.0.1:0"])
        .args(["--data-dir", "./data", "--models-dir", "./models"])
        .current_dir(dir.path())
        .env_remove("MODALBENCH_API_TOKEN")
        .env_remove("MODALBENCH_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(str::to_string)
    else {
        let _ = child.kill();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("the service did not start: {line}{err}");
    };
    let server = Server { child, addr };
    let runs = server.get("/api/v1/runs?limit=500");
    let queued: Vec<&Value> = runs["runs"].as_array().unwrap().iter().collect();
    assert!(!queued.is_empty(), "the demo study was queued: {runs}");
    for dataset in ["demo-news", "demo-memes"] {
        assert!(
            queued.iter().any(|r| r["dataset"] == dataset),
            "{dataset} has runs: {runs}"
        );
    }
}

/// Processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // the fields after the command's closing parenthesis: state, ppid, ...
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn maps_libtorch(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("libtorch_cpu")
}

#[test]
fn the_service_does_not_load_libtorch_and_keeps_a_worker_waiting_that_does() {
    let dir = folder();
    let server = Server::start(dir.path());
    assert!(
        !maps_libtorch(server.pid()),
        "the service process mapped libtorch"
    );
    // the worker started ahead for the one CPU slot
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let workers: Vec<i32> = children(server.pid())
            .into_iter()
            .filter(|&p| maps_libtorch(p))
            .collect();
        if !workers.is_empty() || Instant::now() > deadline {
            break workers;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(waiting.len(), 1, "one worker waits for the slot's next run");
    let (status, body) = server.call(
        "POST",
        "/api/v1/runs",
        Some(&json!({"model": "bert-tiny", "dataset": "demo-news", "max_steps": 2})),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let run = server.get(&format!("/api/v1/runs/{id}"));
        if ["succeeded", "failed"].contains(&run["status"].as_str().unwrap_or_default())
            || Instant::now() > deadline
        {
            break run;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        !maps_libtorch(server.pid()),
        "the service process mapped libtorch after a run"
    );
}
