//! Run pages: the list, one run (live while it trains), the submission form, cancel.

use super::{PageResult, duration, num, params, render, render_status, when};
use crate::http::AppState;
use crate::http::api::runs::{ListQuery, RunRequest, find_run, submit, validate};
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::models::registry;
use crate::protocol::TrainConfig;
use crate::queue::CancelOutcome;
use crate::store::runs::{Run, RunStatus};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use std::collections::HashMap;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/runs", get(list))
        .route("/runs/new", get(new_form).post(new_submit))
        .route("/runs/{id}", get(detail))
        .route("/runs/{id}/cancel", post(cancel))
}

/// A run as a table row.
pub(crate) struct RunRow {
    pub id: i64,
    pub status: &'static str,
    pub model: String,
    pub dataset: String,
    pub progress: u32,
    pub accuracy: String,
    pub f1: String,
    pub auroc: String,
    pub train_time: String,
    pub created: String,
}

impl From<&Run> for RunRow {
    fn from(r: &Run) -> Self {
        let s = r.summary.as_ref();
        RunRow {
            id: r.id,
            status: r.status.as_str(),
            model: r.model.clone(),
            dataset: r.dataset.clone(),
            progress: (r.progress.unwrap_or(0.0) * 100.0).round() as u32,
            accuracy: num(s.map(|s| s.accuracy), 3),
            f1: num(s.map(|s| s.f1), 3),
            auroc: num(s.and_then(|s| s.auroc), 3),
            train_time: duration(s.map(|s| s.train_seconds)),
            created: when(Some(&r.created_at)),
        }
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    runs: Vec<RunRow>,
    /// Every status, and whether the filter selects it.
    statuses: Vec<(&'static str, bool)>,
    model: String,
    dataset: String,
    any_active: bool,
}

async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> PageResult {
    let (status, model, dataset) = (
        q.status.clone().unwrap_or_default(),
        q.model.clone().unwrap_or_default(),
        q.dataset.clone().unwrap_or_default(),
    );
    let runs = state.store.list_runs(&q.filter()?).await?;
    render(&RunsPage {
        any_active: runs.iter().any(|r| r.status.is_active()),
        runs: runs.iter().map(RunRow::from).collect(),
        statuses: RunStatus::ALL
            .iter()
            .map(|s| (s.as_str(), s.as_str() == status))
            .collect(),
        model,
        dataset,
    })
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    run: RunRow,
    active: bool,
    device: String,
    attempts: i64,
    started: String,
    finished: String,
    error: Option<String>,
    config: Vec<(&'static str, String)>,
    summary: Vec<(&'static str, String)>,
    eval_rows: Vec<EvalRow>,
    logs: Vec<String>,
}

/// One row of the per-evaluation table.
struct EvalRow {
    step: i64,
    epoch: String,
    values: Vec<String>,
}

/// Metric columns of the evaluation table.
const EVAL_KEYS: [&str; 4] = ["eval/loss", "eval/accuracy", "eval/f1", "eval/auroc"];

fn config_rows(c: &TrainConfig, priority: i64) -> Vec<(&'static str, String)> {
    vec![
        ("epochs", c.epochs.to_string()),
        ("batch_size", c.batch_size.to_string()),
        ("learning_rate", format!("{:e}", c.learning_rate)),
        ("seed", c.seed.to_string()),
        ("max_length", c.max_length.to_string()),
        ("warmup_ratio", c.warmup_ratio.to_string()),
        ("weight_decay", c.weight_decay.to_string()),
        (
            "max_steps",
            c.max_steps
                .map(|s| s.to_string())
                .unwrap_or_else(|| "–".into()),
        ),
        ("priority", priority.to_string()),
    ]
}

async fn detail(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let run = find_run(&state, &id).await?;
    let series = state.store.metric_series(run.id, None).await?;
    let mut steps: Vec<(i64, Option<f64>)> = series
        .get("eval/loss")
        .map(|pts| pts.iter().map(|p| (p.step, p.epoch)).collect())
        .unwrap_or_default();
    steps.dedup_by_key(|s| s.0);
    let eval_rows = steps
        .into_iter()
        .map(|(step, epoch)| EvalRow {
            step,
            epoch: num(epoch, 2),
            values: EVAL_KEYS
                .iter()
                .map(|k| {
                    num(
                        series
                            .get(*k)
                            .and_then(|pts| pts.iter().find(|p| p.step == step))
                            .map(|p| p.value),
                        4,
                    )
                })
                .collect(),
        })
        .collect();
    let summary = match &run.summary {
        None => Vec::new(),
        Some(s) => vec![
            ("test accuracy", num(Some(s.accuracy), 4)),
            ("test F1", num(Some(s.f1), 4)),
            ("test AUROC", num(s.auroc, 4)),
            ("test loss", num(Some(s.loss), 4)),
            ("train time", duration(Some(s.train_seconds))),
            ("samples/s", num(Some(s.samples_per_second), 1)),
            ("parameters", params(Some(s.num_parameters))),
            ("steps", s.steps.to_string()),
        ],
    };
    let logs = state
        .store
        .log_tail(run.id, 60)
        .await?
        .into_iter()
        .map(|l| format!("{} [{}] {}", when(Some(&l.time)), l.stream, l.line))
        .collect();
    render(&RunPage {
        active: run.status.is_active(),
        device: run.device.clone().unwrap_or_else(|| "–".into()),
        attempts: run.attempts,
        started: when(run.started_at.as_deref()),
        finished: when(run.finished_at.as_deref()),
        error: run.error.clone(),
        config: config_rows(&run.config, run.priority),
        summary,
        eval_rows,
        logs,
        run: RunRow::from(&run),
    })
}

#[derive(Template)]
#[template(path = "new_run.html")]
struct NewRunPage {
    models: Vec<(String, String)>,
    datasets: Vec<String>,
    values: HashMap<String, String>,
    error: Option<String>,
    error_field: String,
}

impl NewRunPage {
    fn value(&self, field: &str) -> String {
        self.values.get(field).cloned().unwrap_or_default()
    }
}

/// Form fields after model and dataset, with their defaults shown as placeholders.
const NUMERIC_FIELDS: [&str; 9] = [
    "epochs",
    "batch_size",
    "learning_rate",
    "seed",
    "max_length",
    "priority",
    "warmup_ratio",
    "weight_decay",
    "max_steps",
];

async fn form_page(
    state: &AppState,
    values: HashMap<String, String>,
    error: Option<ApiError>,
) -> PageResult {
    let dir = state.settings.models_dir.clone();
    let models = tokio::task::spawn_blocking(move || registry::scan(&dir))
        .await
        .map_err(anyhow::Error::from)?
        .into_iter()
        .filter(|m| m.usable)
        .map(|m| {
            let label = format!(
                "{} ({}, {}, {})",
                m.name,
                m.architecture.as_deref().unwrap_or("?"),
                m.modality.map(|x| x.as_str()).unwrap_or("?"),
                params(m.num_parameters)
            );
            (m.name, label)
        })
        .collect();
    let datasets = state.store.dataset_names().await?;
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let page = NewRunPage {
        models,
        datasets,
        values,
        error_field: error
            .as_ref()
            .and_then(|e| e.field.clone())
            .unwrap_or_default(),
        error: error.map(|e| e.message),
    };
    render_status(status, &page)
}

async fn new_form(State(state): State<AppState>) -> PageResult {
    let d = TrainConfig::default();
    let values = HashMap::from([
        ("epochs".to_string(), d.epochs.to_string()),
        ("batch_size".to_string(), d.batch_size.to_string()),
        (
            "learning_rate".to_string(),
            format!("{:e}", d.learning_rate),
        ),
        ("seed".to_string(), d.seed.to_string()),
        ("max_length".to_string(), d.max_length.to_string()),
        ("priority".to_string(), "0".to_string()),
        ("warmup_ratio".to_string(), d.warmup_ratio.to_string()),
        ("weight_decay".to_string(), d.weight_decay.to_string()),
    ]);
    form_page(&state, values, None).await
}

/// Parses form strings into a [`RunRequest`]; empty fields take their defaults.
fn request_from_form(f: &HashMap<String, String>) -> Result<RunRequest, ApiError> {
    fn parse<T: std::str::FromStr>(
        f: &HashMap<String, String>,
        k: &str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        match f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::invalid(
                    k,
                    "invalid_value",
                    format!("`{k}` must be {what}, got `{s}`"),
                )
            }),
        }
    }
    if let Some(k) = f.keys().find(|k| {
        !["model", "dataset"].contains(&k.as_str()) && !NUMERIC_FIELDS.contains(&k.as_str())
    }) {
        return Err(ApiError::invalid(
            k,
            "unknown_field",
            format!("unknown field `{k}`"),
        ));
    }
    Ok(RunRequest {
        model: f.get("model").cloned().unwrap_or_default(),
        dataset: f.get("dataset").cloned().unwrap_or_default(),
        epochs: parse(f, "epochs", "an integer")?,
        batch_size: parse(f, "batch_size", "an integer")?,
        learning_rate: parse(f, "learning_rate", "a number")?,
        seed: parse(f, "seed", "a non-negative integer")?,
        max_length: parse(f, "max_length", "an integer")?,
        priority: parse(f, "priority", "an integer")?,
        warmup_ratio: parse(f, "warmup_ratio", "a number")?,
        weight_decay: parse(f, "weight_decay", "a number")?,
        max_steps: parse(f, "max_steps", "an integer")?,
    })
}

async fn new_submit(
    State(state): State<AppState>,
    Form(f): Form<HashMap<String, String>>,
) -> PageResult {
    let checked = match request_from_form(&f) {
        Ok(req) => validate(&state, req).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(valid) => {
            let run = submit(&state, valid).await?;
            Ok(Redirect::to(&format!("/runs/{}", run.id)).into_response())
        }
        Err(e) if e.status.is_client_error() => form_page(&state, f, Some(e)).await,
        Err(e) => Err(e.into()),
    }
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let run = find_run(&state, &id).await?;
    match state.scheduler.cancel(run.id).await? {
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("run {}", run.id)).into()),
        _ => Ok(Redirect::to(&format!("/runs/{}", run.id)).into_response()),
    }
}
