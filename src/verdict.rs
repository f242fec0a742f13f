//! The verdict of a study: for each of its datasets, the best text-only configuration against
//! the best text+image one (by mean test accuracy over their seeds), the difference with its
//! paired bootstrap interval and p-value, how much the text+image side uses the image, what it
//! costs more, and the verdict the numbers give by [`RULE`]. Nothing depends on which dataset
//! it is.

use crate::eval::stats::{self, Difference, Spread};
use crate::models::registry::Modality;
use crate::protocol::{Probe, Reliance};
use crate::store::Store;
use crate::store::runs::{Run, RunStatus};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The rule, as the page prints it.
pub const RULE: &str = "The best text+image configuration is compared with the best text-only one on \
the same test examples (mean accuracy over seeds, ties to the faster-training one; paired \
bootstrap over examples). \
The image helps when the gain's 95% interval lies above zero and the gain is at least the minimum \
gain; it helps at a cost when, in addition, the text+image side trains more than the cost ratio \
times longer and the text-only side is a working alternative: its accuracy's 95% interval lies \
above the majority-class rate of the test split (a text-only model no better than always \
answering the most frequent label is no alternative at any price). \
Otherwise text suffices: a gain whose interval reaches zero is not evidence.";

/// The thresholds of [`RULE`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Thresholds {
    /// Smallest accuracy gain that counts (absolute, 0.01 = one point).
    pub min_gain: f64,
    /// Training-time ratio above which a gain comes "at a cost".
    pub max_cost_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_gain: 0.01,
            max_cost_ratio: 2.0,
        }
    }
}

/// The verdict on one dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    ImageHelps,
    ImageHelpsAtACost,
    TextSuffices,
    /// The study lacks a finished run of one side.
    Undecided,
}

impl Outcome {
    /// As the page says it.
    pub fn says(self) -> &'static str {
        match self {
            Outcome::ImageHelps => "the image helps",
            Outcome::ImageHelpsAtACost => "the image helps, at a cost",
            Outcome::TextSuffices => "text suffices",
            Outcome::Undecided => "undecided",
        }
    }
}

/// A finished run's part in the verdict.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub run_id: i64,
    /// Whether it got each test example right, in the dataset's example order.
    pub right: Vec<bool>,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub peak_memory_bytes: Option<i64>,
    pub parameters: i64,
    pub train_flops: f64,
    pub reliance: Vec<Reliance>,
}

/// The runs of one configuration (a model with one cell's grid values) over seeds.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    pub modality: Modality,
    /// `model` and its grid values: `fusion-minilm, learning_rate=5e-5`.
    pub label: String,
    pub runs: Vec<RunFacts>,
}

/// A probe's drop, averaged over a configuration's seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProbeDrop {
    pub probe: Probe,
    /// Mean over seeds of the accuracy drop, and of its interval's ends.
    pub drop: f64,
    pub low: f64,
    pub high: f64,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Side {
    pub config: String,
    pub model: String,
    pub runs: Vec<i64>,
    /// Test accuracy over seeds.
    pub accuracy: Spread,
    /// 95% interval of the mean accuracy over resampled examples.
    pub accuracy_low: f64,
    pub accuracy_high: f64,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub peak_memory_bytes: Option<f64>,
    pub parameters: f64,
    pub train_flops: f64,
    pub image_reliance: Vec<ProbeDrop>,
}

/// Text+image over text-only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CostRatios {
    pub train_time: f64,
    /// Training examples per second (below 1: slower).
    pub samples_per_second: f64,
    pub peak_memory: Option<f64>,
    pub parameters: f64,
    pub train_flops: f64,
}

/// The verdict on one dataset with its evidence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetVerdict {
    pub dataset: String,
    /// Accuracy of always answering the test split's most frequent label.
    pub majority_rate: f64,
    pub text_only: Option<Side>,
    pub text_image: Option<Side>,
    /// Text+image minus text-only mean accuracy, paired over examples.
    pub difference: Option<Difference>,
    pub cost_ratios: Option<CostRatios>,
    pub outcome: Outcome,
    /// The clause of the rule that decided it, with its numbers.
    pub reason: String,
}

