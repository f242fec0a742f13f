//! Run pages: the list, one run (live while it trains), the submission form, cancel.

use super::{PageResult, bytes, duration, flops, num, params, render, render_status, when};
use crate::eval::{Metric, MetricKey};
use crate::http::AppState;
use crate::http::api::runs::{ListQuery, find_run};
use crate::http::auth::{self, Csrf};
use crate::http::error::ApiError;
use crate::http::extract::parse_form;
use crate::queue::CancelOutcome;
use crate::runs::options::{Kind, OptionSpec};
use crate::runs::{QueueConfig, RunRequest, TrainConfig, option_values};
use crate::store::runs::{Run, RunConfig, RunSource, RunStatus};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
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
    /// Trained elsewhere and logged here.
    pub external: bool,
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
            external: r.source == RunSource::External,
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

async fn list(
    State(state): State<AppState>,
    super::PageQuery(q): super::PageQuery<ListQuery>,
) -> PageResult {
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
    csrf: String,
    run: RunRow,
    active: bool,
    device: String,
    attempts: i64,
    started: String,
    finished: String,
    error: Option<String>,
    config: Vec<ConfigRow>,
    summary: Vec<(String, String)>,
    charts: Vec<Chart>,
    /// Trained elsewhere and logged here.
    external: bool,
    eval_keys: String,
    /// The most points per series the charts fetch.
    max_points: usize,
    /// The charts' series when the server keeps them current (as
    /// `/api/v1/runs/{id}/metrics?max_points=` answers), so the page draws without fetching
    /// them; escaped for a `<script>` element.
    curves: Option<String>,
    eval_headers: Vec<&'static str>,
    eval_rows: Vec<EvalRow>,
    logs: Vec<String>,
    /// The checkpoints the run has written: `best`, `last`.
    checkpoints: Vec<&'static str>,
    study_id: Option<i64>,
    /// Image-reliance probes: probe, accuracy, drop, its interval, p-value.
    reliance: Vec<[String; 5]>,
    /// The Slurm job of each attempt that ran on the cluster: attempt, job id, state (with
    /// the pending reason and queue place), node, exit code, submitted.
    jobs: Vec<[String; 6]>,
}

/// A chart of metric series, drawn in the browser from `/api/v1/runs/{id}/metrics`.
struct Chart {
    caption: String,
    /// Metric keys, comma-separated.
    keys: String,
    /// Fixed y range (`0,1`), if the metrics have one.
    range: Option<&'static str>,
}

/// The run page's charts.
fn charts() -> Vec<Chart> {
    let keys = |ks: &[MetricKey]| joined(ks.iter().copied());
    vec![
        Chart {
            caption: "Loss".into(),
            keys: keys(&[MetricKey::TRAIN_LOSS, MetricKey::eval(Metric::Loss)]),
            range: None,
        },
        Chart {
            caption: "Dev metrics".into(),
            keys: keys(&[
                MetricKey::eval(Metric::Accuracy),
                MetricKey::eval(Metric::F1),
                MetricKey::eval(Metric::Auroc),
            ]),
            range: Some("0,1"),
        },
    ]
}

/// Metric keys as the page's scripts read them: comma-separated.
fn joined(keys: impl Iterator<Item = MetricKey>) -> String {
    keys.map(|k| k.to_string()).collect::<Vec<_>>().join(",")
}

/// One row of the per-evaluation table.
struct EvalRow {
    step: i64,
    epoch: String,
    values: Vec<String>,
}

/// Metric columns of the evaluation table, with their headers.
const EVAL_METRICS: [(Metric, &str); 4] = [
    (Metric::Loss, "loss"),
    (Metric::Accuracy, "accuracy"),
    (Metric::F1, "F1"),
    (Metric::Auroc, "AUROC"),
];

/// One option of a run's configuration table.
struct ConfigRow {
    name: String,
    value: String,
    unit: &'static str,
    help: String,
}

/// Every option of a run with its value, in declaration order, the queue's last.
fn config_rows(config: &RunConfig, queue: &QueueConfig) -> Vec<ConfigRow> {
    let c = match config {
        RunConfig::Native(c) => c,
        RunConfig::External(params) => {
            return params
                .iter()
                .map(|(k, v)| ConfigRow {
                    name: k.clone(),
                    value: v.clone(),
                    unit: "",
                    help: "a parameter the run logged".into(),
                })
                .collect();
        }
    };
    option_values(c, queue)
        .into_iter()
        .map(|(spec, value)| ConfigRow {
            name: spec.name.to_string(),
            value: match value {
                Some(v) => v,
                None if !spec.unset.is_empty() => format!("– ({})", spec.unset),
                None => "–".into(),
            },
            unit: spec.unit,
            help: spec.help(),
        })
        .collect()
}

