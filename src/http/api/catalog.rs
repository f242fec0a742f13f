//! `/models` and `/datasets`: what runs can use.

use crate::data::{self, Check, Options, Source};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::models::registry::ModelInfo;
use crate::store::datasets::DatasetRecord;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(models))
        .routes(routes!(model))
        .routes(routes!(datasets, register))
        .routes(routes!(dataset))
}

/// The checkpoints under the models root.
#[derive(Serialize, utoipa::ToSchema)]
struct Models {
    models: Vec<ModelInfo>,
}

/// The `{name}` of a model's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // declared for the document
struct ModelName {
    /// The model's folder name.
    name: String,
}

/// The `{name}` of a dataset's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // declared for the document
struct DatasetName {
    /// The dataset's registered name.
    name: String,
}

#[utoipa::path(
    get,
    path = "/models",
    operation_id = "list_models",
    tag = "catalog",
    summary = "List models",
    description = "The checkpoints under the models root: architecture, modality, parameters, \
        longest input, usable or why not.",
    responses((status = 200, description = "The models.", body = Models)),
)]
async fn models(State(state): State<AppState>) -> ApiResult<Json<Models>> {
    Ok(Json(Models {
        models: state.registry.scan_async().await?,
    }))
}

#[utoipa::path(
    get,
    path = "/models/{name}",
    operation_id = "get_model",
    tag = "catalog",
    summary = "One model",
    params(ModelName),
    responses((status = 200, description = "The model.", body = ModelInfo)),
)]
async fn model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ModelInfo>> {
    state
        .registry
        .find_async(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("model `{name}`")))
}

/// The registered datasets.
#[derive(Serialize, utoipa::ToSchema)]
struct Datasets {
    datasets: Vec<DatasetRecord>,
}

#[utoipa::path(
    get,
    path = "/datasets",
    operation_id = "list_datasets",
    tag = "catalog",
    summary = "List datasets",
    description = "The registered datasets: format and options, task, label names, splits with \
        their example, labeled and per-label counts, problems.",
    responses((status = 200, description = "The datasets.", body = Datasets)),
)]
async fn datasets(State(state): State<AppState>) -> ApiResult<Json<Datasets>> {
    Ok(Json(Datasets {
        datasets: state.store.list_datasets().await?,
    }))
}

#[utoipa::path(
    get,
    path = "/datasets/{name}",
    operation_id = "get_dataset",
    tag = "catalog",
    summary = "One dataset",
    params(DatasetName),
    responses((status = 200, description = "The dataset.", body = DatasetRecord)),
)]
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

/// Body of `POST /api/v1/datasets`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RegisterDataset)]
pub struct RegisterRequest {
    /// Name runs will use: 1 to 64 letters, digits, `-`, `_`, `.`; not starting with `.` (see
    /// `valid_name`).
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// The dataset folder; must be inside one of the data roots.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Format name; recognised from the folder (or its `modalbench.toml`) if absent.
    pub format: Option<String>,
    /// Format options, as in `modalbench.toml`.
    #[serde(default)]
    pub options: Option<Options>,
    /// `strict` (default): fail with the first 20 problems; `report`: skip bad lines, count them.
    #[serde(default)]
    pub check: Check,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The folder `path` names, resolved (`..` and symlinks followed), if it lies inside one of
/// `roots` (resolved the same way). A path outside the roots gets the same answer whether or
/// not something is there.
pub fn confine(path: &std::path::Path, roots: &[PathBuf]) -> Result<PathBuf, ApiError> {
    let real_roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let within = |p: &std::path::Path| real_roots.iter().any(|r| p.starts_with(r));
    let outside = || {
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        ApiError::invalid(
            "path",
            "outside_data_roots",
            format!(
                "`path` {} is not inside the data roots ({}); start the service with --data-root to allow another folder",
                path.display(),
                shown.join(", ")
            ),
        )
    };
    let real = match std::fs::canonicalize(path) {
        Ok(real) if within(&real) => real,
        Ok(_) => return Err(outside()),
        Err(_) if !within(&crate::data::paths::normalise(path)) => return Err(outside()),
        Err(_) => {
            return Err(ApiError::invalid(
                "path",
                "invalid_value",
                format!("`path` {} does not exist", path.display()),
            ));
        }
    };
    if !real.is_dir() {
        return Err(ApiError::invalid(
            "path",
            "invalid_value",
            format!("`path` {} is not a folder", path.display()),
        ));
    }
    Ok(real)
}

/// Registers a dataset folder: checks the name, confines the path, reads and checks every
/// split (images included), then stores it. Nothing is stored when any check fails.
#[utoipa::path(
    post,
    path = "/datasets",
    operation_id = "register_dataset",
    tag = "catalog",
    summary = "Register a dataset",
    description = "Registers a folder inside the data roots: its format is recognised (or \
        named), every split read and checked, images included; nothing is stored when a check \
        fails. Registering the same name and folder again reads it again.",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The dataset, registered.", body = DatasetRecord,
            headers(("Location" = String, description = "`/api/v1/datasets/{name}`"))),
        (status = 409, description = "The name is registered from another folder (`conflict`).",
            body = ErrorBody),
        (status = 422, description = "A bad name, a path outside the data roots \
            (`outside_data_roots`) or not a folder, an unknown format (`unknown_format`), or \
            files that do not read as the format (`invalid_dataset`).", body = ErrorBody),
    ),
)]
async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Response> {
    if !valid_name(&req.name) {
        return Err(ApiError::invalid(
            "name",
            "invalid_value",
            format!(
                "`name` `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`",
                req.name
            ),
        ));
    }
    let root = {
        // resolving the path reads the file system
        let (path, roots) = (req.path.clone(), state.settings.dataset_roots());
        tokio::task::spawn_blocking(move || confine(&path, &roots))
            .await
            .map_err(anyhow::Error::from)??
    };
    if let Some(existing) = state.store.get_dataset(&req.name).await?
        && existing.info.source.root != root
    {
        return Err(ApiError::conflict(format!(
            "a dataset `{}` is already registered from {}",
            req.name,
            existing.info.source.root.display()
        )));
    }
    let source = match (&req.format, req.options) {
        (Some(format), options) => {
            data::formats::by_name(format)
                .map_err(|e| ApiError::invalid("format", "unknown_format", format!("{e:#}")))?;
            Source {
                format: format.clone(),
                root: root.clone(),
                options: options.unwrap_or_default(),
            }
        }
        (None, options) => {
            let detected = tokio::task::spawn_blocking({
                let root = root.clone();
                move || data::detect(&root)
            })
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|e| ApiError::invalid("path", "invalid_value", format!("{e:#}")))?;
            let mut source = detected.ok_or_else(|| {
                ApiError::invalid(
                    "format",
                    "unknown_format",
                    format!(
                        "no known dataset layout in {}; name the `format` (one of: {})",
                        root.display(),
                        data::formats::names().join(", ")
                    ),
                )
            })?;
            if let Some(o) = options {
                source.options = o;
            }
            source
        }
    };
    let (name, check) = (req.name.clone(), req.check);
    let info = tokio::task::spawn_blocking(move || data::inspect(&name, &source, check))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| ApiError::invalid("path", "invalid_dataset", format!("{e:#}")))?;
    state.store.upsert_dataset(&req.name, &info).await?;
    let record = state
        .store
        .get_dataset(&req.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("dataset vanished"))?;
    let location = format!("/api/v1/datasets/{}", req.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(record),
    )
        .into_response())
}
