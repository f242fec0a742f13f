//! The training loop against PyTorch: the same random checkpoints trained for several steps by
//! `train::run` and by PyTorch + transformers (`tests/reference/train_reference.py`) on the
//! same batches end with the same weights; and the engine's own guarantees (gradient
//! checkpointing, data parallelism, determinism, resume) checked against its plain runs.

use crate::helpers::{kill_worker_after_first_checkpoint, run_python};
use crate::parity::{read, reference_fixtures};
use modalbench::data::{Options, Source};
use modalbench::models::checkpointing;
use modalbench::protocol::{Device, Event, JobSpec, Probe, Summary};
use modalbench::runs::{DatasetRef, LrScheduler, ModelRef, TrainConfig};
use modalbench::train::{self, EventSink, Plan};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use tch::Tensor;

/// Collects a job's events.
#[derive(Default)]
struct Events(Vec<Event>);

impl EventSink for Events {
    fn emit(&mut self, event: Event) {
        self.0.push(event);
    }
}

fn checkpoints() -> &'static Path {
    reference_fixtures("train_reference.py")
}

const WORDS: [&str; 12] = [
    "market", "shares", "goal", "match", "bank", "striker", "profit", "league", "trade", "coach",
    "stocks", "season",
];

/// A small two-label dataset in the Hateful Memes layout (with 32-pixel images whose colour
/// follows the label), written under `root`; returns its examples as the reference reads
/// them (train split).
fn write_dataset(root: &Path, train: usize) -> Vec<Value> {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut examples = Vec::new();
    let mut id = 0;
    for (file, n) in [("train.jsonl", train), ("dev.jsonl", 6), ("test.jsonl", 6)] {
        let mut lines = String::new();
        for i in 0..n {
            id += 1;
            let label = (i * 7 + id) % 2;
            let text: Vec<&str> = (0..3 + id % 5)
                .map(|k| WORDS[(id * 3 + k * 5 + label) % WORDS.len()])
                .collect();
            let text = text.join(" ");
            let img = format!("img/{id}.png");
            let colour = if label == 1 {
                [200u8, 40, 40]
            } else {
                [40u8, 40, 200]
            };
            let pixels = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([
                    colour[0].wrapping_add((x * 3) as u8),
                    colour[1].wrapping_add((y * 5) as u8),
                    colour[2].wrapping_add(((x + y + id as u32) * 2) as u8),
                ])
            });
            pixels.save(root.join(&img)).unwrap();
            let row = json!({"id": id, "img": img, "text": text, "label": label});
            lines += &format!("{row}\n");
            if file == "train.jsonl" {
                examples.push(json!({"text": text, "label": label,
                    "image": root.join(&img).to_str().unwrap()}));
            }
        }
        std::fs::write(root.join(file), lines).unwrap();
    }
    examples
}

/// The options most tests train with: two epochs of batches of 4 at a learning rate that
/// moves a small model visibly.
fn small() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 4,
        learning_rate: 1e-3,
        max_length: 32,
        ..Default::default()
    }
}

fn job(model: &Path, data: &Path, config: TrainConfig, out: &Path) -> JobSpec {
    JobSpec {
        run_id: 1,
        model: ModelRef {
            name: model.file_name().unwrap().to_string_lossy().into(),
            dir: model.to_path_buf(),
        },
        dataset: DatasetRef {
            name: "reference".into(),
            source: Source {
                format: "hateful_memes".into(),
                root: data.to_path_buf(),
                options: Options::default(),
            },
        },
        config,
        device: Device::Cpu,
        replicas: Vec::new(),
        threads: 1,
        output_dir: out.to_path_buf(),
        cache_dir: None,
    }
}

fn run(spec: &JobSpec) -> (Summary, Vec<Event>) {
    let mut events = Events::default();
    let summary = train::run(spec, &mut events).unwrap_or_else(|e| panic!("{e:#}"));
    (summary, events.0)
}

/// The batches of each optimisation step, as example indices, as the plan of `cfg` orders
/// them (the micro-batches of a step joined).
fn batches(cfg: &TrainConfig, n: usize) -> Vec<Vec<usize>> {
    let plan = Plan::new(cfg, n);
    let mut out = Vec::new();
    for epoch in 0..cfg.epochs as u64 {
        let order = plan.order(cfg.seed, epoch, None);
        let micro: Vec<&[usize]> = order.chunks(cfg.batch_size as usize).collect();
        for window in micro.chunks(cfg.gradient_accumulation_steps as usize) {
            if out.len() as u64 == plan.total_steps {
                return out;
            }
            out.push(window.concat());
        }
    }
    out
}

