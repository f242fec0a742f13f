//! Reporting over HTTP, for workers a cluster scheduler starts (`modalbench worker --ticket`):
//! no server holds their stdin and stdout, so their events go to the service's
//! `POST /api/v1/worker/runs/{id}/events` in batches, with the attempt's own token.
//!
//! Every event gets the next sequence number of the attempt (1, 2, ...). A background thread
//! sends the unacknowledged events in order, at most [`MAX_BATCH_EVENTS`] and about
//! [`MAX_BATCH_BYTES`] at a time, and forgets them once the service answers with the last
//! number it holds. While the service cannot be reached (a restart, a network cut) it keeps
//! them and tries again with a growing pause; the service applies each number once, so a batch
//! sent again after a lost answer stores nothing twice. Training goes on meanwhile. At the end
//! the worker waits until everything is acknowledged (up to [`FINAL_WAIT`]).

use crate::protocol::{Event, WorkerTicket};
use crate::train::EventSink;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most events in one request.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// About the most bytes of events in one request (the service takes bodies up to 1 MiB).
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// How long a batch waits for more events before it is sent.
const LINGER: Duration = Duration::from_millis(250);
/// Pauses between tries while the service cannot be reached: doubling up to the last.
const BACKOFF: [Duration; 6] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];
/// How long a finished worker waits for the service to take its last events.
pub const FINAL_WAIT: Duration = Duration::from_secs(3600);

/// The body of a batch.
#[derive(Serialize)]
struct Batch<'a> {
    attempt: i64,
    first_seq: i64,
    events: &'a [&'a Event],
}

/// Why reporting stopped for good.
#[derive(Debug, Clone)]
pub enum Stop {
    /// The service says this attempt is over (cancelled, requeued, ended) or refuses its token.
    Refused(String),
}

struct Queue {
    /// Unacknowledged events: (sequence number, event, its JSON size).
    pending: VecDeque<(i64, Event, usize)>,
    next_seq: i64,
    stop: Option<Stop>,
}

/// The reporter: hand it events with [`Reporter::send`]; a thread delivers them.
pub struct Reporter {
    queue: Mutex<Queue>,
    /// Signalled when events are queued or acknowledged.
    changed: Condvar,
    ticket: WorkerTicket,
}

