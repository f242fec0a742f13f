//! What the server and a worker process say to each other.
//!
//! The server writes one [`JobSpec`] as a JSON line on the worker's stdin and keeps the pipe
//! open; the worker answers with [`Event`]s, one JSON object per line on stdout. Logs for humans
//! go to stderr, whose tail becomes the run's error message if the process dies.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Hyper-parameters of one fine-tuning run, as stored in `runs.config`.
///
/// Field names follow Hugging Face `TrainingArguments` where one exists there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training split.
    pub epochs: u32,
    /// Examples per optimisation step.
    pub batch_size: u32,
    /// Peak learning rate of AdamW, reached at the end of warm-up.
    pub learning_rate: f64,
    /// Seeds weight initialisation, dropout and the shuffling order.
    pub seed: u64,
    /// Tokens per text after truncation; batches are padded to their longest text only.
    pub max_length: u32,
    /// Fraction of all steps spent warming the learning rate up linearly from 0.
    pub warmup_ratio: f64,
    /// Decoupled weight decay of AdamW (not applied to biases and LayerNorm weights).
    pub weight_decay: f64,
    /// Stop after this many optimisation steps, if set (Hugging Face's `max_steps`).
    pub max_steps: Option<u32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch_size: 16,
            learning_rate: 2e-5,
            seed: 0,
            max_length: 128,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_steps: None,
        }
    }
}

/// A registered dataset: its name and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Registered name, e.g. `demo-news`.
    pub name: String,
    #[serde(flatten)]
    pub source: crate::data::Source,
}

/// Everything a worker needs to run one job, sent as the first line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// The run this job belongs to (for logs only; the worker never touches the database).
    pub run_id: i64,
    /// Model name as listed by the registry.
    pub model: String,
    /// Checkpoint folder in Hugging Face layout.
    pub model_dir: PathBuf,
    /// The dataset to train and evaluate on.
    pub dataset: DatasetRef,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// `cpu` or `cuda` (the slot's GPU is the only one the process sees).
    pub device: String,
    /// Intra-op threads for CPU work (torch's `set_num_threads`).
    pub threads: usize,
    /// Folder for the fine-tuned checkpoint; created by the worker.
    pub output_dir: PathBuf,
    /// Folder for caches kept across runs (resized images); none: no disk cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// One row of per-example output on an evaluation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The example's `id` from the dataset file.
    pub example_id: String,
    /// Gold label index; absent in a split without labels.
    pub label: Option<usize>,
    /// Predicted label index (argmax of `probs`).
    pub pred: usize,
    /// Probabilities per label (softmax; sigmoid for soft-label tasks); left empty for tasks
    /// with many labels (VQA's answer classes).
    pub probs: Vec<f32>,
}

/// Final numbers of a successful run: test-split metrics and cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The split the metrics are from: `test`, or `dev` when the test split has no labels.
    #[serde(default = "test_split")]
    pub split: String,
    /// Accuracy (top-1 for VQA-style tasks).
    pub accuracy: f64,
    /// Test F1 (positive class for binary tasks, macro otherwise).
    pub f1: f64,
    /// Test AUROC (one-vs-rest macro for multi-class); absent when undefined.
    pub auroc: Option<f64>,
    /// VQA accuracy, for soft-label (VQA) tasks.
    #[serde(default)]
    pub vqa_accuracy: Option<f64>,
    /// Mean test cross-entropy.
    pub loss: f64,
    /// Wall time of the optimisation steps, evaluation excluded.
    pub train_seconds: f64,
    /// Training examples per second over `train_seconds`.
    pub samples_per_second: f64,
    /// Wall time of the whole job, loading and evaluation included.
    pub total_seconds: f64,
    /// Trainable parameters.
    pub num_parameters: i64,
    /// Optimisation steps taken.
    pub steps: u64,
    /// Test examples scored.
    pub test_examples: usize,
}

fn test_split() -> String {
    "test".into()
}

/// What a worker reports, one JSON object per stdout line, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Model and data are loaded; training begins.
    Started {
        device: String,
        threads: usize,
        num_parameters: i64,
        num_labels: usize,
        train_examples: usize,
        dev_examples: usize,
        test_examples: usize,
        total_steps: u64,
    },
    /// Training progress, sent every few steps.
    Progress {
        epoch: f64,
        step: u64,
        total_steps: u64,
        samples_per_second: f64,
    },
    /// One point of a metric series (`train/loss`, `eval/accuracy`, ...).
    Metric {
        key: String,
        step: u64,
        epoch: f64,
        value: f64,
    },
    /// A line for the run's log.
    Log { message: String },
    /// Per-example outputs on one split.
    Predictions {
        split: String,
        rows: Vec<Prediction>,
    },
    /// A checkpoint in Hugging Face layout was written.
    Checkpoint { path: PathBuf },
    /// The run finished; its summary.
    Finished { summary: Summary },
    /// The job failed with a reportable error (bad checkpoint, unreadable data, ...).
    Failed { error: String },
}

impl Event {
    /// One JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("events always serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_json_line() {
        let ev = Event::Metric {
            key: "eval/accuracy".into(),
            step: 12,
            epoch: 1.0,
            value: 0.75,
        };
        let line = ev.to_line();
        assert!(line.ends_with('\n'));
        assert!(line.contains(r#""event":"metric""#));
        let back: Event = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, ev);
    }
}
