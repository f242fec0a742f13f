//! The child-process side of a run: `modalbench worker` reads a [`JobSpec`] line from stdin,
//! trains, and writes [`Event`]s as JSON lines on stdout. It exits as soon as its stdin
//! closes, which happens when the server that started it dies.

pub mod progress;
pub mod record;

use crate::eval::MetricKey;
use crate::protocol::{Event, JobSpec, StartTimings};
use crate::train::{self, EventSink};
use anyhow::{Context, Result};
use std::io::{BufRead, Write};

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

fn read_spec() -> Result<JobSpec> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the job from stdin")?;
    serde_json::from_str(&line).context("parsing the job spec")
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
        default(info);
    }));
}

/// Exit code of a worker that stopped as asked (SIGTERM) after checkpointing (`EX_TEMPFAIL`).
pub const EXIT_STOPPED: i32 = 75;

extern "C" fn on_sigterm(_: libc::c_int) {
    train::request_stop();
}

/// Runs the worker: returns the process exit code (0 success, 1 reported failure,
/// [`EXIT_STOPPED`] stopped on SIGTERM with a checkpoint written).
pub fn main() -> i32 {
    let worker_started_at = crate::store::now();
    // SIGTERM stops training at the next step boundary, checkpointed (the server's graceful
    // shutdown); the handler only sets a flag
    // SAFETY: installing a handler that stores an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
    let spec = match read_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: {e:#}");
            return 2;
        }
    };
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
    match train::run(&spec, &mut sink) {
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
