//! The fine-tuning loop: AdamW with linear warm-up and decay, per-epoch evaluation on the dev
//! split, final scoring of the test split, and a checkpoint in Hugging Face layout.
//!
//! Classification tasks train with softmax cross-entropy; soft-label tasks (VQA) with binary
//! cross-entropy over the answer classes, scaled by their number (as ViLT and MMF do), and are
//! also scored with VQA accuracy. A test split without labels is scored for predictions only;
//! the summary's metrics then come from the dev split, and the run's log says so.

pub mod schedule;

use crate::data::image::ImageProcessor;
use crate::data::loader::{ImageCache, MEMORY_BUDGET, Prefetch};
use crate::data::{self, Dataset, Example, Split as Role, Task};
use crate::eval::metrics::{argmax, classification_metrics};
use crate::eval::vqa::vqa_accuracy;
use crate::eval::{Metric, MetricKey, Scope};
use crate::models::Batch;
use crate::models::registry::Modality;
use crate::models::tokenizer::{Encoded, TextEncoder, collate};
use crate::models::{self, Loaded, layers::NO_DECAY};
use crate::protocol::{Event, JobSpec, Prediction, Summary};
use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Reduction, Tensor};

/// Receives the events of a job: the worker writes them to stdout, the CLI draws progress.
pub trait EventSink {
    /// Handles one event.
    fn emit(&mut self, event: Event);
}

/// Gradient-norm clipping threshold (Hugging Face's `max_grad_norm`).
const MAX_GRAD_NORM: f64 = 1.0;
/// Batches of images prepared ahead of the training step.
const PREFETCH: usize = 3;
/// Per-example probabilities are stored for tasks with at most this many labels.
const STORED_PROBS: usize = 32;

/// A split's examples with their tokenization.
#[derive(Clone, Copy)]
struct Split<'a> {
    role: Role,
    examples: &'a [Example],
    encoded: &'a [Encoded],
}

impl Split<'_> {
    fn labeled(&self) -> bool {
        self.examples.iter().all(|e| e.label.is_some())
    }
}

/// Turns examples into model inputs: padded tokens, and for text+image models the images
/// processed as the checkpoint's preprocessor config says (through the image cache).
struct Batcher<'a> {
    pad: i64,
    device: Device,
    images: Option<(ImageProcessor, Arc<ImageCache>)>,
    ds: &'a Dataset,
    task: Task,
    num_labels: usize,
}

impl Batcher<'_> {
    fn image_paths(&self, split: Split, indices: &[usize]) -> Vec<PathBuf> {
        indices
            .iter()
            .map(|&i| self.ds.image_path(&split.examples[i]).unwrap_or_default())
            .collect()
    }

    /// The batch of `indices`; its pixels from `prefetched` if given, else made here.
    fn batch(
        &self,
        split: Split,
        indices: &[usize],
        prefetched: Option<&Prefetch>,
    ) -> Result<Batch> {
        let items: Vec<&Encoded> = indices.iter().map(|&i| &split.encoded[i]).collect();
        let mut batch = collate(&items, self.pad, self.device);
        if let Some((proc, cache)) = &self.images {
            let pixels = match prefetched {
                Some(p) => p.next()?,
                None => cache.process(proc, &self.image_paths(split, indices))?,
            };
            batch.pixel_values = Some(pixels.pixel_values.to_device(self.device));
            batch.pixel_mask = pixels.pixel_mask.map(|m| m.to_device(self.device));
        }
        Ok(batch)
    }

    /// Prefetches the pixels of `batches` of `split` in order, if the model reads images.
    fn prefetch(&self, split: Split, batches: &[&[usize]]) -> Option<Prefetch> {
        let (proc, cache) = self.images.as_ref()?;
        let paths = batches.iter().map(|b| self.image_paths(split, b)).collect();
        Some(Prefetch::start(
            cache.clone(),
            proc.clone(),
            paths,
            PREFETCH,
        ))
    }

    /// The loss of `logits` on the examples `indices`.
    fn loss(&self, logits: &Tensor, split: Split, indices: &[usize]) -> Tensor {
        match self.task {
            Task::Classification => {
                let labels: Vec<i64> = indices
                    .iter()
                    .map(|&i| split.examples[i].label.map_or(-100, |l| l as i64))
                    .collect();
                logits.cross_entropy_for_logits(&Tensor::from_slice(&labels).to_device(self.device))
            }
            Task::SoftLabels => {
                let k = self.num_labels;
                let mut targets = vec![0f32; indices.len() * k];
                for (row, &i) in indices.iter().enumerate() {
                    for &(label, score) in &split.examples[i].soft_labels {
                        targets[row * k + label] = score;
                    }
                }
                let targets = Tensor::from_slice(&targets)
                    .view([indices.len() as i64, k as i64])
                    .to_device(self.device);
                logits.binary_cross_entropy_with_logits::<Tensor>(
                    &targets,
                    None,
                    None,
                    Reduction::Mean,
                ) * k as f64
            }
        }
    }
}

