//! A test application per test: its own data dir, models dir and database, the real router
//! driven with `oneshot`, the real scheduler driven explicitly, real worker processes.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use modalbench::config::Settings;
use modalbench::http::{AppState, router};
use modalbench::queue::slots;
use modalbench::store::runs::{Run, RunStatus};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tempfile::TempDir;
use tower::ServiceExt;

/// Built once per test binary and linked into every test app: the built-in presets and the
/// demo dataset, so that each test does not regenerate them.
fn shared_fixtures() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        modalbench::models::presets::ensure_presets(&dir.path().join("models")).unwrap();
        for (_, write) in modalbench::data::demo::DEMOS {
            write(&dir.path().join("datasets"), modalbench::app::DEMO_SEED).unwrap();
        }
        dir
    })
    .path()
}

/// The installed real MiniLM-L6 checkpoint (`make test` installs it into `./models`).
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("MODALBENCH_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm-l6"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "the real minilm-l6 checkpoint is not at {}; run `make test`, whose set-up installs it",
        dir.display()
    );
    dir
}

/// The CSRF token the test "browser" holds: its `mb_csrf` cookie, and the hidden field of
/// the forms it posts.
pub const CSRF: &str = "0123456789abcdef0123456789abcdef";

/// A form post as a browser sends it from one of the service's pages: the page's CSRF cookie,
/// and the same token in the form's hidden field.
pub fn form_post(uri: &str, body: &str) -> axum::http::Request<axum::body::Body> {
    let body = if body.is_empty() {
        format!("csrf={CSRF}")
    } else {
        format!("{body}&csrf={CSRF}")
    };
    axum::http::Request::post(uri)
        .header(
            axum::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(axum::http::header::COOKIE, format!("mb_csrf={CSRF}"))
        .body(axum::body::Body::from(body))
        .unwrap()
}

/// Whether the tests run against PostgreSQL (`MODALBENCH_TEST_STORE=postgres`; `make test`
/// runs the suite on SQLite, then the tests that touch the store again on PostgreSQL).
pub fn on_postgres() -> bool {
    std::env::var("MODALBENCH_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The database of the test app in `dir`: on PostgreSQL a database of its own, made on the
/// server `MODALBENCH_TEST_DATABASE_URL` names at the app's first start and kept in the folder
/// (so a restarted app over the same folder finds the same database); else `None`, the
/// folder's SQLite file.
pub async fn test_database(dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let kept = dir.join("database-url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return Some(url);
    }
    let server = std::env::var("MODALBENCH_TEST_DATABASE_URL").expect(
        "MODALBENCH_TEST_STORE=postgres needs MODALBENCH_TEST_DATABASE_URL (a PostgreSQL server \
         the tests may create databases on; `scripts/cluster.sh env` prints it)",
    );
    let url = fresh_database(&server).await;
    std::fs::write(&kept, &url).unwrap();
    Some(url)
}

/// Creates an empty database on the PostgreSQL server of `server_url`; returns its URL.
pub async fn fresh_database(server_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("mb_test_{}", modalbench::secret::random_hex(8));
    let mut admin = sqlx::PgConnection::connect(server_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(server_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub dir: TempDir,
}

impl TestApp {
    /// An app with one CPU slot, the built-in presets and the demo datasets.
    pub async fn new() -> TestApp {
        Self::with_models(&[]).await
    }

    /// Like [`TestApp::new`], with extra checkpoint folders linked into the models dir.
    pub async fn with_models(extra: &[(&str, &Path)]) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = shared_fixtures();
        let (models, datasets) = (dir.path().join("models"), dir.path().join("data/datasets"));
        std::fs::create_dir_all(&models).unwrap();
        std::fs::create_dir_all(&datasets).unwrap();
        for preset in std::fs::read_dir(fixtures.join("models")).unwrap() {
            let preset = preset.unwrap();
            std::os::unix::fs::symlink(preset.path(), models.join(preset.file_name())).unwrap();
        }
        for demo in std::fs::read_dir(fixtures.join("datasets")).unwrap() {
            let demo = demo.unwrap();
            std::os::unix::fs::symlink(demo.path(), datasets.join(demo.file_name())).unwrap();
        }
        for (name, path) in extra {
            std::os::unix::fs::symlink(path, models.join(name)).unwrap();
        }
        Self::open(dir).await
    }

    /// An app over an existing folder (as a restarted server sees it).
    pub async fn open(dir: TempDir) -> TestApp {
        Self::open_with_slots(dir, 1).await
    }

    /// Like [`TestApp::new`], with `n` CPU slots.
    pub async fn with_cpu_slots(n: usize) -> TestApp {
        let app = Self::new().await;
        let dir = app.dir;
        drop(app.state);
        Self::open_with_slots(dir, n).await
    }

    /// An app over an existing folder with `n` CPU slots.
    pub async fn open_with_slots(dir: TempDir, n: usize) -> TestApp {
        Self::open_with(dir, n, |_| {}).await
    }

    /// Like [`TestApp::new`], with settings changed by `tweak` (another worker program, a
    /// shorter worker timeout).
    pub async fn with_settings(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let app = Self::new().await;
        let dir = app.dir;
        drop(app.state);
        Self::open_with(dir, 1, tweak).await
    }

    async fn open_with(dir: TempDir, n: usize, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = Settings::new(dir.path().join("data"), dir.path().join("models"));
        settings.database = test_database(dir.path()).await;
        settings.worker_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_modalbench-worker")));
        tweak(&mut settings);
        let state = modalbench::app::build(settings, slots::plan(0, n, 2))
            .await
            .unwrap();
        TestApp {
            router: router(state.clone()),
            state,
            dir,
        }
    }

    /// Serves the app on a loopback port, for clients outside the process (the `mlflow`
    /// client, the Python client); returns its base URL. The server lives as long as the
    /// test's runtime.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    /// Writes a text-only dataset in the Hateful Memes layout and registers it. `rows` are
    /// (text, label) per split, in train/dev/test order.
    pub async fn add_dataset(&self, name: &str, splits: [&[(&str, u32)]; 3]) {
        let root = self.dir.path().join("data/datasets").join(name);
        std::fs::create_dir_all(&root).unwrap();
        let mut id = 1;
        for (file, rows) in ["train.jsonl", "dev.jsonl", "test.jsonl"]
            .iter()
            .zip(splits)
        {
            let mut text = String::new();
            for (t, label) in rows {
                text += &serde_json::json!({"id": id, "text": t, "label": label}).to_string();
                text.push('\n');
                id += 1;
            }
            std::fs::write(root.join(file), text).unwrap();
        }
        modalbench::app::register_datasets(&self.state.store, &self.state.settings.datasets_dir())
            .await
            .unwrap();
    }

    /// Sends a request through the router; returns the status and the body as JSON (or
    /// `Value::String` for a non-JSON body).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder().method(method).uri(uri);
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let (status, text) = self.send(req).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends a prepared request; returns status and body text.
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, String) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(body)).await
    }

    /// GETs a page; returns status and HTML.
    pub async fn page(&self, uri: &str) -> (StatusCode, String) {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    /// Submits a run through the API and returns its id.
    pub async fn submit(&self, body: Value) -> i64 {
        let (status, run) = self.post("/api/v1/runs", body).await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run["id"].as_i64().unwrap()
    }

    /// Starts what can start, then waits for run `id` to end (at most `secs` seconds).
    pub async fn run_to_end(&self, id: i64, secs: u64) -> Run {
        // ticks as the service's loop does while waiting (a run that ended frees its slot just
        // after it reports its end, so one tick at the start could find the slot still taken)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let status = loop {
            self.state.scheduler.tick().await.unwrap();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let status = self
                .state
                .scheduler
                .wait_finished(id, left.min(Duration::from_secs(1)))
                .await
                .unwrap();
            if status.is_none_or(|s| !s.is_active()) || left.is_zero() {
                break status;
            }
        };
        // and its slot is free again (the supervisor frees it just after recording the end in
        // the store, which is what `wait_finished` reads, and before announcing it)
        while self.state.scheduler.running().contains(&id) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let run = self.state.store.get_run(id).await.unwrap().unwrap();
        assert!(
            status.is_some_and(|s| !s.is_active()),
            "run {id} did not end within {secs}s: {:?}",
            run.status
        );
        run
    }

    /// Waits until the worker of run `id` has reported a training step.
    pub async fn wait_for_progress(
        &self,
        rx: &mut tokio::sync::broadcast::Receiver<modalbench::live::LiveEvent>,
        id: i64,
    ) {
        let wait = async {
            loop {
                let ev = rx.recv().await.unwrap();
                if ev.run_id == id && ev.name() == "progress" {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .expect("the worker reported no progress within 120s");
    }
}

/// The status of a run as stored.
pub async fn status_of(app: &TestApp, id: i64) -> RunStatus {
    app.state.store.get_run(id).await.unwrap().unwrap().status
}

/// The project's Python (the venv `make test` sets up), for reference computations.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MODALBENCH_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "no Python at {} (set MODALBENCH_PYTHON or run `make test`, which installs the test requirements)",
        p.display()
    );
    p
}

/// Runs the test Python with `args`; panics with `what` and its stderr if it fails. Returns
/// its stdout.
pub fn run_python<I, S>(what: &str, args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(python())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `spec` in a `modalbench worker` process and kills the process as soon as the job's
/// last checkpoint is written; returns the checkpoint's `trainer_state.json`.
pub fn kill_worker_after_first_checkpoint(spec: &modalbench::protocol::JobSpec) -> Value {
    use std::io::Write;
    let state = spec.output_dir.join("last/trainer_state.json");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_modalbench-worker"))
        .arg("worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    writeln!(stdin, "{}", serde_json::to_string(spec).unwrap()).unwrap();
    let started = std::time::Instant::now();
    while !state.is_file() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(Duration::from_millis(5));
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap()
}
