//! The fine-tuning loop: AdamW with linear warm-up and decay, per-epoch evaluation on the dev
//! split, final scoring of the test split, and a checkpoint in Hugging Face layout.

pub mod schedule;

use crate::data::image::ImageProcessor;
use crate::data::text::{Encoded, TextEncoder, collate};
use crate::data::{self, Batch, Example};
use crate::eval::metrics::{argmax, classification_metrics};
use crate::models::registry::Modality;
use crate::models::{self, Loaded, layers::NO_DECAY};
use crate::protocol::{Event, JobSpec, Prediction, Summary};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

/// Receives the events of a job: the worker writes them to stdout, the CLI draws progress.
pub trait EventSink {
    /// Handles one event.
    fn emit(&mut self, event: Event);
}

/// Gradient-norm clipping threshold (Hugging Face's `max_grad_norm`).
const MAX_GRAD_NORM: f64 = 1.0;

/// The device a job asked for, if this process can use it.
pub fn resolve_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => bail!("device `cuda` requested but no CUDA device is visible"),
        other => bail!("unknown device `{other}` (cpu or cuda)"),
    }
}

/// Runs one fine-tuning job to the end, reporting through `sink`; returns its summary.
pub fn run(spec: &JobSpec, sink: &mut dyn EventSink) -> Result<Summary> {
    let started = Instant::now();
    let cfg = &spec.config;
    let device = resolve_device(&spec.device)?;
    if device == Device::Cpu {
        tch::set_num_threads(spec.threads.max(1) as i32);
    }
    tch::manual_seed(cfg.seed as i64);

    let ds = data::load(&spec.dataset)
        .with_context(|| format!("loading dataset `{}`", spec.dataset.name))?;
    let model = models::load(&spec.model_dir, Some(ds.num_labels), device)
        .with_context(|| format!("loading model `{}`", spec.model))?;
    let pad_token_id = model.checkpoint.pad_token_id()?;
    if !model.report.fresh.is_empty() {
        sink.emit(Event::Log {
            message: format!("newly initialised: {}", model.report.fresh.join(", ")),
        });
    }
    if !model.report.unused.is_empty() {
        sink.emit(Event::Log {
            message: format!(
                "checkpoint tensors not used: {}",
                model.report.unused.join(", ")
            ),
        });
    }
    let max_length = (cfg.max_length as i64).min(model.checkpoint.max_length()?) as usize;
    let encoder = TextEncoder::for_checkpoint(&model.checkpoint, max_length)?;
    let enc_train = encoder.encode(&ds.train)?;
    let enc_dev = encoder.encode(&ds.dev)?;
    let enc_test = encoder.encode(&ds.test)?;
    let train = Split {
        name: "train",
        examples: &ds.train,
        encoded: &enc_train,
    };
    let dev = Split {
        name: "dev",
        examples: &ds.dev,
        encoded: &enc_dev,
    };
    let test = Split {
        name: "test",
        examples: &ds.test,
        encoded: &enc_test,
    };
    let images = match model.checkpoint.arch.modality {
        Modality::Text => None,
        Modality::TextImage => {
            for split in [train, dev, test] {
                split.check_images(&ds.root)?;
            }
            Some(ImageProcessor::from_dir(&spec.model_dir)?)
        }
    };
    let batcher = Batcher {
        pad: pad_token_id,
        device,
        images,
        root: &ds.root,
    };

    let num_parameters: i64 = model
        .vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    let mut opt = tch::nn::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        wd: cfg.weight_decay,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(&model.vs, cfg.learning_rate)?;
    opt.set_weight_decay_group(NO_DECAY, 0.0);

    let bs = cfg.batch_size.max(1) as usize;
    let steps_per_epoch = ds.train.len().div_ceil(bs) as u64;
    let mut total_steps = steps_per_epoch * cfg.epochs as u64;
    if let Some(max) = cfg.max_steps {
        total_steps = total_steps.min(max as u64);
    }
    let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as u64;
    let log_every = (steps_per_epoch / 5).clamp(1, 50);
    sink.emit(Event::Started {
        device: format!("{device:?}").to_lowercase(),
        threads: spec.threads,
        num_parameters,
        num_labels: ds.num_labels,
        train_examples: ds.train.len(),
        dev_examples: ds.dev.len(),
        test_examples: ds.test.len(),
        total_steps,
    });

    let mut step = 0u64;
    let mut train_seconds = 0.0;
    let mut trained_examples = 0usize;
    let epoch_of = |step: u64| step as f64 / steps_per_epoch.max(1) as f64;
    for epoch in 0..cfg.epochs as u64 {
        let mut order: Vec<usize> = (0..ds.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch)));
        let mut window_loss = Tensor::zeros([], (Kind::Float, device));
        let mut window_steps = 0u64;
        for chunk in order.chunks(bs) {
            let t = Instant::now();
            opt.set_lr(schedule::linear_with_warmup(
                cfg.learning_rate,
                step,
                warmup,
                total_steps,
            ));
            let batch = batcher.batch(train, chunk)?;
            let labels = labels_tensor(chunk.iter().map(|&i| &ds.train[i]), device);
            let logits = models::logits(model.model.forward(&batch, true));
            let loss = logits.cross_entropy_for_logits(&labels);
            opt.zero_grad();
            loss.backward();
            opt.clip_grad_norm(MAX_GRAD_NORM);
            opt.step();
            window_loss += loss.detach();
            window_steps += 1;
            step += 1;
            trained_examples += chunk.len();
            train_seconds += t.elapsed().as_secs_f64();
            let epoch_end = step.is_multiple_of(steps_per_epoch) || step == total_steps;
            if step.is_multiple_of(log_every) || epoch_end {
                let mean = f64::try_from(&window_loss)? / window_steps as f64;
                let ep = epoch_of(step);
                sink.emit(metric("train/loss", step, ep, mean));
                sink.emit(metric(
                    "train/learning_rate",
                    step,
                    ep,
                    schedule::linear_with_warmup(cfg.learning_rate, step - 1, warmup, total_steps),
                ));
                sink.emit(Event::Progress {
                    epoch: ep,
                    step,
                    total_steps,
                    samples_per_second: trained_examples as f64 / train_seconds.max(1e-9),
                });
                window_loss = Tensor::zeros([], (Kind::Float, device));
                window_steps = 0;
            }
            if step == total_steps {
                break;
            }
        }
        report_dev(
            &model,
            &batcher,
            dev,
            bs,
            ds.num_labels,
            step,
            epoch_of(step),
            sink,
        )?;
        if step == total_steps {
            break;
        }
    }

    let scored = evaluate(&model, &batcher, test, bs)?;
    let m = classification_metrics(&scored.labels, &scored.probs, ds.num_labels);
    let ep = epoch_of(step);
    for (key, value) in [
        ("test/loss", Some(scored.loss)),
        ("test/accuracy", Some(m.accuracy)),
        ("test/f1", Some(m.f1)),
        ("test/auroc", m.auroc),
    ] {
        if let Some(v) = value {
            sink.emit(metric(key, step, ep, v));
        }
    }
    sink.emit(Event::Predictions {
        split: "test".into(),
        rows: predictions(&ds.test, &scored),
    });
    models::save_classifier(&model, &spec.output_dir, &ds.label_names)
        .context("writing the fine-tuned checkpoint")?;
    sink.emit(Event::Checkpoint {
        path: spec.output_dir.clone(),
    });
    Ok(Summary {
        accuracy: m.accuracy,
        f1: m.f1,
        auroc: m.auroc,
        loss: scored.loss,
        train_seconds,
        samples_per_second: trained_examples as f64 / train_seconds.max(1e-9),
        total_seconds: started.elapsed().as_secs_f64(),
        num_parameters,
        steps: step,
        test_examples: ds.test.len(),
    })
}