impl DatasetVerdict {
    /// The text+image side's accuracy drop with its images shuffled.
    pub fn shuffled_drop(&self) -> Option<&ProbeDrop> {
        self.text_image
            .as_ref()?
            .image_reliance
            .iter()
            .find(|r| r.probe == Probe::ImagesShuffled)
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn side(c: &Config, resamples: &[Vec<usize>]) -> Side {
    let rows: Vec<Vec<bool>> = c.runs.iter().map(|r| r.right.clone()).collect();
    let accs: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().filter(|x| **x).count() as f64 / r.len().max(1) as f64)
        .collect();
    // the interval of the mean accuracy: the pooled difference against a side that is never right
    let never = vec![vec![false; rows.first().map_or(0, Vec::len)]];
    let iv = stats::pooled_accuracy_difference(&rows, &never, resamples);
    let memory: Vec<f64> = c
        .runs
        .iter()
        .filter_map(|r| r.peak_memory_bytes.map(|b| b as f64))
        .collect();
    let mut reliance = Vec::new();
    for probe in [Probe::ImagesShuffled, Probe::ImagesBlank, Probe::TextEmpty] {
        let of: Vec<&Reliance> = c
            .runs
            .iter()
            .filter_map(|r| r.reliance.iter().find(|x| x.probe == probe))
            .collect();
        if !of.is_empty() {
            reliance.push(ProbeDrop {
                probe,
                drop: mean(of.iter().map(|r| r.drop.estimate)),
                low: mean(of.iter().map(|r| r.drop.low)),
                high: mean(of.iter().map(|r| r.drop.high)),
            });
        }
    }
    Side {
        config: c.label.clone(),
        model: c.model.clone(),
        runs: c.runs.iter().map(|r| r.run_id).collect(),
        accuracy: stats::spread(&accs),
        accuracy_low: iv.map_or(f64::NAN, |d| d.interval.low),
        accuracy_high: iv.map_or(f64::NAN, |d| d.interval.high),
        train_seconds: mean(c.runs.iter().map(|r| r.train_seconds)),
        samples_per_second: mean(c.runs.iter().map(|r| r.samples_per_second)),
        peak_memory_bytes: (memory.len() == c.runs.len()).then(|| mean(memory.into_iter())),
        parameters: mean(c.runs.iter().map(|r| r.parameters as f64)),
        train_flops: mean(c.runs.iter().map(|r| r.train_flops)),
        image_reliance: reliance,
    }
}

/// The best configuration of a modality by mean accuracy; of equally accurate ones, the one
/// that trains fastest (the cheapest way to that accuracy).
fn best(configs: &[Config], modality: Modality) -> Option<&Config> {
    let key = |c: &Config| {
        let acc =
            mean(c.runs.iter().map(|r| {
                r.right.iter().filter(|x| **x).count() as f64 / r.right.len().max(1) as f64
            }));
        (acc, -mean(c.runs.iter().map(|r| r.train_seconds)))
    };
    configs
        .iter()
        .filter(|c| c.modality == modality && !c.runs.is_empty())
        .fold(None, |b: Option<&Config>, c| match b {
            Some(b) if key(b) >= key(c) => Some(b),
            _ => Some(c),
        })
}

/// The verdict on `dataset` from its configurations' runs (all on the same test examples, whose
/// most frequent label is `majority_rate` of them).
pub fn decide(
    dataset: &str,
    majority_rate: f64,
    configs: &[Config],
    t: Thresholds,
) -> DatasetVerdict {
    let n = configs
        .iter()
        .flat_map(|c| c.runs.first())
        .map(|r| r.right.len())
        .next()
        .unwrap_or(0);
    let resamples = stats::resamples(n, stats::RESAMPLES, stats::SEED);
    let text = best(configs, Modality::Text);
    let image = best(configs, Modality::TextImage);
    let mut v = DatasetVerdict {
        dataset: dataset.to_string(),
        majority_rate,
        text_only: text.map(|c| side(c, &resamples)),
        text_image: image.map(|c| side(c, &resamples)),
        difference: None,
        cost_ratios: None,
        outcome: Outcome::Undecided,
        reason: String::new(),
    };
    let (Some(text), Some(image)) = (text, image) else {
        v.reason =
            "the study has no finished run of a text-only or of a text+image model on this dataset"
                .into();
        return v;
    };
    let rows = |c: &Config| c.runs.iter().map(|r| r.right.clone()).collect::<Vec<_>>();
    let diff = stats::pooled_accuracy_difference(&rows(image), &rows(text), &resamples);
    let (Some(ts), Some(is)) = (&v.text_only, &v.text_image) else {
        return v;
    };
    let ratios = CostRatios {
        train_time: is.train_seconds / ts.train_seconds.max(1e-9),
        samples_per_second: is.samples_per_second / ts.samples_per_second.max(1e-9),
        peak_memory: match (is.peak_memory_bytes, ts.peak_memory_bytes) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        parameters: is.parameters / ts.parameters.max(1.0),
        train_flops: is.train_flops / ts.train_flops.max(1.0),
    };
    v.cost_ratios = Some(ratios);
    v.difference = diff;
    let Some(d) = diff else {
        v.reason = "the two sides were not scored on the same test examples".into();
        return v;
    };
    let gain = d.interval.estimate;
    let ci = format!(
        "gain {gain:+.3} (95% interval {:+.3} to {:+.3}, p = {:.3})",
        d.interval.low, d.interval.high, d.p_value
    );
    let alternative = ts.accuracy_low > majority_rate;
    (v.outcome, v.reason) = if d.interval.low > 0.0 && gain >= t.min_gain {
        let helps = format!("{ci} lies above zero and is at least {:.3}", t.min_gain);
        let time = format!("training takes {:.1}× as long", ratios.train_time);
        if ratios.train_time <= t.max_cost_ratio {
            (
                Outcome::ImageHelps,
                format!("{helps}; {time} (at most {:.1}×)", t.max_cost_ratio),
            )
        } else if !alternative {
            (
                Outcome::ImageHelps,
                format!(
                    "{helps}; {time}, but the text-only side is no alternative: its accuracy's interval ({:.3} to {:.3}) does not lie above the majority-class rate {majority_rate:.3}",
                    ts.accuracy_low, ts.accuracy_high
                ),
            )
        } else {
            (
                Outcome::ImageHelpsAtACost,
                format!(
                    "{helps}; {time} (more than {:.1}×) as the working text-only side (accuracy interval {:.3} to {:.3}, above the majority-class rate {majority_rate:.3})",
                    t.max_cost_ratio, ts.accuracy_low, ts.accuracy_high
                ),
            )
        }
    } else if d.interval.low > 0.0 {
        (
            Outcome::TextSuffices,
            format!(
                "{ci} lies above zero but is below the minimum gain {:.3}",
                t.min_gain
            ),
        )
    } else {
        (
            Outcome::TextSuffices,
            format!("{ci}: the interval does not lie above zero"),
        )
    };
    v
}

/// The verdict of a study: one per dataset.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StudyVerdict {
    pub study_id: i64,
    pub name: String,
    pub thresholds: Thresholds,
    pub rule: &'static str,
    pub datasets: Vec<DatasetVerdict>,
}

