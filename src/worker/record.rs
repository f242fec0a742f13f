//! `modalbench train` recorded in the service's store: the run is stored as running on the
//! device `cli:<pid>` when training starts, and its metric points, logs, progress, test
//! predictions and summary are written as they come, so it shows in a running service's run
//! list and leaderboard beside the runs the service trained. A server that starts while such a
//! process lives leaves its run alone; one whose process is gone is failed at start-up.

use crate::eval::MetricKey;
use crate::protocol::{Event, Summary};
use crate::store::Store;
use crate::store::metrics::NewPoint;
use crate::store::runs::RunStatus;
use crate::train::EventSink;
use anyhow::Result;
use tokio::runtime::Runtime;

/// The device name of a run trained in the foreground by process `pid`.
pub fn cli_device(pid: u32) -> String {
    format!("cli:{pid}")
}

/// Writes a foreground run's events to the store, passing each on to `inner` (the progress
/// bar). A write that fails is reported on stderr once; training goes on.
pub struct Recorder<'a> {
    store: Store,
    rt: &'a Runtime,
    run_id: i64,
    inner: Box<dyn EventSink + 'a>,
    points: Vec<NewPoint>,
    logs: Vec<(&'static str, String)>,
    total_steps: u64,
    warned: bool,
}

impl<'a> Recorder<'a> {
    /// A recorder of run `run_id` into `store`, through `rt`.
    pub fn new(store: Store, rt: &'a Runtime, run_id: i64, inner: Box<dyn EventSink + 'a>) -> Self {
        Recorder {
            store,
            rt,
            run_id,
            inner,
            points: Vec::new(),
            logs: Vec::new(),
            total_steps: 0,
            warned: false,
        }
    }

    fn check(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r
            && !self.warned
        {
            eprintln!(
                "warning: could not record {what} of run {} in the store: {e:#}",
                self.run_id
            );
            self.warned = true;
        }
    }

    /// Writes the buffered points and log lines.
    pub fn flush(&mut self) {
        let (points, logs) = (
            std::mem::take(&mut self.points),
            std::mem::take(&mut self.logs),
        );
        let r = self.rt.block_on(async {
            self.store
                .insert_metric_points(self.run_id, 1, &points)
                .await?;
            self.store.append_logs(self.run_id, &logs).await
        });
        self.check("metric points", r);
    }

    /// Records how the run ended.
    pub fn finish(mut self, result: &Result<Summary>) {
        self.flush();
        let (status, error, summary) = match result {
            Ok(s) => (RunStatus::Succeeded, None, Some(s)),
            Err(e) => (RunStatus::Failed, Some(format!("{e:#}")), None),
        };
        let r = self.rt.block_on(async {
            let msg = match &error {
                Some(e) => format!("{status}: {e}"),
                None => status.to_string(),
            };
            self.store
                .append_logs(self.run_id, &[("system", msg)])
                .await?;
            self.store
                .finish_run(self.run_id, status, error.as_deref(), summary)
                .await
                .map(drop)
        });
        self.check("the end", r);
    }
}

impl EventSink for Recorder<'_> {
    fn emit(&mut self, event: Event) {
        match &event {
            Event::Started { total_steps, .. } => self.total_steps = *total_steps,
            Event::Metric {
                key,
                step,
                epoch,
                value,
            } => {
                self.points.push(NewPoint {
                    key: *key,
                    step: *step as i64,
                    epoch: *epoch,
                    value: *value,
                });
                if key.scope != MetricKey::TRAIN_LOSS.scope {
                    self.flush();
                }
            }
            Event::Log { message } => self.logs.push(("worker", message.clone())),
            Event::Progress { step, .. } => {
                self.flush();
                let progress = *step as f64 / self.total_steps.max(1) as f64;
                let r = self
                    .rt
                    .block_on(self.store.set_progress(self.run_id, progress));
                self.check("progress", r);
            }
            Event::Predictions { split, rows } => {
                let r = self
                    .rt
                    .block_on(self.store.insert_predictions(self.run_id, *split, rows));
                self.check("predictions", r);
            }
            _ => {}
        }
        self.inner.emit(event);
    }
}