impl Reporter {
    /// A reporter for `ticket`, with its delivery thread started.
    pub fn start(ticket: WorkerTicket) -> Arc<Reporter> {
        let r = Arc::new(Reporter {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                next_seq: 1,
                stop: None,
            }),
            changed: Condvar::new(),
            ticket,
        });
        let bg = r.clone();
        std::thread::Builder::new()
            .name("report".into())
            .spawn(move || bg.deliver())
            .expect("starting the reporting thread");
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event (split first if it is a large `predictions` event).
    pub fn send(&self, event: Event) {
        let mut q = self.lock();
        for ev in split_predictions(event) {
            let size = serde_json::to_vec(&ev).map_or(0, |v| v.len());
            let seq = q.next_seq;
            q.next_seq += 1;
            q.pending.push_back((seq, ev, size));
        }
        drop(q);
        self.changed.notify_all();
    }

    /// Why reporting stopped, if it did.
    pub fn stopped(&self) -> Option<Stop> {
        self.lock().stop.clone()
    }

    /// Waits until every queued event is acknowledged, or `timeout` passes, or reporting
    /// stops; true if everything was delivered.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if q.pending.is_empty() {
                return true;
            }
            if q.stop.is_some() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .changed
                .wait_timeout(q, left.min(Duration::from_millis(500)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The delivery loop (its own thread).
    fn deliver(self: Arc<Self>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut failures = 0usize;
        loop {
            // the batch: wait for events, then a little longer for more
            let (first_seq, body, count) = {
                let mut q = self.lock();
                while q.pending.is_empty() && q.stop.is_none() {
                    q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.stop.is_some() {
                    return;
                }
                if q.pending.len() < MAX_BATCH_EVENTS {
                    drop(q);
                    std::thread::sleep(LINGER);
                    q = self.lock();
                }
                let mut bytes = 0;
                let mut events = Vec::new();
                for (_, ev, size) in q.pending.iter() {
                    if !events.is_empty()
                        && (events.len() == MAX_BATCH_EVENTS || bytes + size > MAX_BATCH_BYTES)
                    {
                        break;
                    }
                    bytes += size;
                    events.push(ev);
                }
                let first_seq = q.pending.front().map_or(1, |p| p.0);
                let body = serde_json::to_vec(&Batch {
                    attempt: self.ticket.attempt,
                    first_seq,
                    events: &events,
                })
                .expect("events always serialize");
                (first_seq, body, events.len())
            };
            match self.post(&agent, &body) {
                Ok(last_seq) => {
                    failures = 0;
                    let mut q = self.lock();
                    while q.pending.front().is_some_and(|p| p.0 <= last_seq) {
                        q.pending.pop_front();
                    }
                    drop(q);
                    self.changed.notify_all();
                }
                Err(Attempt::Refused(why)) => {
                    eprintln!("worker: the service refused this attempt's events: {why}");
                    self.lock().stop = Some(Stop::Refused(why));
                    self.changed.notify_all();
                    return;
                }
                Err(Attempt::Retry(why)) => {
                    let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
                    failures += 1;
                    eprintln!(
                        "worker: sending events {first_seq}..{} failed ({why}); again in {:.1} s",
                        first_seq + count as i64 - 1,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// One request; the last sequence number the service holds.
    fn post(&self, agent: &ureq::Agent, body: &[u8]) -> Result<i64, Attempt> {
        let resp = agent
            .post(&self.ticket.events_url)
            .header("Authorization", &format!("Bearer {}", self.ticket.token))
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match status {
            200 => json["last_seq"]
                .as_i64()
                .ok_or_else(|| Attempt::Retry(format!("an answer without last_seq: {text}"))),
            // a gap cannot be mended from here: what the service lacks was acknowledged
            401 | 403 | 404 | 409 | 410 | 422 => Err(Attempt::Refused(format!(
                "{status}: {}",
                json["message"].as_str().unwrap_or(&text)
            ))),
            _ => Err(Attempt::Retry(format!("HTTP {status}"))),
        }
    }
}

enum Attempt {
    Retry(String),
    Refused(String),
}

/// A `predictions` event larger than a batch, as several events of the same split (each
/// stored row replaces the same example's, so the parts add up to the whole).
fn split_predictions(event: Event) -> Vec<Event> {
    match event {
        Event::Predictions { split, rows } => {
            let size = serde_json::to_vec(&rows).map_or(0, |v| v.len());
            if size <= MAX_BATCH_BYTES / 2 || rows.len() < 2 {
                return vec![Event::Predictions { split, rows }];
            }
            let parts = size.div_ceil(MAX_BATCH_BYTES / 4);
            let per = rows.len().div_ceil(parts);
            rows.chunks(per)
                .map(|c| Event::Predictions {
                    split,
                    rows: c.to_vec(),
                })
                .collect()
        }
        other => vec![other],
    }
}

/// An [`EventSink`] over a shared [`Reporter`].
pub struct HttpSink(pub Arc<Reporter>);

impl EventSink for HttpSink {
    fn emit(&mut self, event: Event) {
        self.0.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::protocol::Prediction;

    #[test]
    fn large_predictions_are_split_and_keep_every_row_once() {
        let rows: Vec<Prediction> = (0..20_000)
            .map(|i| Prediction {
                example_id: format!("example-{i}"),
                label: Some(i % 3),
                pred: (i + 1) % 3,
                probs: vec![0.25, 0.5, 0.25],
            })
            .collect();
        let parts = split_predictions(Event::Predictions {
            split: Split::Test,
            rows: rows.clone(),
        });
        assert!(parts.len() > 1, "{} part(s)", parts.len());
        let mut back = Vec::new();
        for p in parts {
            let Event::Predictions { split, rows } = p else {
                panic!("not predictions")
            };
            assert_eq!(split, Split::Test);
            assert!(serde_json::to_vec(&rows).unwrap().len() <= MAX_BATCH_BYTES);
            back.extend(rows);
        }
        assert_eq!(back, rows);
        let small = split_predictions(Event::Predictions {
            split: Split::Dev,
            rows: rows[..10].to_vec(),
        });
        assert_eq!(small.len(), 1);
    }
}
