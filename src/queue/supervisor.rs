//! One running run: start its worker process, persist what it reports, and record how it
//! ended. Whatever the worker does (panic, abort, out-of-memory kill), only this run fails.
//!
//! Nothing is lost silently: a write to the store that fails (a full disk, a locked database)
//! is retried; if it still fails, the worker is stopped and the run ends `failed` with the
//! reason, and the server log says so.

use super::Scheduler;
use super::slots::{self, Slot};
use crate::live::LiveKind;
use crate::protocol::{Event, JobSpec, Summary};
use crate::store::metrics::NewPoint;
use crate::store::runs::{Run, RunStatus};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc};

/// Lines of stderr kept for the error message of a crashed worker.
const STDERR_TAIL: usize = 20;
/// How long a worker may take to checkpoint and stop when the service shuts down, before it
/// is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// How often buffered metric points and log lines are written.
const FLUSH_EVERY: Duration = Duration::from_millis(300);
/// Waits before the retries of a failed write to the store (about 4 s in all).
const RETRY_AFTER: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// How often the end of a run is written again after its retries failed.
const KEEP_TRYING: Duration = Duration::from_secs(10);

/// Runs `write` until it succeeds, retrying after each of [`RETRY_AFTER`]; the last error if
/// it never does.
async fn with_retries<T, F, Fut>(run_id: i64, what: &str, mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut waits = RETRY_AFTER.iter();
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::warn!(run_id, error = format!("{e:#}"), "{what} failed; retrying");
                    tokio::time::sleep(*wait).await;
                }
                None => {
                    return Err(e.context(format!("{what} failed {} times", RETRY_AFTER.len() + 1)));
                }
            },
        }
    }
}

