//! The child-process side of a run: `modalbench worker` reads a [`JobSpec`] line from stdin,
//! trains, and writes [`Event`]s as JSON lines on stdout. It exits as soon as its stdin
//! closes, which happens when the server that started it dies.
//!
//! On a cluster node (`modalbench worker --ticket FILE`, what a Slurm job script runs) it reads
//! a [`WorkerTicket`] instead and reports over HTTP ([`report`]).

pub mod progress;
pub mod record;
pub mod report;

use crate::eval::MetricKey;
use crate::protocol::{Device, Event, JobSpec, StartTimings, WorkerTicket};
use crate::train::{self, EventSink};
use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Writes events as JSON lines to stdout, flushing each so the server sees them at once.
pub struct JsonLinesSink<W: Write> {
    out: W,
}

impl<W: Write> JsonLinesSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        JsonLinesSink { out }
    }
}

impl<W: Write> EventSink for JsonLinesSink<W> {
    fn emit(&mut self, event: Event) {
        // a closed stdout means the server is gone; the stdin watcher ends the process
        let _ = self.out.write_all(event.to_line().as_bytes());
        let _ = self.out.flush();
    }
}

/// Passes events on to `inner`, and after the first `train/loss` point sends the start's
/// [`StartTimings`]: when the worker began, when the `started` event (loading done) and that
/// point went out.
pub struct TimingSink<S: EventSink> {
    inner: S,
    worker_started_at: String,
    loaded_at: Option<String>,
    sent: bool,
}

impl<S: EventSink> TimingSink<S> {
    /// A sink over `inner` for a worker that began at `worker_started_at`.
    pub fn new(inner: S, worker_started_at: String) -> Self {
        TimingSink {
            inner,
            worker_started_at,
            loaded_at: None,
            sent: false,
        }
    }
}

impl<S: EventSink> EventSink for TimingSink<S> {
    fn emit(&mut self, event: Event) {
        let first_step = match &event {
            Event::Started { .. } => {
                self.loaded_at = Some(crate::store::now());
                None
            }
            Event::Metric { key, step, .. } if *key == MetricKey::TRAIN_LOSS && !self.sent => {
                Some((*step, crate::store::now()))
            }
            _ => None,
        };
        self.inner.emit(event);
        if let (Some((step, at)), Some(loaded_at)) = (first_step, self.loaded_at.clone()) {
            self.sent = true;
            self.inner.emit(Event::Timings {
                timings: StartTimings {
                    worker_started_at: self.worker_started_at.clone(),
                    loaded_at,
                    first_step: step,
                    first_step_at: at,
                },
            });
        }
    }
}

/// The job on stdin; `None` when stdin closed first (the server stopped a worker it had
/// started ahead, or went away).
fn read_spec() -> Result<Option<JobSpec>> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the job from stdin")?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .context("parsing the job spec")
}

/// Makes a panic (from Rust or a libtorch exception unwrapped by tch) report a `failed` event
/// with its message before the default hook prints it, so the run's error says what happened
/// even when a long backtrace fills stderr.
fn report_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        // libtorch appends its C++ stack to the message (escaped, inside tch's error debug
        // output); the part before it says what went wrong
        let msg = match msg.find("Exception raised from") {
            Some(i) => format!("{}…", msg[..i].trim_end_matches("\\n").trim_end()),
            None => msg,
        };
        let msg: String = msg.chars().take(2000).collect();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let ev = Event::Failed {
            error: format!("worker panicked{at}: {msg}"),
        };
        let _ = std::io::stdout().write_all(ev.to_line().as_bytes());
        let _ = std::io::stdout().flush();
        if let Some(r) = REPORTER.get() {
            r.send(ev);
            r.drain(std::time::Duration::from_secs(60));
        }
        default(info);
    }));
}

/// The HTTP reporter of a worker started with a ticket (for the panic hook).
static REPORTER: OnceLock<Arc<report::Reporter>> = OnceLock::new();

/// Exit code of a worker whose last events the service did not take.
pub const EXIT_UNREPORTED: i32 = 4;

/// Exit code of a worker that stopped as asked (SIGTERM) after checkpointing (`EX_TEMPFAIL`).
pub const EXIT_STOPPED: i32 = 75;

extern "C" fn on_sigterm(_: libc::c_int) {
    train::request_stop();
}

