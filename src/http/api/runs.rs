//! `/runs`: submit, list, read, follow and cancel fine-tuning runs.

use super::parse_id;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::live::LiveKind;
use crate::models::registry;
use crate::protocol::TrainConfig;
use crate::queue::CancelOutcome;
use crate::store::logs::LogLine;
use crate::store::metrics::Point;
use crate::store::predictions::StoredPrediction;
use crate::store::runs::{Run, RunFilter, RunStatus};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
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
        .route("/runs/{id}/metrics", get(metrics))
        .route("/runs/{id}/logs", get(logs))
        .route("/runs/{id}/predictions", get(predictions))
        .route("/runs/{id}/events", get(events))
        .route("/runs/{id}/cancel", post(cancel))
}

/// Body of `POST /api/v1/runs`. Everything but `model` and `dataset` has a default
/// ([`TrainConfig::default`], priority 0).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub model: String,
    pub dataset: String,
    pub epochs: Option<i64>,
    pub batch_size: Option<i64>,
    pub learning_rate: Option<f64>,
    pub seed: Option<u64>,
    pub max_length: Option<i64>,
    pub priority: Option<i64>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_steps: Option<i64>,
}

/// A submission that passed validation.
#[derive(Debug)]
pub struct ValidRun {
    pub model: String,
    pub dataset: String,
    pub config: TrainConfig,
    pub priority: i64,
}

fn int_in(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            field,
            "invalid_value",
            format!("`{field}` must be between {lo} and {hi}, got {v}"),
        ))
    }
}

/// Checks a submission against the known models and datasets and the allowed ranges. The
/// first problem found is returned, naming its field.
pub async fn validate(state: &AppState, req: RunRequest) -> Result<ValidRun, ApiError> {
    let d = TrainConfig::default();
    let model = registry::find(&state.settings.models_dir, &req.model).ok_or_else(|| {
        let known: Vec<String> = registry::scan(&state.settings.models_dir)
            .into_iter()
            .map(|m| m.name)
            .collect();
        ApiError::invalid(
            "model",
            "unknown_model",
            format!(
                "unknown model `{}` (known: {})",
                req.model,
                known.join(", ")
            ),
        )
    })?;
    if let Some(problem) = &model.problem {
        return Err(ApiError::invalid(
            "model",
            "unusable_model",
            format!("model `{}` cannot be used: {problem}", req.model),
        ));
    }
    if state.store.get_dataset(&req.dataset).await?.is_none() {
        let known = state.store.dataset_names().await?;
        return Err(ApiError::invalid(
            "dataset",
            "unknown_dataset",
            format!(
                "unknown dataset `{}` (known: {})",
                req.dataset,
                known.join(", ")
            ),
        ));
    }
    let epochs = int_in("epochs", req.epochs.unwrap_or(d.epochs as i64), 1, 1000)? as u32;
    let batch_size = int_in(
        "batch_size",
        req.batch_size.unwrap_or(d.batch_size as i64),
        1,
        4096,
    )? as u32;
    let learning_rate = req.learning_rate.unwrap_or(d.learning_rate);
    if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate <= 1.0) {
        return Err(ApiError::invalid(
            "learning_rate",
            "invalid_value",
            format!("`learning_rate` must be a number in (0, 1], got {learning_rate}"),
        ));
    }
    let positions = model.max_length.unwrap_or(512);
    let max_length = int_in(
        "max_length",
        // the default never exceeds what the model's positions allow
        req.max_length
            .unwrap_or((d.max_length as i64).min(positions)),
        2,
        positions,
    )? as u32;
    let priority = int_in("priority", req.priority.unwrap_or(0), -1000, 1000)?;
    let warmup_ratio = req.warmup_ratio.unwrap_or(d.warmup_ratio);
    if !(0.0..1.0).contains(&warmup_ratio) {
        return Err(ApiError::invalid(
            "warmup_ratio",
            "invalid_value",
            format!("`warmup_ratio` must be in [0, 1), got {warmup_ratio}"),
        ));
    }
    let weight_decay = req.weight_decay.unwrap_or(d.weight_decay);
    if !(0.0..=1.0).contains(&weight_decay) {
        return Err(ApiError::invalid(
            "weight_decay",
            "invalid_value",
            format!("`weight_decay` must be in [0, 1], got {weight_decay}"),
        ));
    }
    let max_steps = req
        .max_steps
        .map(|s| int_in("max_steps", s, 1, 10_000_000))
        .transpose()?
        .map(|s| s as u32);
    Ok(ValidRun {
        model: req.model,
        dataset: req.dataset,
        config: TrainConfig {
            epochs,
            batch_size,
            learning_rate,
            seed: req.seed.unwrap_or(d.seed),
            max_length,
            warmup_ratio,
            weight_decay,
            max_steps,
        },
        priority,
    })
}

