//! `/models` and `/datasets`: what runs can use.

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::models::registry::{self, ModelInfo};
use crate::store::datasets::DatasetRecord;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/models", get(models))
        .route("/models/{name}", get(model))
        .route("/datasets", get(datasets))
        .route("/datasets/{name}", get(dataset))
}

#[derive(Serialize)]
struct Models {
    models: Vec<ModelInfo>,
}

async fn models(State(state): State<AppState>) -> ApiResult<Json<Models>> {
    let dir = state.settings.models_dir.clone();
    let models = tokio::task::spawn_blocking(move || registry::scan(&dir))
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(Models { models }))
}

async fn model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ModelInfo>> {
    registry::find(&state.settings.models_dir, &name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("model `{name}`")))
}

#[derive(Serialize)]
struct Datasets {
    datasets: Vec<DatasetRecord>,
}

async fn datasets(State(state): State<AppState>) -> ApiResult<Json<Datasets>> {
    Ok(Json(Datasets {
        datasets: state.store.list_datasets().await?,
    }))
}

async fn dataset(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<DatasetRecord>> {
    state
        .store
        .get_dataset(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("dataset `{name}`")))
}
