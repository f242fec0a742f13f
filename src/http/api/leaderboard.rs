//! `/leaderboard`: per dataset, the succeeded runs grouped by model and configuration (every
//! option but the seed), each group with its metrics' mean ± std over seeds, n, the 95%
//! t-interval of the mean, its costs, and its best run. Sortable by any column, filterable by
//! model, modality and number of runs, as JSON or CSV.

use crate::eval::stats;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiQuery;
use crate::models::registry::Modality;
use crate::runs::TrainConfig;
use crate::store::runs::{BoardGroup, BoardMetric};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(leaderboard))
}

/// Query of the leaderboard.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BoardQuery {
    /// One dataset (all if absent).
    pub dataset: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = metric_names)]
    pub metric: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = sort_names)]
    pub sort: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = order_names)]
    pub order: Option<String>,
    /// Only models whose name contains this.
    pub model: Option<String>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = modality_names)]
    pub modality: Option<String>,
    /// Only groups of at least this many runs.
    #[param(minimum = 1, default = 1)]
    pub min_runs: Option<i64>,
    // described in its schema: utoipa drops a doc comment beside `schema_with`
    #[param(schema_with = format_schema)]
    pub format: Option<String>,
}

/// A string, one of `names`.
fn one_of(description: &str, names: &[&str]) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .enum_values(Some(names.iter().copied()))
        .build()
}

/// The orders a board can be sorted in.
const ORDERS: [&str; 2] = ["asc", "desc"];

fn sort_schema() -> utoipa::openapi::schema::Object {
    one_of("The column sorted by.", &COLUMNS.map(|c| c.key))
}

fn order_schema() -> utoipa::openapi::schema::Object {
    one_of("`asc` or `desc`.", &ORDERS)
}

fn metric_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "The metric that picks each group's best run and orders the board (default `auroc`).",
        BoardMetric::ALL.map(BoardMetric::column),
    )
}

fn sort_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "The column to sort by; default the metric.",
        COLUMNS.map(|c| c.key),
    )
}

fn order_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "`asc` or `desc`; default best first for metrics, descending for costs, ascending for \
         names.",
        ORDERS,
    )
}

fn modality_names() -> utoipa::openapi::schema::Object {
    super::query_names(
        "Only models of this modality.",
        [Modality::Text, Modality::TextImage].map(Modality::as_str),
    )
}

fn format_schema() -> utoipa::openapi::schema::Object {
    one_of("`json` (default) or `csv`.", &["json", "csv"])
}

/// A column of a board: its key (`?sort=`), its label and tooltip on the page, and its value.
pub struct Column {
    pub key: &'static str,
    pub label: &'static str,
    pub title: &'static str,
    pub value: Cell,
}

/// What a column holds, read from a row; text sorts as text, numbers as numbers.
#[derive(Clone, Copy)]
pub enum Cell {
    Text(fn(&BoardRow) -> &str),
    Number(fn(&BoardRow) -> Option<f64>),
}

impl Column {
    /// Whether it holds numbers.
    pub fn numeric(&self) -> bool {
        matches!(self.value, Cell::Number(_))
    }
}

const fn column(
    key: &'static str,
    label: &'static str,
    title: &'static str,
    value: Cell,
) -> Column {
    Column {
        key,
        label,
        title,
        value,
    }
}

