//! Service settings, from command-line flags and `MODALBENCH_*` environment variables.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Seconds a worker may stay silent before it is taken for hung (`--worker-timeout`).
pub const DEFAULT_WORKER_TIMEOUT: u64 = 1800;

/// Settings shared by `serve` and the commands that open the data dir.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Folder holding the database (`modalbench.db`), `datasets/` and run outputs (`runs/`).
    #[arg(long, env = "MODALBENCH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The database: the SQLite file `modalbench.db` in the data dir unless a URL names
    /// another (`sqlite:///path/to/file.db`, or `postgres://user:password@host:5432/name` for
    /// a PostgreSQL database that several servers may share).
    #[arg(
        long = "database",
        env = "MODALBENCH_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
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
    /// Start a worker ahead for each free slot, loaded and waiting for the slot's next run, so
    /// that a run starts without waiting for libtorch to load (`false`: start each worker as
    /// its run starts, and keep no idle worker's memory).
    #[arg(long, env = "MODALBENCH_WARM_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_workers: bool,
    /// Program started for each run (default: `modalbench-worker` beside this binary).
    #[arg(long, env = WORKER_EXE_ENV, hide = true)]
    pub worker_exe: Option<PathBuf>,
    /// Where runs execute: worker processes on this machine's slots, or Slurm jobs (from
    /// `serve --executor` and the configuration file).
    #[arg(skip)]
    pub executor: Executor,
}

impl Settings {
    /// Settings for the given folders, defaults elsewhere (used by tests and embedding code).
    pub fn new(data_dir: impl Into<PathBuf>, models_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            database: None,
            models_dir: models_dir.into(),
            cpu_slots: 1,
            data_roots: Vec::new(),
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            warm_workers: true,
            worker_exe: None,
            executor: Executor::Local,
        }
    }

    /// The program the runs' workers are: `--worker-exe`, else [`default_worker_exe`].
    pub fn worker_exe(&self) -> Result<PathBuf> {
        match &self.worker_exe {
            Some(p) => Ok(p.clone()),
            None => default_worker_exe(),
        }
    }

    /// The SQLite database file the data dir holds (the database unless `--database` names
    /// another).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("modalbench.db")
    }

    /// The database's URL: `--database`, else the data dir's SQLite file.
    pub fn database_url(&self) -> Result<String> {
        match &self.database {
            Some(url) => Ok(url.clone()),
            None => crate::store::sqlite_url(&self.database_path()),
        }
    }

    /// Opens the store (see [`Settings::database_url`]).
    pub async fn open_store(&self) -> Result<crate::store::Store> {
        crate::store::Store::connect(&self.database_url()?).await
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

    /// The folder of the runs' outputs: the data dir's `runs/`, or with the Slurm executor
    /// its shared `runs_dir` where one is configured.
    pub fn runs_dir(&self) -> PathBuf {
        match &self.executor {
            Executor::Slurm(s) => s.runs_dir.clone(),
            Executor::Local => None,
        }
        .unwrap_or_else(|| self.data_dir.join("runs"))
    }

    /// Where a run's outputs (fine-tuned checkpoint) go.
    pub fn run_dir(&self, run_id: i64) -> PathBuf {
        self.runs_dir().join(run_id.to_string())
    }
}

/// File name of the binary that runs models.
pub const WORKER_BIN: &str = "modalbench-worker";

/// The variable naming another worker program (`--worker-exe`).
pub const WORKER_EXE_ENV: &str = "MODALBENCH_WORKER_EXE";

/// `modalbench-worker` beside the running binary, unless `MODALBENCH_WORKER_EXE` names
/// another program.
pub fn default_worker_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(WORKER_EXE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating the running binary")?;
    Ok(me.with_file_name(WORKER_BIN))
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
    /// Where runs execute: `local` worker processes (the default) or `slurm` jobs (configured
    /// in the `[executor.slurm]` section of `--config`). Overrides the file's `kind`.
    #[arg(long, env = "MODALBENCH_EXECUTOR", value_enum)]
    pub executor: Option<ExecutorKind>,
    /// A TOML configuration file (its `[executor]` section: see the README's "Running on a
    /// cluster").
    #[arg(long, env = "MODALBENCH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

impl ServeArgs {
    /// The settings with the executor the flags and the configuration file name.
    pub fn resolved_settings(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(path) => ConfigFile::read(path)?,
            None => ConfigFile::default(),
        };
        let mut settings = self.settings.clone();
        settings.executor = file.executor.resolve(self.executor)?;
        Ok(settings)
    }
}

/// The kinds of executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Worker processes on this machine, one per device slot.
    Local,
    /// One Slurm batch job per run.
    Slurm,
}

/// Where runs execute.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    /// Worker processes on this machine's device slots.
    #[default]
    Local,
    /// Slurm batch jobs.
    Slurm(Box<SlurmSettings>),
}

/// The configuration file (`serve --config FILE`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub executor: ExecutorSection,
}

/// `[executor]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// `local` or `slurm`.
    pub kind: Option<ExecutorKind>,
    /// `[executor.slurm]`.
    pub slurm: Option<SlurmSettings>,
}