fn metric(key: &str, step: u64, epoch: f64, value: f64) -> Event {
    Event::Metric {
        key: key.to_string(),
        step,
        epoch,
        value,
    }
}

fn labels_tensor<'a>(examples: impl Iterator<Item = &'a Example>, device: Device) -> Tensor {
    let labels: Vec<i64> = examples.map(|e| e.label as i64).collect();
    Tensor::from_slice(&labels).to_device(device)
}

/// A split's examples with their tokenization.
#[derive(Clone, Copy)]
struct Split<'a> {
    name: &'static str,
    examples: &'a [Example],
    encoded: &'a [Encoded],
}

impl Split<'_> {
    /// Fails before training if an example has no image or its file is missing.
    fn check_images(&self, root: &Path) -> Result<()> {
        let mut missing = self.examples.iter().filter_map(|e| match &e.image {
            None => Some(format!("example `{}` has no image", e.id)),
            Some(p) if !root.join(p).is_file() => {
                Some(format!("image not found: {}", root.join(p).display()))
            }
            Some(_) => None,
        });
        if let Some(first) = missing.next() {
            bail!(
                "{} split: {first} ({} more); a text+image model needs every example's image",
                self.name,
                missing.count()
            );
        }
        Ok(())
    }
}

/// Turns examples into model inputs: padded tokens, and for text+image models the images
/// processed as the checkpoint's preprocessor config says.
struct Batcher<'a> {
    pad: i64,
    device: Device,
    images: Option<ImageProcessor>,
    root: &'a Path,
}

