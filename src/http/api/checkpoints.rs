//! A run's checkpoints over HTTP: `GET /api/v1/runs/{id}/checkpoint?which=best|last` streams
//! the folder as a tar archive (`run-7-best/config.json`, ...; `last` includes the optimiser
//! state and `trainer_state.json`), and `POST /api/v1/runs/{id}/register` copies the best
//! checkpoint under the models root as a new model, to fine-tune again.

use super::RunId;
use super::runs::find_run;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::store::runs::Run;
use crate::train::state::{BEST, LAST};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(download))
        .routes(routes!(register))
}

/// Which of a run's checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum Which {
    /// The best by the dev split's primary metric (the one the summary scores).
    #[default]
    Best,
    /// The latest, with the state to resume from.
    Last,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CheckpointQuery {
    /// `best` (by the dev split) or `last` (with the state to resume from).
    #[param(inline, default = "best")]
    which: Option<Which>,
}

/// The folder of a run's checkpoint, if the run wrote it.
fn checkpoint_dir(state: &AppState, run: &Run, which: Which) -> ApiResult<PathBuf> {
    let name = match which {
        Which::Best => BEST,
        Which::Last => LAST,
    };
    let dir = state.settings.run_dir(run.id).join("checkpoint").join(name);
    if !dir.join("model.safetensors").is_file() {
        return Err(ApiError::not_found(format!(
            "the {name} checkpoint of run {} (it is written during training)",
            run.id
        )));
    }
    Ok(dir)
}

/// One 512-byte ustar header for a regular file.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // the checksum is computed with its own field as spaces
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

#[utoipa::path(
    get,
    path = "/runs/{id}/checkpoint",
    operation_id = "download_checkpoint",
    tag = "checkpoints",
    summary = "Download a run's checkpoint",
    description = "The best (by the dev split) or last checkpoint as a streamed tar archive of a \
        Hugging Face folder (`run-7-best/config.json`, `model.safetensors`, tokenizer and \
        preprocessor files; `last` adds `optimizer.safetensors` and `trainer_state.json`).",
    params(RunId, CheckpointQuery),
    responses(
        (status = 200, description = "The archive.", content_type = "application/x-tar",
            body = Vec<u8>,
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"run-7-best.tar\"`"))),
        (status = 404, description = "No such run, or the checkpoint is not written yet \
            (`not_found`).", body = ErrorBody),
    ),
)]
async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CheckpointQuery>,
) -> ApiResult<Response> {
    let run = find_run(&state, &id).await?;
    let which = q.which.unwrap_or_default();
    let dir = checkpoint_dir(&state, &run, which)?;
    let prefix = format!(
        "run-{}-{}",
        run.id,
        if which == Which::Best { BEST } else { LAST }
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let archive = prefix.clone();
    // files are read on a blocking thread and sent in pieces: a large checkpoint never sits in
    // memory whole
    tokio::task::spawn_blocking(move || {
        let send = |chunk: std::io::Result<Vec<u8>>| tx.blocking_send(chunk).is_ok();
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .collect(),
            Err(e) => {
                send(Err(e));
                return;
            }
        };
        files.sort_by_key(|e| e.file_name());
        for entry in files {
            let name = format!("{archive}/{}", entry.file_name().to_string_lossy());
            let Ok(mut file) = std::fs::File::open(entry.path()) else {
                continue;
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if name.len() > 99 || !send(Ok(tar_header(&name, size).to_vec())) {
                return;
            }
            let mut left = size;
            while left > 0 {
                let mut buf = vec![0u8; left.min(1 << 20) as usize];
                if let Err(e) = file.read_exact(&mut buf) {
                    send(Err(e));
                    return;
                }
                left -= buf.len() as u64;
                if !send(Ok(buf)) {
                    return;
                }
            }
            let pad = (512 - size % 512) % 512;
            if pad > 0 && !send(Ok(vec![0u8; pad as usize])) {
                return;
            }
        }
        send(Ok(vec![0u8; 1024]));
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{prefix}.tar\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A name for a run's best checkpoint as a model.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RegisterModel)]
struct RegisterRequest {
    /// The new model's name, its folder under the models root (see [`valid_model_name`]).
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")]
    name: String,
}

/// The model a run's checkpoint became.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = RegisteredModel)]
struct Registered {
    name: String,
    from_run: i64,
}

/// Whether `name` can be a folder name under the models root: letters, digits, `.`, `_`, `-`,
/// not starting with a dot, at most 100 characters.
fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[utoipa::path(
    post,
    path = "/runs/{id}/register",
    operation_id = "register_checkpoint",
    tag = "checkpoints",
    summary = "Register a run's checkpoint as a model",
    description = "Copies the run's best checkpoint under the models root as a new model, to \
        fine-tune again.",
    params(RunId),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The model, registered.", body = Registered),
        (status = 409, description = "A model of that name exists, or the run has no best \
            checkpoint yet (`conflict`).", body = ErrorBody),
        (status = 422, description = "The name is not 1 to 100 letters, digits, `.`, `_` or \
            `-`, not starting with `.`.", body = ErrorBody),
    ),
)]
async fn register(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, axum::Json<Registered>)> {
    let run = find_run(&state, &id).await?;
    if !valid_model_name(&req.name) {
        return Err(ApiError::invalid(
            "name",
            "invalid_value",
            format!(
                "`name` must be 1 to 100 letters, digits, `.`, `_` or `-`, not starting with `.`; got `{}`",
                req.name
            ),
        ));
    }
    // the run is there; its state is not ready (a 404 would say the run is not)
    let from = checkpoint_dir(&state, &run, Which::Best).map_err(|_| {
        ApiError::conflict(format!(
            "run {} has no best checkpoint yet (it is written during training)",
            run.id
        ))
    })?;
    let root = state.settings.models_dir.clone();
    let name = req.name.clone();
    let copied = tokio::task::spawn_blocking(move || -> Result<bool, std::io::Error> {
        let dest = root.join(&name);
        if dest.exists() {
            return Ok(false);
        }
        // copied beside its place and renamed in, so the registry never sees half a model
        let tmp = root.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&from)? {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::copy(e.path(), tmp.join(e.file_name()))?;
            }
        }
        std::fs::rename(&tmp, &dest)?;
        Ok(true)
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(anyhow::Error::from)?;
    if !copied {
        return Err(ApiError::conflict(format!(
            "a model called `{}` already exists",
            req.name
        )));
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            name: req.name,
            from_run: run.id,
        }),
    ))
}
