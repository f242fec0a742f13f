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
    /// Relayed from another server on the same database (see [`relay`]), not to be relayed
    /// again.
    #[serde(skip)]
    pub remote: bool,
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
        let _ = self.tx.send(LiveEvent {
            run_id,
            kind,
            remote: false,
        });
    }

    /// Sends an event another server reported (see [`relay`]).
    fn send_remote(&self, run_id: i64, kind: LiveKind) {
        let _ = self.tx.send(LiveEvent {
            run_id,
            kind,
            remote: true,
        });
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

/// The PostgreSQL channel servers sharing a database relay their live events on.
const CHANNEL: &str = "modalbench_live";

/// Largest notification sent (PostgreSQL takes payloads under 8,000 bytes).
const MAX_PAYLOAD: usize = 7_000;

/// One event as it travels between servers.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Relayed {
    /// The server it happened on.
    server: String,
    run_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<(RunStatus, Option<String>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker: Option<Event>,
}

/// Relays live events between the servers sharing a PostgreSQL database, so that a page
/// served by one server follows a run another trains: this server's events are sent with
/// `NOTIFY` (gathered for up to 100 ms, one notification per batch; an event too large for a
/// notification, a run's predictions, is left out: pages read them from the store), and the
/// other servers' events are sent to this hub. Runs until the hub closes; a lost connection is
/// made again.
pub async fn relay(hub: Hub, store: crate::store::Store, url: String) {
    let me = store.server_id().to_string();
    let closed = hub.closed();
    let outgoing = {
        let (hub, me) = (hub.clone(), me.clone());
        async move {
            let mut rx = hub.subscribe();
            loop {
                let mut batch: Vec<String> = Vec::new();
                let first = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
                let mut next = Some(first);
                loop {
                    if let Some(ev) = next.take()
                        && !ev.remote
                        && let Some(text) = wire(&me, &ev)
                    {
                        batch.push(text);
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Ok(ev)) => next = Some(ev),
                        Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                        Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                    }
                }
                for payload in payloads(&batch) {
                    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(payload)
                        .execute(store.pool())
                        .await
                    {
                        tracing::warn!(error = %e, "relaying live events failed");
                    }
                }
            }
        }
    };
    let incoming = async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other servers' live events failed");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "listening for other servers' live events failed");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                continue;
            }
            while let Ok(n) = listener.recv().await {
                let Ok(events) = serde_json::from_str::<Vec<Relayed>>(n.payload()) else {
                    continue;
                };
                for r in events.into_iter().filter(|r| r.server != me) {
                    let kind = match (r.status, r.worker) {
                        (Some((status, error)), _) => LiveKind::Status { status, error },
                        (None, Some(w)) => LiveKind::Worker(w),
                        (None, None) => continue,
                    };
                    hub.send_remote(r.run_id, kind);
                }
            }
        }
    };
    tokio::select! {
        _ = outgoing => {}
        _ = incoming => {}
        _ = closed => {}
    }
}

/// An event as JSON for the relay; `None` when it would not fit a notification.
fn wire(server: &str, ev: &LiveEvent) -> Option<String> {
    let (status, worker) = match &ev.kind {
        LiveKind::Status { status, error } => (Some((*status, error.clone())), None),
        LiveKind::Worker(Event::Predictions { .. }) => return None,
        LiveKind::Worker(w) => (None, Some(w.clone())),
    };
    let text = serde_json::to_string(&Relayed {
        server: server.to_string(),
        run_id: ev.run_id,
        status,
        worker,
    })
    .ok()?;
    (text.len() < MAX_PAYLOAD).then_some(text)
}

/// JSON arrays of the events, each under [`MAX_PAYLOAD`] bytes.
fn payloads(events: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::from("[");
    for e in events {
        if cur.len() + e.len() + 2 > MAX_PAYLOAD && cur.len() > 1 {
            cur.push(']');
            out.push(std::mem::replace(&mut cur, String::from("[")));
        }
        if cur.len() > 1 {
            cur.push(',');
        }
        cur.push_str(e);
    }
    if cur.len() > 1 {
        cur.push(']');
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_batches_stay_under_the_notification_limit_and_keep_every_event() {
        let events: Vec<String> = (0..500)
            .map(|i| format!("{{\"server\":\"a\",\"run_id\":{i}}}"))
            .collect();
        let batches = payloads(&events);
        assert!(batches.len() > 1);
        let mut back = Vec::new();
        for b in &batches {
            assert!(b.len() <= MAX_PAYLOAD, "{}", b.len());
            let v: Vec<Relayed> = serde_json::from_str(b).unwrap();
            back.extend(v.into_iter().map(|r| r.run_id));
        }
        assert_eq!(back, (0..500).collect::<Vec<i64>>());
    }
}
