//! One running run: start its worker process, persist what it reports, and record how it
//! ended. Whatever the worker does (panic, abort, out-of-memory kill), only this run fails.

use super::Scheduler;
use super::slots::Slot;
use crate::live::LiveKind;
use crate::models::registry;
use crate::protocol::{DatasetRef, Event, JobSpec, Summary};
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
/// How often buffered metric points and log lines are written.
const FLUSH_EVERY: Duration = Duration::from_millis(300);

enum Msg {
    Event(Event),
    Stdout(String),
    Stderr(String),
}

/// How a run ended.
struct Outcome {
    status: RunStatus,
    error: Option<String>,
    summary: Option<Summary>,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Outcome {
            status: RunStatus::Failed,
            error: Some(error),
            summary: None,
        }
    }
}

/// Runs `run` on `slot` to its end and records the outcome. Never panics on worker failure.
pub(super) async fn supervise(s: &Scheduler, run: Run, slot: Slot, cancel: Arc<Notify>) {
    let id = run.id;
    let out = execute(s, &run, &slot, &cancel)
        .await
        .unwrap_or_else(|e| Outcome::failed(format!("{e:#}")));
    let store = &s.inner.store;
    if let Err(e) = store
        .finish_run(id, out.status, out.error.as_deref(), out.summary.as_ref())
        .await
    {
        tracing::error!(
            run_id = id,
            error = format!("{e:#}"),
            "could not record the end of a run"
        );
    }
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

/// Looks up what the job needs, runs the worker, and says how it ended.
async fn execute(s: &Scheduler, run: &Run, slot: &Slot, cancel: &Notify) -> Result<Outcome> {
    let settings = &s.inner.settings;
    let store = &s.inner.store;
    let model = registry::find(&settings.models_dir, &run.model)
        .with_context(|| format!("model `{}` is no longer in the models folder", run.model))?;
    let dataset = store
        .get_dataset(&run.dataset)
        .await?
        .with_context(|| format!("dataset `{}` is no longer registered", run.dataset))?;
    let spec = JobSpec {
        run_id: run.id,
        model: run.model.clone(),
        model_dir: model.path,
        dataset: DatasetRef {
            name: dataset.name,
            source: dataset.info.source,
        },
        config: run.config.clone(),
        device: if slot.cuda_index.is_some() {
            "cuda"
        } else {
            "cpu"
        }
        .into(),
        threads: slot.threads,
        output_dir: settings.run_dir(run.id).join("checkpoint"),
        cache_dir: Some(settings.data_dir.join("cache")),
    };
    let exe = match &settings.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the modalbench binary")?,
    };
    let mut cmd = Command::new(&exe);
    cmd.arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // pin the worker to its GPU, or hide GPUs from a CPU worker
        .env(
            "CUDA_VISIBLE_DEVICES",
            slot.cuda_index.map(|i| i.to_string()).unwrap_or_default(),
        );
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; this only asks the kernel to kill the child when its
    // parent goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
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
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let msg = match serde_json::from_str::<Event>(&l) {
                Ok(ev) => Msg::Event(ev),
                Err(_) => Msg::Stdout(l),
            };
            if tx_out.send(msg).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(Msg::Stderr(l)).await.is_err() {
                break;
            }
        }
    });

    let mut sink = Persist::new(s, run.id);
    let mut cancelled = false;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => sink.handle(m).await,
                None => break,
            },
            _ = cancel.notified(), if !cancelled => {
                cancelled = true;
                let _ = child.start_kill();
                sink.logs.push(("system", "cancel requested: stopping the worker".into()));
            }
            _ = flush.tick() => sink.flush().await,
        }
    }
    let exit = child.wait().await.context("waiting for the worker")?;
    drop(stdin);
    sink.flush().await;
    Ok(if cancelled {
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
        if !tail.is_empty() {
            msg.push_str("; last stderr lines:\n");
            msg.push_str(&tail.join("\n"));
        }
        Outcome::failed(msg)
    })
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
    points: Vec<NewPoint>,
    logs: Vec<(&'static str, String)>,
    progress: Option<f64>,
    stderr_tail: VecDeque<String>,
    finished: Option<Summary>,
    failed: Option<String>,
}

impl<'a> Persist<'a> {
    fn new(s: &'a Scheduler, run_id: i64) -> Self {
        Persist {
            s,
            run_id,
            points: Vec::new(),
            logs: Vec::new(),
            progress: None,
            stderr_tail: VecDeque::new(),
            finished: None,
            failed: None,
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Stdout(l) => self.logs.push(("stdout", l)),
            Msg::Stderr(l) => {
                if self.stderr_tail.len() == STDERR_TAIL {
                    self.stderr_tail.pop_front();
                }
                self.stderr_tail.push_back(l.clone());
                self.logs.push(("stderr", l));
            }
            Msg::Event(ev) => {
                match &ev {
                    Event::Started {
                        device,
                        num_parameters,
                        train_examples,
                        total_steps,
                        ..
                    } => {
                        self.logs.push(("worker", format!(
                            "started on {device}: {num_parameters} parameters, {train_examples} training examples, {total_steps} steps"
                        )));
                    }
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
                        key: key.clone(),
                        step: *step as i64,
                        epoch: *epoch,
                        value: *value,
                    }),
                    Event::Log { message } => self.logs.push(("worker", message.clone())),
                    Event::Predictions { split, rows } => {
                        if let Err(e) = self
                            .s
                            .inner
                            .store
                            .insert_predictions(self.run_id, split, rows)
                            .await
                        {
                            tracing::error!(
                                run_id = self.run_id,
                                error = format!("{e:#}"),
                                "storing predictions"
                            );
                        }
                    }
                    Event::Checkpoint { path } => self.logs.push((
                        "worker",
                        format!("checkpoint written to {}", path.display()),
                    )),
                    Event::Finished { summary } => self.finished = Some(summary.clone()),
                    Event::Failed { error } => self.failed = Some(error.clone()),
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

    async fn flush(&mut self) {
        let store = &self.s.inner.store;
        let id = self.run_id;
        let points = std::mem::take(&mut self.points);
        if let Err(e) = store.insert_metric_points(id, &points).await {
            tracing::error!(
                run_id = id,
                error = format!("{e:#}"),
                "storing metric points"
            );
        }
        let logs = std::mem::take(&mut self.logs);
        if let Err(e) = store.append_logs(id, &logs).await {
            tracing::error!(run_id = id, error = format!("{e:#}"), "storing log lines");
        }
        if let Some(p) = self.progress.take()
            && let Err(e) = store.set_progress(id, p).await
        {
            tracing::error!(run_id = id, error = format!("{e:#}"), "storing progress");
        }
    }
}