/// Checks that two trainings from `initial` ended alike: every tensor of `ours` differs from
/// `theirs` by at most `max_ratio` of how far `theirs` moved it from `initial`. Returns the
/// worst ratio.
fn assert_trained_alike(
    case: &str,
    ours: &BTreeMap<String, Tensor>,
    theirs: &BTreeMap<String, Tensor>,
    initial: &BTreeMap<String, Tensor>,
    max_ratio: f64,
) -> f64 {
    let mut worst: f64 = 0.0;
    let mut compared = 0;
    for (name, r) in theirs {
        // the attention key bias cancels in the softmax: its gradient is zero in exact
        // arithmetic and only rounding moves it
        if name.contains("key.bias") || !initial.contains_key(name) {
            continue;
        }
        let o = ours
            .get(name)
            .unwrap_or_else(|| panic!("{case}: `{name}` missing from our weights"));
        let moved = f64::try_from((r - &initial[name]).abs().max()).unwrap();
        let gap = f64::try_from((o - r).abs().max()).unwrap();
        if moved < 1e-7 {
            assert!(
                gap < 1e-6,
                "{case}: `{name}` did not move there but by {gap} here"
            );
            continue;
        }
        let ratio = gap / moved;
        assert!(
            ratio <= max_ratio,
            "{case}: `{name}` differs by {gap:e}, {:.3}% of the {moved:e} training moved it",
            ratio * 100.0
        );
        worst = worst.max(ratio);
        compared += 1;
    }
    assert!(compared > 10, "{case}: only {compared} tensors compared");
    worst
}

#[test]
fn training_ends_with_pytorchs_weights_for_each_schedule_accumulation_and_a_text_image_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let examples = write_dataset(&data, 12);
    let base = TrainConfig {
        warmup_ratio: 0.2,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        ..small()
    };
    let cases = [
        ("bert linear", "bert", base.clone()),
        (
            "bert cosine",
            "bert",
            TrainConfig {
                lr_scheduler: LrScheduler::Cosine,
                ..base.clone()
            },
        ),
        (
            "bert constant_with_warmup, no clipping",
            "bert",
            TrainConfig {
                lr_scheduler: LrScheduler::ConstantWithWarmup,
                max_grad_norm: 0.0,
                ..base.clone()
            },
        ),
        (
            "bert 2 micro-batches of 2 = batches of 4",
            "bert",
            TrainConfig {
                batch_size: 2,
                gradient_accumulation_steps: 2,
                ..base.clone()
            },
        ),
        ("vilt linear", "vilt", base.clone()),
    ];
    let mut jobs = Vec::new();
    for (i, (case, kind, cfg)) in cases.iter().enumerate() {
        let model = checkpoints().join(kind);
        let out = dir.path().join(format!("ours-{i}"));
        let (summary, _) = run(&job(&model, &data, cfg.clone(), &out));
        let steps = batches(cfg, examples.len());
        assert_eq!(summary.steps, steps.len() as u64, "{case}");
        jobs.push(json!({
            "case": case, "kind": kind, "checkpoint": model,
            "examples": examples, "batches": steps,
            "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay,
            "warmup_ratio": cfg.warmup_ratio, "lr_scheduler": cfg.lr_scheduler.name(),
            "max_grad_norm": cfg.max_grad_norm, "max_length": cfg.max_length,
            "out": dir.path().join(format!("reference-{i}.safetensors")),
        }));
    }
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&jobs).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/train_reference.py");
    run_python(
        "reference training",
        [
            script.as_os_str(),
            OsStr::new("--train"),
            jobs_file.as_os_str(),
        ],
    );
    for (i, (case, kind, _)) in cases.iter().enumerate() {
        let worst = assert_trained_alike(
            case,
            &read(&dir.path().join(format!("ours-{i}/last/model.safetensors"))),
            &read(&dir.path().join(format!("reference-{i}.safetensors"))),
            &read(&checkpoints().join(kind).join("model.safetensors")),
            0.005,
        );
        eprintln!(
            "{case}: worst difference {:.3}% of the distance moved",
            worst * 100.0
        );
    }
}