enum Msg {
    Event(Event),
    Stdout(String),
    Stderr(String),
    /// A line longer than [`MAX_LINE`] on this stream: the worker is stopped.
    TooLong(&'static str),
}

/// Longest line read from a worker (a `predictions` event of a large split is the longest).
const MAX_LINE: usize = 64 << 20;

enum Line {
    Text(String),
    TooLong,
    End,
}

/// The next line of a worker's output, read at most [`MAX_LINE`] bytes at a time.
async fn bounded_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Line {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    match (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
    {
        Ok(0) | Err(_) => Line::End,
        Ok(_) if buf.len() > MAX_LINE => Line::TooLong,
        Ok(_) => {
            if buf.ends_with(b"\n") {
                buf.pop();
            }
            Line::Text(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub status: RunStatus,
    pub error: Option<String>,
    pub summary: Option<Summary>,
}

impl Outcome {
    pub fn failed(error: String) -> Self {
        Outcome::ended(RunStatus::Failed, Some(error))
    }

    /// An end without a summary.
    pub fn ended(status: RunStatus, error: Option<String>) -> Self {
        Outcome {
            status,
            error,
            summary: None,
        }
    }
}

/// The command that starts a worker of `exe` on the devices `visible` (`CUDA_VISIBLE_DEVICES`;
/// empty hides them from a CPU worker). It reads its job from stdin and reports on stdout.
pub(super) fn worker_command(exe: &std::path::Path, visible: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // its own process group, so that whatever it starts is stopped with it
        .process_group(0)
        // pin the worker to its GPU, or hide GPUs from a CPU worker
        .env("CUDA_VISIBLE_DEVICES", visible);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; this only asks the kernel to kill the child when its
    // parent goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Runs `run` on `slot` to its end (a worker process here, or a Slurm job) and records the
/// outcome. Never panics on worker failure.
pub(super) async fn supervise(
    s: &Scheduler,
    run: Run,
    slot: Vec<Slot>,
    cancel: Arc<Notify>,
    reported_end: Arc<Notify>,
) {
    let id = run.id;
    let out = match &s.inner.slurm {
        Some(slurm) => {
            match super::slurm::execute(s, slurm, &run, &cancel, &reported_end).await {
                Ok(Some(out)) => out,
                // the service stops and leaves the job running on the cluster
                Ok(None) => return,
                Err(e) => Outcome::failed(format!("{e:#}")),
            }
        }
        None => execute(s, &run, &slot, &cancel)
            .await
            .unwrap_or_else(|e| Outcome::failed(format!("{e:#}"))),
    };
    let store = &s.inner.store;
    let recorded = with_retries(id, "recording the end of the run", || {
        store.finish_run(id, out.status, out.error.as_deref(), out.summary.as_ref())
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(
            run_id = id,
            status = %out.status,
            error = format!("{e:#}"),
            "could not record the end of a run; trying again every {}s",
            KEEP_TRYING.as_secs()
        );
        // the slot is free again, but the run must not stay `running` in the store
        let (store, out) = (store.clone(), out.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEP_TRYING).await;
                let done = store
                    .finish_run(id, out.status, out.error.as_deref(), out.summary.as_ref())
                    .await;
                if done.is_ok() {
                    tracing::info!(run_id = id, status = %out.status, "recorded the end of the run");
                    break;
                }
            }
        });
    }
    s.release(id);
    let msg = match &out.error {
        Some(e) => format!("{}: {e}", out.status),
        None => out.status.to_string(),
    };
    let _ = store.append_logs(id, &[("system", msg)]).await;
    tracing::info!(run_id = id, status = %out.status, "run ended");
    s.inner.hub.send(
        id,
        LiveKind::Status {
            status: out.status,
            error: out.error,
        },
    );
}

/// Makes the job of the run, runs the worker, and says how it ended.
async fn execute(s: &Scheduler, run: &Run, slots: &[Slot], cancel: &Notify) -> Result<Outcome> {
    let settings = &s.inner.settings;
    let resolved = resolved(run)?;
    let mut spec = JobSpec::new(
        run.id,
        &resolved,
        slots::job_device(slots, 0),
        slots.iter().map(|s| s.threads).sum(),
        settings.run_dir(run.id).join("checkpoint"),
        Some(settings.data_dir.join("cache")),
    );
    spec.replicas = (1..slots.len())
        .map(|i| slots::job_device(slots, i))
        .collect();
    let exe = settings.worker_exe()?;
    let visible = slots::visible_devices(slots);
    let mut child = match s.inner.warm.take(&exe, &visible) {
        Some(child) => child,
        None => worker_command(&exe, &visible)
            .spawn()
            .with_context(|| format!("starting worker {}", exe.display()))?,
    };
    s.set_pid(run.id, child.id());
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let mut line = serde_json::to_string(&spec)?;
    line.push('\n');
    // a worker that dies at once closes its stdin; its exit status tells the story below
    let _ = stdin.write_all(line.as_bytes()).await;
    let _ = stdin.flush().await;

    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let stdout = child.stdout.take().context("worker stdout")?;
    let stderr = child.stderr.take().context("worker stderr")?;
    let tx_out = tx.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout);
        loop {
            let msg = match bounded_line(&mut reader).await {
                Line::End => break,
                Line::TooLong => Msg::TooLong("stdout"),
                Line::Text(l) => match serde_json::from_str::<Event>(&l) {
                    Ok(ev) => Msg::Event(ev),
                    Err(_) => Msg::Stdout(l),
                },
            };
            let stop = matches!(msg, Msg::TooLong(_));
            if tx_out.send(msg).await.is_err() || stop {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        loop {
            let msg = match bounded_line(&mut reader).await {
                Line::End => break,
                Line::TooLong => Msg::TooLong("stderr"),
                Line::Text(l) => Msg::Stderr(l),
            };
            let stop = matches!(msg, Msg::TooLong(_));
            if tx.send(msg).await.is_err() || stop {
                break;
            }
        }
    });

    let mut sink = Persist::new(s, run.id, run.attempts.max(1));
    let mut cancelled = false;
    let mut stopping = false;
    // the service shutting down: the worker checkpoints and stops (SIGTERM), or is killed
    // after the grace period
    let mut draining = s.draining();
    // a shutdown that began before this subscription is seen too
    draining.mark_changed();
    let mut shutting_down = false;
    let kill_at = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(kill_at);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    // a worker silent for longer than the timeout is taken for hung and stopped
    let silence = Duration::from_secs(settings.worker_timeout.max(1));
    let watchdog = tokio::time::sleep(silence);
    tokio::pin!(watchdog);
    let mut hung = false;
    // once the worker is killed, its output is read for a little longer, not forever (a
    // process that escaped its group could hold the pipes open)
    let give_up = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(give_up);
    let mut killed = false;
    loop {
        if !killed && (hung || cancelled || stopping) {
            killed = true;
            give_up
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_secs(10));
        }
        tokio::select! {
            _ = &mut give_up, if killed => break,
            msg = rx.recv() => match msg {
                Some(m) => {
                    watchdog.as_mut().reset(tokio::time::Instant::now() + silence);
                    sink.handle(m).await
                }
                None => break,
            },
            _ = &mut watchdog, if !hung => {
                hung = true;
                kill_group(&mut child);
            }
            _ = cancel.notified(), if !cancelled => {
                cancelled = true;
                kill_group(&mut child);
                sink.logs.push(("system", "cancel requested: stopping the worker".into()));
            }
            _ = draining.changed(), if !shutting_down && !cancelled => {
                let down = *draining.borrow_and_update();
                if !down {
                    continue;
                }
                shutting_down = true;
                if let Some(pid) = child.id() {
                    // SAFETY: signalling our own child process by its pid.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                kill_at.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                sink.logs.push((
                    "system",
                    "the server is shutting down: the worker checkpoints and stops".into(),
                ));
            }
            _ = &mut kill_at, if shutting_down => {
                kill_group(&mut child);
                kill_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86_400));
            }
            _ = flush.tick() => sink.flush().await,
        }
        if sink.too_long.is_some() && !stopping {
            stopping = true;
            kill_group(&mut child);
        }
        if sink.lost.is_some() && !stopping {
            // what the worker reports can no longer be kept: stop it rather than train blind
            stopping = true;
            kill_group(&mut child);
        }
    }
    let exit = child.wait().await.context("waiting for the worker")?;
    drop(stdin);
    sink.flush().await;
    Ok(if let Some(lost) = sink.lost.take() {
        tracing::error!(
            run_id = run.id,
            error = %lost,
            "the run's events could not be stored; the run is failed"
        );
        Outcome::failed(lost)
    } else if hung {
        Outcome::failed(format!(
            "the worker reported nothing for {} s (--worker-timeout) and was stopped",
            silence.as_secs()
        ))
    } else if let Some(stream) = sink.too_long {
        Outcome::failed(format!(
            "the worker wrote a line longer than {} MiB on its {stream} and was stopped",
            MAX_LINE >> 20
        ))
    } else if shutting_down && sink.finished.is_none() {
        Outcome {
            status: RunStatus::Interrupted,
            error: Some(format!(
                "the server shut down; the run resumes from its last checkpoint (worker {})",
                describe(exit)
            )),
            summary: None,
        }
    } else if cancelled {
        Outcome {
            status: RunStatus::Cancelled,
            error: Some("cancelled by user".into()),
            summary: None,
        }
    } else if let Some(err) = sink.failed.take() {
        Outcome::failed(err)
    } else if let (true, Some(summary)) = (exit.success(), sink.finished.take()) {
        Outcome {
            status: RunStatus::Succeeded,
            error: None,
            summary: Some(summary),
        }
    } else {
        let tail: Vec<String> = sink.stderr_tail.into_iter().collect();
        let mut msg = format!("worker {}", describe(exit));
        if sink.not_events > 0 {
            msg.push_str(&format!(
                "; it wrote {} line(s) on stdout that are not events (see the run's log)",
                sink.not_events
            ));
        }
        if !tail.is_empty() {
            msg.push_str("; last stderr lines:\n");
            msg.push_str(&tail.join("\n"));
        }
        Outcome::failed(msg)
    })
}