/// Runs the worker: returns the process exit code (0 success, 1 reported failure,
/// [`EXIT_STOPPED`] stopped on SIGTERM with a checkpoint written).
pub fn main(ticket: Option<&Path>) -> i32 {
    if let Some(path) = ticket {
        return main_with_ticket(path);
    }
    // SIGTERM stops training at the next step boundary, checkpointed (the server's graceful
    // shutdown); the handler only sets a flag
    // SAFETY: installing a handler that stores an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
    // a worker started ahead waits here, its start paid, until its run is claimed
    let spec = match read_spec() {
        Ok(Some(s)) => s,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("worker: {e:#}");
            return 2;
        }
    };
    // when this worker began the job (for a worker started ahead, when the job came)
    let worker_started_at = crate::store::now();
    // the parent keeps our stdin open for as long as it lives
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut sink);
        eprintln!("worker: the server went away; stopping");
        std::process::exit(3);
    });
    report_panics();
    let _span =
        tracing::info_span!("job", run_id = spec.run_id, model = %spec.model.name).entered();
    // not a held lock: the panic hook may write from any thread
    let mut sink = TimingSink::new(JsonLinesSink::new(std::io::stdout()), worker_started_at);
    train_and_report(&spec, &mut sink)
}

/// Trains the job and reports its end to `sink`; the worker's exit code: 0 finished, 1 failed
/// (reported), [`EXIT_STOPPED`] stopped on SIGTERM with a checkpoint.
fn train_and_report(spec: &JobSpec, sink: &mut dyn EventSink) -> i32 {
    match train::run(spec, sink) {
        Ok(summary) => {
            sink.emit(Event::Finished {
                summary: Box::new(summary),
            });
            0
        }
        Err(e) if e.downcast_ref::<train::Stopped>().is_some() => EXIT_STOPPED,
        Err(e) => {
            sink.emit(Event::Failed {
                error: format!("{e:#}"),
            });
            1
        }
    }
}

/// The devices of a ticket's job on this node: the `gpus` CUDA devices the scheduler made
/// visible where there are that many, else the CPU with `gpus` replicas (a data-parallel run
/// on a CPU node trains as it would on one CPU slot per replica).
fn placement(gpus: usize, cuda_devices: usize) -> Vec<Device> {
    let n = gpus.max(1);
    if cuda_devices >= n {
        (0..n).map(Device::Cuda).collect()
    } else {
        vec![Device::Cpu; n]
    }
}

/// CPU threads a cluster job may use: what Slurm gave it, else this machine's cores.
fn job_threads() -> usize {
    std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .or_else(|| std::env::var("SLURM_CPUS_ON_NODE").ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Stops training at the next step once the service refuses this attempt's events (it was
/// cancelled, or requeued as a new attempt).
struct StopWhenRefused(report::HttpSink);

impl EventSink for StopWhenRefused {
    fn emit(&mut self, event: Event) {
        if self.0.0.stopped().is_some() {
            train::request_stop();
        }
        self.0.emit(event);
    }
}

/// `modalbench worker --ticket FILE`: trains the ticket's job on this node and reports to the
/// service over HTTP. Exit codes as [`main`]'s, and [`EXIT_UNREPORTED`] when the service never
/// took the last events.
fn main_with_ticket(path: &Path) -> i32 {
    let worker_started_at = crate::store::now();
    // SAFETY: as in `main`.
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
    let ticket: WorkerTicket = match std::fs::read(path)
        .with_context(|| format!("reading the ticket {}", path.display()))
        .and_then(|b| serde_json::from_slice(&b).context("parsing the ticket"))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("worker: {e:#}");
            return 2;
        }
    };
    let cuda = crate::train::precision::cuda_device_count();
    let mut spec = ticket.spec.clone();
    // the devices the scheduler gave the job: the run's `gpus`
    let devices = placement(ticket.spec.config.gpus as usize, cuda);
    spec.device = devices[0];
    spec.replicas = devices[1..].to_vec();
    spec.threads = job_threads();
    let reporter = report::Reporter::start(ticket);
    let _ = REPORTER.set(reporter.clone());
    report_panics();
    let _span =
        tracing::info_span!("job", run_id = spec.run_id, model = %spec.model.name).entered();
    let mut sink = TimingSink::new(
        StopWhenRefused(report::HttpSink(reporter.clone())),
        worker_started_at,
    );
    let code = train_and_report(&spec, &mut sink);
    if reporter.drain(report::FINAL_WAIT) {
        code
    } else if let Some(report::Stop::Refused(why)) = reporter.stopped() {
        eprintln!("worker: stopped: {why}");
        EXIT_STOPPED
    } else {
        eprintln!(
            "worker: the service did not take the last events within {} s",
            report::FINAL_WAIT.as_secs()
        );
        EXIT_UNREPORTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_trains_on_the_gpus_it_was_given_or_as_many_cpu_replicas() {
        let on = placement;
        assert_eq!(on(2, 4), vec![Device::Cuda(0), Device::Cuda(1)]);
        assert_eq!(on(1, 1), vec![Device::Cuda(0)]);
        assert_eq!(on(2, 0), vec![Device::Cpu, Device::Cpu]);
        assert_eq!(on(2, 1), vec![Device::Cpu, Device::Cpu]);
        assert_eq!(on(0, 0), vec![Device::Cpu]);
    }
}
