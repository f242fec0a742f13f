//! `/compare?runs=1,2,3`: runs side by side. The options that differ (all on a toggle), the
//! test metrics with each run's difference from the first and, for runs on the same test
//! examples, the paired bootstrap interval of that difference; overlaid metric curves (drawn
//! by the vendored uPlot, live while runs train); and the test examples on which the runs'
//! predictions disagree, with their text and picture.

use super::datasets::{find, loaded, shorten, thumbnail_url};
use super::{PageError, PageResult, bytes, duration, num, params, render};
use crate::data::Split;
use crate::eval::stats::{self, Scored, Statistic};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::runs::option_values;
use crate::store::predictions::StoredPrediction;
use crate::store::runs::{Run, RunConfig};
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/compare", get(compare))
}

/// Most runs one comparison shows.
pub const MAX_RUNS: usize = 8;
/// Most disagreeing test examples listed.
const DISAGREEMENTS: usize = 50;
/// Test splits above this size get no bootstrap intervals on the page (2,000 resamples each).
const BOOTSTRAP_LIMIT: usize = 50_000;
/// Characters of an example's text shown.
const TEXT_CHARS: usize = 240;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareQuery {
    runs: Option<String>,
}

struct Head {
    id: i64,
    model: String,
    dataset: String,
    status: &'static str,
    /// The run's line colour in the charts.
    color: &'static str,
}

struct OptionRow {
    name: String,
    values: Vec<String>,
    differs: bool,
}

struct MetricRow {
    name: &'static str,
    /// Each run's value and its difference from the first (empty for the first).
    cells: Vec<(String, String)>,
}

impl MetricRow {
    fn new(name: &'static str, values: Vec<String>, deltas: Vec<String>) -> MetricRow {
        MetricRow {
            name,
            cells: values.into_iter().zip(deltas).collect(),
        }
    }
}

struct Disagreement {
    id: String,
    text: String,
    label: String,
    /// Each run's predicted label and whether it is right.
    preds: Vec<(String, bool)>,
    thumbnail: Option<String>,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    heads: Vec<Head>,
    /// The runs for the charts' script: id, label, colour, start, whether it is still going.
    runs_json: String,
    /// The most points per series the charts fetch.
    max_points: usize,
    options: Vec<OptionRow>,
    differing: usize,
    metrics: Vec<MetricRow>,
    same_examples: bool,
    note: String,
    disagreements: Vec<Disagreement>,
    disagreeing: usize,
    examples: usize,
}

const COLORS: [&str; MAX_RUNS] = [
    "#2f6fdb", "#e07b39", "#23864a", "#9b51e0", "#c0392b", "#16a2b8", "#8d6e63", "#607d8b",
];