/// The named gradients of one training forward and backward pass of `model_dir`'s BERT on a
/// fixed batch, recorded with or without recomputation.
fn bert_gradients(model_dir: &Path, recompute: bool) -> BTreeMap<String, Tensor> {
    tch::manual_seed(3);
    let loaded = modalbench::models::load(model_dir, Some(2), tch::Device::Cpu).unwrap();
    let ids = Tensor::from_slice2(&[[101i64, 2000, 2001, 2002, 102], [101, 2003, 102, 0, 0]]);
    let mask = ids.ne(0).to_kind(tch::Kind::Int64);
    let batch = modalbench::models::Batch {
        token_type_ids: ids.zeros_like(),
        input_ids: ids,
        attention_mask: mask,
        pixel_values: None,
        pixel_mask: None,
    };
    tch::manual_seed(11);
    let (outputs, recorded) =
        checkpointing::record(recompute, None, || loaded.model.forward(&batch, true));
    assert_eq!(recorded.layers, 2, "both encoder layers recorded");
    let logits = modalbench::models::logits(outputs);
    let loss = logits.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1]));
    recorded.backward(&loss);
    loaded
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.grad().copy()))
        .collect()
}

#[test]
fn gradient_checkpointing_gives_the_plain_gradients_with_dropout_replayed() {
    // the reference BERT with dropout switched on, so the replay of the masks matters
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bert-dropout");
    copy_dir(&checkpoints().join("bert"), &model);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = json!(0.2);
    config["attention_probs_dropout_prob"] = json!(0.2);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();

    let plain = bert_gradients(&model, false);
    let recomputed = bert_gradients(&model, true);
    let mut checked = 0;
    for (name, g) in &plain {
        let r = &recomputed[name];
        assert!(g.defined() && r.defined(), "`{name}` has no gradient");
        let gap = f64::try_from((g - r).abs().max()).unwrap();
        let scale = f64::try_from(g.abs().max()).unwrap();
        assert!(
            gap <= 1e-5 * scale.max(1e-3),
            "`{name}`: recomputed gradient differs by {gap:e} (largest {scale:e})"
        );
        checked += 1;
    }
    assert!(checked > 20);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    read(&dir.join("last/model.safetensors"))
}

#[test]
fn two_replicas_train_as_one_on_the_whole_batch_and_runs_repeat_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 12);
    let model = checkpoints().join("bert");
    let cfg = small();
    let one = dir.path().join("one");
    let (s1, _) = run(&job(&model, &data, cfg.clone(), &one));
    let again = dir.path().join("again");
    let (s2, _) = run(&job(&model, &data, cfg.clone(), &again));
    let mut two_spec = job(&model, &data, cfg.clone(), &dir.path().join("two"));
    two_spec.replicas = vec![Device::Cpu];
    let (s3, _) = run(&two_spec);
    assert_eq!(s3.cost.devices, 2);

    // same seed, device and options: the same metrics and weights, bit for bit
    assert_eq!((s1.accuracy, s1.loss, s1.f1), (s2.accuracy, s2.loss, s2.f1));
    let (w1, w2) = (weights(&one), weights(&again));
    for (k, t) in &w1 {
        assert!(t.equal(&w2[k]), "`{k}` differs between two identical runs");
    }
    // two replicas with half the batch each: the same training within float tolerance
    let w3 = weights(&dir.path().join("two"));
    let initial = read(&model.join("model.safetensors"));
    assert_trained_alike("two replicas against one", &w3, &w1, &initial, 1e-3);
}

