//! External runs through the native API: runs trained elsewhere, logged here beside the runs
//! this service trains. `POST /runs/external` opens one, `POST /runs/{id}/metrics` adds metric
//! points in batches (the fastest way in), `POST /runs/{id}/end` closes it. The
//! MLflow-compatible API (`http::mlflow`) writes the same runs.

use super::{RunId, parse_id};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::store::runs::{Run, RunStatus};
use crate::store::tracking::{
    DATASET_KEYS, LoggedPoint, MODEL_KEYS, NewExternalRun, TrackingError, millis_in_range,
    millis_now,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most points one batch request may carry.
pub const MAX_POINTS_PER_BATCH: usize = 10_000;
/// Longest metric key, parameter or tag name, and value.
const MAX_KEY: usize = 250;
const MAX_VALUE: usize = 6000;

// `POST /runs/{id}/metrics` ([`log_points`]) is routed with the runs' `GET` of the same path.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(end))
}

impl From<TrackingError> for ApiError {
    fn from(e: TrackingError) -> Self {
        match e {
            TrackingError::NotFound(what) => ApiError::not_found(what),
            TrackingError::AlreadyExists(_) => ApiError::conflict(e.to_string()),
            TrackingError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            TrackingError::Busy(cause) => ApiError::busy(cause),
            TrackingError::Database(e) => ApiError::from(anyhow::Error::from(e)),
            TrackingError::Other(e) => ApiError::from(e),
        }
    }
}

/// `POST /api/v1/runs/external`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRun {
    /// The experiment (by name) to file it under, created if new; MLflow's "Default" if
    /// absent.
    experiment: Option<String>,
    /// The run's name.
    name: Option<String>,
    /// The model name it is shown under on leaderboards.
    model: Option<String>,
    /// The dataset name it is shown under on leaderboards.
    dataset: Option<String>,
    /// Its parameters (shown as its `config`).
    #[serde(default)]
    #[schema(schema_with = names_schema)]
    params: BTreeMap<String, String>,
    /// Its tags.
    #[serde(default)]
    #[schema(schema_with = names_schema)]
    tags: BTreeMap<String, String>,
}

/// Names of 1 to [`MAX_KEY`] characters with text values of at most [`MAX_VALUE`] (see
/// [`check_names`]).
fn names_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let text = |min: Option<usize>, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(min)
            .max_length(Some(max))
            .build()
    };
    ObjectBuilder::new()
        .property_names(Some(text(Some(1), MAX_KEY)))
        .additional_properties(Some(AdditionalProperties::RefOr(
            text(None, MAX_VALUE).into(),
        )))
        .build()
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

#[utoipa::path(
    post,
    path = "/runs/external",
    operation_id = "open_external_run",
    tag = "external runs",
    summary = "Open an external run",
    description = "A run trained elsewhere, logged here beside the native runs (`running` \
        until it is ended).",
    request_body = NewRun,
    responses(
        (status = 201, description = "The run, opened.", body = Run,
            headers(("Location" = String, description = "The run's URL, `/api/v1/runs/{id}`."))),
        (status = 409, description = "The experiment is deleted (`conflict`).", body = ErrorBody),
    ),
)]
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
        tags.insert(MODEL_KEYS[0].into(), m);
    }
    if let Some(d) = req.dataset.filter(|d| !d.is_empty()) {
        tags.insert(DATASET_KEYS[0].into(), d);
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LoggedPoint)]
pub(crate) struct Point {
    /// The series' name: 1 to 250 characters.
    #[schema(min_length = 1, max_length = 250)]
    key: String,
    value: f64,
    #[serde(default)]
    #[schema(default = 0)]
    step: i64,
    /// Milliseconds since 1970 (UTC); now if absent.
    timestamp: Option<i64>,
}

/// A batch of metric points.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PointBatch)]
pub(crate) struct Batch {
    /// At most 10,000.
    #[schema(max_items = 10000)]
    points: Vec<Point>,
}

/// How many points were stored.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Logged {
    logged: usize,
}

/// `POST /api/v1/runs/{id}/metrics`: `{"points": [{"key", "value", "step"?, "timestamp"?}]}`,
/// at most [`MAX_POINTS_PER_BATCH`], all stored or none.
#[utoipa::path(
    post,
    path = "/runs/{id}/metrics",
    operation_id = "log_run_metrics",
    tag = "external runs",
    summary = "Log an external run's metric points",
    description = "Up to 10,000 points a request, all stored or none.",
    params(RunId),
    request_body = Batch,
    responses(
        (status = 200, description = "The points, stored.", body = Logged),
        (status = 409, description = "The run is native, or has ended (`conflict`).",
            body = ErrorBody),
    ),
)]
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
        // a bad value of the request's, not a conflict with the run's state
        if let Some(t) = p.timestamp.filter(|&t| !millis_in_range(t)) {
            return Err(ApiError::invalid(
                &format!("points[{i}].timestamp"),
                "invalid_value",
                format!(
                    "`points[{i}].timestamp` {t} is out of range (milliseconds since 1970, \
                     years -9999 to 9999)"
                ),
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

/// How an external run ended.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EndRun)]
struct End {
    /// `succeeded` (default), `failed` or `cancelled`.
    #[schema(schema_with = ended_schema)]
    status: Option<RunStatus>,
}

/// The statuses a run can end with (not the active ones).
fn ended_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let mut names: Vec<serde_json::Value> = RunStatus::ALL
        .into_iter()
        .filter(|s| !s.is_active())
        .map(|s| s.as_str().into())
        .collect();
    names.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(names))
        .default(Some(RunStatus::Succeeded.as_str().into()))
        .build()
}

/// `POST /api/v1/runs/{id}/end`: the run ended; its leaderboard scores come from its latest
/// `test/…`, `eval/…` or bare `accuracy`, `f1`, `auroc`, `loss` points.
#[utoipa::path(
    post,
    path = "/runs/{id}/end",
    operation_id = "end_external_run",
    tag = "external runs",
    summary = "End an external run",
    description = "Its leaderboard scores are its latest `test/…`, `test_…`, `eval/…`, \
        `eval_…` or bare `accuracy`, `f1`, `auroc`, `loss` points.",
    params(RunId),
    request_body = End,
    responses(
        (status = 200, description = "The run, ended.", body = Run),
        (status = 409, description = "The run is native (`conflict`).", body = ErrorBody),
    ),
)]
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
