//! The Slurm executor: each claimed run becomes one `sbatch` job whose script runs
//! `modalbench worker --ticket FILE` on the node it gets. The worker reports its events to the
//! service over HTTP with a token made for that attempt alone ([`crate::worker::report`]); the
//! service follows the job with `squeue` (one call for its jobs every `poll_seconds`, and one
//! for the pending jobs of their partitions while some wait) and
//! `scontrol show job` once a job ends, cancels with `scancel`, and requeues a run whose job
//! was lost to the cluster (`NODE_FAIL`, `PREEMPTED`, `TIMEOUT`, `BOOT_FAIL`, `DEADLINE`, a
//! worker killed by a signal, a job that vanished) as a new attempt that resumes from its last
//! checkpoint in the shared runs folder.
//!
//! The runs folder (`runs_dir`), the models and the datasets must be visible to the nodes at
//! the same paths as to the service (a shared file system), and the nodes must reach the
//! service at `server_url`.

use super::Scheduler;
use super::supervisor::Outcome;
use crate::config::SlurmSettings;
use crate::protocol::{JobSpec, WorkerTicket};
use crate::runs::QueueConfig;
use crate::runs::options::Name;
use crate::store::cluster::{JobState, WorkerOutcome, token_hash};
use crate::store::runs::{Run, RunStatus};
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{Notify, watch};

/// Job states after which a job will not run on: the run is requeued as a new attempt, unless
/// its worker reported an end.
const LOST: &[&str] = &[
    "NODE_FAIL",
    "PREEMPTED",
    "TIMEOUT",
    "BOOT_FAIL",
    "DEADLINE",
    "VANISHED",
];
/// Job states that end a job.
const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "TIMEOUT",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
    "VANISHED",
];

/// Whether a state (Slurm's, or `VANISHED` for a job the cluster forgot) ends a job.
pub fn ended(state: &str) -> bool {
    ENDED.contains(&state)
}

/// The Slurm executor: submission, the queue monitor, cancellation.
pub struct Slurm {
    pub settings: SlurmSettings,
    server_url: OnceLock<String>,
    /// Jobs to follow.
    watched: Mutex<HashSet<String>>,
    /// What the last look at the queue said of the followed jobs.
    states: watch::Sender<Arc<HashMap<String, JobState>>>,
    /// Wakes the monitor early (a job was just submitted).
    poke: Notify,
}

impl Slurm {
    /// The executor for `settings`.
    pub fn new(settings: SlurmSettings) -> Slurm {
        Slurm {
            settings,
            server_url: OnceLock::new(),
            watched: Mutex::new(HashSet::new()),
            states: watch::Sender::new(Arc::new(HashMap::new())),
            poke: Notify::new(),
        }
    }