/// Runs one fine-tuning job to the end, reporting through `sink`; returns its summary.
pub fn run(spec: &JobSpec, sink: &mut dyn EventSink) -> Result<Summary> {
    let started = Instant::now();
    let cfg = &spec.config;
    let device = spec.device.to_tch()?;
    if device == Device::Cpu {
        tch::set_num_threads(spec.threads.max(1) as i32);
    }
    tch::manual_seed(cfg.seed as i64);

    let ds = data::load(
        &spec.dataset.name,
        &spec.dataset.source,
        data::Check::Strict,
    )?;
    let model = models::load(&spec.model.dir, Some(ds.num_labels()), device)
        .map_err(|e| e.context(format!("loading model `{}`", spec.model.name)))?;
    let log = |sink: &mut dyn EventSink, message: String| sink.emit(Event::Log { message });
    if !model.report.fresh.is_empty() {
        log(
            sink,
            format!("newly initialised: {}", model.report.fresh.join(", ")),
        );
    }
    if !model.report.unused.is_empty() {
        log(
            sink,
            format!(
                "checkpoint tensors not used: {}",
                model.report.unused.join(", ")
            ),
        );
    }
    let positions = model.checkpoint.max_length()?;
    if cfg.max_length as i64 > positions {
        bail!(
            "max_length {} exceeds the {positions} positions of model `{}` (its checkpoint changed since the run was submitted)",
            cfg.max_length,
            spec.model.name
        );
    }
    let max_length = cfg.max_length as usize;
    let encoder = TextEncoder::for_checkpoint(&model.checkpoint, max_length)?;
    let (enc_train, enc_dev, enc_test) = (
        encoder.encode(ds.train.iter().map(Example::texts))?,
        encoder.encode(ds.dev.iter().map(Example::texts))?,
        encoder.encode(ds.test.iter().map(Example::texts))?,
    );
    let train = Split {
        role: Role::Train,
        examples: &ds.train,
        encoded: &enc_train,
    };
    let dev = Split {
        role: Role::Dev,
        examples: &ds.dev,
        encoded: &enc_dev,
    };
    let test = Split {
        role: Role::Test,
        examples: &ds.test,
        encoded: &enc_test,
    };
    let images = match model.checkpoint.arch.modality {
        Modality::Text => None,
        Modality::TextImage => {
            for split in [train, dev, test] {
                if let Some(e) = split.examples.iter().find(|e| e.image.is_none()) {
                    bail!(
                        "{} split: example `{}` has no image; a text+image model needs every example's image",
                        split.role,
                        e.id
                    );
                }
            }
            let proc = ImageProcessor::from_dir(&spec.model.dir)?;
            let dir = spec
                .cache_dir
                .as_ref()
                .map(|d| d.join("images").join(&spec.dataset.name));
            Some((proc, Arc::new(ImageCache::new(dir, MEMORY_BUDGET))))
        }
    };
    let batcher = Batcher {
        pad: model.checkpoint.pad_token_id()?,
        device,
        images,
        ds: &ds,
        task: ds.task,
        num_labels: ds.num_labels(),
    };

    let num_parameters = model
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
        device: spec.device,
        threads: spec.threads,
        num_parameters,
        num_labels: ds.num_labels(),
        train_examples: ds.train.len(),
        dev_examples: ds.dev.len(),
        test_examples: ds.test.len(),
        total_steps,
    });

    let mut step = 0u64;
    let mut train_seconds = 0.0;
    let mut trained_examples = 0usize;
    let epoch_of = |step: u64| step as f64 / steps_per_epoch.max(1) as f64;
    let mut last_dev = None;
    for epoch in 0..cfg.epochs as u64 {
        let mut order: Vec<usize> = (0..ds.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch)));
        let remaining = (total_steps - step) as usize;
        let chunks: Vec<&[usize]> = order.chunks(bs).take(remaining).collect();
        let prefetch = batcher.prefetch(train, &chunks);
        let mut window_loss = Tensor::zeros([], (Kind::Float, device));
        let mut window_steps = 0u64;
        for chunk in &chunks {
            let t = Instant::now();
            opt.set_lr(schedule::linear_with_warmup(
                cfg.learning_rate,
                step,
                warmup,
                total_steps,
            ));
            let batch = batcher.batch(train, chunk, prefetch.as_ref())?;
            let logits = models::logits(model.model.forward(&batch, true));
            let loss = batcher.loss(&logits, train, chunk);
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
                sink.emit(metric(MetricKey::TRAIN_LOSS, step, ep, mean));
                let lr =
                    schedule::linear_with_warmup(cfg.learning_rate, step - 1, warmup, total_steps);
                sink.emit(metric(MetricKey::TRAIN_LEARNING_RATE, step, ep, lr));
                sink.emit(Event::Progress {
                    epoch: ep,
                    step,
                    total_steps,
                    samples_per_second: trained_examples as f64 / train_seconds.max(1e-9),
                });
                window_loss = Tensor::zeros([], (Kind::Float, device));
                window_steps = 0;
            }
        }
        if !ds.dev.is_empty() {
            let s = evaluate(&model, &batcher, dev, bs)?;
            report(sink, Scope::Eval, &s, step, epoch_of(step));
            last_dev = Some(s);
        }
        if step == total_steps {
            break;
        }
    }

    let scored_test = evaluate(&model, &batcher, test, bs)?;
    sink.emit(Event::Predictions {
        split: Role::Test,
        rows: predictions(&ds.test, &scored_test),
    });
    // the summary's metrics: the test split's, or the dev split's when the test has no labels
    let (summary_split, scored) = if test.labeled() && !ds.test.is_empty() {
        (Role::Test, scored_test)
    } else {
        let why = if ds.test.is_empty() {
            "the dataset has no test split"
        } else {
            "the test split has no labels: its predictions are stored, and"
        };
        log(
            sink,
            format!("{why} the summary's metrics are the dev split's"),
        );
        // the model has not changed since the last epoch's dev evaluation
        let scored = match last_dev {
            Some(s) => s,
            None => evaluate(&model, &batcher, dev, bs)?,
        };
        (Role::Dev, scored)
    };
    let m = report(
        sink,
        Scope::final_of(summary_split),
        &scored,
        step,
        epoch_of(step),
    );
    models::save_classifier(&model, &spec.output_dir, &ds.label_names)
        .map_err(|e| e.context("writing the fine-tuned checkpoint"))?;
    sink.emit(Event::Checkpoint {
        path: spec.output_dir.clone(),
    });
    Ok(Summary {
        split: summary_split,
        accuracy: m.accuracy,
        f1: m.f1,
        auroc: m.auroc,
        vqa_accuracy: m.vqa_accuracy,
        loss: scored.loss,
        train_seconds,
        samples_per_second: trained_examples as f64 / train_seconds.max(1e-9),
        total_seconds: started.elapsed().as_secs_f64(),
        num_parameters,
        steps: step,
        test_examples: ds.test.len(),
    })
}

