//! A run's checkpoints: `best/` (the weights with the best dev score so far) and `last/` (the
//! latest weights with everything needed to resume: the AdamW moments, the loss scale, the
//! position in the data order and the early-stopping count). Both are Hugging Face folders
//! (`config.json`, `model.safetensors`, the tokenizer and preprocessor files); `last/` also has
//! `optimizer.safetensors` and `trainer_state.json`. Each is written beside its place and
//! renamed into it, so a worker killed mid-write leaves the previous one whole.
//!
//! The random draws of a step depend only on the run's seed and the step (dropout is reseeded
//! per step, the data order per epoch), so the saved position is the whole RNG state.

use crate::models::{self, Loaded};
use crate::runs::TrainConfig;
use crate::train::optim::AdamW;
use crate::train::precision::GradScaler;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The folder of the latest checkpoint, under the run's output folder.
pub const LAST: &str = "last";
/// The folder of the best checkpoint by the dev split's primary metric.
pub const BEST: &str = "best";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER_STATE: &str = "trainer_state.json";

/// Where training stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimisation steps done (skipped float16 steps included).
    pub step: u64,
    /// The epoch under way (0-based).
    pub epoch: u64,
    /// Steps of that epoch done.
    pub windows_done: usize,
    /// Steps the optimiser took (skipped float16 steps excluded): the schedule's position.
    pub optimizer_steps: u64,
    pub scaler: Option<GradScaler>,
    /// Best dev score of the primary metric so far, and its step.
    pub best: Option<f64>,
    pub best_step: u64,
    /// Evaluations since the best one.
    pub bad_evals: u32,
    pub train_seconds: f64,
    pub trained_examples: usize,
    /// Text tokens (without padding) and image tokens trained on.
    pub trained_tokens: u64,
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    config: TrainConfig,
    progress: Progress,
}

/// A run's last checkpoint, to resume from.
pub struct Resume {
    pub progress: Progress,
    /// The optimiser's moments, as [`AdamW::state`] names them.
    pub optimizer: Vec<(String, Tensor)>,
}

impl Resume {
    /// The checkpoint in `last_dir` if it was written by a run of the same configuration.
    pub fn find(last_dir: &Path, config: &TrainConfig) -> Result<Option<Resume>> {
        let dir = if last_dir.join(TRAINER_STATE).is_file() {
            last_dir.to_path_buf()
        } else {
            // a worker stopped between the two renames of `replace`
            let old = sibling(last_dir, "old");
            if !old.join(TRAINER_STATE).is_file() {
                return Ok(None);
            }
            std::fs::rename(&old, last_dir)?;
            last_dir.to_path_buf()
        };
        let text = std::fs::read_to_string(dir.join(TRAINER_STATE))?;
        let state: TrainerState = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", dir.join(TRAINER_STATE).display()))?;
        if &state.config != config {
            return Ok(None);
        }
        let optimizer = Tensor::read_safetensors(dir.join(OPTIMIZER))
            .with_context(|| format!("reading {}", dir.join(OPTIMIZER).display()))?;
        Ok(Some(Resume {
            progress: state.progress,
            optimizer,
        }))
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Writes a folder with `fill` beside `dir` and renames it into place.
fn replace(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Writes the best checkpoint under `out`.
pub fn save_best(model: &Loaded, out: &Path, labels: &[String]) -> Result<()> {
    replace(&out.join(BEST), |dir| {
        models::save_classifier(model, dir, labels)
    })
    .context("writing the best checkpoint")
}

/// Writes the last checkpoint under `out`, with the optimiser state and the progress.
pub fn save_last(
    model: &Loaded,
    opt: &AdamW,
    progress: &Progress,
    config: &TrainConfig,
    out: &Path,
    labels: &[String],
) -> Result<()> {
    replace(&out.join(LAST), |dir| {
        models::save_classifier(model, dir, labels)?;
        let (moments, _) = opt.state();
        let cpu: Vec<(String, Tensor)> = moments
            .into_iter()
            .map(|(k, t)| (k, t.to_device(tch::Device::Cpu)))
            .collect();
        Tensor::write_safetensors(&cpu, dir.join(OPTIMIZER))?;
        let state = TrainerState {
            config: config.clone(),
            progress: progress.clone(),
        };
        std::fs::write(
            dir.join(TRAINER_STATE),
            serde_json::to_string_pretty(&state)?,
        )?;
        Ok(())
    })
    .context("writing the last checkpoint")
}
