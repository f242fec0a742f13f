//! `/runs`: submit, list, read, follow and cancel fine-tuning runs.

use super::{RunId, int_in, parse_id};
use crate::data::Split;
use crate::eval::MetricKey;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::live::LiveKind;
use crate::queue::CancelOutcome;
use crate::runs::RunRequest;
use crate::store::logs::LogLine;
use crate::store::metrics::{Point, downsample};
use crate::store::predictions::StoredPrediction;
use crate::store::runs::{Run, RunFilter, RunSource, RunStatus};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(metrics, super::external::log_points))
        .routes(routes!(logs))
        .routes(routes!(predictions))
        .routes(routes!(events))
        .routes(routes!(cancel))
}

/// `POST /api/v1/runs`: a [`RunRequest`] (`model`, `dataset`, any options).
#[utoipa::path(
    post,
    path = "/runs",
    operation_id = "create_run",
    tag = "runs",
    summary = "Queue a run",
    request_body = RunRequest,
    responses(
        (status = 201, description = "The run, queued.", body = Run,
            headers(("Location" = String, description = "The run's URL, `/api/v1/runs/{id}`."))),
        (status = 422, body = ErrorBody, description = "An unknown or unusable model, an unknown \
            dataset, an unknown field, an option of the wrong kind or out of its range, or one \
            the service's devices cannot honour (`fp16` without CUDA, `gpus` beyond its slots); \
            `field` names it."),
    )
)]
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs on this dataset.
    pub dataset: Option<String>,
    /// Only runs of this model.
    pub model: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = status_names)]
    pub status: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = source_names)]
    pub source: Option<String>,
    /// Most runs to list.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
    /// Runs to skip, newest first.
    #[param(minimum = 0, default = 0)]
    pub offset: Option<i64>,
}

fn status_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "Only runs in this status.",
        RunStatus::ALL.map(RunStatus::as_str),
    )
}

fn source_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "Only runs trained here (`native`) or logged here (`external`).",
        RunSource::ALL.map(RunSource::as_str),
    )
}

impl ListQuery {
    /// The store filter, or a 422 naming a bad parameter.
    pub fn filter(self) -> Result<RunFilter, ApiError> {
        /// A named value of the query (empty counts as absent), or a 422 naming it.
        fn named<T: std::str::FromStr<Err = crate::data::UnknownName>>(
            field: &str,
            given: Option<&str>,
        ) -> Result<Option<T>, ApiError> {
            given
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<T>().map_err(|e| {
                        ApiError::invalid(
                            field,
                            "invalid_value",
                            format!("query parameter `{field}`: {e}"),
                        )
                    })
                })
                .transpose()
        }
        let status = named::<RunStatus>("status", self.status.as_deref())?;
        let source = named::<RunSource>("source", self.source.as_deref())?;
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

/// Runs, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct RunList {
    runs: Vec<Run>,
}

#[utoipa::path(
    get,
    path = "/runs",
    operation_id = "list_runs",
    tag = "runs",
    summary = "List runs",
    description = "Runs, newest first, native and external, filtered by dataset, model, status \
        and source.",
    params(ListQuery),
    responses((status = 200, description = "The runs.", body = RunList)),
)]
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

#[utoipa::path(
    get,
    path = "/runs/{id}",
    operation_id = "get_run",
    tag = "runs",
    summary = "One run",
    description = "Its status, options (`config`: an external run's logged parameters), \
        progress and, once it succeeded, its test summary and costs.",
    params(RunId),
    responses((status = 200, description = "The run.", body = Run)),
)]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(find_run(&state, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MetricsQuery {
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = series_key_schema)]
    key: Option<String>,
    /// Every attempt's points (a resumed run reports the steps after its checkpoint again),
    /// instead of the latest attempt's point of each step.
    #[serde(default)]
    all_attempts: bool,
    /// At most this many points per series: a longer series is downsampled on the server to
    /// its first and last points and the lowest and highest point of each of
    /// `(max_points - 2) / 2` equal step ranges (what a chart of that many pixels draws).
    #[param(minimum = 4, maximum = 1000000)]
    max_points: Option<i64>,
}

/// A native run's [`MetricKey`], or any name an external run logged.
fn series_key_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, Object, Type};
    AnyOfBuilder::new()
        .description(Some(
            "Only this series: a native run's key (`eval/f1`; another is a 422) or a name an \
             external run logged.",
        ))
        .item(utoipa::openapi::Ref::from_schema_name(
            <MetricKey as utoipa::ToSchema>::name(),
        ))
        .item(Object::with_type(Type::String))
        .build()
        .into()
}

/// What a downsampled series request names: run, key, all attempts, `max_points`.
type CurveKey = (i64, Option<String>, bool, usize);

/// Downsampled series answers (their JSON) by request, each with the run's
/// [`series_generation`](crate::store::Store::series_generation) when it was read: reading a
/// 100k-point series takes about half a second here, its kept answer microseconds. At most
/// [`CurveCache::CAPACITY`] answers are kept, each at most `max_points` points a series.
#[derive(Default)]
pub struct CurveCache {
    answers: std::sync::Mutex<std::collections::HashMap<CurveKey, (u64, axum::body::Bytes)>>,
}

impl CurveCache {
    /// Most answers kept; beyond, the cache starts again empty.
    pub const CAPACITY: usize = 256;

