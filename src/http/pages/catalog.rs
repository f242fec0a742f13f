//! The overview, leaderboard, models and datasets pages.

use super::runs::RunRow;
use super::{PageResult, bytes, duration, num, params, render};
use crate::http::AppState;
use crate::http::api::leaderboard::{BoardQuery, boards};
use crate::http::extract::ApiQuery;
use crate::models::registry::ModelInfo;
use crate::store::runs::{BoardMetric, RunFilter, StatusCounts};
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/leaderboard", get(leaderboard))
        .route("/models", get(models))
}

/// A model as a table row.
struct ModelRow {
    name: String,
    architecture: String,
    modality: String,
    params: String,
    max_length: String,
    problem: Option<String>,
}

impl From<ModelInfo> for ModelRow {
    fn from(m: ModelInfo) -> Self {
        ModelRow {
            architecture: m.architecture.unwrap_or_else(|| "?".into()),
            modality: m
                .modality
                .map(|x| x.as_str().to_string())
                .unwrap_or_else(|| "?".into()),
            params: params(m.num_parameters),
            max_length: m
                .max_length
                .map(|x| x.to_string())
                .unwrap_or_else(|| "–".into()),
            problem: m.problem,
            name: m.name,
        }
    }
}

/// A dataset as a table row.
struct DatasetRow {
    name: String,
    format: String,
    num_labels: i64,
    splits: String,
}

async fn model_rows_raw(state: &AppState) -> anyhow::Result<Vec<ModelInfo>> {
    state.registry.scan_async().await
}

async fn model_rows(state: &AppState) -> anyhow::Result<Vec<ModelRow>> {
    Ok(model_rows_raw(state)
        .await?
        .into_iter()
        .map(ModelRow::from)
        .collect())
}

async fn dataset_rows(state: &AppState) -> anyhow::Result<Vec<DatasetRow>> {
    Ok(state
        .store
        .list_datasets()
        .await?
        .into_iter()
        .map(|d| DatasetRow {
            splits: d
                .info
                .splits
                .iter()
                .map(|(name, s)| format!("{name} {}", s.examples))
                .collect::<Vec<_>>()
                .join(" · "),
            name: d.name,
            format: d.format,
            num_labels: d.num_labels,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    counts: StatusCounts,
    recent: Vec<RunRow>,
    models: Vec<ModelRow>,
    datasets: Vec<DatasetRow>,
    slots: Vec<String>,
}

async fn overview(State(state): State<AppState>) -> PageResult {
    let recent = state
        .store
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await?;
    render(&OverviewPage {
        counts: state.store.status_counts().await?,
        recent: recent.iter().map(RunRow::from).collect(),
        models: model_rows(&state).await?,
        datasets: dataset_rows(&state).await?,
        slots: state
            .scheduler
            .slots()
            .iter()
            .map(|s| s.name.clone())
            .collect(),
    })
}

/// A leaderboard row with bar widths (percent of the column's best) for the quality metrics.
struct BoardRowView {
    rank: usize,
    model: String,
    /// `text` or `text+image`, from the model registry (empty for a model no longer there).
    modality: &'static str,
    run_id: i64,
    accuracy: String,
    f1: String,
    auroc: String,
    accuracy_pct: u32,
    f1_pct: u32,
    auroc_pct: u32,
    train_time: String,
    samples_per_second: String,
    params: String,
    memory: String,
    device_hours: String,
    runs: i64,
}

struct BoardView {
    dataset: String,
    rows: Vec<BoardRowView>,
}

#[derive(Template)]
#[template(path = "leaderboard.html")]
struct LeaderboardPage {
    metric: &'static str,
    metrics: [&'static str; 4],
    boards: Vec<BoardView>,
}

fn pct(v: Option<f64>) -> u32 {
    (v.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0).round() as u32
}

async fn leaderboard(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<BoardQuery>,
) -> PageResult {
    let lb = boards(&state, q).await?;
    let modalities: std::collections::HashMap<String, &'static str> = model_rows_raw(&state)
        .await?
        .into_iter()
        .filter_map(|m| Some((m.name, m.modality?.as_str())))
        .collect();
    let boards = lb
        .boards
        .into_iter()
        .map(|b| BoardView {
            dataset: b.dataset,
            rows: b
                .rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| BoardRowView {
                    rank: i + 1,
                    accuracy: num(r.accuracy, 3),
                    f1: num(r.f1, 3),
                    auroc: num(r.auroc, 3),
                    accuracy_pct: pct(r.accuracy),
                    f1_pct: pct(r.f1),
                    auroc_pct: pct(r.auroc),
                    train_time: duration(r.train_seconds),
                    samples_per_second: num(r.samples_per_second, 1),
                    params: params(r.num_parameters),
                    memory: bytes(r.peak_memory_bytes),
                    device_hours: num(r.device_hours, 4),
                    modality: modalities.get(&r.model).copied().unwrap_or(""),
                    model: r.model,
                    run_id: r.run_id,
                    runs: r.runs,
                })
                .collect(),
        })
        .collect();
    render(&LeaderboardPage {
        metric: lb.metric.column(),
        metrics: BoardMetric::ALL.map(BoardMetric::column),
        boards,
    })
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    models: Vec<ModelRow>,
    models_dir: String,
}

async fn models(State(state): State<AppState>) -> PageResult {
    render(&ModelsPage {
        models: model_rows(&state).await?,
        models_dir: state.settings.models_dir.display().to_string(),
    })
}
