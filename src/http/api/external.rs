//! External runs through the native API: runs trained elsewhere, logged here beside the runs
//! this service trains. `POST /runs/external` opens one, `POST /runs/{id}/metrics` adds metric
//! points in batches (the fastest way in), `POST /runs/{id}/end` closes it. The
//! MLflow-compatible API (`http::mlflow`) writes the same runs.

use super::parse_id;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::store::runs::{Run, RunStatus};
use crate::store::tracking::{LoggedPoint, NewExternalRun, TrackingError, millis_now};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most points one batch request may carry.
pub const MAX_POINTS_PER_BATCH: usize = 10_000;
/// Longest metric key, parameter or tag name, and value.
const MAX_KEY: usize = 250;
const MAX_VALUE: usize = 6000;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/external", post(create))
        .route("/runs/{id}/end", post(end))
}

impl From<TrackingError> for ApiError {
    fn from(e: TrackingError) -> Self {
        match e {
            TrackingError::NotFound(what) => ApiError::not_found(what),
            TrackingError::AlreadyExists(_) => ApiError::conflict(e.to_string()),
            TrackingError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            TrackingError::Database(e) => ApiError::from(anyhow::Error::from(e)),
            TrackingError::Other(e) => ApiError::from(e),
        }
    }
}

/// `POST /api/v1/runs/external`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRun {
    /// The experiment (by name) to file it under, created if new; MLflow's "Default" if
    /// absent.
    experiment: Option<String>,
    name: Option<String>,
    /// The model and dataset names it is shown under on leaderboards.
    model: Option<String>,
    dataset: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn check_names(field: &str, map: &BTreeMap<String, String>) -> ApiResult<()> {
    for (k, v) in map {
        if k.is_empty() || k.chars().count() > MAX_KEY || v.chars().count() > MAX_VALUE {
            return Err(ApiError::invalid(
                field,
                "invalid_value",
                format!(
                    "`{field}`: names must have 1 to {MAX_KEY} characters and values at most \
                     {MAX_VALUE}"
                ),
            ));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<NewRun>,
) -> ApiResult<Response> {
    check_names("params", &req.params)?;
    check_names("tags", &req.tags)?;
    let experiment_id = match req.experiment.as_deref().filter(|e| !e.is_empty()) {
        None => 0,
        Some(name) => match state.store.experiment_by_name(name).await {
            Ok(e) => e.id,
            Err(TrackingError::NotFound(_)) => {
                match state
                    .store
                    .create_experiment(name, None, &BTreeMap::new())
                    .await
                {
                    Ok(id) => id,
                    // created by a concurrent request meanwhile
                    Err(TrackingError::AlreadyExists(_)) => {
                        state.store.experiment_by_name(name).await?.id
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mut tags = req.tags;
    if let Some(m) = req.model.filter(|m| !m.is_empty()) {
        tags.insert("modalbench.model".into(), m);
    }
    if let Some(d) = req.dataset.filter(|d| !d.is_empty()) {
        tags.insert("modalbench.dataset".into(), d);
    }
    let id = state
        .store
        .create_external_run(&NewExternalRun {
            experiment_id,
            run_name: req.name,
            user_id: None,
            start_time: None,
            tags,
            params: req.params,
        })
        .await?;
    let run = found(&state, id).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/runs/{id}"))],
        Json(run),
    )
        .into_response())
}

async fn found(state: &AppState, id: i64) -> ApiResult<Run> {
    state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id}")))
}

/// One point of a batch; the step defaults to 0 and the timestamp (ms) to now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Point {
    key: String,
    value: f64,
    #[serde(default)]
    step: i64,
    timestamp: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    points: Vec<Point>,
}

#[derive(Serialize)]
pub(crate) struct Logged {
    logged: usize,
}

/// `POST /api/v1/runs/{id}/metrics`: `{"points": [{"key", "value", "step"?, "timestamp"?}]}`,
/// at most [`MAX_POINTS_PER_BATCH`], all stored or none.
pub(crate) async fn log_points(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(batch): ApiJson<Batch>,
) -> ApiResult<Json<Logged>> {
    let id = parse_id("run", &id)?;
    if batch.points.len() > MAX_POINTS_PER_BATCH {
        return Err(ApiError::invalid(
            "points",
            "too_many",
            format!(
                "`points` holds {} points; at most {MAX_POINTS_PER_BATCH} a request",
                batch.points.len()
            ),
        ));
    }
    let now = millis_now();
    let mut points = Vec::with_capacity(batch.points.len());
    for (i, p) in batch.points.iter().enumerate() {
        if p.key.is_empty() || p.key.chars().count() > MAX_KEY {
            return Err(ApiError::invalid(
                &format!("points[{i}].key"),
                "invalid_value",
                format!("`points[{i}].key` must have 1 to {MAX_KEY} characters"),
            ));
        }
        points.push(LoggedPoint {
            key: &p.key,
            value: p.value,
            timestamp: p.timestamp.unwrap_or(now),
            step: p.step,
        });
    }
    state
        .store
        .log_external(id, &points, &BTreeMap::new(), &BTreeMap::new())
        .await?;
    Ok(Json(Logged {
        logged: points.len(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    /// `succeeded` (default), `failed` or `cancelled`.
    status: Option<RunStatus>,
}

/// `POST /api/v1/runs/{id}/end`: the run ended; its leaderboard scores come from its latest
/// `test/…`, `eval/…` or bare `accuracy`, `f1`, `auroc`, `loss` points.
async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<End>,
) -> ApiResult<Json<Run>> {
    let id = parse_id("run", &id)?;
    let status = req.status.unwrap_or(RunStatus::Succeeded);
    if status.is_active() {
        return Err(ApiError::invalid(
            "status",
            "invalid_value",
            format!("`status` must be succeeded, failed or cancelled, got {status}"),
        ));
    }
    state
        .store
        .update_external_run(id, Some(status), None, None)
        .await?;
    Ok(Json(found(&state, id).await?))
}