fn metric(key: MetricKey, step: u64, epoch: f64, value: f64) -> Event {
    Event::Metric {
        key,
        step,
        epoch,
        value,
    }
}

/// Model outputs on a split, in the split's order.
struct Scored {
    loss: f64,
    labels: Vec<Option<usize>>,
    /// Per-label scores: softmax probabilities, or sigmoids for soft-label tasks.
    probs: Vec<Vec<f32>>,
    /// VQA accuracy per example, for soft-label tasks.
    vqa: Option<Vec<f64>>,
}

/// Metrics of a scored split.
struct Scores {
    accuracy: f64,
    f1: f64,
    auroc: Option<f64>,
    vqa_accuracy: Option<f64>,
}

/// Scores a split in eval mode. Batches are formed from examples of similar length so that
/// dynamic padding pads little; results are put back in the split's order.
fn evaluate(model: &Loaded, batcher: &Batcher, split: Split, batch_size: usize) -> Result<Scored> {
    let mut order: Vec<usize> = (0..split.examples.len()).collect();
    order.sort_by_key(|&i| split.encoded[i].ids.len());
    let chunks: Vec<&[usize]> = order.chunks(batch_size * 2).collect();
    let prefetch = batcher.prefetch(split, &chunks);
    let labeled = split.labeled();
    let mut probs = vec![Vec::new(); split.examples.len()];
    let mut loss_sum = 0.0;
    tch::no_grad(|| -> Result<()> {
        for chunk in &chunks {
            let batch = batcher.batch(split, chunk, prefetch.as_ref())?;
            let logits = models::logits(model.model.forward(&batch, false));
            if labeled {
                loss_sum +=
                    f64::try_from(batcher.loss(&logits, split, chunk))? * chunk.len() as f64;
            }
            let p = match batcher.task {
                Task::Classification => logits.softmax(-1, Kind::Float),
                Task::SoftLabels => logits.sigmoid(),
            };
            for (&i, row) in chunk
                .iter()
                .zip(Vec::<Vec<f32>>::try_from(p.to_device(Device::Cpu))?)
            {
                probs[i] = row;
            }
        }
        Ok(())
    })?;
    let vqa = (batcher.task == Task::SoftLabels).then(|| {
        split
            .examples
            .iter()
            .zip(&probs)
            .map(|(e, p)| vqa_accuracy(&batcher.ds.label_names[argmax(p)], &e.answers))
            .collect()
    });
    Ok(Scored {
        loss: loss_sum / split.examples.len().max(1) as f64,
        labels: split.examples.iter().map(|e| e.label).collect(),
        probs,
        vqa,
    })
}