impl Batcher<'_> {
    fn batch(&self, split: Split, indices: &[usize]) -> Result<Batch> {
        let items: Vec<&Encoded> = indices.iter().map(|&i| &split.encoded[i]).collect();
        let mut batch = collate(&items, self.pad, self.device);
        if let Some(proc) = &self.images {
            let paths: Vec<PathBuf> = indices
                .iter()
                .map(|&i| {
                    self.root
                        .join(split.examples[i].image.as_deref().unwrap_or(Path::new("")))
                })
                .collect();
            let pixels = proc.process(&paths)?;
            batch.pixel_values = Some(pixels.pixel_values.to_device(self.device));
            batch.pixel_mask = pixels.pixel_mask.map(|m| m.to_device(self.device));
        }
        Ok(batch)
    }
}

/// Model outputs on a split, in the split's order.
struct Scored {
    loss: f64,
    labels: Vec<usize>,
    probs: Vec<Vec<f32>>,
}

/// Scores a split in eval mode. Batches are formed from examples of similar length so that
/// dynamic padding pads little; results are put back in the split's order.
fn evaluate(model: &Loaded, batcher: &Batcher, split: Split, batch_size: usize) -> Result<Scored> {
    let mut order: Vec<usize> = (0..split.examples.len()).collect();
    order.sort_by_key(|&i| split.encoded[i].ids.len());
    let mut probs = vec![Vec::new(); split.examples.len()];
    let mut loss_sum = 0.0;
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(batch_size * 2) {
            let batch = batcher.batch(split, chunk)?;
            let labels = labels_tensor(chunk.iter().map(|&i| &split.examples[i]), batcher.device);
            let logits = models::logits(model.model.forward(&batch, false));
            loss_sum +=
                f64::try_from(logits.cross_entropy_for_logits(&labels))? * chunk.len() as f64;
            let p = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            for (&i, row) in chunk.iter().zip(Vec::<Vec<f32>>::try_from(p)?) {
                probs[i] = row;
            }
        }
        Ok(())
    })?;
    Ok(Scored {
        loss: loss_sum / split.examples.len().max(1) as f64,
        labels: split.examples.iter().map(|e| e.label).collect(),
        probs,
    })
}

/// Scores the dev split and reports `eval/loss`, `eval/accuracy`, `eval/f1`, `eval/auroc`.
#[allow(clippy::too_many_arguments)]
fn report_dev(
    model: &Loaded,
    batcher: &Batcher,
    dev: Split,
    batch_size: usize,
    num_labels: usize,
    step: u64,
    epoch: f64,
    sink: &mut dyn EventSink,
) -> Result<()> {
    if dev.examples.is_empty() {
        return Ok(());
    }
    let s = evaluate(model, batcher, dev, batch_size)?;
    let m = classification_metrics(&s.labels, &s.probs, num_labels);
    sink.emit(metric("eval/loss", step, epoch, s.loss));
    sink.emit(metric("eval/accuracy", step, epoch, m.accuracy));
    sink.emit(metric("eval/f1", step, epoch, m.f1));
    if let Some(a) = m.auroc {
        sink.emit(metric("eval/auroc", step, epoch, a));
    }
    Ok(())
}

fn predictions(examples: &[Example], s: &Scored) -> Vec<Prediction> {
    examples
        .iter()
        .zip(&s.probs)
        .map(|(e, p)| Prediction {
            example_id: e.id.clone(),
            label: e.label,
            pred: argmax(p),
            probs: p.clone(),
        })
        .collect()
}