/// The columns of a board, each sortable, in the page's order.
pub const COLUMNS: [Column; 12] = [
    column("model", "model", "", Cell::Text(|r| &r.model)),
    column(
        "configuration",
        "configuration",
        "options that differ from their defaults",
        Cell::Text(|r| &r.configuration),
    ),
    column(
        "runs",
        "n",
        "runs (seeds) in the group",
        Cell::Number(|r| Some(r.runs as f64)),
    ),
    column(
        "accuracy",
        "accuracy",
        "mean ± std over seeds, 95% interval of the mean below",
        Cell::Number(|r| r.accuracy.mean),
    ),
    column(
        "f1",
        "F1",
        "macro F1, mean ± std over seeds",
        Cell::Number(|r| r.f1.mean),
    ),
    column(
        "auroc",
        "AUROC",
        "mean ± std over seeds",
        Cell::Number(|r| r.auroc.mean),
    ),
    column(
        "train_seconds",
        "train time",
        "mean over seeds",
        Cell::Number(|r| r.train_seconds),
    ),
    column(
        "samples_per_second",
        "samples/s",
        "training examples per second, mean over seeds",
        Cell::Number(|r| r.samples_per_second),
    ),
    column(
        "num_parameters",
        "params",
        "",
        Cell::Number(|r| r.num_parameters.map(|v| v as f64)),
    ),
    column(
        "peak_memory_bytes",
        "peak memory",
        "of the worker: GPU memory where it had GPUs, else host",
        Cell::Number(|r| r.peak_memory_bytes.map(|v| v as f64)),
    ),
    column(
        "device_hours",
        "device-hours",
        "summed over the runs",
        Cell::Number(|r| r.device_hours),
    ),
    column(
        "loss",
        "loss",
        "test loss, mean over seeds",
        Cell::Number(|r| r.loss.mean),
    ),
];

/// A metric over a group's runs: mean ± std over seeds, their count, the 95% t-interval of
/// the mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Aggregate {
    pub mean: Option<f64>,
    /// Sample standard deviation over the runs; `None` below two runs.
    pub std: Option<f64>,
    /// Runs with the metric.
    pub n: i64,
    /// 95% t-interval of the mean; `None` below two runs.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

impl Aggregate {
    fn new(mean: Option<f64>, var: Option<f64>, n: i64) -> Aggregate {
        let std = var.filter(|_| n >= 2).map(f64::sqrt);
        let half = std.map(|s| stats::t_critical((n - 1) as u64) * s / (n as f64).sqrt());
        Aggregate {
            mean,
            std,
            n,
            ci_low: mean.zip(half).map(|(m, h)| m - h),
            ci_high: mean.zip(half).map(|(m, h)| m + h),
        }
    }
}

/// One row of a board: a model with one configuration on the dataset.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BoardRow {
    pub dataset: String,
    pub model: String,
    /// `text` or `text+image`, from the models root (`None` for a model no longer there).
    #[schema(value_type = Option<Modality>)]
    pub modality: Option<&'static str>,
    /// The options that differ from their defaults, e.g. `learning_rate=1e-4, epochs=5`.
    pub configuration: String,
    /// Every option but the seed.
    pub options: Map<String, Value>,
    /// Succeeded runs (seeds) in the group.
    pub runs: i64,
    /// The group's best run by the board's metric.
    pub run_id: i64,
    pub accuracy: Aggregate,
    pub f1: Aggregate,
    pub auroc: Aggregate,
    pub loss: Aggregate,
    /// Means over the runs.
    pub train_seconds: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub num_parameters: Option<i64>,
    pub peak_memory_bytes: Option<i64>,
    /// Summed over the runs.
    pub device_hours: Option<f64>,
    /// Trained elsewhere and logged here (MLflow-compatible API or the metric batch endpoint).
    pub external: bool,
}

impl BoardRow {
    fn of(g: BoardGroup, modality: Option<&'static str>) -> BoardRow {
        let options: Map<String, Value> = g
            .config_key
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        BoardRow {
            configuration: configuration(&options),
            options,
            modality,
            runs: g.runs,
            run_id: g.run_id,
            accuracy: Aggregate::new(g.accuracy, g.accuracy_var, g.accuracy_n),
            f1: Aggregate::new(g.f1, g.f1_var, g.f1_n),
            auroc: Aggregate::new(g.auroc, g.auroc_var, g.auroc_n),
            loss: Aggregate::new(g.loss, g.loss_var, g.loss_n),
            train_seconds: g.train_seconds,
            samples_per_second: g.samples_per_second,
            num_parameters: g.num_parameters,
            peak_memory_bytes: g.peak_memory_bytes,
            device_hours: g.device_hours,
            external: g.external_runs > 0,
            dataset: g.dataset,
            model: g.model,
        }
    }

