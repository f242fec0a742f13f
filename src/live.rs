//! The live-event hub: what happens to runs, fanned out to page viewers (Server-Sent Events)
//! and to code that waits for a run to end.

use crate::protocol::Event;
use crate::store::runs::RunStatus;
use serde::Serialize;
use tokio::sync::broadcast;

/// Something that happened to a run.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LiveKind {
    /// The run changed status.
    Status {
        status: RunStatus,
        error: Option<String>,
    },
    /// An event its worker reported.
    Worker(Event),
}

/// An event of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub run_id: i64,
    pub kind: LiveKind,
}

impl LiveEvent {
    /// The Server-Sent Events name: `status`, or the worker event's tag (`metric`, ...).
    pub fn name(&self) -> &'static str {
        match &self.kind {
            LiveKind::Status { .. } => "status",
            LiveKind::Worker(e) => match e {
                Event::Started { .. } => "started",
                Event::Progress { .. } => "progress",
                Event::Metric { .. } => "metric",
                Event::Log { .. } => "log",
                Event::Predictions { .. } => "predictions",
                Event::Checkpoint { .. } => "checkpoint",
                Event::Finished { .. } => "finished",
                Event::Failed { .. } => "failed",
            },
        }
    }
}

/// Broadcast channel of [`LiveEvent`]s; cheap to clone. Slow receivers miss events rather
/// than slow the sender down.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Hub {
    /// Sends an event to every current subscriber.
    pub fn send(&self, run_id: i64, kind: LiveKind) {
        let _ = self.tx.send(LiveEvent { run_id, kind });
    }

    /// Receives events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }
}
