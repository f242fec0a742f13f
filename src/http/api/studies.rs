//! Studies over the API: queue one (`POST /api/v1/studies`), list them, read one with its
//! runs, follow its runs live (Server-Sent Events), cancel it as a whole.

use super::{StudyId, parse_id};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::live::LiveKind;
use crate::models::registry::Modality;
use crate::store::runs::{Run, StatusCounts};
use crate::store::studies::Study;
use crate::studies::{StudyRequest, SubmitStudyError};
use crate::verdict::{self, StudyVerdict, Thresholds};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(events))
        .routes(routes!(verdict))
}

/// Query of the verdict: the rule's thresholds and the format.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerdictQuery {
    /// Smallest accuracy gain that counts (absolute: 0.01 is one point).
    #[param(minimum = 0, maximum = 1, default = 0.01)]
    pub min_gain: Option<f64>,
    /// Training-time ratio above which a gain comes "at a cost".
    #[param(minimum = 1, default = 2)]
    pub max_cost_ratio: Option<f64>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = verdict_format_schema)]
    pub format: Option<String>,
}

fn verdict_format_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("`json` (default), `csv`, or `md` (a Markdown table)."))
        .enum_values(Some(["json", "csv", "md"]))
        .build()
}

impl VerdictQuery {
    /// The thresholds, or a 422 naming a bad one.
    pub fn thresholds(&self) -> Result<Thresholds, ApiError> {
        let d = Thresholds::default();
        let t = Thresholds {
            min_gain: self.min_gain.unwrap_or(d.min_gain),
            max_cost_ratio: self.max_cost_ratio.unwrap_or(d.max_cost_ratio),
        };
        if !(0.0..=1.0).contains(&t.min_gain) {
            return Err(ApiError::invalid(
                "min_gain",
                "invalid_value",
                format!("`min_gain` must be between 0 and 1, got {}", t.min_gain),
            ));
        }
        if !(t.max_cost_ratio.is_finite() && t.max_cost_ratio >= 1.0) {
            return Err(ApiError::invalid(
                "max_cost_ratio",
                "invalid_value",
                format!(
                    "`max_cost_ratio` must be 1 or more, got {}",
                    t.max_cost_ratio
                ),
            ));
        }
        Ok(t)
    }
}

/// The verdict of a study with the thresholds `t`.
pub async fn study_verdict(
    state: &AppState,
    study: &Study,
    t: Thresholds,
) -> ApiResult<StudyVerdict> {
    let modalities: HashMap<String, Modality> = state
        .registry
        .scan_async()
        .await?
        .into_iter()
        .filter_map(|m| Some((m.name, m.modality?)))
        .collect();
    Ok(verdict::study_verdict(
        &state.store,
        study.id,
        &study.name,
        &study.spec.datasets,
        &modalities,
        t,
    )
    .await?)
}

/// `GET /api/v1/studies/{id}/verdict[?min_gain=0.01&max_cost_ratio=2&format=json|csv|md]`.
#[utoipa::path(
    get,
    path = "/studies/{id}/verdict",
    operation_id = "get_study_verdict",
    tag = "studies",
    summary = "Does the image help? The study's verdict",
    description = "Per dataset of the study: the best text-only and text+image configurations, \
        the gain with its interval and p-value, how much the image is used, the cost ratios, \
        the verdict and the rule's clause that gave it.",
    params(StudyId, VerdictQuery),
    responses(
        (status = 200, description = "The verdict.", content(
            (StudyVerdict = "application/json"),
            (String = "text/csv"),
            (String = "text/markdown"),
        )),
        (status = 422, description = "A threshold out of its range, or an unknown format.",
            body = ErrorBody),
    ),
)]
async fn verdict(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<VerdictQuery>,
) -> ApiResult<Response> {
    let study = find_study(&state, &id).await?;
    let t = q.thresholds()?;
    let v = study_verdict(&state, &study, t).await?;
    let file = |ext: &str| format!("attachment; filename=\"study-{}-verdict.{ext}\"", study.id);
    Ok(match q.format.as_deref().unwrap_or("json") {
        "json" => Json(v).into_response(),
        "csv" => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, file("csv")),
            ],
            verdict::csv(&v),
        )
            .into_response(),
        "md" => (
            [
                (
                    header::CONTENT_TYPE,
                    "text/markdown; charset=utf-8".to_string(),
                ),
                (header::CONTENT_DISPOSITION, file("md")),
            ],
            verdict::markdown(&v),
        )
            .into_response(),
        other => {
            return Err(ApiError::invalid(
                "format",
                "invalid_value",
                format!("`format` must be json, csv or md, got `{other}`"),
            ));
        }
    })
}

impl From<SubmitStudyError> for ApiError {
    fn from(e: SubmitStudyError) -> Self {
        match e {
            SubmitStudyError::Invalid(e) => ApiError::invalid(&e.field, "invalid_value", e.message),
            SubmitStudyError::Internal(e) => ApiError::from(e),
        }
    }
}

/// A study with its runs (each with `study_id` and its cell's `grid` values).
#[derive(Serialize, utoipa::ToSchema)]
pub struct StudyWithRuns {
    #[serde(flatten)]
    pub study: Study,
    pub runs: Vec<Run>,
}

