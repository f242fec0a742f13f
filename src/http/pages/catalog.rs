//! The overview, leaderboard, models and datasets pages.

use super::runs::RunRow;
use super::{PageResult, bytes, duration, num, params, render};
use crate::http::AppState;
use crate::http::api::leaderboard::{BoardQuery, boards};
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

/// A leaderboard row with bar widths (percent) for the quality metrics.
struct BoardRowView {
    rank: usize,
    model: String,
    /// `text` or `text+image`, from the model registry (empty for a model no longer there).
    modality: &'static str,
    /// Logged from elsewhere.
    external: bool,
    configuration: String,
    run_id: i64,
    runs: i64,
    /// `mean ± std` of each quality metric, its interval and bar width.
    metrics: Vec<(String, String, u32)>,
    train_time: String,
    samples_per_second: String,
    params: String,
    memory: String,
    device_hours: String,
}

struct BoardView {
    dataset: String,
    rows: Vec<BoardRowView>,
}

/// A sortable column header: its label, link and whether the board is sorted by it.
struct Header {
    label: &'static str,
    title: &'static str,
    href: String,
    arrow: &'static str,
    numeric: bool,
}

#[derive(Template)]
#[template(path = "leaderboard.html")]
struct LeaderboardPage {
    metric: &'static str,
    metric_links: Vec<(&'static str, String)>,
    headers: Vec<Header>,
    boards: Vec<BoardView>,
    model: String,
    modality: String,
    min_runs: i64,
    sort: String,
    order: &'static str,
    csv: String,
    json: String,
    total: usize,
}

fn pct(v: Option<f64>) -> u32 {
    (v.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0).round() as u32
}

/// `/leaderboard?...` with `q`'s filters and the given overrides.
fn board_link(path: &str, q: &BoardQuery, set: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, String)> = [
        ("metric", q.metric.clone()),
        ("model", q.model.clone()),
        ("modality", q.modality.clone()),
        ("min_runs", q.min_runs.map(|n| n.to_string())),
        ("sort", q.sort.clone()),
        ("order", q.order.clone()),
        ("dataset", q.dataset.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v.filter(|v| !v.is_empty())?)))
    .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
    .collect();
    pairs.extend(
        set.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.to_string())),
    );
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

async fn leaderboard(
    State(state): State<AppState>,
    super::PageQuery(q): super::PageQuery<BoardQuery>,
) -> PageResult {
    let lb = boards(&state, q.clone()).await?;
    let headers = crate::http::api::leaderboard::COLUMNS
        .iter()
        .map(|c| {
            let current = lb.sort == c.key;
            // a click on the sorted column flips it; on another, its natural order
            let order = match (current, lb.order) {
                (true, "desc") => "asc",
                (true, _) => "desc",
                (false, _) => "",
            };
            Header {
                label: c.label,
                title: c.title,
                href: board_link("/leaderboard", &q, &[("sort", c.key), ("order", order)]),
                arrow: match (current, lb.order) {
                    (true, "desc") => " ▼",
                    (true, _) => " ▲",
                    _ => "",
                },
                numeric: c.numeric(),
            }
        })
        .collect();
    let shown = |a: &crate::http::api::leaderboard::Aggregate| match (a.mean, a.std) {
        (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
        (Some(m), None) => format!("{m:.3}"),
        _ => "–".into(),
    };
    let interval = |a: &crate::http::api::leaderboard::Aggregate| match (a.ci_low, a.ci_high) {
        (Some(l), Some(h)) => format!("{l:.3} to {h:.3}"),
        _ => String::new(),
    };
    let mut total = 0;
    let boards = lb
        .boards
        .into_iter()
        .map(|b| BoardView {
            dataset: b.dataset,
            rows: b
                .rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    total += 1;
                    BoardRowView {
                        rank: i + 1,
                        metrics: [&r.accuracy, &r.f1, &r.auroc]
                            .into_iter()
                            .map(|a| (shown(a), interval(a), pct(a.mean)))
                            .chain(std::iter::once((shown(&r.loss), interval(&r.loss), 0)))
                            .collect(),
                        train_time: duration(r.train_seconds),
                        samples_per_second: num(r.samples_per_second, 1),
                        params: params(r.num_parameters),
                        memory: bytes(r.peak_memory_bytes),
                        device_hours: num(r.device_hours, 4),
                        modality: r.modality.unwrap_or(""),
                        external: r.external,
                        configuration: r.configuration,
                        model: r.model,
                        run_id: r.run_id,
                        runs: r.runs,
                    }
                })
                .collect(),
        })
        .collect();
    render(&LeaderboardPage {
        metric: lb.metric.column(),
        metric_links: BoardMetric::ALL
            .iter()
            .map(|m| {
                (
                    m.column(),
                    board_link(
                        "/leaderboard",
                        &q,
                        &[("metric", m.column()), ("sort", ""), ("order", "")],
                    ),
                )
            })
            .collect(),
        headers,
        boards,
        model: q.model.clone().unwrap_or_default(),
        modality: q.modality.clone().unwrap_or_default(),
        min_runs: q.min_runs.unwrap_or(1),
        sort: lb.sort.clone(),
        order: lb.order,
        csv: board_link("/api/v1/leaderboard", &q, &[("format", "csv")]),
        json: board_link("/api/v1/leaderboard", &q, &[]),
        total,
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
