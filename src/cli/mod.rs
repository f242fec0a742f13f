//! The command line, shared by the two binaries. `modalbench` runs the service and the
//! commands over the store and the data; it does not load libtorch, so it starts in
//! milliseconds and stays small while idle. Whatever runs a model (`train`, `forward`, the
//! step and loader benchmarks, the service's workers) is `modalbench-worker`'s, which
//! `modalbench` hands such a command to, with the same arguments ([`exec_worker`]).

pub mod torch;

use crate::config::{ServeArgs, Settings};
use crate::models::registry::Registry;
use crate::protocol::Device;
use crate::runs::TrainOptions;
use crate::{app, data, http, queue};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "modalbench",
    version,
    about = "Fine-tune text and text+image classifiers, compare them, and measure what the image buys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the web service and the worker pool.
    Serve(ServeArgs),
    /// Fine-tune one model on one dataset in this process, with a progress bar.
    Train(TrainArgs),
    /// Generate the demo datasets (demo-news, demo-memes).
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// List the checkpoints under the models folder.
    Models {
        #[command(flatten)]
        settings: Settings,
    },
    /// Run a checkpoint's forward pass (eval mode) on input tensors; write its outputs.
    Forward {
        /// Checkpoint folder in Hugging Face layout.
        #[arg(long)]
        checkpoint: PathBuf,
        /// safetensors file with `input_ids` (and optionally `attention_mask`,
        /// `token_type_ids`, `pixel_values`, `pixel_mask`).
        #[arg(long)]
        inputs: PathBuf,
        /// safetensors file for the outputs (`last_hidden_state`, `pooler_output`, `logits`, ...).
        #[arg(long)]
        output: PathBuf,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: Device,
    },
    /// Print benchmark figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run one job read from stdin (started by the service), or from a ticket file (started
    /// by a cluster scheduler's job script; events then go to the service over HTTP).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        ticket: Option<PathBuf>,
    },
    /// Write the built-in presets missing from a models folder (run by the service at start).
    #[command(hide = true)]
    Presets {
        #[arg(long)]
        models_dir: PathBuf,
    },
    /// Print the number of CUDA devices libtorch sees (run by the service at start).
    #[command(hide = true)]
    Devices,
    /// Inspect checkpoint folders as the models list shows them; one JSON object a line (run
    /// by the service, whose registry asks).
    #[command(hide = true)]
    InspectModels { dirs: Vec<PathBuf> },
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the demo datasets into a folder.
    Demo {
        #[arg(long, default_value = "./data/datasets")]
        out: PathBuf,
        #[arg(long, default_value_t = app::DEMO_SEED)]
        seed: u64,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time leaderboard queries over a database of many finished runs.
    Leaderboard {
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Metric points stored per run (the leaderboard must not read them).
        #[arg(long, default_value_t = 50)]
        points_per_run: usize,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
    /// Write a data folder of many finished runs and metric points for `serve --data-dir` to
    /// serve (pages and API at scale; `make bench`'s `scale` section).
    Fill {
        /// The data folder to fill (its database is created or added to).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Training-loss points in all.
        #[arg(long, default_value_t = 10_000_000)]
        points: usize,
        /// Of those, the first run's (the long curve).
        #[arg(long, default_value_t = 100_000)]
        long_points: usize,
    },
    /// What the Slurm executor's worker-event endpoint absorbs from simulated workers
    /// (events/s, batches/s, latency).
    WorkerEvents {
        /// Running runs with cluster jobs (one simulated worker each).
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Client threads the workers' requests are spread over.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Metric events a batch.
        #[arg(long, default_value_t = 20)]
        batch_events: usize,
        /// Batches each run sends.
        #[arg(long, default_value_t = 10)]
        batches: usize,
        /// The store's database (default: a SQLite file in a temporary folder); a
        /// `postgres://` URL measures PostgreSQL (an empty database).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Throughput of the image loader alone on a dataset's train split (examples/s).
    Loader {
        /// Dataset folder.
        #[arg(long)]
        dataset: PathBuf,
        /// Model name under the models dir whose preprocessing is used.
        #[arg(long, default_value = "fusion-minilm")]
        model: String,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[command(flatten)]
        settings: Settings,
    },
    /// Training-step throughput of a checkpoint on random inputs (forward+backward samples/s).
    TrainStep {
        /// Model name under the models dir.
        #[arg(long, default_value = "minilm-l6")]
        model: String,
        #[arg(long, default_value_t = 16)]
        batch_size: i64,
        #[arg(long, default_value_t = 128)]
        seq_len: i64,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// `no`, `fp16` or `bf16` autocast.
        #[arg(long, default_value = "no")]
        mixed_precision: crate::runs::MixedPrecision,
        /// Recompute encoder layers in the backward pass.
        #[arg(long)]
        gradient_checkpointing: bool,
        /// Time evaluation steps (no gradients) instead of training steps.
        #[arg(long)]
        eval: bool,
        /// CPU threads (libtorch's and rayon's); default: libtorch's default, every core.
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model name (a folder under the models dir).
    #[arg(long)]
    pub model: String,
    /// A dataset the service knows by name (`demo-memes`), or a dataset folder in any layout
    /// it registers (see the README).
    #[arg(long)]
    pub dataset: String,
    #[command(flatten)]
    pub options: TrainOptions,
    /// Where to write the checkpoints (`best/`, `last/`); default: the run's folder under the
    /// data dir, as for the service's runs.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Train without recording the run in the service's database.
    #[arg(long)]
    pub no_record: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    #[command(flatten)]
    pub settings: Settings,
}

impl Command {
    /// Whether the command runs a model, and so is `modalbench-worker`'s.
    pub fn runs_models(&self) -> bool {
        matches!(
            self,
            Command::Train(_)
                | Command::Forward { .. }
                | Command::Worker { .. }
                | Command::Presets { .. }
                | Command::Devices
                | Command::InspectModels { .. }
                | Command::Bench {
                    command: BenchCommand::TrainStep { .. } | BenchCommand::Loader { .. },
                }
        )
    }
}

/// `modalbench` hands a command that runs a model to `modalbench-worker` beside it (or the
/// program `MODALBENCH_WORKER_EXE` names), replacing this process with it.
pub fn exec_worker() -> ! {
    use std::os::unix::process::CommandExt;
    let exe = match crate::config::default_worker_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!(
        "error: starting {} (the part of modalbench that runs models): {e}",
        exe.display()
    );
    std::process::exit(1);
}

/// Logs to stderr: `RUST_LOG` filters; `MODALBENCH_LOG_FORMAT=json` writes one JSON object a
/// line (for log collectors), otherwise readable text.
pub fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("MODALBENCH_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
}

/// Runs a command that does not run a model (see [`Command::runs_models`]; those are
/// [`torch::run`]'s).
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Data {
            command: DataCommand::Demo { out, seed },
        } => data::demo::DEMOS.iter().try_for_each(|(name, write)| {
            write(&out, seed).map(|_| println!("wrote {}", out.join(name).display()))
        }),
        Command::Bench {
            command:
                BenchCommand::Leaderboard {
                    runs,
                    points_per_run,
                    repeats,
                },
        } => block_on(crate::bench::leaderboard(runs, points_per_run, repeats)),
        Command::Bench {
            command:
                BenchCommand::WorkerEvents {
                    runs,
                    clients,
                    batch_events,
                    batches,
                    database,
                },
        } => block_on(crate::bench::worker_events(
            runs,
            clients,
            batch_events,
            batches,
            database,
        )),
        Command::Bench {
            command:
                BenchCommand::Fill {
                    data_dir,
                    runs,
                    points,
                    long_points,
                },
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                let t = std::time::Instant::now();
                let filled =
                    rt.block_on(crate::bench::fill(&data_dir, runs, points, long_points))?;
                let (first, last) = (filled.runs[0], filled.runs[filled.runs.len() - 1]);
                println!(
                    "filled {} with {} runs (ids {first} to {last}) and {} metric points in \
                     {:.1}s; run {} has {long_points} points",
                    data_dir.display(),
                    filled.runs.len(),
                    filled.points,
                    t.elapsed().as_secs_f64(),
                    filled.long_run,
                );
                println!(
                    "first_run={first}\nlast_run={last}\nlong_run={}",
                    filled.long_run
                );
                Ok(())
            }),
        Command::Models { settings } => {
            let exe = settings.worker_exe()?;
            for m in Registry::with_program(settings.models_dir, exe).scan() {
                let status = m.problem.as_deref().unwrap_or("usable");
                println!(
                    "{:<20} {:<8} {:<11} {:>12} params  {status}",
                    m.name,
                    m.architecture.as_deref().unwrap_or("?"),
                    m.modality.map(|x| x.as_str()).unwrap_or("?"),
                    m.num_parameters
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into()),
                );
            }
            Ok(())
        }
        // the commands of [`Command::runs_models`]
        _ => anyhow::bail!("this command runs models: it is modalbench-worker's"),
    }
}