    /// The metric's aggregate.
    pub fn metric(&self, m: BoardMetric) -> &Aggregate {
        match m {
            BoardMetric::Accuracy => &self.accuracy,
            BoardMetric::F1 => &self.f1,
            BoardMetric::Auroc => &self.auroc,
            BoardMetric::Loss => &self.loss,
        }
    }
}

/// The options that differ from their defaults, as `name=value` (the seed is never there).
fn configuration(options: &Map<String, Value>) -> String {
    let Ok(config) = serde_json::from_value::<TrainConfig>(Value::Object(options.clone())) else {
        // an external run's logged parameters, all of them
        return options
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
    };
    let defaults = TrainConfig::default().values();
    config
        .values()
        .into_iter()
        .zip(defaults)
        .filter(|((spec, v), (_, d))| spec.name != "seed" && v != d)
        .map(|((spec, v), _)| format!("{}={}", spec.name, v.unwrap_or_else(|| "unset".into())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One dataset's board.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Board {
    pub dataset: String,
    pub rows: Vec<BoardRow>,
}

/// The leaderboard answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Leaderboard {
    pub metric: BoardMetric,
    /// The column sorted by.
    #[schema(schema_with = sort_schema)]
    pub sort: String,
    /// `asc` or `desc`.
    #[schema(schema_with = order_schema)]
    pub order: &'static str,
    pub boards: Vec<Board>,
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::invalid(field, "invalid_value", message)
}

/// Builds the boards; an unknown metric, dataset, column or filter value is a 422 naming the
/// parameter.
pub async fn boards(state: &AppState, q: BoardQuery) -> ApiResult<Leaderboard> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let metric_name = given(&q.metric).unwrap_or_else(|| "auroc".into());
    let metric: BoardMetric = metric_name
        .parse()
        .map_err(|e| invalid("metric", format!("query parameter `metric`: {e}")))?;
    let sort = given(&q.sort).unwrap_or_else(|| metric.column().to_string());
    let Some(column) = COLUMNS.iter().find(|c| c.key == sort) else {
        let keys: Vec<&str> = COLUMNS.iter().map(|c| c.key).collect();
        return Err(invalid(
            "sort",
            format!(
                "unknown column `{sort}` to sort by (one of {})",
                keys.join(", ")
            ),
        ));
    };
    let descending = match given(&q.order).as_deref() {
        None if sort == metric.column() => metric.order() == "DESC",
        None => column.numeric() && sort != "loss",
        Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(invalid(
                "order",
                format!("`order` must be asc or desc, got `{other}`"),
            ));
        }
    };
    let modality = given(&q.modality);
    if let Some(m) = &modality
        && m != "text"
        && m != "text+image"
    {
        return Err(invalid(
            "modality",
            format!("`modality` must be text or text+image, got `{m}`"),
        ));
    }
    let min_runs = q.min_runs.unwrap_or(1);
    if min_runs < 1 {
        return Err(invalid(
            "min_runs",
            format!("`min_runs` must be 1 or more, got {min_runs}"),
        ));
    }
    let datasets = state.store.list_datasets().await?;
    let dataset = given(&q.dataset);
    if let Some(d) = &dataset
        && !datasets.iter().any(|r| &r.name == d)
    {
        return Err(ApiError::invalid(
            "dataset",
            "unknown_dataset",
            format!("unknown dataset `{d}`"),
        ));
    }
    let modalities: HashMap<String, &'static str> = state
        .registry
        .scan_async()
        .await?
        .into_iter()
        .filter_map(|m| Some((m.name, m.modality?.as_str())))
        .collect();
    let model = given(&q.model).map(|m| m.to_lowercase());
    let mut rows: Vec<BoardRow> = state
        .store
        .leaderboard(dataset.as_deref(), metric)
        .await?
        .into_iter()
        .filter(|g| g.runs >= min_runs)
        .filter(|g| {
            model
                .as_ref()
                .is_none_or(|m| g.model.to_lowercase().contains(m))
        })
        .map(|g| {
            let m = modalities.get(&g.model).copied();
            BoardRow::of(g, m)
        })
        .filter(|r| modality.as_deref().is_none_or(|m| r.modality == Some(m)))
        .collect();
    // missing values last in either order; ties by model, then configuration
    rows.sort_by(|a, b| {
        let by = match column.value {
            Cell::Text(f) => f(a).cmp(f(b)),
            Cell::Number(f) => match (f(a), f(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (None, Some(_)) => return Ordering::Greater,
                (Some(_), None) => return Ordering::Less,
                (None, None) => Ordering::Equal,
            },
        };
        let by = if descending { by.reverse() } else { by };
        by.then_with(|| a.model.cmp(&b.model))
            .then_with(|| a.configuration.cmp(&b.configuration))
    });
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
    Ok(Leaderboard {
        metric,
        sort,
        order: if descending { "desc" } else { "asc" },
        boards,
    })
}