/// The run as resolved at submission, which its job is made from.
pub(super) fn resolved(run: &Run) -> Result<crate::runs::ResolvedRun> {
    run.resolved().with_context(|| {
        format!(
            "run {} was queued before runs kept their resolved model and dataset; submit it again",
            run.id
        )
    })
}

/// Kills the worker and every process in its group (what it started).
fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling the process group our own child leads.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.start_kill();
}

/// "exited with code 101", "was killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL, e.g. the out-of-memory killer)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with code {c} without reporting a result"),
        None => "ended without an exit status".into(),
    }
}

/// Buffers what the worker says and writes it to the store and the hub.
struct Persist<'a> {
    s: &'a Scheduler,
    run_id: i64,
    /// The run's attempt this worker is: its metric points are filed under it.
    attempt: i64,
    points: Vec<NewPoint>,
    logs: Vec<(&'static str, String)>,
    progress: Option<f64>,
    stderr_tail: VecDeque<String>,
    finished: Option<Summary>,
    failed: Option<String>,
    /// Why what the worker reported could not be stored, once a write failed for good.
    lost: Option<String>,
    /// Lines on stdout that were not events.
    not_events: usize,
    /// The stream on which the worker wrote a line too long to read.
    too_long: Option<&'static str>,
}

impl<'a> Persist<'a> {
    fn new(s: &'a Scheduler, run_id: i64, attempt: i64) -> Self {
        Persist {
            s,
            run_id,
            attempt,
            points: Vec::new(),
            logs: Vec::new(),
            progress: None,
            stderr_tail: VecDeque::new(),
            finished: None,
            failed: None,
            lost: None,
            not_events: 0,
            too_long: None,
        }
    }

