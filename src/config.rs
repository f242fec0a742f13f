//! Service settings, from command-line flags and `MODALBENCH_*` environment variables.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Seconds a worker may stay silent before it is taken for hung (`--worker-timeout`).
pub const DEFAULT_WORKER_TIMEOUT: u64 = 1800;

/// Settings shared by `serve` and the commands that open the data dir.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Folder holding the database (`modalbench.db`), `datasets/` and run outputs (`runs/`).
    #[arg(long, env = "MODALBENCH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Folder of model checkpoints in Hugging Face layout, one sub-folder per model.
    #[arg(long, env = "MODALBENCH_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,
    /// Concurrent CPU runs when no CUDA device is present.
    #[arg(long, env = "MODALBENCH_CPU_SLOTS", default_value_t = 1)]
    pub cpu_slots: usize,
    /// More folders datasets may be registered from (besides the data dir); repeat the flag, or
    /// separate folders with `:` in the variable.
    #[arg(
        long = "data-root",
        env = "MODALBENCH_DATA_ROOTS",
        value_delimiter = ':'
    )]
    pub data_roots: Vec<PathBuf>,
    /// Seconds a worker may go without reporting anything before it is taken for hung,
    /// stopped, and its run failed.
    #[arg(long, env = "MODALBENCH_WORKER_TIMEOUT", default_value_t = DEFAULT_WORKER_TIMEOUT)]
    pub worker_timeout: u64,
    /// Program started for each run (defaults to this binary's own `worker` subcommand).
    #[arg(long, env = "MODALBENCH_WORKER_EXE", hide = true)]
    pub worker_exe: Option<PathBuf>,
}

impl Settings {
    /// Settings for the given folders, defaults elsewhere (used by tests and embedding code).
    pub fn new(data_dir: impl Into<PathBuf>, models_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            models_dir: models_dir.into(),
            cpu_slots: 1,
            data_roots: Vec::new(),
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            worker_exe: None,
        }
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("modalbench.db")
    }

    /// Root of the registered-by-folder datasets.
    pub fn datasets_dir(&self) -> PathBuf {
        self.data_dir.join("datasets")
    }

    /// Folders datasets may be registered from: the data dir and the `--data-root`s.
    pub fn dataset_roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.data_dir.clone())
            .chain(self.data_roots.iter().cloned())
            .collect()
    }

    /// Where a run's outputs (fine-tuned checkpoint) go.
    pub fn run_dir(&self, run_id: i64) -> PathBuf {
        self.data_dir.join("runs").join(run_id.to_string())
    }
}

/// `serve` flags on top of [`Settings`].
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MODALBENCH_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Queue the demo study when the service starts (only if no run exists yet).
    #[arg(long)]
    pub demo: bool,
    /// Token every write must carry (`Authorization: Bearer <token>`, or a browser session
    /// from /login); reads stay open. Required to listen beyond loopback.
    #[arg(long, env = "MODALBENCH_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Listen on a non-loopback address without an API token (anyone who can reach the port
    /// can then queue and cancel runs).
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub settings: Settings,
}