async fn detail(
    State(state): State<AppState>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
) -> PageResult {
    let run = find_run(&state, &id).await?;
    // the evaluation table's series only: a long training curve is the charts' to fetch
    let series = state.store.metric_series_in(run.id, "eval").await?;
    let mut steps: Vec<(i64, Option<f64>)> = series
        .get(&MetricKey::eval(Metric::Loss))
        .map(|pts| pts.iter().map(|p| (p.step, p.epoch)).collect())
        .unwrap_or_default();
    steps.dedup_by_key(|s| s.0);
    let eval_rows = steps
        .into_iter()
        .map(|(step, epoch)| EvalRow {
            step,
            epoch: num(epoch, 2),
            values: EVAL_METRICS
                .iter()
                .map(|&(m, _)| {
                    num(
                        series
                            .get(&MetricKey::eval(m))
                            .and_then(|pts| pts.iter().find(|p| p.step == step))
                            .map(|p| p.value),
                        4,
                    )
                })
                .collect(),
        })
        .collect();
    let external = run.source == RunSource::External;
    let mut charts = charts();
    let summary: Vec<(String, String)> = match &run.summary {
        // an external run: the latest value of each metric it logged, a chart per metric
        None if external => {
            let logged = state
                .store
                .external_run(run.id)
                .await
                .map_err(ApiError::from)?;
            charts = logged
                .metrics
                .iter()
                .map(|m| Chart {
                    caption: m.key.clone(),
                    keys: m.key.clone(),
                    range: None,
                })
                .collect();
            logged
                .metrics
                .iter()
                .map(|m| (m.key.clone(), num(Some(m.value), 4)))
                .collect()
        }
        None => Vec::new(),
        Some(s) => vec![
            ("test accuracy", num(Some(s.accuracy), 4)),
            ("test F1", num(Some(s.f1), 4)),
            ("test AUROC", num(s.auroc, 4)),
            ("test loss", num(Some(s.loss), 4)),
            ("train time", duration(Some(s.train_seconds))),
            ("samples/s", num(Some(s.samples_per_second), 1)),
            ("parameters", params(Some(s.num_parameters))),
            (
                "trainable parameters",
                params(Some(s.cost.trainable_parameters)),
            ),
            ("steps", s.steps.to_string()),
            (
                "best checkpoint",
                s.cost.best_step.map_or("–".into(), |b| format!("step {b}")),
            ),
            (
                "stopped early",
                if s.cost.stopped_early { "yes" } else { "no" }.into(),
            ),
            ("wall time", duration(Some(s.total_seconds))),
            ("time per epoch", duration(s.cost.epoch_seconds)),
            ("eval samples/s", num(s.cost.eval_samples_per_second, 1)),
            ("peak host memory", bytes(s.cost.peak_rss_bytes)),
            ("peak GPU memory", bytes(s.cost.peak_gpu_bytes)),
            ("training FLOPs (est.)", flops(Some(s.cost.train_flops))),
            (
                "achieved",
                match flops(Some(s.cost.flops_per_second)) {
                    f if f == "–" => f,
                    f => format!("{f}/s"),
                },
            ),
            ("devices", s.cost.devices.to_string()),
            ("device-hours", num(Some(s.cost.device_hours), 4)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    let dir = state.settings.run_dir(run.id).join("checkpoint");
    let mut checkpoints = Vec::new();
    for which in [crate::train::state::BEST, crate::train::state::LAST] {
        if tokio::fs::try_exists(dir.join(which).join("model.safetensors"))
            .await
            .unwrap_or(false)
        {
            checkpoints.push(which);
        }
    }
    let logs = state
        .store
        .log_tail(run.id, 60)
        .await?
        .into_iter()
        .map(|l| format!("{} [{}] {}", when(Some(&l.time)), l.stream, l.line))
        .collect();
    let jobs = state
        .store
        .cluster_jobs(run.id)
        .await?
        .into_iter()
        .map(|j| {
            let mut st = j.state.clone();
            if let Some(r) = &j.reason {
                st.push_str(&format!(" ({r})"));
            }
            if let Some(p) = j.position {
                st.push_str(&format!(", #{p} in its partition's queue"));
            }
            [
                j.attempt.to_string(),
                j.job_id,
                st,
                j.node.unwrap_or_else(|| "–".into()),
                j.exit_code.unwrap_or_else(|| "–".into()),
                when(Some(&j.submitted_at)),
            ]
        })
        .collect();
    render(&RunPage {
        jobs,
        csrf: csrf.0,
        active: run.status.is_active(),
        device: run.device.clone().unwrap_or_else(|| "–".into()),
        attempts: run.attempts,
        started: when(run.started_at.as_deref()),
        finished: when(run.finished_at.as_deref()),
        error: run.error.clone(),
        config: config_rows(&run.config, &run.queue_config()),
        charts,
        external,
        eval_keys: joined(EVAL_METRICS.iter().map(|(m, _)| MetricKey::eval(*m))),
        max_points: super::CURVE_POINTS,
        curves: state
            .curves
            .page_copy(&state.store, run.id, super::CURVE_POINTS),
        eval_headers: EVAL_METRICS.iter().map(|(_, h)| *h).collect(),
        summary,
        eval_rows,
        logs,
        checkpoints,
        study_id: run.study_id,
        reliance: run
            .summary
            .as_ref()
            .map(|s| {
                s.image_reliance
                    .iter()
                    .map(|r| {
                        [
                            r.probe.to_string(),
                            num(Some(r.accuracy), 3),
                            format!("{:+.3}", r.drop.estimate),
                            format!("{:+.3} to {:+.3}", r.drop.low, r.drop.high),
                            format!("{:.3}", r.p_value),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default(),
        run: RunRow::from(&run),
    })
}

#[derive(Template)]
#[template(path = "new_run.html")]
struct NewRunPage {
    csrf: String,
    models: Vec<(String, String)>,
    datasets: Vec<String>,
    model: String,
    dataset: String,
    fields: Vec<FormField>,
    error: Option<String>,
    error_field: String,
}

/// One option's field of the submission form.
struct FormField {
    name: &'static str,
    /// What was typed, or the default.
    value: String,
    placeholder: String,
    input_mode: &'static str,
    /// The names a choice (or `true`/`false`) allows: the field is then a menu.
    choices: &'static [&'static str],
    unit: &'static str,
    help: String,
}

/// The form's option fields, from the options' declarations: `values` as typed, the defaults
/// for a fresh form.
fn form_fields(values: &HashMap<String, String>) -> Vec<FormField> {
    option_values(&TrainConfig::default(), &QueueConfig::default())
        .into_iter()
        .map(
            |(spec, default): (&'static OptionSpec, Option<String>)| FormField {
                name: spec.name,
                value: values
                    .get(spec.name)
                    .cloned()
                    .unwrap_or_else(|| default.clone().unwrap_or_default()),
                placeholder: match &default {
                    Some(d) => format!("default {d}"),
                    None => spec.unset.to_string(),
                },
                input_mode: spec.kind.input_mode(),
                choices: match spec.kind {
                    Kind::Boolean => &["false", "true"],
                    _ => spec.range.choices(),
                },
                unit: spec.unit,
                help: spec.help(),
            },
        )
        .collect()
}

async fn form_page(
    state: &AppState,
    csrf: Csrf,
    values: HashMap<String, String>,
    error: Option<ApiError>,
) -> PageResult {
    let models = state
        .registry
        .scan_async()
        .await?
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
        csrf: csrf.0,
        models,
        datasets,
        model: values.get("model").cloned().unwrap_or_default(),
        dataset: values.get("dataset").cloned().unwrap_or_default(),
        fields: form_fields(&values),
        error_field: error
            .as_ref()
            .and_then(|e| e.field.clone())
            .unwrap_or_default(),
        error: error.map(|e| e.message),
    };
    render_status(status, &page)
}

async fn new_form(State(state): State<AppState>, Extension(csrf): Extension<Csrf>) -> PageResult {
    form_page(&state, csrf, HashMap::new(), None).await
}

/// Reads the form into a [`RunRequest`], as the API reads its JSON body; a value that is not
/// of its option's kind is named with what was typed.
fn read_form(pairs: &[(String, String)]) -> Result<RunRequest, ApiError> {
    parse_form(pairs).map_err(|mut e| {
        // a field typed once whose text does not read (a repeated one keeps its own message)
        let mut typed = pairs.iter().filter(|(k, _)| Some(k) == e.field.as_ref());
        if let (Some((_, text)), None, Some(spec)) = (
            typed.next(),
            typed.next(),
            e.field.as_deref().and_then(RunRequest::spec),
        ) {
            e.message = spec.unreadable(text.trim()).message;
        }
        e
    })
}

async fn new_submit(
    State(state): State<AppState>,
    Extension(csrf): Extension<Csrf>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let pairs = auth::without_csrf(pairs);
    let submitted = match read_form(&pairs) {
        Ok(req) => state.scheduler.submit(req).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match submitted {
        Ok(run) => Ok(Redirect::to(&format!("/runs/{}", run.id)).into_response()),
        Err(e) if e.status.is_client_error() => {
            form_page(&state, csrf, pairs.into_iter().collect(), Some(e)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let run = find_run(&state, &id).await?;
    match state.scheduler.cancel(run.id).await? {
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("run {}", run.id)).into()),
        CancelOutcome::Elsewhere(device) => Err(ApiError::conflict(format!(
            "run {} is trained by another process ({device}, `modalbench train`); stop it there",
            run.id
        ))
        .into()),
        _ => Ok(Redirect::to(&format!("/runs/{}", run.id)).into_response()),
    }
}