/// Runs a future to its end on a new multi-threaded runtime.
fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Runtime::new()?.block_on(f)
}

fn serve(args: ServeArgs) -> Result<()> {
    let token = args.api_token.clone().filter(|t| !t.is_empty());
    if !args.addr.ip().is_loopback() && token.is_none() && !args.insecure {
        anyhow::bail!(
            "refusing to serve on {} without an API token: anyone who can reach it could queue              and cancel runs. Give --api-token (or MODALBENCH_API_TOKEN), or --insecure to              serve it open anyway",
            args.addr
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let settings = args.resolved_settings()?;
            let slots = queue::slots::detect(settings.cpu_slots, &settings.worker_exe()?)?;
            let state = app::build(settings, slots).await?;
            if args.demo {
                let ids = app::queue_demo_study(&state).await?;
                if !ids.is_empty() {
                    tracing::info!(?ids, "queued the demo study");
                }
            }
            let listener = tokio::net::TcpListener::bind(args.addr)
                .await
                .with_context(|| format!("listening on {}", args.addr))?;
            let addr = listener.local_addr()?;
            state.scheduler.set_listening(addr);
            state.scheduler.spawn();
            // servers sharing a PostgreSQL database relay their live events to each other
            if state.store.engine() == crate::store::Engine::Postgres {
                tokio::spawn(crate::live::relay(
                    state.hub.clone(),
                    state.store.clone(),
                    state.settings.database_url()?,
                ));
            }
            println!(
                "modalbench is serving on http://{addr}/  (leaderboard: http://{addr}/leaderboard)"
            );
            let router = http::secured(state.clone(), http::auth::Auth::new(token));
            // SIGTERM (service managers, `docker stop`) or SIGINT (Ctrl-C): stop taking
            // requests and work, end the event streams, let running runs checkpoint and stop
            let signalled = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            };
            let hub = state.hub.clone();
            let scheduler = state.scheduler.clone();
            let stopping = async move {
                signalled.await;
                hub.close();
                let stopped = scheduler.shutdown().await;
                if !stopped.is_empty() {
                    tracing::info!(runs = ?stopped, "stopped running runs; they resume from their checkpoints at the next start");
                }
            };
            http::serve::serve(listener, router, stopping)
                .await
                .context("serving HTTP")?;
            println!("modalbench stopped");
            Ok(())
        })
}
