//! What the server and a worker process say to each other.
//!
//! The server writes one [`JobSpec`] as a JSON line on the worker's stdin and keeps the pipe
//! open; the worker answers with [`Event`]s, one JSON object per line on stdout. Logs for humans
//! go to stderr, whose tail becomes the run's error message if the process dies.

use crate::data::Split;
use crate::eval::MetricKey;
use crate::runs::{DatasetRef, ModelRef, ResolvedRun, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a job runs, as the process running it addresses the device.
///
/// A worker on a GPU slot sees only its own GPU (`CUDA_VISIBLE_DEVICES`), so the slot's
/// device is [`Device::Cuda`] with the physical index, and the job's is `Cuda(0)`. Written
/// `cpu`, `cuda` (`cuda:0`) or `cuda:N`, as PyTorch writes devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Device {
    /// The CPU, with a share of its cores.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl Device {
    /// The libtorch device, if this process can use it.
    pub fn to_tch(self) -> Result<tch::Device, DeviceError> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(i) => {
                let visible = crate::train::precision::cuda_device_count();
                if i < visible {
                    Ok(tch::Device::Cuda(i))
                } else {
                    Err(DeviceError::NotVisible {
                        device: self,
                        visible,
                    })
                }
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.pad("cpu"),
            Device::Cuda(i) => f.pad(&format!("cuda:{i}")),
        }
    }
}

/// A device that cannot be named or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("device `{device}` requested but this process sees {visible} CUDA device(s)")]
    NotVisible { device: Device, visible: usize },
}

impl std::str::FromStr for Device {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Device, DeviceError> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for Device {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Device, DeviceError> {
        s.parse()
    }
}

/// Everything a worker needs to run one job, sent as the first line on its stdin. Made from a
/// resolved run in one place, [`JobSpec::new`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// The run this job belongs to (for logs only; the worker never touches the database).
    pub run_id: i64,
    /// The checkpoint to fine-tune.
    pub model: ModelRef,
    /// The dataset to train and evaluate on.
    pub dataset: DatasetRef,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// The device as the worker sees it.
    pub device: Device,
    /// Further devices of a data-parallel run (`gpus` > 1), each holding a replica.
    #[serde(default)]
    pub replicas: Vec<Device>,
    /// Intra-op threads for CPU work (torch's `set_num_threads`).
    pub threads: usize,
    /// Folder for the fine-tuned checkpoint; created by the worker.
    pub output_dir: PathBuf,
    /// Folder for caches kept across runs (resized images); none: no disk cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl JobSpec {
    /// The job of a resolved run on `device` with `threads` CPU threads, writing its checkpoint
    /// to `output_dir`. The only place a job is made: the supervisor and `modalbench train`
    /// both come here.
    pub fn new(
        run_id: i64,
        run: &ResolvedRun,
        device: Device,
        threads: usize,
        output_dir: PathBuf,
        cache_dir: Option<PathBuf>,
    ) -> JobSpec {
        JobSpec {
            run_id,
            model: run.model.clone(),
            dataset: run.dataset.clone(),
            config: run.config.clone(),
            device,
            replicas: Vec::new(),
            threads: threads.max(1),
            output_dir,
            cache_dir,
        }
    }
}

/// What a worker started by a cluster scheduler reads (`modalbench worker --ticket FILE`): its
/// job, and where and how to report its events, since no server holds its stdin and stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerTicket {
    pub spec: JobSpec,
    /// The run's attempt this worker is (events are filed under it).
    pub attempt: i64,
    /// Where the events go: the service's `POST /api/v1/worker/runs/{id}/events`.
    pub events_url: String,
    /// The bearer token made for this attempt alone.
    pub token: String,
}

impl JobSpec {
    /// Every device the job trains on: its own, then the replicas'.
    pub fn devices(&self) -> Vec<Device> {
        std::iter::once(self.device)
            .chain(self.replicas.iter().copied())
            .collect()
    }
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// The split the metrics are from: `test`, or `dev` when the test split has no labels.
    #[serde(default)]
    pub split: Split,
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
    /// What the run cost.
    #[serde(default)]
    pub cost: Cost,
    /// For a text+image run, how its test scores move when the images or texts are taken
    /// away; empty for text-only runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_reliance: Vec<Reliance>,
}

/// How the test split was altered for an image-reliance probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// Images shuffled among the examples.
    ImagesShuffled,
    /// Every image replaced by a blank (mid-grey) one.
    ImagesBlank,
    /// Every text replaced by an empty one.
    TextEmpty,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Probe::ImagesShuffled => "images shuffled",
            Probe::ImagesBlank => "images blank",
            Probe::TextEmpty => "text empty",
        })
    }
}

/// The test scores under one probe, and the accuracy it costs against the intact inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reliance {
    pub probe: Probe,
    pub accuracy: f64,
    pub f1: f64,
    pub auroc: Option<f64>,
    /// Intact accuracy − probed accuracy, with its paired bootstrap 95% interval.
    pub drop: crate::eval::stats::Interval,
    /// Two-sided p-value of the drop (paired bootstrap).
    pub p_value: f64,
}

