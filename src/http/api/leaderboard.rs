//! `/leaderboard`: the best run of each model on each dataset.

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiQuery;
use crate::store::runs::{BoardMetric, BoardRow};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/leaderboard", get(leaderboard))
}

/// Query of the leaderboard: `dataset` (all if absent) and `metric` (default `auroc`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardQuery {
    pub dataset: Option<String>,
    pub metric: Option<String>,
}

/// One dataset's board.
#[derive(Debug, Serialize)]
pub struct Board {
    pub dataset: String,
    pub rows: Vec<BoardRow>,
}

/// The leaderboard answer.
#[derive(Debug, Serialize)]
pub struct Leaderboard {
    pub metric: BoardMetric,
    pub boards: Vec<Board>,
}

/// Builds the boards; an unknown metric or dataset is a 422 naming the parameter.
pub async fn boards(state: &AppState, q: BoardQuery) -> ApiResult<Leaderboard> {
    let metric_name = q
        .metric
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or("auroc");
    let metric: BoardMetric = metric_name.parse().map_err(|e| {
        ApiError::invalid(
            "metric",
            "invalid_value",
            format!("query parameter `metric`: {e}"),
        )
    })?;
    let datasets = state.store.list_datasets().await?;
    let dataset = q.dataset.filter(|d| !d.is_empty());
    if let Some(d) = &dataset
        && !datasets.iter().any(|r| &r.name == d)
    {
        return Err(ApiError::invalid(
            "dataset",
            "unknown_dataset",
            format!("unknown dataset `{d}`"),
        ));
    }
    let rows = state.store.leaderboard(dataset.as_deref(), metric).await?;
    let boards = datasets
        .into_iter()
        .filter(|d| dataset.as_ref().is_none_or(|want| want == &d.name))
        .map(|d| Board {
            rows: rows
                .iter()
                .filter(|r| r.dataset == d.name)
                .cloned()
                .collect(),
            dataset: d.name,
        })
        .collect();
    Ok(Leaderboard { metric, boards })
}

async fn leaderboard(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<BoardQuery>,
) -> ApiResult<Json<Leaderboard>> {
    Ok(Json(boards(&state, q).await?))
}