    fn get(&self, key: &CurveKey, generation: u64) -> Option<axum::body::Bytes> {
        let answers = self.answers.lock().expect("curve cache");
        answers
            .get(key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, body)| body.clone())
    }

    /// The kept answer of `run_id`'s whole series at `max_points`, if it is still current,
    /// for embedding in its page: JSON whose `<`, `>` and `&` are written as `\u003c`... (the
    /// same JSON), so that no metric key can end the `<script>` element that holds it.
    pub(crate) fn page_copy(
        &self,
        store: &crate::store::Store,
        run_id: i64,
        max_points: usize,
    ) -> Option<String> {
        let generation = store.series_generation(run_id)?;
        let body = self.get(&(run_id, None, false, max_points), generation)?;
        let text = std::str::from_utf8(&body).ok()?;
        Some(
            text.replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026"),
        )
    }

    fn put(&self, key: CurveKey, generation: u64, body: axum::body::Bytes) {
        let mut answers = self.answers.lock().expect("curve cache");
        if answers.len() >= Self::CAPACITY {
            answers.clear();
        }
        answers.insert(key, (generation, body));
    }
}

/// Metric series by key.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Series {
    /// Each series' points in step order.
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

#[utoipa::path(
    get,
    path = "/runs/{id}/metrics",
    operation_id = "get_run_metrics",
    tag = "runs",
    summary = "A run's metric series",
    description = "A native run's keys are `scope/metric`: `train/loss`, `train/learning_rate`, \
        `train/grad_norm`, and `loss`, `accuracy`, `f1`, `auroc`, `vqa_accuracy` under `eval/` \
        (dev evaluations during training), `test/` (the final scores) or `dev/` (when the test \
        split has no labels); an external run's are the names it logged.",
    params(RunId, MetricsQuery),
    responses((status = 200, description = "The series.", body = Series)),
)]
async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Response> {
    let run = find_run(&state, &id).await?;
    let Some(max) = q.max_points else {
        let series = series_of(&state, &run, q.key.as_deref(), q.all_attempts).await?;
        return Ok(Json(Series { series }).into_response());
    };
    let max = int_in("max_points", max, 4, 1_000_000)? as usize;
    let key = (run.id, q.key.clone(), q.all_attempts, max);
    // read before the series: a write in between makes the kept copy look older than it is
    let generation = state.store.series_generation(run.id);
    if let Some(body) = generation.and_then(|g| state.curves.get(&key, g)) {
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let mut series = series_of(&state, &run, q.key.as_deref(), q.all_attempts).await?;
    for points in series.values_mut() {
        *points = downsample(std::mem::take(points), max);
    }
    let body = axum::body::Bytes::from(
        serde_json::to_vec(&Series { series }).map_err(anyhow::Error::from)?,
    );
    if let Some(g) = generation {
        state.curves.put(key, g, body.clone());
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// The last this many lines.
    #[param(minimum = 1, maximum = 100000, default = 200)]
    tail: Option<i64>,
}

/// A run's log lines, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
struct Logs {
    lines: Vec<LogLine>,
}

#[utoipa::path(
    get,
    path = "/runs/{id}/logs",
    operation_id = "get_run_logs",
    tag = "runs",
    summary = "A run's log",
    params(RunId, LogsQuery),
    responses((status = 200, description = "The log's last lines.", body = Logs)),
)]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PredictionsQuery {
    /// The split scored.
    #[param(inline, default = "test")]
    split: Option<Split>,
    /// Most predictions to list.
    #[param(minimum = 1, maximum = 100000, default = 1000)]
    limit: Option<i64>,
    /// Predictions to skip.
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Per-example outputs on one split.
#[derive(Serialize, utoipa::ToSchema)]
struct Predictions {
    split: Split,
    predictions: Vec<StoredPrediction>,
}

#[utoipa::path(
    get,
    path = "/runs/{id}/predictions",
    operation_id = "get_run_predictions",
    tag = "runs",
    summary = "A run's predictions",
    description = "Per example of a split: the gold `label` (absent without labels), the \
        predicted `pred` and the probabilities per label.",
    params(RunId, PredictionsQuery),
    responses((status = 200, description = "The predictions.", body = Predictions)),
)]
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
#[utoipa::path(
    get,
    path = "/runs/{id}/events",
    operation_id = "follow_run",
    tag = "runs",
    summary = "Follow a run live",
    description = "Server-Sent Events: `status` first (`{\"status\", \"error\"}`, the run's \
        status now), then as they happen the worker's `started`, `progress`, `metric`, `log`, \
        `checkpoint`, `finished`, `failed` and `status`, each with its data as JSON. The stream \
        ends with the `status` of the run's end (at once for a run that has ended).",
    params(RunId),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream",
            body = String),
        (status = 503, description = "Too many event streams are open, or the service is \
            shutting down (`too_many_streams`).", body = ErrorBody),
    ),
)]
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

#[utoipa::path(
    post,
    path = "/runs/{id}/cancel",
    operation_id = "cancel_run",
    tag = "runs",
    summary = "Cancel a run",
    description = "Cancels a queued or running run; its worker is killed.",
    params(RunId),
    responses(
        (status = 200, description = "The run, cancelled.", body = Run),
        (status = 409, description = "The run already ended (`conflict`).", body = ErrorBody),
    ),
)]
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