#[test]
fn a_worker_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 48);
    let model = checkpoints().join("bert");
    let cfg = TrainConfig {
        batch_size: 2,
        eval_every: Some(3),
        ..small()
    };
    let whole = dir.path().join("whole");
    run(&job(&model, &data, cfg.clone(), &whole));

    // the same job in a worker process, killed once its first checkpoint is written
    let spec = job(&model, &data, cfg.clone(), &dir.path().join("resumed"));
    let saved = kill_worker_after_first_checkpoint(&spec);
    // the AdamW moments where training goes on from the checkpoint; none once it has ended
    assert!(spec.output_dir.join("last/optimizer.safetensors").is_file());
    assert!(!whole.join("last/optimizer.safetensors").exists());
    let step = saved["progress"]["step"].as_u64().unwrap();
    let plan = Plan::new(&cfg, 48);
    assert!(
        step < plan.total_steps && !step.is_multiple_of(plan.steps_per_epoch),
        "killed at step {step}: not in the middle of an epoch"
    );

    let (summary, events) = run(&spec);
    assert!(
        events.iter().any(|e| matches!(e, Event::Log { message } if message.starts_with("resumed from the last checkpoint"))),
        "the run did not resume"
    );
    assert_eq!(summary.steps, plan.total_steps);
    let (a, b) = (weights(&whole), weights(&spec.output_dir));
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "`{k}` differs after resuming");
    }
}

#[test]
fn early_stopping_ends_after_patience_evaluations_without_improvement() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 12);
    // a learning rate too small to change a prediction: the dev accuracy never improves on
    // the first evaluation's
    let cfg = TrainConfig {
        epochs: 10,
        learning_rate: 1e-12,
        eval_every: Some(1),
        early_stopping_patience: Some(2),
        ..small()
    };
    let spec = job(
        &checkpoints().join("bert"),
        &data,
        cfg,
        &dir.path().join("out"),
    );
    let (s, events) = run(&spec);
    assert!(s.cost.stopped_early);
    assert_eq!((s.steps, s.cost.best_step), (3, Some(1)));
    assert!(events.iter().any(|e| matches!(e, Event::Log { message }
        if message.starts_with("early stop at step 3: 2 evaluations without a better dev accuracy"))));
    // training ended there, so its last checkpoint keeps no AdamW moments; a worker that died
    // after writing it (before its summary) is run again and scores the checkpoint without
    // training on
    assert!(spec.output_dir.join("last/trainer_state.json").is_file());
    assert!(!spec.output_dir.join("last/optimizer.safetensors").exists());
    let (again, events) = run(&spec);
    assert!(events.iter().any(|e| matches!(e, Event::Log { message }
        if message.starts_with("resumed from the last checkpoint at step 3"))));
    // no step trained: the only metrics are the test split's scores
    assert!(
        events.iter().all(
            |e| !matches!(e, Event::Metric { key, .. } if !key.to_string().starts_with("test/"))
        ),
        "the run trained on"
    );
    assert_eq!((again.steps, again.cost.best_step), (3, Some(1)));
    assert_eq!((again.accuracy, again.loss), (s.accuracy, s.loss));
}

#[test]
fn runs_with_gradient_checkpointing_train_as_the_plain_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, 12);
    let cfg = small();
    for kind in ["bert", "vilt"] {
        let model = checkpoints().join(kind);
        let plain = dir.path().join(format!("{kind}-plain"));
        run(&job(&model, &data, cfg.clone(), &plain));
        let recomputed = dir.path().join(format!("{kind}-recomputed"));
        let checkpointed = TrainConfig {
            gradient_checkpointing: true,
            ..cfg.clone()
        };
        run(&job(&model, &data, checkpointed, &recomputed));
        let initial = read(&model.join("model.safetensors"));
        let case = format!("{kind} with gradient checkpointing");
        assert_trained_alike(
            &case,
            &weights(&recomputed),
            &weights(&plain),
            &initial,
            1e-3,
        );
    }
}

