//! Study pages: the list, the form at `/studies/new` (the same request as
//! `POST /api/v1/studies`), and one study's grid of models × datasets whose runs update live.

use super::{PageResult, bytes, duration, num, params, render, render_status, when};
use crate::http::AppState;
use crate::http::api::studies::find_study;
use crate::http::api::studies::{VerdictQuery, study_verdict};
use crate::http::auth::{self, Csrf};
use crate::http::error::ApiError;
use crate::runs::options::Kind;
use crate::runs::{QueueConfig, RunRequest, TrainConfig, option_values};
use crate::store::runs::Run;
use crate::store::studies::Study;
use crate::studies::StudyRequest;
use crate::verdict::{Outcome, RULE, Side};
use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/studies", get(list))
        .route("/studies/new", get(new_form).post(new_submit))
        .route("/studies/{id}", get(detail))
        .route("/studies/{id}/cancel", post(cancel))
        .route("/studies/{id}/verdict", get(verdict_page))
}

/// One side of a dataset's comparison, as the verdict page shows it.
struct SideView {
    config: String,
    runs: Vec<i64>,
    accuracy: String,
    interval: String,
    train_time: String,
    samples_per_second: String,
    memory: String,
    parameters: String,
    reliance: Vec<(String, String)>,
}

/// An interval plot (SVG drawn on the server): each row an estimate with its 95% interval on a
/// shared accuracy-difference axis, zero and the minimum gain marked.
struct IntervalPlot {
    width: i64,
    height: i64,
    /// Left edge and width of the plotting area.
    left: i64,
    right: i64,
    bottom: i64,
    zero: f64,
    min_gain: f64,
    ticks: Vec<(f64, String)>,
    /// label, y, x of the low end, the estimate and the high end, and the hover text.
    rows: Vec<(String, i64, f64, f64, f64, String)>,
}

impl IntervalPlot {
    /// Rows of (label, estimate, low, high), all accuracy differences.
    fn new(rows: &[(String, f64, f64, f64)], min_gain: f64) -> Option<IntervalPlot> {
        if rows.is_empty() {
            return None;
        }
        let lo = rows.iter().map(|r| r.2).fold(-0.05f64, f64::min).min(0.0);
        let hi = rows
            .iter()
            .map(|r| r.3)
            .fold(0.05f64, f64::max)
            .max(min_gain);
        // round the axis out to tenths (or hundredths for narrow ranges)
        let step = if hi - lo > 0.4 {
            0.1
        } else if hi - lo > 0.1 {
            0.05
        } else {
            0.01
        };
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let (left, right, width) = (190, 24, 640);
        let row_height = 30;
        let height = 34 + row_height * rows.len() as i64 + 30;
        let bottom = height - 30;
        let x = |v: f64| left as f64 + (v - lo) / (hi - lo) * (width - left - right) as f64;
        let mut ticks = Vec::new();
        let mut v = lo;
        while v <= hi + step / 2.0 {
            ticks.push((x(v), format!("{v:+.2}")));
            v += step;
        }
        Some(IntervalPlot {
            width,
            height,
            left,
            right: width - right,
            bottom,
            zero: x(0.0),
            min_gain: x(min_gain),
            ticks,
            rows: rows
                .iter()
                .enumerate()
                .map(|(i, (label, est, l, h))| {
                    (
                        label.clone(),
                        24 + row_height * i as i64,
                        x(*l),
                        x(*est),
                        x(*h),
                        format!("{label}: {est:+.3} (95% interval {l:+.3} to {h:+.3})"),
                    )
                })
                .collect(),
        })
    }
}

struct DatasetView {
    plot: Option<IntervalPlot>,
    dataset: String,
    outcome: &'static str,
    outcome_class: &'static str,
    reason: String,
    majority_rate: String,
    /// `/compare?runs=...` of both sides' runs (empty without both).
    compare: String,
    text: Option<SideView>,
    image: Option<SideView>,
    gain: String,
    ratios: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "verdict.html")]
struct VerdictPage {
    study_id: i64,
    name: String,
    rule: &'static str,
    min_gain: f64,
    max_cost_ratio: f64,
    datasets: Vec<DatasetView>,
    unfinished: i64,
}