/// What a run cost: the inputs of the "is the image worth it?" comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Cost {
    /// Mean wall time of a full epoch, evaluation included.
    pub epoch_seconds: Option<f64>,
    /// Examples per second of evaluation (dev and test).
    pub eval_samples_per_second: Option<f64>,
    /// Peak resident memory of the worker.
    pub peak_rss_bytes: Option<i64>,
    /// Peak CUDA memory the worker's allocator handed out, summed over its devices.
    pub peak_gpu_bytes: Option<i64>,
    pub trainable_parameters: i64,
    /// Estimated training FLOPs (6 × non-embedding parameters × tokens).
    pub train_flops: f64,
    /// `train_flops` over the training time.
    pub flops_per_second: f64,
    /// Devices the run held.
    pub devices: usize,
    /// Wall time × devices, in hours.
    pub device_hours: f64,
    /// Step of the best dev evaluation, whose checkpoint the summary scores.
    pub best_step: Option<u64>,
    /// Early stopping ended the run.
    pub stopped_early: bool,
}

impl Cost {
    /// The memory the run needed: the GPU allocator's peak where it had GPUs, else the
    /// worker's peak resident memory.
    pub fn peak_memory_bytes(&self) -> Option<i64> {
        self.peak_gpu_bytes.or(self.peak_rss_bytes)
    }
}

/// When a worker passed the milestones of its start, as the store writes times (RFC 3339, UTC,
/// milliseconds): with the run's `created_at` (submitted) and `started_at` (claimed) they
/// split the time from submission to training into queue, process start, loading and the
/// first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartTimings {
    /// The worker began the job: it read the job after its process started (`exec`, loading
    /// its libraries), or, for a worker started ahead, when the job was handed to it.
    pub worker_started_at: String,
    /// Model and data were loaded: the `started` event.
    pub loaded_at: String,
    /// The first training step the run logged: step 1 unless it logs less often (see the
    /// training loop's `log_every`).
    pub first_step: u64,
    /// When that step's `train/loss` point was reported.
    pub first_step_at: String,
}

/// What a worker reports, one JSON object per stdout line, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Model and data are loaded; training begins.
    Started {
        device: Device,
        threads: usize,
        num_parameters: i64,
        num_labels: usize,
        train_examples: usize,
        dev_examples: usize,
        test_examples: usize,
        total_steps: u64,
        /// The step of the checkpoint the job resumed from; `None` for a fresh start.
        #[serde(default)]
        resumed_from: Option<u64>,
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
        key: MetricKey,
        step: u64,
        epoch: f64,
        value: f64,
    },
    /// A line for the run's log.
    Log { message: String },
    /// Per-example outputs on one split.
    Predictions { split: Split, rows: Vec<Prediction> },
    /// A checkpoint in Hugging Face layout was written.
    Checkpoint { path: PathBuf },
    /// The run finished; its summary.
    Finished { summary: Box<Summary> },
    /// The job failed with a reportable error (bad checkpoint, unreadable data, ...).
    Failed { error: String },
    /// The worker's start milestones, sent once after its first logged training step.
    Timings { timings: StartTimings },
}

impl Event {
    /// The run-log line this event stands for, if any, as `(stream, line)`; `attempt` is the
    /// run's attempt the worker is. The supervisor of a local worker and the endpoint that
    /// takes a cluster worker's events both log through here.
    pub fn log_line(&self, attempt: i64) -> Option<(&'static str, String)> {
        match self {
            Event::Started {
                device,
                num_parameters,
                train_examples,
                total_steps,
                resumed_from,
                ..
            } => {
                let mut line = format!(
                    "started on {device}: {num_parameters} parameters, {train_examples} training examples, {total_steps} steps"
                );
                // the points an earlier attempt reported past where this one starts stay, as
                // that attempt's; this attempt's points of the same steps are read
                if let Some(step) = resumed_from {
                    line.push_str(&format!(
                        "; attempt {attempt} resumes from the checkpoint of step {step}"
                    ));
                }
                Some(("worker", line))
            }
            Event::Log { message } => Some(("worker", message.clone())),
            Event::Checkpoint { path } => Some((
                "worker",
                format!("checkpoint written to {}", path.display()),
            )),
            _ => None,
        }
    }

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
            key: "eval/accuracy".parse().unwrap(),
            step: 12,
            epoch: 1.0,
            value: 0.75,
        };
        let line = ev.to_line();
        assert!(line.ends_with('\n'));
        assert!(line.contains(r#""event":"metric""#));
        assert!(line.contains(r#""key":"eval/accuracy""#));
        let back: Event = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn devices_are_written_as_pytorch_writes_them() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!(serde_json::to_string(&Device::Cpu).unwrap(), r#""cpu""#);
        assert_eq!(
            "gpu".parse::<Device>(),
            Err(DeviceError::Unknown("gpu".into()))
        );
        assert!(serde_json::from_str::<Device>(r#""cuda:x""#).is_err());
    }
}