/// The boards as CSV: one line per group, the metrics as mean, std, n and interval.
pub fn csv(lb: &Leaderboard) -> String {
    let mut out = String::from("dataset,model,modality,configuration,runs,best_run_id");
    for m in BoardMetric::ALL {
        let c = m.column();
        out.push_str(&format!(",{c}_mean,{c}_std,{c}_n,{c}_ci_low,{c}_ci_high"));
    }
    out.push_str(
        ",train_seconds,samples_per_second,num_parameters,peak_memory_bytes,device_hours\n",
    );
    let q = |x: &str| format!("\"{}\"", x.replace('"', "\"\""));
    let o = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for r in lb.boards.iter().flat_map(|b| &b.rows) {
        out.push_str(&format!(
            "{},{},{},{},{},{}",
            q(&r.dataset),
            q(&r.model),
            r.modality.unwrap_or(""),
            q(&r.configuration),
            r.runs,
            r.run_id
        ));
        for m in BoardMetric::ALL {
            let a = r.metric(m);
            out.push_str(&format!(
                ",{},{},{},{},{}",
                o(a.mean),
                o(a.std),
                a.n,
                o(a.ci_low),
                o(a.ci_high)
            ));
        }
        out.push_str(&format!(
            ",{},{},{},{},{}\n",
            o(r.train_seconds),
            o(r.samples_per_second),
            r.num_parameters.map_or(String::new(), |v| v.to_string()),
            r.peak_memory_bytes.map_or(String::new(), |v| v.to_string()),
            o(r.device_hours)
        ));
    }
    out
}

/// `GET /api/v1/leaderboard[?dataset=&metric=&sort=&order=&model=&modality=&min_runs=&format=json|csv]`.
#[utoipa::path(
    get,
    path = "/leaderboard",
    operation_id = "get_leaderboard",
    tag = "leaderboard",
    summary = "The leaderboard",
    description = "Succeeded runs grouped by dataset, model and options but the seed: per group \
        its runs, its best run (`run_id`) by the metric, `accuracy`, `f1`, `auroc` and `loss` as \
        mean ± std with n and the 95% t-interval of the mean, and the cost means; one board per \
        dataset, sorted by `sort` (default the metric). `format=csv` gives one line per group.",
    params(BoardQuery),
    responses(
        (status = 200, description = "The boards.", content(
            (Leaderboard = "application/json"),
            (String = "text/csv"),
        )),
        (status = 422, description = "An unknown dataset (`unknown_dataset`), metric, column, \
            order, modality or format, or `min_runs` below 1; `field` names it.",
            body = crate::http::error::ErrorBody),
    ),
)]
async fn leaderboard(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<BoardQuery>,
) -> ApiResult<Response> {
    let format = q.format.clone().unwrap_or_else(|| "json".into());
    if format != "json" && format != "csv" {
        return Err(invalid(
            "format",
            format!("`format` must be json or csv, got `{format}`"),
        ));
    }
    let lb = boards(&state, q).await?;
    Ok(if format == "csv" {
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"leaderboard.csv\"",
                ),
            ],
            csv(&lb),
        )
            .into_response()
    } else {
        Json(lb).into_response()
    })
}