fn side_view(s: &Side) -> SideView {
    SideView {
        config: s.config.clone(),
        runs: s.runs.clone(),
        accuracy: format!(
            "{:.3} ± {:.3} (n = {})",
            s.accuracy.mean, s.accuracy.std, s.accuracy.n
        ),
        interval: format!("{:.3} to {:.3}", s.accuracy_low, s.accuracy_high),
        train_time: duration(Some(s.train_seconds)),
        samples_per_second: num(Some(s.samples_per_second), 1),
        memory: bytes(s.peak_memory_bytes.map(|b| b as i64)),
        parameters: params(Some(s.parameters as i64)),
        reliance: s
            .image_reliance
            .iter()
            .map(|r| {
                (
                    r.probe.to_string(),
                    format!("{:+.3} ({:+.3} to {:+.3})", r.drop, r.low, r.high),
                )
            })
            .collect(),
    }
}

async fn verdict_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    super::PageQuery(q): super::PageQuery<VerdictQuery>,
) -> PageResult {
    let study = find_study(&state, &id).await?;
    let t = q.thresholds()?;
    let v = study_verdict(&state, &study, t).await?;
    let datasets = v
        .datasets
        .iter()
        .map(|d| DatasetView {
            dataset: d.dataset.clone(),
            outcome: d.outcome.says(),
            outcome_class: match d.outcome {
                Outcome::ImageHelps => "helps",
                Outcome::ImageHelpsAtACost => "cost",
                Outcome::TextSuffices => "text",
                Outcome::Undecided => "undecided",
            },
            plot: {
                let mut rows = Vec::new();
                if let Some(x) = d.difference {
                    rows.push((
                        "gain of the image".to_string(),
                        x.interval.estimate,
                        x.interval.low,
                        x.interval.high,
                    ));
                }
                for r in d.text_image.iter().flat_map(|s| &s.image_reliance) {
                    rows.push((format!("drop, {}", r.probe), r.drop, r.low, r.high));
                }
                IntervalPlot::new(&rows, t.min_gain)
            },
            reason: d.reason.clone(),
            majority_rate: format!("{:.3}", d.majority_rate),
            compare: match (&d.text_only, &d.text_image) {
                (Some(t), Some(i)) => {
                    let half = crate::http::pages::compare::MAX_RUNS / 2;
                    let ids: Vec<String> = t
                        .runs
                        .iter()
                        .take(half)
                        .chain(i.runs.iter().take(half))
                        .map(i64::to_string)
                        .collect();
                    format!("/compare?runs={}", ids.join(","))
                }
                _ => String::new(),
            },
            text: d.text_only.as_ref().map(side_view),
            image: d.text_image.as_ref().map(side_view),
            gain: d.difference.map_or("–".into(), |x| {
                format!(
                    "{:+.3} (95% interval {:+.3} to {:+.3}, p = {:.3})",
                    x.interval.estimate, x.interval.low, x.interval.high, x.p_value
                )
            }),
            ratios: d
                .cost_ratios
                .map(|c| {
                    vec![
                        ("training time", format!("{:.2}×", c.train_time)),
                        (
                            "training examples/s",
                            format!("{:.2}×", c.samples_per_second),
                        ),
                        (
                            "peak memory",
                            c.peak_memory.map_or("–".into(), |m| format!("{m:.2}×")),
                        ),
                        ("parameters", format!("{:.2}×", c.parameters)),
                        ("training FLOPs", format!("{:.2}×", c.train_flops)),
                    ]
                })
                .unwrap_or_default(),
        })
        .collect();
    render(&VerdictPage {
        study_id: study.id,
        name: study.name.clone(),
        rule: RULE,
        min_gain: t.min_gain,
        max_cost_ratio: t.max_cost_ratio,
        unfinished: study.counts.active(),
        datasets,
    })
}

/// A study as a row of the list.
struct StudyRow {
    id: i64,
    name: String,
    created: String,
    runs: i64,
    queued: i64,
    running: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
}