#[test]
fn bf16_autocast_on_the_cpu_computes_what_pytorchs_does() {
    let model_dir = checkpoints().join("bert");
    let ids = [
        [101i64, 2000, 2001, 2002, 2003, 102],
        [101, 2004, 2005, 102, 0, 0],
    ];
    let loaded = modalbench::models::load(&model_dir, None, tch::Device::Cpu).unwrap();
    let input_ids = Tensor::from_slice2(&ids);
    let batch = modalbench::models::Batch {
        attention_mask: input_ids.ne(0).to_kind(tch::Kind::Int64),
        token_type_ids: input_ids.zeros_like(),
        input_ids,
        pixel_values: None,
        pixel_mask: None,
    };
    let ours = tch::no_grad(|| {
        let _autocast = modalbench::train::precision::Autocast::enter(
            tch::Device::Cpu,
            modalbench::runs::MixedPrecision::Bf16,
        )
        .unwrap();
        modalbench::models::logits(loaded.model.forward(&batch, false)).to_kind(tch::Kind::Float)
    });
    let script = r#"
import json, sys, torch, transformers
from safetensors.torch import save_file
model = transformers.AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    fp32 = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(input_ids=ids, attention_mask=(ids != 0).long()).logits.float()
save_file({"fp32": fp32.contiguous(), "bf16": bf16.contiguous()}, sys.argv[3])
"#;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("logits.safetensors");
    let ids_json = serde_json::to_string(&ids).unwrap();
    run_python(
        "PyTorch's bf16 autocast",
        [
            OsStr::new("-c"),
            OsStr::new(script),
            model_dir.as_os_str(),
            OsStr::new(&ids_json),
            out_file.as_os_str(),
        ],
    );
    let reference = read(&out_file);
    let precision_gap =
        f64::try_from((&reference["bf16"] - &reference["fp32"]).abs().max()).unwrap();
    let ours_gap = f64::try_from((&ours - &reference["bf16"]).abs().max()).unwrap();
    assert!(precision_gap > 0.0, "bfloat16 changed nothing in PyTorch");
    assert!(
        ours_gap <= 0.1 * precision_gap,
        "ours differ from PyTorch's bf16 logits by {ours_gap:e}; bf16 and fp32 differ by {precision_gap:e}"
    );
}

/// A dataset whose texts say nothing ("a picture") and whose image colour gives the label,
/// in the Hateful Memes layout.
fn write_colour_dataset(root: &Path, sizes: [usize; 3]) {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut id = 0;
    for (file, n) in ["train.jsonl", "dev.jsonl", "test.jsonl"].iter().zip(sizes) {
        let mut lines = String::new();
        for i in 0..n {
            id += 1;
            let label = i % 2;
            let base: [u8; 3] = if label == 1 {
                [190, 50, 50]
            } else {
                [50, 50, 190]
            };
            let img = format!("img/{id}.png");
            image::RgbImage::from_fn(32, 32, |_, _| {
                image::Rgb(base.map(|c| c.saturating_add(rng.random_range(0..40u8))))
            })
            .save(root.join(&img))
            .unwrap();
            lines += &format!(
                "{}\n",
                json!({"id": id, "img": img, "text": "a picture", "label": label})
            );
        }
        std::fs::write(root.join(file), lines).unwrap();
    }
}

#[test]
fn a_model_that_reads_the_image_loses_accuracy_when_it_is_shuffled_or_blank_not_when_the_text_goes()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("colours");
    write_colour_dataset(&data, [64, 16, 60]);
    let cfg = TrainConfig {
        epochs: 12,
        batch_size: 8,
        learning_rate: 2e-3,
        ..small()
    };
    let (s, events) = run(&job(
        &checkpoints().join("vilt"),
        &data,
        cfg,
        &dir.path().join("out"),
    ));
    assert!(
        s.accuracy >= 0.9,
        "the colour was not learned: {}",
        s.accuracy
    );
    let probe = |p: Probe| {
        s.image_reliance
            .iter()
            .find(|r| r.probe == p)
            .unwrap_or_else(|| panic!("no {p} probe"))
    };
    for r in &s.image_reliance {
        // the drop is intact minus probed accuracy, inside its own interval
        assert!(
            (r.drop.estimate - (s.accuracy - r.accuracy)).abs() < 1e-12,
            "{r:?}"
        );
        assert!(
            r.drop.low <= r.drop.estimate && r.drop.estimate <= r.drop.high,
            "{r:?}"
        );
    }
    let shuffled = probe(Probe::ImagesShuffled);
    assert!(
        shuffled.drop.low > 0.2 && shuffled.p_value < 0.01,
        "{shuffled:?}"
    );
    let blank = probe(Probe::ImagesBlank);
    assert!(blank.drop.low > 0.2, "{blank:?}");
    let text = probe(Probe::TextEmpty);
    assert!(text.drop.estimate.abs() < 0.1, "{text:?}");
    assert!(events.iter().any(|e| matches!(e, Event::Log { message }
        if message.starts_with("test accuracy with images shuffled: "))));
    // a text-only model has no probes
    let (t, _) = run(&job(
        &checkpoints().join("bert"),
        &data,
        small(),
        &dir.path().join("text"),
    ));
    assert!(t.image_reliance.is_empty());
}
