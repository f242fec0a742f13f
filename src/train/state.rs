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
    /// The optimiser's moments, as [`AdamW::state`] names them; none in the checkpoint of a
    /// training that ended.
    pub optimizer: Option<Vec<(String, Tensor)>>,
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
        let file = dir.join(OPTIMIZER);
        let optimizer = file
            .is_file()
            .then(|| Tensor::read_safetensors(&file))
            .transpose()
            .with_context(|| format!("reading {}", file.display()))?;
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

/// Makes the last checkpoint under `out` the best one too: `best/` gets the model's files of
/// `last/` (not the optimiser state and progress) as hard links, so the weights are not
/// written a second time (copied where the file system has no hard links). Checkpoint files
/// are never rewritten in place (each folder is replaced whole), so the links stay the weights
/// of that step.
pub fn best_from_last(out: &Path) -> Result<()> {
    let last = out.join(LAST);
    replace(&out.join(BEST), |dir| {
        for entry in std::fs::read_dir(&last)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == OPTIMIZER || name == TRAINER_STATE || !entry.file_type()?.is_file() {
                continue;
            }
            let to = dir.join(&name);
            if std::fs::hard_link(entry.path(), &to).is_err() {
                std::fs::copy(entry.path(), &to)
                    .with_context(|| format!("copying {}", entry.path().display()))?;
            }
        }
        Ok(())
    })
    .context("writing the best checkpoint")
}

/// Writes the last checkpoint under `out`, with the progress, and with `moments` the optimiser
/// state. The checkpoint of a training that ended goes without them: nothing trains on from
/// it, and they are two thirds of its size (181 of 272 MB for MiniLM-L6).
pub fn save_last(
    model: &Loaded,
    opt: &AdamW,
    progress: &Progress,
    config: &TrainConfig,
    out: &Path,
    labels: &[String],
    moments: bool,
) -> Result<()> {
    // the weights of every step taken, embedding rows no batch looked up lately included
    opt.sync();
    replace(&out.join(LAST), |dir| {
        models::save_classifier(model, dir, labels)?;
        if moments {
            let (moments, _) = opt.state();
            models::checkpoint::write_safetensors(&moments, &dir.join(OPTIMIZER))?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_checkpoint_keeps_its_weights_when_the_last_is_replaced() {
        let out = tempfile::tempdir().unwrap();
        let fill = |weights: &'static str| {
            move |dir: &Path| -> Result<()> {
                for (name, text) in [
                    ("config.json", "{}"),
                    ("model.safetensors", weights),
                    (OPTIMIZER, "moments"),
                    (TRAINER_STATE, "{}"),
                ] {
                    std::fs::write(dir.join(name), text)?;
                }
                Ok(())
            }
        };
        replace(&out.path().join(LAST), fill("weights of step 10")).unwrap();
        best_from_last(out.path()).unwrap();
        replace(&out.path().join(LAST), fill("weights of step 20")).unwrap();
        let best = out.path().join(BEST);
        let read = |f: &str| std::fs::read_to_string(best.join(f)).unwrap();
        assert_eq!(read("model.safetensors"), "weights of step 10");
        assert_eq!(read("config.json"), "{}");
        assert!(!best.join(OPTIMIZER).exists() && !best.join(TRAINER_STATE).exists());
        // made best again, it follows the new last checkpoint
        best_from_last(out.path()).unwrap();
        assert_eq!(read("model.safetensors"), "weights of step 20");
    }
}