    /// Sets where workers report, once the service knows the address it listens on.
    pub fn set_listening(&self, addr: std::net::SocketAddr) {
        let url = self.settings.server_url.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                let host = crate::store::hostname();
                format!("http://{host}:{}", addr.port())
            } else {
                format!("http://{addr}")
            }
        });
        let _ = self.server_url.set(url.trim_end_matches('/').to_string());
    }

    fn command(&self, name: &str) -> Command {
        let program = match &self.settings.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        };
        let mut cmd = Command::new(program);
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs a Slurm command; its stdout, or an error with its stderr.
    async fn output(&self, name: &str, args: &[String]) -> Result<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            self.command(name).args(args).output(),
        )
        .await
        .with_context(|| format!("`{name}` did not answer within 60 s"))?
        .with_context(|| format!("running `{name}`"))?;
        if !out.status.success() {
            bail!(
                "`{name} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `sbatch` arguments of a run's job (before the script): the service's settings,
    /// with the run's own `slurm_*` options in their place where it sets them.
    pub fn sbatch_args(
        &self,
        run_id: i64,
        gpus: u32,
        queue: &QueueConfig,
        dir: &Path,
    ) -> Vec<String> {
        let mut s = self.settings.clone();
        let name = |n: Option<Name>, default: Option<String>| n.map(|n| n.to_string()).or(default);
        s.partition = name(queue.slurm_partition, s.partition);
        s.account = name(queue.slurm_account, s.account);
        s.qos = name(queue.slurm_qos, s.qos);
        s.time = queue.slurm_time_limit.map(|m| m.to_string()).or(s.time);
        s.mem = queue.slurm_mem_gb.map(|g| format!("{g}G")).or(s.mem);
        s.cpus_per_task = queue.slurm_cpus_per_task.or(s.cpus_per_task);
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=modalbench-run-{run_id}"),
            format!("--output={}", dir.join("slurm-%j.out").display()),
            format!("--chdir={}", dir.display()),
            // the node's worker needs nothing of the service's environment but what the
            // script sets; Slurm's own variables are always there
            "--export=NONE".to_string(),
            "--ntasks=1".to_string(),
        ];
        let opt = |flag: &str, v: &Option<String>| v.as_ref().map(|v| format!("--{flag}={v}"));
        args.extend(opt("partition", &s.partition));
        args.extend(opt("account", &s.account));
        args.extend(opt("qos", &s.qos));
        args.extend(opt("time", &s.time));
        args.extend(opt("mem", &s.mem));
        args.extend(s.cpus_per_task.map(|c| format!("--cpus-per-task={c}")));
        if s.gres {
            args.push(format!("--gres=gpu:{}", gpus.max(1)));
        }
        args.extend(s.sbatch_args.iter().cloned());
        args
    }

    /// Submits a run's attempt: writes its ticket (the job, the events URL and a new token;
    /// readable by the owner only) and job script into `run_dir/slurm` (the run's folder in
    /// the shared runs folder), then `sbatch`. Returns the job id and the token's hash.
    pub async fn submit(
        &self,
        run_id: i64,
        run_dir: &Path,
        attempt: i64,
        spec: JobSpec,
        queue: &QueueConfig,
    ) -> Result<(String, String)> {
        let gpus = spec.config.gpus;
        let url = self
            .server_url
            .get()
            .context("the service's address for workers is not known yet")?;
        let dir = run_dir.join("slurm");
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let token = crate::secret::random_hex(32);
        let ticket = WorkerTicket {
            spec,
            attempt,
            events_url: format!("{url}/api/v1/worker/runs/{run_id}/events"),
            token: token.clone(),
        };
        let ticket_path = dir.join(format!("ticket-{attempt}.json"));
        write_private(&ticket_path, &serde_json::to_vec_pretty(&ticket)?, 0o600).await?;
        let exe = match &self.settings.worker_exe {
            Some(p) => p.clone(),
            None => crate::config::default_worker_exe()?,
        };
        let script = format!(
            "#!/bin/sh\n# modalbench run {run_id}, attempt {attempt}\nexec {} worker --ticket {}\n",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&ticket_path.to_string_lossy())
        );
        let script_path = dir.join(format!("job-{attempt}.sh"));
        write_private(&script_path, script.as_bytes(), 0o700).await?;
        let mut args = self.sbatch_args(run_id, gpus, queue, &dir);
        args.push(script_path.to_string_lossy().into_owned());
        let out = self.output("sbatch", &args).await?;
        // `--parsable`: `<job id>[;<cluster>]`
        let job_id = out
            .trim()
            .split(';')
            .next()
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_'))
            .with_context(|| format!("sbatch answered {out:?}, not a job id"))?
            .to_string();
        self.watch(&job_id);
        Ok((job_id, token_hash(&token)))
    }

    /// Follows a job from now on.
    pub fn watch(&self, job_id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_string());
        self.poke.notify_one();
    }

    /// Stops following a job.
    pub fn unwatch(&self, job_id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
    }

    /// A receiver of the followed jobs' states after each look at the queue.
    pub fn states(&self) -> watch::Receiver<Arc<HashMap<String, JobState>>> {
        self.states.subscribe()
    }

    /// `scancel` of a job.
    pub async fn cancel(&self, job_id: &str) -> Result<()> {
        self.output("scancel", &[job_id.to_string()])
            .await
            .map(drop)
    }

    /// The last `n` lines of a job's output file (its worker's stderr) in the run's folder.
    pub async fn output_tail(run_dir: &Path, job_id: &str, n: usize) -> Vec<String> {
        let path = run_dir.join("slurm").join(format!("slurm-{job_id}.out"));
        let Ok(text) = read_tail(&path, 64 << 10).await else {
            return Vec::new();
        };
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Looks at the queue once: every followed job's state, pending jobs with their reason
    /// and place in their partition's queue, ended jobs with their exit code.
    pub async fn look(&self) -> Result<HashMap<String, JobState>> {
        let watched: Vec<String> = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if watched.is_empty() {
            return Ok(HashMap::new());
        }
        // our jobs, then (when some of them wait) the pending jobs of their partitions,
        // everyone's, for their place in the queue: two small answers rather than the whole
        // cluster's queue
        let format = "--format=%i|%T|%r|%N|%P|%Q".to_string();
        let ours = match self
            .output(
                "squeue",
                &[
                    "--noheader".into(),
                    "--states=all".into(),
                    format!("--jobs={}", watched.join(",")),
                    format.clone(),
                ],
            )
            .await
        {
            Ok(out) => out,
            // every one of them forgotten by the controller
            Err(e) if format!("{e:#}").contains("Invalid job id") => String::new(),
            Err(e) => return Err(e),
        };
        let mut rows = parse_squeue(&ours);
        let mut partitions: Vec<&str> = rows
            .iter()
            .filter(|r| r.state == "PENDING")
            .map(|r| r.partition.as_str())
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        if !partitions.is_empty() {
            let pending = self
                .output(
                    "squeue",
                    &[
                        "--noheader".into(),
                        "--states=PENDING".into(),
                        format!("--partition={}", partitions.join(",")),
                        format,
                    ],
                )
                .await?;
            let known: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
            let others: Vec<QueueRow> = parse_squeue(&pending)
                .into_iter()
                .filter(|r| !known.contains(&r.id))
                .collect();
            rows.extend(others);
        }
        let mut states = queue_states(&rows, &watched);
        for id in &watched {
            let known = states.get(id).map(|s| s.state.clone());
            match known {
                Some(state) if !ended(&state) => {}
                _ => {
                    // ended or forgotten by squeue: the controller's record, else accounting
                    let mut s = self
                        .ended_state(id)
                        .await
                        .unwrap_or_else(|| states.get(id).cloned().unwrap_or_default());
                    if s.state.is_empty() {
                        s.state = "VANISHED".into();
                    }
                    states.insert(id.clone(), s);
                }
            }
        }
        Ok(states)
    }

    /// An ended job's state from `scontrol show job` (while the controller remembers it), else
    /// from `sacct`.
    async fn ended_state(&self, job_id: &str) -> Option<JobState> {
        if let Ok(out) = self
            .output(
                "scontrol",
                &["show".into(), "job".into(), "-o".into(), job_id.into()],
            )
            .await
            && let Some(s) = parse_scontrol(&out)
        {
            return Some(s);
        }
        let out = self
            .output(
                "sacct",
                &[
                    "--noheader".into(),
                    "--parsable2".into(),
                    "-X".into(),
                    format!("--jobs={job_id}"),
                    "--format=State,ExitCode,NodeList".into(),
                ],
            )
            .await
            .ok()?;
        let line = out.lines().next()?;
        let mut f = line.split('|');
        let state = f.next()?.split_whitespace().next()?.to_string();
        Some(JobState {
            state,
            reason: None,
            position: None,
            exit_code: f.next().map(str::to_string),
            node: f.next().filter(|n| !n.is_empty()).map(str::to_string),
        })
    }

    /// The monitor: looks at the queue every `poll_seconds` while there are jobs to follow
    /// (at once after a submission) and publishes what it saw.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(this.settings.poll_seconds);
            loop {
                match this.look().await {
                    Ok(states) if !states.is_empty() => {
                        this.states.send_replace(Arc::new(states));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "looking at the Slurm queue failed"
                    ),
                }
                tokio::select! {
                    _ = this.poke.notified() => {
                        // a burst of submissions is looked at together
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

/// One row of `squeue --format=%i|%T|%r|%N|%P|%Q`.
#[derive(Debug, Clone, PartialEq)]
struct QueueRow {
    id: String,
    state: String,
    reason: String,
    node: String,
    partition: String,
    priority: u64,
}

fn parse_squeue(out: &str) -> Vec<QueueRow> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 6).then(|| QueueRow {
                id: f[0].to_string(),
                state: f[1].to_string(),
                reason: f[2].to_string(),
                node: f[3].to_string(),
                partition: f[4].to_string(),
                priority: f[5].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// The followed jobs' states from the queue: a pending job's place is 1 + the pending jobs of
/// its partition ahead of it (higher priority, or equal priority and submitted earlier).
fn queue_states(rows: &[QueueRow], watched: &[String]) -> HashMap<String, JobState> {
    let job_number = |id: &str| {
        id.split(['_', '+'])
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut out = HashMap::new();
    for id in watched {
        let Some(r) = rows.iter().find(|r| &r.id == id) else {
            continue;
        };
        let position = (r.state == "PENDING").then(|| {
            let ahead = rows
                .iter()
                .filter(|o| o.state == "PENDING" && o.partition == r.partition && o.id != r.id)
                .filter(|o| {
                    o.priority > r.priority
                        || (o.priority == r.priority && job_number(&o.id) < job_number(&r.id))
                })
                .count();
            ahead as i64 + 1
        });
        let some = |s: &str| (!s.is_empty() && s != "None" && s != "(null)").then(|| s.to_string());
        out.insert(
            id.clone(),
            JobState {
                state: r.state.clone(),
                reason: some(&r.reason),
                position,
                node: some(&r.node),
                exit_code: None,
            },
        );
    }
    out
}

/// `scontrol show job -o` of one job: its state, reason, node and exit code.
fn parse_scontrol(out: &str) -> Option<JobState> {
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .filter(|v| !v.is_empty() && *v != "None" && *v != "(null)")
            .map(str::to_string)
    };
    Some(JobState {
        state: field("JobState")?,
        reason: field("Reason"),
        position: None,
        node: field("NodeList"),
        exit_code: field("ExitCode"),
    })
}

/// Whether an exit code `code:signal` says the job was killed by a signal.
fn killed_by_signal(exit_code: Option<&str>) -> Option<i32> {
    let sig: i32 = exit_code?.split(':').nth(1)?.parse().ok()?;
    (sig != 0).then_some(sig)
}

/// How a run whose job ended goes on: requeued (`Interrupted`), failed, or cancelled.
pub(super) fn outcome_of_end(s: &JobState, cancelled: bool, tail: &[String]) -> Outcome {
    let exit = s.exit_code.as_deref().unwrap_or("?");
    if cancelled {
        return Outcome::ended(RunStatus::Cancelled, Some("cancelled by user".into()));
    }
    if LOST.contains(&s.state.as_str()) {
        let on = s
            .node
            .as_deref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        return Outcome::ended(
            RunStatus::Interrupted,
            Some(format!(
                "the Slurm job ended {}{on} (exit code {exit}); the run is requeued and resumes from its last checkpoint",
                s.state
            )),
        );
    }
    if s.state != "CANCELLED"
        && let Some(sig) = killed_by_signal(s.exit_code.as_deref())
    {
        return Outcome::ended(
            RunStatus::Interrupted,
            Some(format!(
                "the worker was killed by signal {sig} (Slurm job {}, exit code {exit}); the run is requeued and resumes from its last checkpoint",
                s.state
            )),
        );
    }
    let mut msg = if s.state == "CANCELLED" {
        format!("the Slurm job was cancelled outside the service (exit code {exit})")
    } else {
        format!(
            "the Slurm job ended {} (exit code {exit}) without its worker reporting a result",
            s.state
        )
    };
    if !tail.is_empty() {
        msg.push_str("; last lines of its output:\n");
        msg.push_str(&tail.join("\n"));
    }
    Outcome::ended(
        if s.state == "CANCELLED" {
            RunStatus::Cancelled
        } else {
            RunStatus::Failed
        },
        Some(msg),
    )
}

/// The run's end from what its worker reported.
fn worker_end(outcome: WorkerOutcome) -> Outcome {
    match outcome {
        WorkerOutcome::Finished(summary) => Outcome {
            status: RunStatus::Succeeded,
            error: None,
            summary: Some(*summary),
        },
        WorkerOutcome::Failed(e) => Outcome::failed(e),
    }
}

/// Runs `run` as a Slurm job to its end: submits it (or, after a restart of the service,
/// follows the job it already has), follows it, and says how it ended. `None`: the service
/// is shutting down and leaves the job running (it follows it again when it starts).
pub(super) async fn execute(
    s: &Scheduler,
    slurm: &Arc<Slurm>,
    run: &Run,
    cancel: &Notify,
    reported_end: &Notify,
) -> Result<Option<Outcome>> {
    let store = &s.inner.store;
    let attempt = run.attempts.max(1);
    let run_dir = s.inner.settings.run_dir(run.id);
    let existing = store
        .cluster_job(run.id)
        .await?
        .filter(|j| j.attempt == attempt);
    let job_id = match existing {
        Some(j) => {
            slurm.watch(&j.job_id);
            j.job_id
        }
        None => {
            let resolved = super::supervisor::resolved(run)?;
            let gpus = resolved.config.gpus;
            // the device and threads are the node's, set there
            let spec = JobSpec::new(
                run.id,
                &resolved,
                crate::protocol::Device::Cpu,
                1,
                run_dir.join("checkpoint"),
                Some(s.inner.settings.runs_dir().join("cache")),
            );
            let (job_id, hash) = slurm
                .submit(run.id, &run_dir, attempt, spec, &resolved.queue)
                .await?;
            store
                .insert_cluster_job(run.id, attempt, &job_id, &hash)
                .await?;
            let gres = if slurm.settings.gres {
                format!(", gres/gpu:{}", gpus.max(1))
            } else {
                String::new()
            };
            store
                .append_logs(
                    run.id,
                    &[(
                        "system",
                        format!("attempt {attempt} submitted to Slurm as job {job_id}{gres}"),
                    )],
                )
                .await?;
            tracing::info!(run_id = run.id, job_id, attempt, "submitted to Slurm");
            job_id
        }
    };
    let job = AttemptJob {
        run_id: run.id,
        run_dir: &run_dir,
        attempt,
        job_id: &job_id,
    };
    let outcome = follow(s, slurm, &job, cancel, reported_end).await;
    let still_running = store
        .cluster_job(run.id)
        .await
        .ok()
        .flatten()
        .is_some_and(|j| j.attempt == attempt && !ended(&j.state));
    match &outcome {
        // the worker reported its end and is exiting: the job's last state is kept for the run
        // page once the queue shows it
        Ok(Some(_)) if still_running => {
            tokio::spawn(settle(
                slurm.clone(),
                store.clone(),
                run.id,
                attempt,
                job_id,
            ));
        }
        _ => slurm.unwatch(&job_id),
    }
    outcome
}

/// Follows a job whose run has ended until the queue shows the job's end too (at most ten
/// minutes), keeping its last state.
async fn settle(
    slurm: Arc<Slurm>,
    store: crate::store::Store,
    run_id: i64,
    attempt: i64,
    job_id: String,
) {
    let mut states = slurm.states();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, states.changed()).await {
        let seen = states.borrow_and_update().get(&job_id).cloned();
        if let Some(state) = seen {
            let _ = store.update_cluster_job(run_id, attempt, &state).await;
            if ended(&state.state) {
                break;
            }
        }
    }
    slurm.unwatch(&job_id);
}

/// The job of one attempt of a run.
struct AttemptJob<'a> {
    run_id: i64,
    /// The run's folder in the shared runs folder.
    run_dir: &'a Path,
    attempt: i64,
    job_id: &'a str,
}

/// Follows a run's job until the run ends. The store is read for what the worker reported
/// only when that may have changed: at the start (a restarted service), when the event
/// endpoint says an end arrived, and once the job has ended; not at every look at the queue.
async fn follow(
    s: &Scheduler,
    slurm: &Slurm,
    job: &AttemptJob<'_>,
    cancel: &Notify,
    reported_end: &Notify,
) -> Result<Option<Outcome>> {
    let &AttemptJob {
        run_id,
        run_dir,
        attempt,
        job_id,
    } = job;
    let store = &s.inner.store;
    let mut states = slurm.states();
    let mut draining = s.draining();
    draining.mark_changed();
    let job = store
        .cluster_job(run_id)
        .await?
        .filter(|j| j.attempt == attempt);
    let mut cancelled = job.as_ref().is_some_and(|j| j.cancel_requested);
    let mut reported = job.and_then(|j| j.outcome());
    let mut last: Option<JobState> = None;
    loop {
        // what the worker said of its end comes first: the job may still be exiting
        if let Some(o) = reported.take()
            && !cancelled
        {
            return Ok(Some(worker_end(o)));
        }
        tokio::select! {
            _ = cancel.notified(), if !cancelled => {
                cancelled = true;
                store.mark_cluster_cancel(run_id, attempt).await?;
                store.append_logs(run_id, &[("system", format!("cancel requested: scancel {job_id}"))]).await?;
                if let Err(e) = slurm.cancel(job_id).await {
                    tracing::warn!(run_id, job_id, error = format!("{e:#}"), "scancel failed");
                }
                continue;
            }
            _ = reported_end.notified() => {
                reported = stored_outcome(store, run_id, attempt).await?;
                continue;
            }
            changed = states.changed() => {
                if changed.is_err() {
                    bail!("the Slurm monitor stopped");
                }
            }
            _ = draining.changed() => {
                if *draining.borrow_and_update() {
                    tracing::info!(run_id, job_id, "the service stops; the Slurm job runs on and is followed again at the next start");
                    return Ok(None);
                }
                continue;
            }
        }
        let seen = states.borrow_and_update().get(job_id).cloned();
        let Some(state) = seen else { continue };
        if last.as_ref() != Some(&state) {
            store.update_cluster_job(run_id, attempt, &state).await?;
            if last.as_ref().map(|l| &l.state) != Some(&state.state) {
                let mut line = format!("Slurm job {job_id}: {}", state.state);
                if let Some(r) = &state.reason {
                    line.push_str(&format!(" ({r})"));
                }
                if let Some(n) = &state.node {
                    line.push_str(&format!(" on {n}"));
                }
                store.append_logs(run_id, &[("system", line)]).await?;
            }
            last = Some(state.clone());
        }
        if ended(&state.state) {
            // a last look: events the worker sent just before it exited
            if let Some(o) = stored_outcome(store, run_id, attempt).await?
                && !cancelled
            {
                return Ok(Some(worker_end(o)));
            }
            let tail = Slurm::output_tail(run_dir, job_id, 20).await;
            return Ok(Some(outcome_of_end(&state, cancelled, &tail)));
        }
    }
}

/// What the worker of a run's attempt reported at its end, if it did.
async fn stored_outcome(
    store: &crate::store::Store,
    run_id: i64,
    attempt: i64,
) -> Result<Option<WorkerOutcome>> {
    Ok(store
        .cluster_job(run_id)
        .await?
        .filter(|j| j.attempt == attempt)
        .and_then(|j| j.outcome()))
}

/// Writes a file readable (and for 0o700 runnable) by its owner only, through a temporary
/// name renamed into place.
async fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let (tmp2, bytes) = (tmp.clone(), bytes.to_vec());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let _ = std::fs::remove_file(&tmp2);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp2)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })
    .await??;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// The last `max` bytes of a file.
async fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)))
        .await?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUEUE: &str = "\
12|RUNNING|None|mbnode|gpu|4294901759
13|PENDING|Resources||gpu|4294901758
14|PENDING|Priority||gpu|4294901758
15|PENDING|Priority||cpu|100
9|PENDING|Priority||gpu|4294901760
11|COMPLETED|None|mbnode|gpu|4294901759
";

    #[test]
    fn pending_jobs_are_placed_by_priority_then_age_within_their_partition() {
        let rows = parse_squeue(SQUEUE);
        assert_eq!(rows.len(), 6);
        let watched: Vec<String> = ["12", "13", "14", "15", "11", "99"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let st = queue_states(&rows, &watched);
        assert_eq!(st["12"].state, "RUNNING");
        assert_eq!(st["12"].node.as_deref(), Some("mbnode"));
        assert_eq!(st["12"].reason, None);
        assert_eq!(st["12"].position, None);
        // job 9 has the higher priority; 13 is older than 14 at the same priority
        assert_eq!(st["13"].position, Some(2));
        assert_eq!(st["13"].reason.as_deref(), Some("Resources"));
        assert_eq!(st["14"].position, Some(3));
        // alone in its partition
        assert_eq!(st["15"].position, Some(1));
        assert_eq!(st["11"].state, "COMPLETED");
        assert!(!st.contains_key("99"));
    }

    #[test]
    fn scontrol_gives_the_end_of_a_job() {
        let out = "JobId=5 JobName=modalbench-run-3 UserId=root(0) JobState=FAILED \
                   Reason=NonZeroExitCode Dependency=(null) ExitCode=0:9 NodeList=mbnode \
                   BatchHost=mbnode\n";
        let s = parse_scontrol(out).unwrap();
        assert_eq!(s.state, "FAILED");
        assert_eq!(s.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(s.exit_code.as_deref(), Some("0:9"));
        assert_eq!(s.node.as_deref(), Some("mbnode"));
        assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified").is_none());
    }

    fn job(state: &str, exit: &str) -> JobState {
        JobState {
            state: state.into(),
            exit_code: Some(exit.into()),
            ..JobState::default()
        }
    }

    #[test]
    fn lost_and_killed_jobs_are_requeued_failed_ones_fail_and_cancels_are_kept() {
        for lost in ["NODE_FAIL", "PREEMPTED", "TIMEOUT", "VANISHED"] {
            let o = outcome_of_end(&job(lost, "0:0"), false, &[]);
            assert_eq!(o.status, RunStatus::Interrupted, "{lost}");
        }
        let killed = outcome_of_end(&job("FAILED", "0:9"), false, &[]);
        assert_eq!(killed.status, RunStatus::Interrupted);
        assert!(killed.error.unwrap().contains("signal 9"));
        let failed = outcome_of_end(&job("FAILED", "1:0"), false, &["boom".into()]);
        assert_eq!(failed.status, RunStatus::Failed);
        assert!(failed.error.unwrap().ends_with("boom"));
        let ours = outcome_of_end(&job("CANCELLED", "0:15"), true, &[]);
        assert_eq!(ours.status, RunStatus::Cancelled);
        assert_eq!(ours.error.as_deref(), Some("cancelled by user"));
        let theirs = outcome_of_end(&job("CANCELLED", "0:15"), false, &[]);
        assert_eq!(theirs.status, RunStatus::Cancelled);
        assert!(theirs.error.unwrap().contains("outside the service"));
    }

    #[test]
    fn settings_refuse_what_would_reach_sbatch_as_something_else() {
        let mut s = SlurmSettings::default();
        assert!(s.check().is_ok());
        s.partition = Some("gpu --wrap=id".into());
        assert!(s.check().is_err());
        s.partition = Some("gpu".into());
        s.sbatch_args = vec!["/tmp/other.sh".into()];
        assert!(s.check().is_err());
        s.sbatch_args = vec!["--constraint=a100".into()];
        s.time = Some("1-12:00:00".into());
        assert!(s.check().is_ok());
        let slurm = Slurm::new(s);
        let dir = Path::new("/shared/runs/7/slurm");
        let args = slurm.sbatch_args(7, 2, &QueueConfig::default(), dir);
        assert!(args.contains(&"--gres=gpu:2".to_string()), "{args:?}");
        assert!(args.contains(&"--partition=gpu".to_string()), "{args:?}");
        assert!(args.contains(&"--time=1-12:00:00".to_string()), "{args:?}");
        assert_eq!(args.last().unwrap(), "--constraint=a100");
        // a run's own options take the settings' place
        let run = QueueConfig {
            slurm_partition: Some("debug".parse().unwrap()),
            slurm_time_limit: Some(30),
            slurm_mem_gb: Some(16),
            ..QueueConfig::default()
        };
        let args = slurm.sbatch_args(7, 1, &run, dir);
        for want in [
            "--partition=debug",
            "--time=30",
            "--mem=16G",
            "--gres=gpu:1",
        ] {
            assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
        }
        assert!(!args.iter().any(|a| a == "--partition=gpu"), "{args:?}");
    }
}