    /// Notes a write that failed for good; the first such failure is the run's error.
    fn lose(&mut self, what: &str, e: anyhow::Error) {
        tracing::error!(
            run_id = self.run_id,
            error = format!("{e:#}"),
            "could not store {what}"
        );
        if self.lost.is_none() {
            self.lost = Some(format!("could not store the run's {what}: {e:#}"));
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Stdout(l) => {
                self.not_events += 1;
                self.logs.push(("stdout", l));
            }
            Msg::TooLong(stream) => {
                self.too_long = Some(stream);
            }
            Msg::Stderr(l) => {
                if self.stderr_tail.len() == STDERR_TAIL {
                    self.stderr_tail.pop_front();
                }
                self.stderr_tail.push_back(l.clone());
                self.logs.push(("stderr", l));
            }
            Msg::Event(ev) => {
                if let Some(line) = ev.log_line(self.attempt) {
                    self.logs.push(line);
                }
                match &ev {
                    Event::Progress {
                        step, total_steps, ..
                    } => {
                        self.progress = Some(*step as f64 / (*total_steps).max(1) as f64);
                    }
                    Event::Metric {
                        key,
                        step,
                        epoch,
                        value,
                    } => self.points.push(NewPoint {
                        key: *key,
                        step: *step as i64,
                        epoch: *epoch,
                        value: *value,
                    }),
                    Event::Predictions { split, rows } => {
                        let store = &self.s.inner.store;
                        let stored = with_retries(self.run_id, "storing predictions", || {
                            store.insert_predictions(self.run_id, *split, rows)
                        })
                        .await;
                        if let Err(e) = stored {
                            self.lose("predictions", e);
                        }
                    }
                    Event::Finished { summary } => self.finished = Some((**summary).clone()),
                    Event::Failed { error } => self.failed = Some(error.clone()),
                    Event::Started { .. } | Event::Log { .. } | Event::Checkpoint { .. } => {}
                    Event::Timings { timings } => {
                        let store = &self.s.inner.store;
                        let stored = with_retries(self.run_id, "storing start timings", || {
                            store.set_start_timings(self.run_id, timings)
                        })
                        .await;
                        if let Err(e) = stored {
                            self.lose("start timings", e);
                        }
                    }
                }
                // predictions are bulky and only useful from the store
                if !matches!(ev, Event::Predictions { .. }) {
                    self.s.inner.hub.send(self.run_id, LiveKind::Worker(ev));
                }
            }
        }
        if self.points.len() + self.logs.len() >= 256 {
            self.flush().await;
        }
    }

    /// Writes what is buffered, retrying failed writes; a write that fails for good is noted
    /// in `lost`. Once something was lost the worker is being stopped: what is left is written
    /// once, without retries, and dropped if that fails.
    async fn flush(&mut self) {
        let store = &self.s.inner.store;
        let id = self.run_id;
        let points = std::mem::take(&mut self.points);
        let logs = std::mem::take(&mut self.logs);
        let progress = self.progress.take();
        if self.lost.is_some() {
            let _ = store.insert_metric_points(id, self.attempt, &points).await;
            let _ = store.append_logs(id, &logs).await;
            return;
        }
        if let Err(e) = with_retries(id, "storing metric points", || {
            store.insert_metric_points(id, self.attempt, &points)
        })
        .await
        {
            self.lose("metric points", e);
        }
        if let Err(e) = with_retries(id, "storing log lines", || store.append_logs(id, &logs)).await
        {
            self.lose("log lines", e);
        }
        if let Some(p) = progress
            && let Err(e) = with_retries(id, "storing progress", || store.set_progress(id, p)).await
        {
            self.lose("progress", e);
        }
    }
}
