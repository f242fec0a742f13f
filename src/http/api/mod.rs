//! JSON API, version 1.

mod catalog;
mod checkpoints;
mod external;
pub mod leaderboard;
pub mod runs;
pub mod studies;

use super::AppState;
use super::error::ApiError;
use axum::Router;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(runs::router())
        .merge(external::router())
        .merge(checkpoints::router())
        .merge(catalog::router())
        .merge(leaderboard::router())
        .merge(studies::router())
        .fallback(|| async { ApiError::not_found("this API route") })
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