impl From<&Study> for StudyRow {
    fn from(s: &Study) -> Self {
        let c = &s.counts;
        StudyRow {
            id: s.id,
            name: s.name.clone(),
            created: when(Some(&s.created_at)),
            runs: c.queued + c.running + c.succeeded + c.failed + c.cancelled + c.interrupted,
            queued: c.queued + c.interrupted,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

#[derive(Template)]
#[template(path = "studies.html")]
struct StudiesPage {
    studies: Vec<StudyRow>,
}

async fn list(State(state): State<AppState>) -> PageResult {
    let studies = state.store.list_studies(200, 0).await?;
    render(&StudiesPage {
        studies: studies.iter().map(StudyRow::from).collect(),
    })
}

/// One run in a cell of the study grid.
struct CellRun {
    id: i64,
    status: &'static str,
    /// `seed 1`, with the grid's values (`learning_rate=5e-5`).
    label: String,
    accuracy: String,
}

/// A model's row of the grid: one cell per dataset.
struct GridRow {
    model: String,
    cells: Vec<Vec<CellRun>>,
}

#[derive(Template)]
#[template(path = "study.html")]
struct StudyPage {
    csrf: String,
    study: StudyRow,
    active: bool,
    cancelled: bool,
    datasets: Vec<String>,
    rows: Vec<GridRow>,
    spec: String,
}

fn cell_run(r: &Run) -> CellRun {
    let mut label = match r.train_config() {
        Some(c) => format!("seed {}", c.seed),
        None => "external".to_string(),
    };
    if let Some(grid) = &r.grid {
        for (k, v) in grid {
            label.push_str(&format!(", {k}={v}"));
        }
    }
    CellRun {
        id: r.id,
        status: r.status.as_str(),
        label,
        accuracy: num(r.summary.as_ref().map(|s| s.accuracy), 3),
    }
}

async fn detail(
    State(state): State<AppState>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
) -> PageResult {
    let study = find_study(&state, &id).await?;
    let runs = state.store.study_runs(study.id).await?;
    let datasets = study.spec.datasets.clone();
    let mut by_cell: BTreeMap<(String, String), Vec<CellRun>> = BTreeMap::new();
    for r in &runs {
        by_cell
            .entry((r.model.clone(), r.dataset.clone()))
            .or_default()
            .push(cell_run(r));
    }
    let rows = study
        .spec
        .models
        .iter()
        .map(|m| GridRow {
            model: m.clone(),
            cells: datasets
                .iter()
                .map(|d| by_cell.remove(&(m.clone(), d.clone())).unwrap_or_default())
                .collect(),
        })
        .collect();
    render(&StudyPage {
        csrf: csrf.0,
        active: study.counts.active() > 0,
        cancelled: study.cancelled_at.is_some(),
        spec: serde_json::to_string_pretty(&study.spec).unwrap_or_default(),
        study: StudyRow::from(&study),
        datasets,
        rows,
    })
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let study = find_study(&state, &id).await?;
    state.scheduler.cancel_study(study.id).await?;
    Ok(Redirect::to(&format!("/studies/{}", study.id)).into_response())
}

/// An option field of the study form (the options every run takes).
struct OptionField {
    name: &'static str,
    value: String,
    placeholder: String,
    choices: &'static [&'static str],
    help: String,
}

#[derive(Template)]
#[template(path = "new_study.html")]
struct NewStudyPage {
    csrf: String,
    models: Vec<(String, bool)>,
    datasets: Vec<(String, bool)>,
    name: String,
    seeds: String,
    grid: String,
    fields: Vec<OptionField>,
    error: Option<String>,
    error_field: String,
}

/// The submitted form, field by field (`models` and `datasets` may repeat).
type Pairs = Vec<(String, String)>;

fn values<'a>(pairs: &'a Pairs, key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
        .collect()
}

fn one(pairs: &Pairs, key: &str) -> String {
    values(pairs, key)
        .first()
        .copied()
        .unwrap_or_default()
        .to_string()
}

async fn form_page(
    state: &AppState,
    csrf: Csrf,
    pairs: &Pairs,
    error: Option<ApiError>,
) -> PageResult {
    let chosen = |key: &str, name: &str| values(pairs, key).contains(&name);
    let models = state
        .registry
        .scan_async()
        .await?
        .into_iter()
        .filter(|m| m.usable)
        .map(|m| {
            let on = chosen("models", &m.name);
            (m.name, on)
        })
        .collect();
    let datasets = state
        .store
        .dataset_names()
        .await?
        .into_iter()
        .map(|d| {
            let on = chosen("datasets", &d);
            (d, on)
        })
        .collect();
    let fields = option_values(&TrainConfig::default(), &QueueConfig::default())
        .into_iter()
        .filter(|(spec, _)| spec.name != "seed")
        .map(|(spec, default)| OptionField {
            name: spec.name,
            value: one(pairs, spec.name),
            placeholder: match &default {
                Some(d) => format!("default {d}"),
                None => spec.unset.to_string(),
            },
            choices: match spec.kind {
                Kind::Boolean => &["false", "true"],
                _ => spec.range.choices(),
            },
            help: spec.help(),
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let seeds = match one(pairs, "seeds") {
        s if s.is_empty() && error.is_none() => "0, 1, 2".to_string(),
        s => s,
    };
    render_status(
        status,
        &NewStudyPage {
            csrf: csrf.0,
            models,
            datasets,
            name: one(pairs, "name"),
            seeds,
            grid: one(pairs, "grid"),
            fields,
            error_field: error
                .as_ref()
                .and_then(|e| e.field.clone())
                .unwrap_or_default(),
            error: error.map(|e| e.message),
        },
    )
}

async fn new_form(State(state): State<AppState>, Extension(csrf): Extension<Csrf>) -> PageResult {
    form_page(&state, csrf, &Vec::new(), None).await
}

/// The JSON value of an option as typed in the form: a number, a boolean or a name, by the
/// option's kind; text that is none of these is passed on as a string, for the run's checks
/// to name.
fn typed(name: &str, text: &str) -> Value {
    let kind = RunRequest::spec(name).map(|s| s.kind);
    let number = || {
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_number)
    };
    match kind {
        Some(Kind::Integer | Kind::Number) => number().unwrap_or_else(|| text.into()),
        Some(Kind::Boolean) => text
            .parse::<bool>()
            .map_or_else(|_| text.into(), Value::Bool),
        _ => text.into(),
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::invalid(field, "invalid_value", message)
}

/// Reads the form into a [`StudyRequest`]: `seeds` as a comma-separated list (empty: `0`), `grid` as lines
/// `option = value, value`, the option fields that were filled in as `base`.
fn read_form(pairs: &Pairs) -> Result<StudyRequest, ApiError> {
    let seeds = one(pairs, "seeds")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| invalid("seeds", format!("`seeds`: `{s}` is not a whole number")))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    // none typed: one seed, as the API's default
    let seeds = if seeds.is_empty() { vec![0] } else { seeds };
    let mut grid = BTreeMap::new();
    for line in one(pairs, "grid")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (name, list) = line.split_once('=').ok_or_else(|| {
            invalid(
                "grid",
                format!("`grid`: `{line}` is not `option = value, value, ...`"),
            )
        })?;
        let name = name.trim();
        let list: Vec<Value> = list
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| typed(name, v))
            .collect();
        grid.insert(name.to_string(), list);
    }
    let mut base = Map::new();
    let known = ["name", "models", "datasets", "seeds", "grid"];
    for (k, v) in pairs {
        let v = v.trim();
        if known.contains(&k.as_str()) || v.is_empty() {
            continue;
        }
        if RunRequest::spec(k).is_none() {
            return Err(ApiError::invalid(
                k,
                "unknown_field",
                format!("unknown field `{k}`"),
            ));
        }
        base.insert(k.clone(), typed(k, v));
    }
    Ok(StudyRequest {
        name: one(pairs, "name"),
        models: values(pairs, "models")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        datasets: values(pairs, "datasets")
            .iter()
            .map(|s| s.to_string())
            .collect(),
        seeds,
        grid,
        base,
        per_model: BTreeMap::new(),
    })
}

async fn new_submit(
    State(state): State<AppState>,
    Extension(csrf): Extension<Csrf>,
    Form(pairs): Form<Pairs>,
) -> PageResult {
    let pairs = auth::without_csrf(pairs);
    let submitted = match read_form(&pairs) {
        Ok(req) => state
            .scheduler
            .submit_study(req)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match submitted {
        Ok((study, _)) => Ok(Redirect::to(&format!("/studies/{}", study.id)).into_response()),
        Err(e) if e.status.is_client_error() => form_page(&state, csrf, &pairs, Some(e)).await,
        Err(e) => Err(e.into()),
    }
}
