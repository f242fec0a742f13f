//! `POST /worker/runs/{id}/events`: the events of a worker that a cluster scheduler started
//! (the Slurm executor), in numbered batches. The service applies each sequence number once, in
//! order, so a worker that sends a batch again after a lost answer stores nothing twice.
//!
//! Authorised by the attempt's own token (`Authorization: Bearer <token>`, made when the job was
//! submitted and stored only as its hash), not the API token: a node holds only the token of the
//! runs it trains.

use super::{RunId, parse_id};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::live::LiveKind;
use crate::protocol::Event;
use crate::store::cluster::{BatchRefused, ClusterJob, token_hash};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most events one batch may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(run_jobs))
}

/// A run's cluster jobs.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Jobs {
    /// One per attempt that ran on the cluster, oldest first (empty for a run trained here).
    jobs: Vec<ClusterJob>,
}

/// `GET /runs/{id}/jobs`: the Slurm jobs of a run's attempts.
#[utoipa::path(
    get,
    path = "/runs/{id}/jobs",
    operation_id = "get_run_jobs",
    tag = "runs",
    summary = "A run's cluster jobs",
    description = "The Slurm job of each attempt: its id, state, pending reason and place in \
        its partition's queue, node and exit code, as the service last saw them.",
    params(RunId),
    responses((status = 200, description = "The jobs.", body = Jobs)),
)]
pub(crate) async fn run_jobs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Jobs>> {
    let run = super::runs::find_run(&state, &id).await?;
    Ok(Json(Jobs {
        jobs: state.store.cluster_jobs(run.id).await?,
    }))
}

/// A batch of a worker's events.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventBatch {
    /// The run's attempt the worker is (its token's).
    attempt: i64,
    /// The sequence number of the first event (the attempt's events are numbered from 1).
    first_seq: i64,
    /// The events, in order: `{"event": "metric", "key": "train/loss", "step": 10, ...}`, as a
    /// local worker writes them on its stdout.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
}

/// What the service holds after a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchAck {
    /// The last sequence number the service has applied: every event up to it is stored.
    last_seq: i64,
    /// How many of this batch's events were new.
    applied: usize,
}

/// `POST /worker/runs/{id}/events`: applies a cluster worker's batch of events.
#[utoipa::path(
    post,
    path = "/worker/runs/{id}/events",
    operation_id = "post_worker_events",
    tag = "workers",
    summary = "Report a cluster worker's events",
    description = "For workers the Slurm executor starts, with their attempt's token (not the \
        API token). Events already applied (a batch sent again) are skipped; the answer says up \
        to where the service holds them.",
    params(RunId),
    request_body = EventBatch,
    security(("worker_token" = [])),
    responses(
        (status = 200, description = "Applied (or already held).", body = BatchAck),
        (status = 401, description = "No token, or not this run's worker's (`unauthorized`).",
            body = ErrorBody),
        (status = 409, description = "The batch starts after events the service lacks \
            (`sequence_gap`).", body = ErrorBody),
        (status = 410, description = "The attempt is over: the run was cancelled, ended or \
            requeued (`attempt_over`); the worker stops.", body = ErrorBody),
    ),
)]
pub(crate) async fn post_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Json<BatchAck>> {
    let id = parse_id("run", &id)?;
    let token = crate::http::auth::bearer(&headers)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    if batch.first_seq < 1 {
        return Err(ApiError::invalid(
            "first_seq",
            "invalid_value",
            format!("`first_seq` starts at 1, got {}", batch.first_seq),
        ));
    }
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::invalid(
            "events",
            "too_many",
            format!(
                "at most {MAX_EVENTS_PER_BATCH} events a batch, got {}",
                batch.events.len()
            ),
        ));
    }
    let applied = state
        .store
        .apply_worker_events(id, &token_hash(token), batch.first_seq, &batch.events)
        .await
        .map_err(|e| match e {
            BatchRefused::Unauthorized => unauthorized(),
            BatchRefused::Gone { .. } => {
                ApiError::new(StatusCode::GONE, "attempt_over", e.to_string())
            }
            BatchRefused::Gap { .. } => {
                ApiError::new(StatusCode::CONFLICT, "sequence_gap", e.to_string())
            }
            BatchRefused::Store(e) => ApiError::from(e),
        })?;
    if applied.attempt != batch.attempt {
        // the token decided which attempt's events these are; a worker that says otherwise
        // is confused, but what it sent was its token's
        tracing::warn!(
            run_id = id,
            token_attempt = applied.attempt,
            said = batch.attempt,
            "a worker's batch named another attempt than its token's"
        );
    }
    let new = &batch.events[batch.events.len() - applied.new_events..];
    for ev in new {
        // predictions are bulky and only useful from the store
        if !matches!(ev, Event::Predictions { .. }) {
            state.hub.send(id, LiveKind::Worker(ev.clone()));
        }
    }
    if applied.outcome.is_some() {
        state.scheduler.worker_reported(id);
    }
    Ok(Json(BatchAck {
        last_seq: applied.last_seq,
        applied: applied.new_events,
    }))
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a worker reports with its attempt's token: `Authorization: Bearer <token>`",
    )
}