/// The run ids of `?runs=`: 1 to [`MAX_RUNS`] distinct integers, or a 422 saying what is wrong.
fn run_ids(q: &CompareQuery) -> Result<Vec<i64>, ApiError> {
    let bad = |m: String| ApiError::invalid("runs", "invalid_value", m);
    let raw = q.runs.as_deref().unwrap_or("").trim();
    if raw.is_empty() {
        return Err(bad(
            "name the runs to compare: /compare?runs=1,2,3".to_string()
        ));
    }
    let mut ids = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 = part
            .trim_start_matches('#')
            .parse()
            .map_err(|_| bad(format!("`{part}` is not a run id")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(bad(format!("`{raw}` names no run: /compare?runs=1,2,3")));
    }
    if ids.len() > MAX_RUNS {
        return Err(bad(format!(
            "at most {MAX_RUNS} runs at once, got {}",
            ids.len()
        )));
    }
    Ok(ids)
}

fn scored<'a>(labels: &'a [usize], probs: &'a [Vec<f32>], num_labels: usize) -> Scored<'a> {
    Scored {
        labels,
        probs,
        num_labels,
    }
}

async fn compare(
    State(state): State<AppState>,
    super::PageQuery(q): super::PageQuery<CompareQuery>,
) -> PageResult {
    let ids = run_ids(&q)?;
    let runs: Vec<Run> = state.store.get_runs(&ids).await?;
    if let Some(id) = ids.iter().find(|&&id| !runs.iter().any(|r| r.id == id)) {
        return Err(ApiError::not_found(format!("run {id}")).into());
    }
    let heads: Vec<Head> = runs
        .iter()
        .zip(COLORS)
        .map(|(r, color)| Head {
            id: r.id,
            model: r.model.clone(),
            dataset: r.dataset.clone(),
            status: r.status.as_str(),
            color,
        })
        .collect();
    let runs_json = serde_json::to_string(
        &runs
            .iter()
            .zip(COLORS)
            .map(|(r, color)| {
                json!({"id": r.id, "label": format!("#{} {}", r.id, r.model), "color": color,
                       "started": r.started_at, "active": r.status.is_active()})
            })
            .collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::from)?;

    // options: the training options, then the queue's, as the run page shows them; an
    // external run's logged parameters; a name a run lacks shows as "–"
    let per_run: Vec<Vec<(String, String)>> = runs
        .iter()
        .map(|r| match &r.config {
            RunConfig::Native(c) => option_values(c, &r.queue_config())
                .into_iter()
                .map(|(spec, v)| (spec.name.to_string(), v.unwrap_or_else(|| "unset".into())))
                .collect(),
            RunConfig::External(params) => {
                params.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        })
        .collect();
    let mut options = vec![
        OptionRow {
            name: "model".into(),
            values: runs.iter().map(|r| r.model.clone()).collect(),
            differs: false,
        },
        OptionRow {
            name: "dataset".into(),
            values: runs.iter().map(|r| r.dataset.clone()).collect(),
            differs: false,
        },
    ];
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in per_run.iter().flatten() {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        options.push(OptionRow {
            name: name.to_string(),
            values: per_run
                .iter()
                .map(|o| {
                    o.iter()
                        .find(|(n, _)| n == name)
                        .map_or_else(|| "–".to_string(), |(_, v)| v.clone())
                })
                .collect(),
            differs: false,
        });
    }
    for o in &mut options {
        o.differs = o.values.iter().any(|v| v != &o.values[0]);
    }
    let differing = options.iter().filter(|o| o.differs).count();

    // predictions on the test split, when every run has them on the same examples (the
    // others' are not read when the first run has none)
    let same_dataset = runs.iter().all(|r| r.dataset == runs[0].dataset);
    let mut preds: Vec<Vec<StoredPrediction>> = vec![Vec::new(); runs.len()];
    for (i, r) in runs.iter().enumerate() {
        if !same_dataset || (i > 0 && preds[0].is_empty()) {
            break;
        }
        preds[i] = state
            .store
            .predictions(r.id, Split::Test, i64::MAX, 0)
            .await?;
    }
    let ids_of =
        |p: &[StoredPrediction]| p.iter().map(|x| x.example_id.clone()).collect::<Vec<_>>();
    let same_examples = same_dataset
        && !preds[0].is_empty()
        && preds.iter().all(|p| ids_of(p) == ids_of(&preds[0]))
        && preds.iter().flatten().all(|p| p.label.is_some());
    let note = if runs.len() < 2 {
        "Add runs to compare: /compare?runs=1,2.".to_string()
    } else if !same_dataset {
        "The runs are on different datasets: their figures are side by side, without paired intervals.".to_string()
    } else if !same_examples {
        "Not every run has labelled test predictions on the same examples: differences are shown without paired intervals.".to_string()
    } else {
        String::new()
    };

    let metrics = metric_rows(&runs, &preds, same_examples).await?;

    // the examples the runs disagree on
    let mut disagreements = Vec::new();
    let mut disagreeing = 0;
    let examples = preds.first().map_or(0, Vec::len);
    if same_examples && runs.len() > 1 {
        let rows: Vec<usize> = (0..examples)
            .filter(|&i| preds.iter().any(|p| p[i].pred != preds[0][i].pred))
            .collect();
        disagreeing = rows.len();
        let record = find(&state, &runs[0].dataset).await;
        let data = match &record {
            Ok(rec) => loaded(&state, rec).await.ok(),
            Err(_) => None,
        };
        let split = data.as_ref().map(|l| l.ds.split(Split::Test));
        let names = data
            .as_ref()
            .map(|l| l.ds.label_names.clone())
            .unwrap_or_default();
        let label = |i: i64| {
            names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| i.to_string())
        };
        for i in rows.into_iter().take(DISAGREEMENTS) {
            let id = &preds[0][i].example_id;
            let found =
                split.and_then(|s| s.iter().position(|e| &e.id == id).map(|at| (at, &s[at])));
            let truth = preds[0][i].label.unwrap_or(-1);
            disagreements.push(Disagreement {
                id: id.clone(),
                text: found.map_or(String::new(), |(_, e)| shorten(&e.text, TEXT_CHARS)),
                label: label(truth),
                preds: preds
                    .iter()
                    .map(|p| (label(p[i].pred), p[i].label == Some(p[i].pred)))
                    .collect(),
                thumbnail: found
                    .filter(|(_, e)| e.image.is_some())
                    .map(|(at, _)| thumbnail_url(&runs[0].dataset, Split::Test, at)),
            });
        }
    }
    render(&ComparePage {
        heads,
        runs_json,
        max_points: super::CURVE_POINTS,
        options,
        differing,
        metrics,
        same_examples,
        note,
        disagreements,
        disagreeing,
        examples,
    })
}

/// A figure of a run's summary.
type SummaryFigure = fn(&crate::protocol::Summary) -> Option<f64>;

/// The summary rows: quality metrics with paired intervals where the examples are the same,
/// then the costs as ratios to the first run.
async fn metric_rows(
    runs: &[Run],
    preds: &[Vec<StoredPrediction>],
    same_examples: bool,
) -> Result<Vec<MetricRow>, PageError> {
    let sums: Vec<Option<&crate::protocol::Summary>> =
        runs.iter().map(|r| r.summary.as_ref()).collect();
    // paired differences from the first run, on the blocking pool (2,000 resamples)
    let paired: Vec<Vec<Option<stats::Difference>>> =
        if same_examples && runs.len() > 1 && preds[0].len() <= BOOTSTRAP_LIMIT {
            let preds = preds.to_vec();
            tokio::task::spawn_blocking(move || {
                let labels: Vec<usize> = preds[0]
                    .iter()
                    .map(|p| p.label.unwrap_or(0) as usize)
                    .collect();
                let probs: Vec<Vec<Vec<f32>>> = preds
                    .iter()
                    .map(|p| {
                        p.iter()
                            .map(|x| x.probs.iter().map(|&v| v as f32).collect())
                            .collect()
                    })
                    .collect();
                let k = probs
                    .iter()
                    .flatten()
                    .map(Vec::len)
                    .max()
                    .unwrap_or(2)
                    .max(labels.iter().max().map_or(0, |m| m + 1));
                let resamples = stats::resamples(labels.len(), stats::RESAMPLES, stats::SEED);
                Statistic::ALL
                    .iter()
                    .map(|&stat| {
                        (0..probs.len())
                            .map(|i| {
                                (i > 0).then(|| {
                                    stats::paired_difference(
                                        stat,
                                        scored(&labels, &probs[i], k),
                                        scored(&labels, &probs[0], k),
                                        &resamples,
                                    )
                                })?
                            })
                            .collect()
                    })
                    .collect()
            })
            .await
            .map_err(anyhow::Error::from)?
        } else {
            Vec::new()
        };
    let quality: [(&'static str, SummaryFigure); 3] = [
        ("test accuracy", |s| Some(s.accuracy)),
        ("test macro F1", |s| Some(s.f1)),
        ("test AUROC", |s| s.auroc),
    ];
    let mut rows = Vec::new();
    for (q, (name, get)) in quality.iter().enumerate() {
        let values: Vec<Option<f64>> = sums.iter().map(|s| s.and_then(get)).collect();
        let deltas = (0..runs.len())
            .map(|i| {
                if i == 0 {
                    return String::new();
                }
                match paired.get(q).and_then(|p| p[i]) {
                    Some(d) => format!(
                        "{:+.3} [{:+.3}, {:+.3}] p = {:.3}",
                        d.interval.estimate, d.interval.low, d.interval.high, d.p_value
                    ),
                    None => match (values[i], values[0]) {
                        (Some(a), Some(b)) => format!("{:+.3}", a - b),
                        _ => String::new(),
                    },
                }
            })
            .collect();
        rows.push(MetricRow::new(
            name,
            values.iter().map(|v| num(*v, 3)).collect(),
            deltas,
        ));
    }
    let ratio = |values: &[Option<f64>]| -> Vec<String> {
        (0..values.len())
            .map(|i| match (i, values[i], values[0]) {
                (0, _, _) => String::new(),
                (_, Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => String::new(),
            })
            .collect()
    };
    let loss: Vec<Option<f64>> = sums.iter().map(|s| s.map(|s| s.loss)).collect();
    rows.push(MetricRow::new(
        "test loss",
        loss.iter().map(|v| num(*v, 4)).collect(),
        (0..runs.len())
            .map(|i| match (i, loss[i], loss[0]) {
                (0, _, _) => String::new(),
                (_, Some(a), Some(b)) => format!("{:+.4}", a - b),
                _ => String::new(),
            })
            .collect(),
    ));
    let time: Vec<Option<f64>> = sums.iter().map(|s| s.map(|s| s.train_seconds)).collect();
    rows.push(MetricRow::new(
        "training time",
        time.iter().map(|v| duration(*v)).collect(),
        ratio(&time),
    ));
    let speed: Vec<Option<f64>> = sums
        .iter()
        .map(|s| s.map(|s| s.samples_per_second))
        .collect();
    rows.push(MetricRow::new(
        "training examples/s",
        speed.iter().map(|v| num(*v, 1)).collect(),
        ratio(&speed),
    ));
    let memory: Vec<Option<f64>> = sums
        .iter()
        .map(|s| s.and_then(|s| s.cost.peak_memory_bytes()).map(|b| b as f64))
        .collect();
    rows.push(MetricRow::new(
        "peak memory",
        memory.iter().map(|v| bytes(v.map(|b| b as i64))).collect(),
        ratio(&memory),
    ));
    let parameters: Vec<Option<f64>> = sums
        .iter()
        .map(|s| s.map(|s| s.num_parameters as f64))
        .collect();
    rows.push(MetricRow::new(
        "parameters",
        parameters
            .iter()
            .map(|v| params(v.map(|p| p as i64)))
            .collect(),
        ratio(&parameters),
    ));
    Ok(rows)
}