impl ConfigFile {
    /// Reads and checks a configuration file (at most 1 MiB).
    pub fn read(path: &Path) -> Result<ConfigFile> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            bail!("{}: not a regular file of at most 1 MiB", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

impl ExecutorSection {
    /// The executor, `kind` (from the flag) overriding the file's.
    pub fn resolve(self, kind: Option<ExecutorKind>) -> Result<Executor> {
        match kind.or(self.kind).unwrap_or(ExecutorKind::Local) {
            ExecutorKind::Local => Ok(Executor::Local),
            ExecutorKind::Slurm => {
                let slurm = self.slurm.unwrap_or_default();
                slurm.check()?;
                Ok(Executor::Slurm(Box::new(slurm)))
            }
        }
    }
}

/// The `[executor.slurm]` section of the configuration file: how jobs are submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmSettings {
    /// `--partition` of every job (unset: the cluster's default partition).
    pub partition: Option<String>,
    /// `--account` to charge.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time`, the job's time limit (`HH:MM:SS`, `D-HH:MM`, minutes, ...).
    pub time: Option<String>,
    /// `--cpus-per-task`: the worker's CPU threads.
    pub cpus_per_task: Option<u32>,
    /// `--mem` (`32G`, ...).
    pub mem: Option<String>,
    /// Ask for the run's `gpus` as `--gres=gpu:N` (off for CPU-only clusters).
    pub gres: bool,
    /// The most `gpus` one run may ask for (a request beyond it is a 422).
    pub max_gpus: u32,
    /// Runs handed to Slurm at once (the service's share of the cluster queue).
    pub max_jobs: usize,
    /// Where the nodes reach this service (default: the address it listens on, with the
    /// machine's host name for a wildcard address).
    pub server_url: Option<String>,
    /// Shared folder for the runs' tickets, job output and checkpoints (default: the data
    /// dir's `runs/`).
    pub runs_dir: Option<PathBuf>,
    /// The `modalbench-worker` binary as the nodes see it (default: the one beside this
    /// service's binary).
    pub worker_exe: Option<PathBuf>,
    /// Folder of `sbatch`, `squeue`, `scontrol`, `scancel` and `sacct` (default: `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Seconds between two looks at the cluster's queue.
    pub poll_seconds: f64,
    /// More `sbatch` arguments, each one argument (`--constraint=a100`, `--exclusive`).
    pub sbatch_args: Vec<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            partition: None,
            account: None,
            qos: None,
            time: None,
            cpus_per_task: None,
            mem: None,
            gres: true,
            max_gpus: 8,
            max_jobs: 256,
            server_url: None,
            runs_dir: None,
            worker_exe: None,
            bin_dir: None,
            poll_seconds: 2.0,
            sbatch_args: Vec::new(),
        }
    }
}

impl SlurmSettings {
    /// Checks what would otherwise fail at the first submission.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("time", &self.time),
            ("mem", &self.mem),
        ] {
            if let Some(v) = v
                && (v.is_empty()
                    || !v
                        .chars()
                        .all(|c| crate::runs::options::Name::allows(c) || c == ','))
            {
                bail!("[executor.slurm] {name} = {v:?}: letters, digits and `_-.:,+` only");
            }
        }
        if !(self.poll_seconds > 0.05 && self.poll_seconds <= 600.0) {
            bail!("[executor.slurm] poll_seconds must lie in (0.05, 600]");
        }
        if self.max_jobs == 0 {
            bail!("[executor.slurm] max_jobs must be at least 1");
        }
        if let Some(a) = self.sbatch_args.iter().find(|a| !a.starts_with('-')) {
            bail!(
                "[executor.slurm] sbatch_args: {a:?} is not an option (the script is the service's)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_names_the_executor_and_the_flag_overrides_it() {
        let file: ConfigFile = toml::from_str(
            r#"
            [executor]
            kind = "slurm"
            [executor.slurm]
            partition = "gpu"
            account = "vision-lab"
            time = "12:00:00"
            cpus_per_task = 8
            mem = "64G"
            sbatch_args = ["--constraint=a100"]
            "#,
        )
        .unwrap();
        let Executor::Slurm(s) = file.executor.clone().resolve(None).unwrap() else {
            panic!("not slurm")
        };
        assert_eq!(s.partition.as_deref(), Some("gpu"));
        assert_eq!(s.cpus_per_task, Some(8));
        assert!(s.gres, "GPUs are asked for unless turned off");
        assert_eq!(
            file.executor.resolve(Some(ExecutorKind::Local)).unwrap(),
            Executor::Local
        );
        let unknown = toml::from_str::<ConfigFile>("[executor.slurm]\npartitoin = \"gpu\"\n");
        assert!(unknown.unwrap_err().to_string().contains("partitoin"));
        let bad = toml::from_str::<ConfigFile>(
            "[executor]\nkind = \"slurm\"\n[executor.slurm]\nqos = \"a b\"\n",
        )
        .unwrap();
        assert!(bad.executor.resolve(None).is_err());
    }
}
