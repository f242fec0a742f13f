//! `/runs`: submit, list, read, follow and cancel fine-tuning runs.

use super::{int_in, parse_id};
use crate::data::Split;
use crate::eval::MetricKey;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::live::LiveKind;
use crate::queue::CancelOutcome;
use crate::runs::RunRequest;
use crate::store::logs::LogLine;
use crate::store::metrics::Point;
use crate::store::predictions::StoredPrediction;
use crate::store::runs::{Run, RunFilter, RunSource, RunStatus};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/runs", post(create).get(list))
        .route("/runs/{id}", get(show))
        .route(
            "/runs/{id}/metrics",
            get(metrics).post(super::external::log_points),
        )
        .route("/runs/{id}/logs", get(logs))
        .route("/runs/{id}/predictions", get(predictions))
        .route("/runs/{id}/events", get(events))
        .route("/runs/{id}/cancel", post(cancel))
}

/// `POST /api/v1/runs`: a [`RunRequest`] (`model`, `dataset`, any options).
async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Response> {
    let run = state.scheduler.submit(req).await?;
    let location = format!("/api/v1/runs/{}", run.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

/// Query of `GET /api/v1/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub dataset: Option<String>,
    pub model: Option<String>,
    pub status: Option<String>,
    /// `native` or `external`.
    pub source: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl ListQuery {
    /// The store filter, or a 422 naming a bad parameter.
    pub fn filter(self) -> Result<RunFilter, ApiError> {
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<RunStatus>().map_err(|e| {
                ApiError::invalid(
                    "status",
                    "invalid_value",
                    format!("query parameter `status`: {e}"),
                )
            })?),
        };
        let source = match self.source.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<RunSource>().map_err(|e| {
                ApiError::invalid(
                    "source",
                    "invalid_value",
                    format!("query parameter `source`: {e}"),
                )
            })?),
        };
        Ok(RunFilter {
            dataset: self.dataset.filter(|s| !s.is_empty()),
            model: self.model.filter(|s| !s.is_empty()),
            status,
            source,
            limit: int_in("limit", self.limit.unwrap_or(100), 1, 1000)?,
            offset: int_in("offset", self.offset.unwrap_or(0), 0, i64::MAX)?,
        })
    }
}

#[derive(Serialize)]
struct RunList {
    runs: Vec<Run>,
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<RunList>> {
    let filter = q.filter()?;
    Ok(Json(RunList {
        runs: state.store.list_runs(&filter).await?,
    }))
}

/// The run `raw` names, or a 404.
pub async fn find_run(state: &AppState, raw: &str) -> ApiResult<Run> {
    let id = parse_id("run", raw)?;
    state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id}")))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(find_run(&state, &id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    key: Option<String>,
    /// Every attempt's points (a resumed run reports the steps after its checkpoint again),
    /// instead of the latest attempt's point of each step.
    #[serde(default)]
    all_attempts: bool,
}

#[derive(Serialize)]
pub(crate) struct Series {
    pub series: BTreeMap<String, Vec<Point>>,
}

