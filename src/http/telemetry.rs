//! `GET /metrics` in Prometheus' text format: the queue (runs per status, queue depth), the
//! worker slots in use, open event streams, metric points stored, and a histogram of request
//! latencies kept by a middleware.

use super::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Request counters and the latency histogram; a field of the application state.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Requests per bucket (cumulative counts are summed when written).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Microseconds, summed.
    sum_micros: AtomicU64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 4],
}

impl Telemetry {
    fn observe(&self, seconds: f64, status: u16) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        if (200..600).contains(&status) {
            self.by_class[(status / 100 - 2) as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The middleware: times every request (event streams until their headers are sent).
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .telemetry
        .observe(start.elapsed().as_secs_f64(), response.status().as_u16());
    response
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}

async fn render(state: &AppState) -> anyhow::Result<String> {
    let mut out = String::new();
    let counts = state.store.status_counts().await?;
    let t = &state.telemetry;
    let _ = writeln!(out, "# HELP modalbench_runs Runs by status.");
    let _ = writeln!(out, "# TYPE modalbench_runs gauge");
    for (status, n) in [
        ("queued", counts.queued),
        ("running", counts.running),
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
        ("interrupted", counts.interrupted),
    ] {
        let _ = writeln!(out, "modalbench_runs{{status=\"{status}\"}} {n}");
    }
    let metric = |out: &mut String, kind: &str, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    };
    let gauge =
        |out: &mut String, name: &str, help: &str, v: f64| metric(out, "gauge", name, help, v);
    gauge(
        &mut out,
        "modalbench_queue_depth",
        "Runs waiting for a slot (queued or interrupted).",
        (counts.queued + counts.interrupted) as f64,
    );
    let slots = state.scheduler.slots().len();
    let busy = state.scheduler.running().len();
    gauge(
        &mut out,
        "modalbench_running_runs",
        "Runs this service's workers are training.",
        busy as f64,
    );
    gauge(
        &mut out,
        "modalbench_slots",
        "Worker slots (one per GPU, or CPU slots).",
        slots as f64,
    );
    gauge(
        &mut out,
        "modalbench_slots_busy",
        "Worker slots in use.",
        state.scheduler.busy_slots() as f64,
    );
    gauge(
        &mut out,
        "modalbench_event_streams",
        "Server-Sent Event streams open.",
        state.hub.open_streams() as f64,
    );
    let _ = writeln!(
        out,
        "# HELP modalbench_points_ingested_total Metric points stored since the service started."
    );
    let _ = writeln!(out, "# TYPE modalbench_points_ingested_total counter");
    let (native, external) = state.store.points_written();
    let _ = writeln!(
        out,
        "modalbench_points_ingested_total{{source=\"native\"}} {native}"
    );
    let _ = writeln!(
        out,
        "modalbench_points_ingested_total{{source=\"external\"}} {external}"
    );
    if let Some((batches, transactions)) = state.store.logged_batches() {
        metric(
            &mut out,
            "counter",
            "modalbench_logged_batches_total",
            "Metric batches of external runs taken by the writer (SQLite: concurrent ones share a transaction).",
            batches as f64,
        );
        metric(
            &mut out,
            "counter",
            "modalbench_logged_batch_transactions_total",
            "Transactions those batches were written in.",
            transactions as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP modalbench_http_requests_total HTTP responses by status class."
    );
    let _ = writeln!(out, "# TYPE modalbench_http_requests_total counter");
    for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let _ = writeln!(
            out,
            "modalbench_http_requests_total{{class=\"{class}\"}} {}",
            t.by_class[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP modalbench_http_request_duration_seconds Time to answer a request (to the \
         response head)."
    );
    let _ = writeln!(
        out,
        "# TYPE modalbench_http_request_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, le) in BUCKETS.iter().enumerate() {
        cumulative += t.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "modalbench_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let count = t.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "modalbench_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "modalbench_http_request_duration_seconds_sum {}",
        t.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "modalbench_http_request_duration_seconds_count {count}"
    );
    Ok(out)
}