/// Gathers a study's finished runs (their test predictions, costs and probes), groups them into
/// configurations per dataset, and decides each dataset. `modalities` gives each model's.
pub async fn study_verdict(
    store: &Store,
    study_id: i64,
    name: &str,
    datasets: &[String],
    modalities: &HashMap<String, Modality>,
    t: Thresholds,
) -> Result<StudyVerdict> {
    let runs: Vec<Run> = store
        .study_runs(study_id)
        .await?
        .into_iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    let mut out = Vec::new();
    for dataset in datasets {
        let mut configs: BTreeMap<String, Config> = BTreeMap::new();
        let mut order: Option<Vec<String>> = None;
        let mut majority_rate = 0.0;
        for run in runs.iter().filter(|r| &r.dataset == dataset) {
            let (Some(summary), Some(&modality)) = (&run.summary, modalities.get(&run.model))
            else {
                continue;
            };
            let preds = store
                .predictions(run.id, crate::data::Split::Test, i64::MAX, 0)
                .await?;
            if preds.is_empty() || preds.iter().any(|p| p.label.is_none()) {
                continue;
            }
            let ids: Vec<String> = preds.iter().map(|p| p.example_id.clone()).collect();
            match &order {
                None => {
                    let mut counts: HashMap<i64, usize> = HashMap::new();
                    for p in &preds {
                        *counts.entry(p.label.unwrap_or(-1)).or_default() += 1;
                    }
                    let most = counts.values().copied().max().unwrap_or(0);
                    majority_rate = most as f64 / preds.len() as f64;
                    order = Some(ids)
                }
                Some(o) if *o != ids => continue,
                Some(_) => {}
            }
            let mut label = run.model.clone();
            if let Some(grid) = &run.grid {
                for (k, v) in grid {
                    label.push_str(&format!(", {k}={v}"));
                }
            }
            configs
                .entry(label.clone())
                .or_insert_with(|| Config {
                    model: run.model.clone(),
                    modality,
                    label,
                    runs: Vec::new(),
                })
                .runs
                .push(RunFacts {
                    run_id: run.id,
                    right: preds.iter().map(|p| p.label == Some(p.pred)).collect(),
                    train_seconds: summary.train_seconds,
                    samples_per_second: summary.samples_per_second,
                    peak_memory_bytes: summary.cost.peak_memory_bytes(),
                    parameters: summary.num_parameters,
                    train_flops: summary.cost.train_flops,
                    reliance: summary.image_reliance.clone(),
                });
        }
        let configs: Vec<Config> = configs.into_values().collect();
        out.push(decide(dataset, majority_rate, &configs, t));
    }
    Ok(StudyVerdict {
        study_id,
        name: name.to_string(),
        thresholds: t,
        rule: RULE,
        datasets: out,
    })
}

