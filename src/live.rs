//! The live-event hub: what happens to runs, fanned out to page viewers (Server-Sent Events)
//! and to code that waits for a run to end.

use crate::protocol::Event;
use crate::store::runs::RunStatus;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

/// Most Server-Sent Event streams open at once; more are answered 503.
pub const MAX_STREAMS: usize = 256;

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
                Event::Timings { .. } => "timings",
            },
        }
    }
}

/// Broadcast channel of [`LiveEvent`]s; cheap to clone. Slow receivers miss events rather
/// than slow the sender down. It also bounds the event streams open at once and ends them
/// all when the service shuts down.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
    streams: Arc<Semaphore>,
    closing: Arc<watch::Sender<bool>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(4096).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            closing: Arc::new(watch::Sender::new(false)),
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

    /// A place for one more event stream, held as long as the stream lives; `None` when
    /// [`MAX_STREAMS`] are open or the service is shutting down.
    pub fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        if *self.closing.borrow() {
            return None;
        }
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Event streams open now.
    pub fn open_streams(&self) -> usize {
        MAX_STREAMS - self.streams.available_permits()
    }

    /// Ends every event stream (the service is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when [`Hub::close`] is called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}