/// Reports `{scope}/loss`, `/accuracy`, `/f1`, `/auroc` (and `/vqa_accuracy`) of a labeled
/// scored split; returns the metrics.
fn report(sink: &mut dyn EventSink, scope: Scope, s: &Scored, step: u64, epoch: f64) -> Scores {
    let num_labels = s.probs.first().map_or(2, Vec::len);
    // VQA questions whose answers are all outside the answer classes have no label: they
    // count as wrong for accuracy and are left out of F1
    let (labels, probs): (Vec<usize>, Vec<Vec<f32>>) = s
        .labels
        .iter()
        .zip(&s.probs)
        .filter_map(|(l, p)| l.map(|l| (l, p.clone())))
        .unzip();
    let mut m = classification_metrics(&labels, &probs, num_labels);
    if labels.len() < s.labels.len() {
        let right = labels
            .iter()
            .zip(&probs)
            .filter(|(l, p)| **l == argmax(p))
            .count();
        m.accuracy = right as f64 / s.labels.len() as f64;
        m.auroc = None;
    }
    let vqa_accuracy = s
        .vqa
        .as_ref()
        .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64);
    for (name, value) in [
        (Metric::Loss, Some(s.loss)),
        (Metric::Accuracy, Some(m.accuracy)),
        (Metric::F1, Some(m.f1)),
        (Metric::Auroc, m.auroc),
        (Metric::VqaAccuracy, vqa_accuracy),
    ] {
        if let Some(v) = value {
            sink.emit(metric(MetricKey::new(scope, name), step, epoch, v));
        }
    }
    Scores {
        accuracy: m.accuracy,
        f1: m.f1,
        auroc: m.auroc,
        vqa_accuracy,
    }
}

fn predictions(examples: &[Example], s: &Scored) -> Vec<Prediction> {
    examples
        .iter()
        .zip(&s.probs)
        .map(|(e, p)| Prediction {
            example_id: e.id.clone(),
            label: e.label,
            pred: argmax(p),
            probs: if p.len() <= STORED_PROBS {
                p.clone()
            } else {
                Vec::new()
            },
        })
        .collect()
}