/// A run's metric series by key: a native run's typed keys (`train/loss`, ...; an unknown
/// `key` is a 422), an external run's logged names (its points' own timestamps as `time`).
pub(crate) async fn series_of(
    state: &AppState,
    run: &Run,
    key: Option<&str>,
    all_attempts: bool,
) -> ApiResult<BTreeMap<String, Vec<Point>>> {
    if run.source == RunSource::External {
        let series = state.store.external_series(run.id, key).await?;
        return Ok(series
            .into_iter()
            .map(|(k, points)| {
                let points = points
                    .into_iter()
                    .map(|p| Point {
                        step: p.step,
                        epoch: None,
                        value: p.value,
                        time: crate::store::tracking::millis_time(p.timestamp),
                        attempt: 1,
                    })
                    .collect();
                (k, points)
            })
            .collect());
    }
    let key = key
        .map(|k| {
            k.parse::<MetricKey>()
                .map_err(|e| ApiError::invalid("key", "invalid_value", e.to_string()))
        })
        .transpose()?;
    let series = state.store.metric_series(run.id, key, all_attempts).await?;
    Ok(series
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
}

async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<Series>> {
    let run = find_run(&state, &id).await?;
    let series = series_of(&state, &run, q.key.as_deref(), q.all_attempts).await?;
    Ok(Json(Series { series }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<i64>,
}

#[derive(Serialize)]
struct Logs {
    lines: Vec<LogLine>,
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<Logs>> {
    let run = find_run(&state, &id).await?;
    let tail = int_in("tail", q.tail.unwrap_or(200), 1, 100_000)?;
    Ok(Json(Logs {
        lines: state.store.log_tail(run.id, tail).await?,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictionsQuery {
    split: Option<Split>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct Predictions {
    split: Split,
    predictions: Vec<StoredPrediction>,
}

async fn predictions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PredictionsQuery>,
) -> ApiResult<Json<Predictions>> {
    let run = find_run(&state, &id).await?;
    let split = q.split.unwrap_or(Split::Test);
    let limit = int_in("limit", q.limit.unwrap_or(1000), 1, 100_000)?;
    let offset = int_in("offset", q.offset.unwrap_or(0), 0, i64::MAX)?;
    let predictions = state
        .store
        .predictions(run.id, split, limit, offset)
        .await?;
    Ok(Json(Predictions { split, predictions }))
}

/// One more event stream, or a 503 when too many are open.
pub(crate) fn stream_permit(state: &AppState) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    state.hub.stream_permit().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} event streams are open (or the service is shutting down); try again later",
                crate::live::MAX_STREAMS
            ),
        )
    })
}

/// A stream of `(event, last)` items that ends after the item marked last, or when the service
/// shuts down; it holds its place among the open streams while it lives.
pub(crate) fn ending_stream(
    closed: impl std::future::Future<Output = ()> + Send + 'static,
    permit: tokio::sync::OwnedSemaphorePermit,
    items: impl Stream<Item = (SseEvent, bool)> + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let items = Box::pin(items);
    let stream = futures_util::stream::unfold(
        (items, false, permit),
        |(mut items, done, permit)| async move {
            if done {
                return None;
            }
            let (ev, last) = items.next().await?;
            Some((Ok(ev), (items, last, permit)))
        },
    );
    futures_util::StreamExt::take_until(stream, closed)
}

/// Server-Sent Events of one run: `status` first (its status now), then as they happen
/// `started`, `progress`, `metric`, `log`, `checkpoint`, `finished`, `failed` and `status`;
/// the data is the event as JSON. The stream ends with the `status` event of the run's end
/// (at once for a run that has ended).
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let permit = stream_permit(&state)?;
    // subscribed before the status is read, so that an end in between is not missed
    let rx = state.hub.subscribe();
    let run = find_run(&state, &id).await?;
    let run_id = run.id;
    let now = LiveKind::Status {
        status: run.status,
        error: run.error.clone(),
    };
    let first = SseEvent::default()
        .event("status")
        .data(serde_json::to_string(&now).unwrap_or_default());
    let ended = !run.status.is_active();
    let live = BroadcastStream::new(rx).filter_map(move |ev| {
        let ev = ev.ok().filter(|e| e.run_id == run_id)?;
        let last = matches!(ev.kind, LiveKind::Status { status, .. } if !status.is_active());
        let data = match &ev.kind {
            LiveKind::Status { .. } => serde_json::to_string(&ev.kind),
            LiveKind::Worker(w) => serde_json::to_string(w),
        }
        .ok()?;
        Some((SseEvent::default().event(ev.name()).data(data), last))
    });
    let items = futures_util::stream::iter([(first, ended)]).chain(live);
    Ok(Sse::new(ending_stream(state.hub.closed(), permit, items)).keep_alive(KeepAlive::default()))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    let id = parse_id("run", &id)?;
    match state.scheduler.cancel(id).await? {
        CancelOutcome::Cancelled(run) => Ok(Json(*run)),
        CancelOutcome::AlreadyEnded(status) => Err(ApiError::conflict(format!(
            "run {id} already ended: {status}"
        ))),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("run {id}"))),
        CancelOutcome::Elsewhere(device) => Err(ApiError::conflict(format!(
            "run {id} is trained by another process ({device}, `modalbench train`); stop it there"
        ))),
    }
}