/// `POST /api/v1/studies`: a [`StudyRequest`].
#[utoipa::path(
    post,
    path = "/studies",
    operation_id = "create_study",
    tag = "studies",
    summary = "Queue a study",
    description = "A run for every model × dataset × grid combination × seed (at most 500), \
        each with the `base` options (and its model's `per_model` ones); stored only when every \
        run resolves.",
    request_body = StudyRequest,
    responses(
        (status = 201, description = "The study with its runs, queued.", body = StudyWithRuns,
            headers(("Location" = String, description = "`/api/v1/studies/{id}`"))),
        (status = 422, description = "A bad list, grid or option, or a run that cannot be \
            queued; `field` names the study's field (`models`, `grid.learning_rate`, \
            `base.epochs`, ...).", body = ErrorBody),
    ),
)]
async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<StudyRequest>,
) -> ApiResult<Response> {
    let (study, runs) = state.scheduler.submit_study(req).await?;
    let location = format!("/api/v1/studies/{}", study.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(StudyWithRuns { study, runs }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Most studies to list.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// Studies to skip.
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Studies with their runs per status.
#[derive(Serialize, utoipa::ToSchema)]
struct StudyList {
    studies: Vec<Study>,
}

#[utoipa::path(
    get,
    path = "/studies",
    operation_id = "list_studies",
    tag = "studies",
    summary = "List studies",
    params(ListQuery),
    responses((status = 200, description = "The studies.", body = StudyList)),
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<StudyList>> {
    let limit = super::int_in("limit", q.limit.unwrap_or(100), 1, 1000)?;
    let offset = super::int_in("offset", q.offset.unwrap_or(0), 0, i64::MAX)?;
    Ok(Json(StudyList {
        studies: state.store.list_studies(limit, offset).await?,
    }))
}

/// The study `raw` names, or a 404.
pub async fn find_study(state: &AppState, raw: &str) -> ApiResult<Study> {
    let id = parse_id("study", raw)?;
    state
        .store
        .get_study(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("study {id}")))
}

#[utoipa::path(
    get,
    path = "/studies/{id}",
    operation_id = "get_study",
    tag = "studies",
    summary = "One study",
    params(StudyId),
    responses((status = 200, description = "The study with its runs.", body = StudyWithRuns)),
)]
async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StudyWithRuns>> {
    let mut study = find_study(&state, &id).await?;
    let runs = state.store.study_runs(study.id).await?;
    // counted from the runs returned: a run that ended between the two reads would otherwise
    // show as running in the counts and ended in the list
    study.counts = StatusCounts::of(&runs);
    Ok(Json(StudyWithRuns { study, runs }))
}

#[utoipa::path(
    post,
    path = "/studies/{id}/cancel",
    operation_id = "cancel_study",
    tag = "studies",
    summary = "Cancel a study",
    description = "Cancels every run of the study that has not ended.",
    params(StudyId),
    responses((status = 200, description = "The study.", body = Study)),
)]
async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Study>> {
    let id = parse_id("study", &id)?;
    match state.scheduler.cancel_study(id).await? {
        Some(study) => Ok(Json(study)),
        None => Err(ApiError::not_found(format!("study {id}"))),
    }
}

/// Server-Sent Events of a study's runs: `status` (with the run's id), `progress` and
/// `finished`, each as JSON with a `run_id`.
#[utoipa::path(
    get,
    path = "/studies/{id}/events",
    operation_id = "follow_study",
    tag = "studies",
    summary = "Follow a study live",
    description = "Server-Sent Events: `study` first (`{\"study_id\", \"active_runs\"}`), \
        then the study's runs' `status`, `progress` and `finished` as they happen, each with its \
        data as JSON with the run's `run_id`. The stream ends when the study's last run ends (at \
        once when none is active).",
    params(StudyId),
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
) -> ApiResult<Sse<impl Stream<Item = Result<axum::response::sse::Event, Infallible>>>> {
    let permit = super::runs::stream_permit(&state)?;
    let rx = state.hub.subscribe();
    let study = find_study(&state, &id).await?;
    let runs = state.store.study_runs(study.id).await?;
    let ids: HashSet<i64> = runs.iter().map(|r| r.id).collect();
    // the stream ends when the last of the study's runs ends
    let mut active: HashSet<i64> = runs
        .iter()
        .filter(|r| r.status.is_active())
        .map(|r| r.id)
        .collect();
    let ended = active.is_empty();
    let first = axum::response::sse::Event::default()
        .event("study")
        .data(serde_json::json!({"study_id": study.id, "active_runs": active.len()}).to_string());
    let live = BroadcastStream::new(rx).filter_map(move |ev| {
        let ev = ev.ok().filter(|e| ids.contains(&e.run_id))?;
        let name = ev.name();
        if !matches!(name, "status" | "progress" | "finished") {
            return None;
        }
        if let LiveKind::Status { status, .. } = &ev.kind {
            if status.is_active() {
                active.insert(ev.run_id);
            } else {
                active.remove(&ev.run_id);
            }
        }
        let last = active.is_empty();
        let mut data = match &ev.kind {
            LiveKind::Status { .. } => serde_json::to_value(&ev.kind),
            LiveKind::Worker(w) => serde_json::to_value(w),
        }
        .ok()?;
        data["run_id"] = ev.run_id.into();
        Some((
            axum::response::sse::Event::default()
                .event(name)
                .data(data.to_string()),
            last,
        ))
    });
    let items = futures_util::stream::iter([(first, ended)]).chain(live);
    Ok(Sse::new(super::runs::ending_stream(
        state.hub.closed(),
        permit,
        items,
    ))
    .keep_alive(KeepAlive::default()))
}