/// Queues a validated run and wakes the scheduler.
pub async fn submit(state: &AppState, v: ValidRun) -> ApiResult<Run> {
    let run = state
        .store
        .insert_run(&v.model, &v.dataset, &v.config, v.priority)
        .await?;
    state.hub.send(
        run.id,
        LiveKind::Status {
            status: RunStatus::Queued,
            error: None,
        },
    );
    state.scheduler.wake();
    Ok(run)
}

async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Response> {
    let valid = validate(&state, req).await?;
    let run = submit(&state, valid).await?;
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
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl ListQuery {
    /// The store filter, or a 422 naming a bad parameter.
    pub fn filter(self) -> Result<RunFilter, ApiError> {
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<RunStatus>().map_err(|_| {
                let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid(
                    "status",
                    "invalid_value",
                    format!("unknown status `{s}` (one of: {})", all.join(", ")),
                )
            })?),
        };
        Ok(RunFilter {
            dataset: self.dataset.filter(|s| !s.is_empty()),
            model: self.model.filter(|s| !s.is_empty()),
            status,
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
}

#[derive(Serialize)]
struct Series {
    series: BTreeMap<String, Vec<Point>>,
}

async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<Series>> {
    let run = find_run(&state, &id).await?;
    let series = state.store.metric_series(run.id, q.key.as_deref()).await?;
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
    split: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct Predictions {
    split: String,
    predictions: Vec<StoredPrediction>,
}

async fn predictions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PredictionsQuery>,
) -> ApiResult<Json<Predictions>> {
    let run = find_run(&state, &id).await?;
    let split = q.split.unwrap_or_else(|| "test".into());
    let limit = int_in("limit", q.limit.unwrap_or(1000), 1, 100_000)?;
    let offset = int_in("offset", q.offset.unwrap_or(0), 0, i64::MAX)?;
    let predictions = state
        .store
        .predictions(run.id, &split, limit, offset)
        .await?;
    Ok(Json(Predictions { split, predictions }))
}

/// Server-Sent Events of one run: `status`, `started`, `progress`, `metric`, `log`,
/// `checkpoint`, `finished`, `failed`; the data is the event as JSON.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<axum::response::sse::Event, Infallible>>>> {
    let run = find_run(&state, &id).await?;
    let rx = state.hub.subscribe();
    let run_id = run.id;
    let stream = BroadcastStream::new(rx).filter_map(move |ev| {
        let ev = ev.ok().filter(|e| e.run_id == run_id)?;
        let data = match &ev.kind {
            LiveKind::Status { .. } => serde_json::to_string(&ev.kind),
            LiveKind::Worker(w) => serde_json::to_string(w),
        }
        .ok()?;
        Some(Ok(axum::response::sse::Event::default()
            .event(ev.name())
            .data(data)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    let id = parse_id("run", &id)?;
    match state.scheduler.cancel(id).await? {
        CancelOutcome::Cancelled(run) => Ok(Json(*run)),
        CancelOutcome::AlreadyEnded(status) => Err(ApiError::conflict(format!(
            "run {id} already ended: {status}"
        ))),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("run {id}"))),
    }
}
