//! JSON API, version 1.
//!
//! Each handler is declared once, with its `#[utoipa::path]` (method, path, parameters, body,
//! answers): [`routes`] registers it from that declaration (`utoipa_axum::routes!`), and the
//! same declarations make the OpenAPI document ([`openapi`]).

mod catalog;
mod checkpoints;
mod external;
pub mod leaderboard;
pub mod openapi;
pub mod runs;
pub mod studies;
mod worker;

use super::AppState;
use super::error::ApiError;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

/// Routes under `/api/v1`, each with its OpenAPI operation.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(runs::router())
        .merge(external::router())
        .merge(checkpoints::router())
        .merge(catalog::router())
        .merge(leaderboard::router())
        .merge(studies::router())
        .merge(worker::router())
        .merge(openapi::router())
}

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    let (router, _) = routes().split_for_parts();
    router.fallback(|| async { ApiError::not_found("this API route") })
}

/// Checks that an integer query parameter lies in `lo..=hi` (the pagination caps).
pub(crate) fn int_in(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
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

/// Parses a numeric id from a path segment; anything else names no resource.
pub(crate) fn parse_id(kind: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("{kind} `{raw}`")))
}

/// The schema of a query parameter that names one of `names`; empty counts as left out (as
/// an HTML form sends a field left unset), so the empty name is allowed too.
pub(crate) fn query_names<'a>(
    description: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(format!("{description} Empty: as if left out.")))
        .enum_values(Some(names.into_iter().chain([""])))
        .build()
}

/// The `{id}` of a run's paths.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read from the path as text by `parse_id`; declared for the document
pub(crate) struct RunId {
    /// The run's id (`id` of its JSON).
    id: i64,
}

/// The `{id}` of a study's paths.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read from the path as text by `parse_id`; declared for the document
pub(crate) struct StudyId {
    /// The study's id.
    id: i64,
}
