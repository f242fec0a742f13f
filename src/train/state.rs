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
    let tmp = fresh_sibling(dir)?;
    fill(&tmp)?;
    rename_into(&tmp, dir)
}

/// An empty folder beside `dir` to write its replacement in.
fn fresh_sibling(dir: &Path) -> Result<PathBuf> {
    let tmp = sibling(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Puts the folder `tmp` in the place of `dir` (the previous one kept beside it until then).
fn rename_into(tmp: &Path, dir: &Path) -> Result<()> {
    let old = sibling(dir, "old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(tmp, dir)?;
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

/// Starts writing the last checkpoint under `out`: the weights, and with `moments` the
/// optimiser state, go to a folder beside `last/` on another thread, while the caller goes on
/// with anything that leaves weights and moments alone (evaluating the dev split);
/// [`Writing::finish`] adds the progress and puts the folder in place. The checkpoint of a
/// training that ended goes without the moments: nothing trains on from it, and they take up
/// to twice the weights' size.
pub fn start_last(
    model: &Loaded,
    opt: &AdamW,
    out: &Path,
    labels: &[String],
    moments: bool,
) -> Result<Writing> {
    // the weights of every step taken, embedding rows no batch looked up lately included
    opt.sync();
    let files = models::ClassifierFiles::of(model, labels)?;
    let moments = moments.then(|| models::checkpoint::on_cpu(opt.state().0));
    let dir = out.join(LAST);
    let tmp = fresh_sibling(&dir).context("writing the last checkpoint")?;
    let into = tmp.clone();
    let thread = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || -> Result<()> {
            files.write(&into)?;
            if let Some(moments) = moments {
                models::checkpoint::write_safetensors(&moments, &into.join(OPTIMIZER))?;
            }
            Ok(())
        })
        .context("starting the checkpoint writer")?;
    Ok(Writing {
        dir,
        tmp,
        thread: Some(thread),
    })
}

/// A last checkpoint being written ([`start_last`]). Dropped unfinished (the run failed
/// meanwhile), it waits for the writer and removes the unfinished folder, leaving the previous
/// checkpoint in place.
pub struct Writing {
    dir: PathBuf,
    tmp: PathBuf,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writing {
    /// Waits for the weights and moments, adds the progress (without the moments unless
    /// `moments`: training stopped early after all), and puts the folder in the place of
    /// `last/`.
    pub fn finish(
        mut self,
        progress: &Progress,
        config: &TrainConfig,
        moments: bool,
    ) -> Result<()> {
        let written = match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow::anyhow!("the checkpoint writer panicked")),
            None => Ok(()),
        };
        let finish = || -> Result<()> {
            written?;
            if !moments {
                let _ = std::fs::remove_file(self.tmp.join(OPTIMIZER));
            }
            let state = TrainerState {
                config: config.clone(),
                progress: progress.clone(),
            };
            std::fs::write(
                self.tmp.join(TRAINER_STATE),
                serde_json::to_string_pretty(&state)?,
            )?;
            rename_into(&self.tmp, &self.dir)
        };
        finish().context("writing the last checkpoint")
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // gone once renamed into place
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
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

    #[test]
    fn the_last_checkpoint_is_written_beside_its_place_and_an_abandoned_one_leaves_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bert-tiny");
        crate::models::presets::write_bert_tiny(&src).unwrap();
        let model = models::load(&src, Some(2), tch::Device::Cpu).unwrap();
        let opt = AdamW::new(&model.vs, 0.01);
        let (out, labels) = (dir.path().join("run"), ["a".to_string(), "b".to_string()]);
        let config = TrainConfig::default();
        let at = |step| Progress {
            step,
            ..Progress::default()
        };
        let last = out.join(LAST);
        let found = || {
            Resume::find(&last, &config)
                .unwrap()
                .expect("a last checkpoint")
        };
        start_last(&model, &opt, &out, &labels, true)
            .unwrap()
            .finish(&at(10), &config, true)
            .unwrap();
        // the weights as the model holds them, read back by tch's reader
        let weights: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(last.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let vars = model.vs.variables();
        assert_eq!(weights.len(), vars.len());
        for (name, v) in &vars {
            assert!(weights[name].equal(v), "`{name}`");
        }
        let resumed = found();
        assert_eq!(resumed.progress.step, 10);
        assert!(resumed.optimizer.is_some(), "moments kept");
        // started, then abandoned (the run failed while the dev split was evaluated): the
        // previous checkpoint stays, and nothing is left beside it
        drop(start_last(&model, &opt, &out, &labels, true).unwrap());
        assert_eq!(found().progress.step, 10);
        assert!(!sibling(&last, "tmp").exists());
        // the moments written, then not wanted (the evaluation stopped training early)
        start_last(&model, &opt, &out, &labels, true)
            .unwrap()
            .finish(&at(20), &config, false)
            .unwrap();
        let resumed = found();
        assert_eq!(resumed.progress.step, 20);
        assert!(resumed.optimizer.is_none() && !last.join(OPTIMIZER).exists());
        assert!(!sibling(&last, "tmp").exists() && !sibling(&last, "old").exists());
    }
}