/// The verdict as a Markdown table, ready for a paper.
pub fn markdown(v: &StudyVerdict) -> String {
    let mut s = String::from(
        "| dataset | majority class | text-only (acc ± std, n) | text+image (acc ± std, n) | gain [95% CI] | p | images-shuffled drop | time × | memory × | params × | verdict |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for d in &v.datasets {
        let side = |x: &Option<Side>| match x {
            Some(s) => format!(
                "{} {:.3} ± {:.3} (n={})",
                s.config, s.accuracy.mean, s.accuracy.std, s.accuracy.n
            ),
            None => "–".into(),
        };
        let (gain, p) = match &d.difference {
            Some(x) => (
                format!(
                    "{:+.3} [{:+.3}, {:+.3}]",
                    x.interval.estimate, x.interval.low, x.interval.high
                ),
                format!("{:.3}", x.p_value),
            ),
            None => ("–".into(), "–".into()),
        };
        let shuffled = d.shuffled_drop().map_or("–".into(), |r| {
            format!("{:+.3} [{:+.3}, {:+.3}]", r.drop, r.low, r.high)
        });
        let ratio = |f: fn(&CostRatios) -> Option<f64>| {
            d.cost_ratios
                .as_ref()
                .and_then(f)
                .map_or("–".into(), |x| format!("{x:.2}"))
        };
        s.push_str(&format!(
            "| {} | {:.3} | {} | {} | {gain} | {p} | {shuffled} | {} | {} | {} | {} |\n",
            d.dataset,
            d.majority_rate,
            side(&d.text_only),
            side(&d.text_image),
            ratio(|c| Some(c.train_time)),
            ratio(|c| c.peak_memory),
            ratio(|c| Some(c.parameters)),
            d.outcome.says()
        ));
    }
    s
}

