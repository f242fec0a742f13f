//! Metric keys: what a series of metric points is called, `scope/metric` as Weights & Biases
//! and MLflow users write them (`train/loss`, `eval/accuracy`, `test/f1`). The trainer emits
//! them, the store files points under them, and the pages and the API read them back, all
//! through [`MetricKey`].

use crate::data::{Split, UnknownName};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// When a value was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// During training, over the optimisation steps since the last point.
    Train,
    /// An evaluation of the dev split during training.
    Eval,
    /// The final scoring of the dev split (when the test split has no labels).
    Dev,
    /// The final scoring of the test split.
    Test,
}

impl Scope {
    /// Every scope, in the order the pages list them.
    pub const ALL: [Scope; 4] = [Scope::Train, Scope::Eval, Scope::Dev, Scope::Test];

    /// The name before the `/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Train => "train",
            Scope::Eval => "eval",
            Scope::Dev => "dev",
            Scope::Test => "test",
        }
    }

    /// The scope of a split's final scoring; the train split is never scored.
    pub fn final_of(split: Split) -> Scope {
        match split {
            Split::Test => Scope::Test,
            Split::Dev | Split::Train => Scope::Dev,
        }
    }

    /// The metrics measured in this scope.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Scope::Train => &[Metric::Loss, Metric::LearningRate, Metric::GradNorm],
            Scope::Eval | Scope::Dev | Scope::Test => &Metric::SCORES,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Mean loss (cross-entropy; binary cross-entropy for soft-label tasks).
    Loss,
    /// The optimiser's learning rate.
    LearningRate,
    /// Global L2 norm of the gradients before clipping.
    GradNorm,
    /// Top-1 accuracy.
    Accuracy,
    /// F1 of the positive class for binary tasks, macro F1 otherwise.
    F1,
    /// Area under the ROC curve (one-vs-rest macro for multi-class).
    Auroc,
    /// VQA accuracy (the ten leave-one-out annotator subsets), for soft-label tasks.
    VqaAccuracy,
}

impl Metric {
    /// The metrics a scored split reports, in the order the pages show them.
    pub const SCORES: [Metric; 5] = [
        Metric::Loss,
        Metric::Accuracy,
        Metric::F1,
        Metric::Auroc,
        Metric::VqaAccuracy,
    ];

    /// The name after the `/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::LearningRate => "learning_rate",
            Metric::GradNorm => "grad_norm",
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Auroc => "auroc",
            Metric::VqaAccuracy => "vqa_accuracy",
        }
    }
}

/// The key of a metric series: `scope/metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct MetricKey {
    pub scope: Scope,
    pub metric: Metric,
}

impl MetricKey {
    /// `train/loss`: mean training loss since the last point.
    pub const TRAIN_LOSS: MetricKey = MetricKey::new(Scope::Train, Metric::Loss);
    /// `train/learning_rate`: the learning rate of the last step.
    pub const TRAIN_LEARNING_RATE: MetricKey = MetricKey::new(Scope::Train, Metric::LearningRate);
    /// `train/grad_norm`: the gradients' norm before clipping, at the last step.
    pub const TRAIN_GRAD_NORM: MetricKey = MetricKey::new(Scope::Train, Metric::GradNorm);

    /// The key of `metric` in `scope`.
    pub const fn new(scope: Scope, metric: Metric) -> MetricKey {
        MetricKey { scope, metric }
    }

    /// The dev evaluation of `metric` during training (`eval/...`).
    pub const fn eval(metric: Metric) -> MetricKey {
        MetricKey::new(Scope::Eval, metric)
    }

    /// Every key a run can report.
    pub fn all() -> impl Iterator<Item = MetricKey> {
        Scope::ALL.into_iter().flat_map(|scope| {
            scope
                .metrics()
                .iter()
                .map(move |&metric| MetricKey::new(scope, metric))
        })
    }
}

impl fmt::Display for MetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/{}", self.scope.as_str(), self.metric.as_str()))
    }
}

impl From<MetricKey> for String {
    fn from(k: MetricKey) -> String {
        k.to_string()
    }
}

impl FromStr for MetricKey {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<MetricKey, UnknownName> {
        MetricKey::all()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                let all: Vec<String> = MetricKey::all().map(|k| k.to_string()).collect();
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                UnknownName::new(s, "metric key", &all)
            })
    }
}

// By hand, as its serde: a key is written `scope/metric`, one of [`MetricKey::all`].
impl utoipa::PartialSchema for MetricKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A native run's metric key, `scope/metric`: `train/` (during training), `eval/` \
                 (dev evaluations during training), `test/` (the final scores) or `dev/` (the \
                 final scores when the test split has no labels).",
            ))
            .enum_values(Some(MetricKey::all().map(|k| k.to_string())))
            .build()
            .into()
    }
}

impl utoipa::ToSchema for MetricKey {}

impl TryFrom<String> for MetricKey {
    type Error = UnknownName;
    fn try_from(s: String) -> Result<MetricKey, UnknownName> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_they_are_written_and_unknown_ones_are_named() {
        for k in MetricKey::all() {
            assert_eq!(k.to_string().parse::<MetricKey>(), Ok(k));
        }
        assert_eq!(MetricKey::TRAIN_LOSS.to_string(), "train/loss");
        assert_eq!(
            MetricKey::eval(Metric::VqaAccuracy).to_string(),
            "eval/vqa_accuracy"
        );
        let json = serde_json::to_string(&MetricKey::new(Scope::Test, Metric::F1)).unwrap();
        assert_eq!(json, r#""test/f1""#);
        let err = "train/accuracy".parse::<MetricKey>().unwrap_err();
        assert_eq!(err.given, "train/accuracy");
        assert!(err.allowed.contains("train/loss") && err.allowed.contains("test/auroc"));
    }
}