/// The verdict as CSV: one row per dataset.
pub fn csv(v: &StudyVerdict) -> String {
    let mut s = String::from(
        "dataset,majority_rate,text_only,text_only_accuracy,text_only_std,text_only_n,text_image,text_image_accuracy,text_image_std,text_image_n,gain,gain_low,gain_high,p_value,images_shuffled_drop,train_time_ratio,samples_per_second_ratio,peak_memory_ratio,parameters_ratio,flops_ratio,verdict\n",
    );
    let q = |x: &str| format!("\"{}\"", x.replace('"', "\"\""));
    for d in &v.datasets {
        let side = |x: &Option<Side>| match x {
            Some(s) => format!(
                "{},{},{},{}",
                q(&s.config),
                s.accuracy.mean,
                s.accuracy.std,
                s.accuracy.n
            ),
            None => ",,,".into(),
        };
        let diff = d.difference.map_or(",,,".into(), |x| {
            format!(
                "{},{},{},{}",
                x.interval.estimate, x.interval.low, x.interval.high, x.p_value
            )
        });
        let shuffled = d
            .shuffled_drop()
            .map_or(String::new(), |r| r.drop.to_string());
        let ratios = d.cost_ratios.map_or(",,,,".into(), |c| {
            format!(
                "{},{},{},{},{}",
                c.train_time,
                c.samples_per_second,
                c.peak_memory.map_or(String::new(), |m| m.to_string()),
                c.parameters,
                c.train_flops
            )
        });
        s.push_str(&format!(
            "{},{},{},{},{diff},{shuffled},{ratios},{}\n",
            q(&d.dataset),
            d.majority_rate,
            side(&d.text_only),
            side(&d.text_image),
            q(d.outcome.says())
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn runs(accuracy: f64, n: usize, seeds: u64, salt: u64, seconds: f64) -> Vec<RunFacts> {
        (0..seeds)
            .map(|s| {
                let mut rng = ChaCha8Rng::seed_from_u64(salt * 100 + s);
                RunFacts {
                    run_id: (salt * 100 + s) as i64,
                    right: (0..n).map(|_| rng.random::<f64>() < accuracy).collect(),
                    train_seconds: seconds,
                    samples_per_second: 100.0 / seconds,
                    peak_memory_bytes: Some(1 << 30),
                    parameters: 1_000_000,
                    train_flops: 1e12 * seconds,
                    reliance: Vec::new(),
                }
            })
            .collect()
    }

    fn config(model: &str, modality: Modality, runs: Vec<RunFacts>) -> Config {
        Config {
            model: model.into(),
            modality,
            label: model.into(),
            runs,
        }
    }

    #[test]
    fn a_clear_gain_helps_and_a_costly_one_helps_at_a_cost() {
        let t = Thresholds::default();
        let c = [
            config("text", Modality::Text, runs(0.6, 400, 3, 1, 10.0)),
            config("image", Modality::TextImage, runs(0.9, 400, 3, 2, 15.0)),
        ];
        let v = decide("d", 0.5, &c, t);
        assert_eq!(v.outcome, Outcome::ImageHelps, "{}", v.reason);
        assert!((v.cost_ratios.unwrap().train_time - 1.5).abs() < 1e-12);
        let c = [
            config("text", Modality::Text, runs(0.6, 400, 3, 1, 10.0)),
            config("image", Modality::TextImage, runs(0.9, 400, 3, 2, 50.0)),
        ];
        assert_eq!(decide("d", 0.5, &c, t).outcome, Outcome::ImageHelpsAtACost);
        // the same cost over a text-only side at the majority-class rate: no trade-off to make
        let c = [
            config("text", Modality::Text, runs(0.5, 400, 3, 1, 10.0)),
            config("image", Modality::TextImage, runs(0.9, 400, 3, 2, 50.0)),
        ];
        let v = decide("d", 0.5, &c, t);
        assert_eq!(v.outcome, Outcome::ImageHelps, "{}", v.reason);
        assert!(v.reason.contains("no alternative"), "{}", v.reason);
        // ... while above a lower majority-class rate it is one
        let v = decide("d", 0.4, &c, t);
        assert_eq!(v.outcome, Outcome::ImageHelpsAtACost, "{}", v.reason);
    }

    #[test]
    fn a_chance_lead_of_the_image_model_is_not_called_help() {
        // the same skill on both sides: the text+image model may lead by luck, but the
        // interval of the difference reaches zero, in every one of these draws
        for salt in 0..20 {
            let c = [
                config("text", Modality::Text, runs(0.7, 200, 3, 10 + salt, 10.0)),
                config(
                    "image",
                    Modality::TextImage,
                    runs(0.7, 200, 3, 50 + salt, 12.0),
                ),
            ];
            let v = decide("d", 0.5, &c, Thresholds::default());
            assert_eq!(
                v.outcome,
                Outcome::TextSuffices,
                "draw {salt}: {}",
                v.reason
            );
        }
        // a real but tiny gain is below the minimum
        let c = [
            config("text", Modality::Text, runs(0.70, 4000, 3, 1, 10.0)),
            config("image", Modality::TextImage, runs(0.705, 4000, 3, 1, 10.0)),
        ];
        let v = decide(
            "d",
            0.5,
            &c,
            Thresholds {
                min_gain: 0.05,
                ..Default::default()
            },
        );
        assert_eq!(v.outcome, Outcome::TextSuffices, "{}", v.reason);
    }

    #[test]
    fn the_best_of_each_side_is_compared_and_a_missing_side_is_undecided() {
        let c = [
            config("weak-text", Modality::Text, runs(0.5, 300, 2, 3, 10.0)),
            config("text", Modality::Text, runs(0.8, 300, 2, 4, 10.0)),
            config("image", Modality::TextImage, runs(0.81, 300, 2, 5, 10.0)),
        ];
        let v = decide("d", 0.5, &c, Thresholds::default());
        assert_eq!(v.text_only.as_ref().unwrap().model, "text");
        assert_eq!(v.text_only.as_ref().unwrap().accuracy.n, 2);
        let v = decide("d", 0.5, &c[..2], Thresholds::default());
        assert_eq!(v.outcome, Outcome::Undecided);
        // equally accurate: the one that trains faster is the one to beat
        let c = [
            config("slow-text", Modality::Text, runs(0.8, 300, 2, 4, 30.0)),
            config("fast-text", Modality::Text, runs(0.8, 300, 2, 4, 10.0)),
            config("image", Modality::TextImage, runs(0.81, 300, 2, 5, 10.0)),
        ];
        let v = decide("d", 0.5, &c, Thresholds::default());
        assert_eq!(v.text_only.as_ref().unwrap().model, "fast-text");
    }
}
