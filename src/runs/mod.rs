//! The run specification: what a run's options are, how a request for a run is read, and how it
//! is resolved, once, into a [`ResolvedRun`] that names the checkpoint folder, the dataset's
//! source and every option's value.
//!
//! Every way to ask for a run arrives here as a [`RunRequest`]: the JSON API
//! (`POST /api/v1/runs`), the HTML form (`/runs/new`, read from the form body with
//! `serde_urlencoded` into the same type), the demo study, and `modalbench train` (whose flags
//! are the same options, through `clap`). [`resolve`] checks it against the models root and the
//! known datasets and fills in the defaults; the service then queues the resolved run
//! (`queue::Scheduler::submit`), and the supervisor turns it into the worker's job
//! (`protocol::JobSpec::new`) without looking anything up again.
//!
//! # Options
//!
//! Each option is declared once, in the [`declare_options!`] blocks below: its doc comment is
//! its help text, then its name, type, default, allowed range, unit and (for an option that may
//! be unset) what unset means. From that declaration come the field of [`TrainConfig`] (stored
//! with the run as `runs.config` and sent to the worker), the optional field of
//! [`TrainOptions`] (JSON key and form field, with unknown fields rejected and every error
//! naming its field), the `modalbench train` flag (`--batch-size`, with the range and default
//! in its help), the field of the submission form, and the row of the run page's configuration
//! table.
//!
//! **To add an option:** declare it in the `TrainConfig` block (doc comment, name, type,
//! default, range, unit), then use `config.<name>` in `train/`. Nothing else changes: the API,
//! the form, the flags, the run page and the stored config pick it up. An option whose allowed
//! values depend on the model (as `max_length` depends on the checkpoint's positions) also gets
//! a line in [`resolve`].

pub mod options;

use crate::data::Source;
use crate::models::registry::Registry;
use options::{Bound, Name, OptionError, Range, choice, declare_options};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

choice! {
    /// Floating-point precision of the forward and backward passes (Hugging Face's `fp16` and
    /// `bf16` flags as one option).
    pub enum MixedPrecision {
        /// Float32 throughout.
        No = "no",
        /// Float16 autocast with dynamic loss scaling (CUDA only).
        Fp16 = "fp16",
        /// Bfloat16 autocast (CUDA, and CPUs with native bfloat16 instructions).
        Bf16 = "bf16",
    }
}

choice! {
    /// How the learning rate moves after warm-up (Hugging Face's `lr_scheduler_type`).
    pub enum LrScheduler {
        /// Linear decay to 0 at the last step.
        Linear = "linear",
        /// Half a cosine wave down to 0 at the last step.
        Cosine = "cosine",
        /// The peak rate until the end.
        ConstantWithWarmup = "constant_with_warmup",
    }
}

declare_options! {
    /// Hyper-parameters of one fine-tuning run, as stored in `runs.config` and sent to the
    /// worker. Names follow Hugging Face `TrainingArguments` where one exists there.
    pub struct TrainConfig;
    /// The hyper-parameters of a run as a request gives them: each may be left out for its
    /// default.
    pub struct TrainOptions;
    heading "Training options";

    /// Passes over the training split.
    epochs: u32 = 3, range Range::integers(1, 1000), unit "epochs";
    /// Examples per optimisation step.
    batch_size: u32 = 16, range Range::integers(1, 4096), unit "examples";
    /// Peak learning rate of AdamW, reached at the end of warm-up.
    learning_rate: f64 = 2e-5,
        range Range::numbers(Bound::Open(0.0), Bound::Closed(1.0)), unit "";
    /// Seeds weight initialisation, dropout and the shuffling order.
    seed: u64 = 0, range Range::Any, unit "";
    /// Tokens per text after truncation, at most the model's positions (which also cap the
    /// default); batches are padded to their longest text only.
    max_length: u32 = 128, range Range::integers(2, 8192), unit "tokens";
    /// Fraction of all steps spent warming the learning rate up linearly from 0.
    warmup_ratio: f64 = 0.1,
        range Range::numbers(Bound::Closed(0.0), Bound::Open(1.0)), unit "";
    /// Decoupled weight decay of AdamW (not applied to biases and LayerNorm weights).
    weight_decay: f64 = 0.01,
        range Range::numbers(Bound::Closed(0.0), Bound::Closed(1.0)), unit "";
    /// Stop after this many optimisation steps (Hugging Face's `max_steps`).
    max_steps: Option<u32> = None, range Range::integers(1, 10_000_000), unit "steps",
        unset "all epochs";
    /// Shape of the learning rate after warm-up: `linear` decay to 0, half a `cosine` wave
    /// down to 0, or `constant_with_warmup`.
    lr_scheduler: LrScheduler = LrScheduler::Linear,
        range Range::OneOf(LrScheduler::NAMES), unit "";
    /// Batch texts of similar length together (Hugging Face's `group_by_length`): each epoch's
    /// shuffled order is cut into groups of 50 batches and each group sorted by token count,
    /// longest first, so that a batch pads little. Faster on texts of varied length.
    group_by_length: bool = false, range Range::Any, unit "";
    /// Micro-batches of `batch_size` whose gradients are summed before each optimisation
    /// step: the step sees `batch_size` times this many examples.
    gradient_accumulation_steps: u32 = 1, range Range::integers(1, 1024), unit "micro-batches";
    /// Gradients are scaled down to this global L2 norm before each step; 0 turns clipping
    /// off.
    max_grad_norm: f64 = 1.0,
        range Range::numbers(Bound::Closed(0.0), Bound::Closed(1e6)), unit "";
    /// `fp16` (CUDA) or `bf16` (CUDA, or a CPU with native bfloat16) autocast for the forward
    /// and backward passes, weights and optimiser state kept in float32; `no` for float32.
    mixed_precision: MixedPrecision = MixedPrecision::No,
        range Range::OneOf(MixedPrecision::NAMES), unit "";
    /// Keep only each encoder layer's input in the forward pass and recompute the layer in
    /// the backward pass: less memory for activations, about a third more compute.
    gradient_checkpointing: bool = false, range Range::Any, unit "";
    /// Keep the image encoder's pretrained weights (and its batch normalisation statistics)
    /// as they are and train the rest: for text+image models with a separate image encoder
    /// (the fusion presets, CLIP, FLAVA).
    freeze_image_encoder: bool = false, range Range::Any, unit "";
    /// Evaluate the dev split every this many optimisation steps (and at the end).
    eval_every: Option<u32> = None, range Range::integers(1, 10_000_000), unit "steps",
        unset "every epoch";
    /// Stop when this many evaluations in a row have not improved the dev split's primary
    /// metric; the best checkpoint is the one kept.
    early_stopping_patience: Option<u32> = None, range Range::integers(1, 1000),
        unit "evaluations", unset "never stop early";
    /// Devices the run trains on at once, data-parallel: the batch is split across replicas
    /// and their gradients averaged before one optimiser step.
    gpus: u32 = 1, range Range::integers(1, 64), unit "devices";
}

declare_options! {
    /// How a run waits in the queue, stored in the `runs` table's own columns.
    pub struct QueueConfig;
    /// The queue options as a request gives them.
    pub struct QueueOptions;
    heading "Queue options";

    /// Runs with a higher priority start first; equal priorities start oldest first.
    priority: i64 = 0, range Range::integers(-1000, 1000), unit "";
    /// The Slurm partition of the run's job (services with the Slurm executor only).
    slurm_partition: Option<Name> = None, range Range::Any, unit "",
        unset "the service's `partition`";
    /// The Slurm account the run's job is charged to (Slurm executor only).
    slurm_account: Option<Name> = None, range Range::Any, unit "",
        unset "the service's `account`";
    /// The Slurm quality of service of the run's job (Slurm executor only).
    slurm_qos: Option<Name> = None, range Range::Any, unit "", unset "the service's `qos`";
    /// The time limit of the run's Slurm job (Slurm executor only).
    slurm_time_limit: Option<u32> = None, range Range::integers(1, 525_600), unit "minutes",
        unset "the service's `time`";
    /// CPUs of the run's Slurm job, the worker's threads (Slurm executor only).
    slurm_cpus_per_task: Option<u32> = None, range Range::integers(1, 1024), unit "CPUs",
        unset "the service's `cpus_per_task`";
    /// Memory of the run's Slurm job (Slurm executor only).
    slurm_mem_gb: Option<u32> = None, range Range::integers(1, 65_536), unit "GiB",
        unset "the service's `mem`";
}

impl QueueConfig {
    /// The options set here that only the Slurm executor honours, by name.
    pub fn cluster_options_set(&self) -> Vec<&'static str> {
        self.values()
            .into_iter()
            .filter(|(spec, v)| spec.name.starts_with("slurm_") && v.is_some())
            .map(|(spec, _)| spec.name)
            .collect()
    }
}

/// A request for a run: a model and a dataset by name, and any options (the rest take their
/// defaults). In JSON and forms the options sit beside `model` and `dataset`:
/// `{"model": "minilm-l6", "dataset": "demo-news", "epochs": 2}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunRequest {
    /// A model under the models root, by folder name.
    pub model: String,
    /// A registered dataset, by name.
    pub dataset: String,
    #[serde(flatten)]
    pub queue: QueueOptions,
    #[serde(flatten)]
    pub train: TrainOptions,
}

impl RunRequest {
    /// A request for `model` on `dataset` with default options.
    pub fn new(model: impl Into<String>, dataset: impl Into<String>) -> RunRequest {
        RunRequest {
            model: model.into(),
            dataset: dataset.into(),
            ..RunRequest::default()
        }
    }

    /// Every field a request may have, in the order the form shows them.
    pub fn fields() -> Vec<&'static str> {
        let options = option_values(&TrainConfig::default(), &QueueConfig::default());
        ["model", "dataset"]
            .into_iter()
            .chain(options.into_iter().map(|(s, _)| s.name))
            .collect()
    }

    /// The option called `name`, of either set.
    pub fn spec(name: &str) -> Option<&'static options::OptionSpec> {
        TrainOptions::spec(name).or_else(|| QueueOptions::spec(name))
    }
}

// By hand rather than derived with `#[serde(flatten)]`: flattening buffers the values, which
// breaks both `deny_unknown_fields` and reading numbers from form fields.
impl<'de> Deserialize<'de> for RunRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RunRequest, D::Error> {
        struct RequestVisitor;

        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = RunRequest;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a run request: an object with `model`, `dataset` and options")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RunRequest, A::Error> {
                let mut req = RunRequest::default();
                let (mut model, mut dataset) = (None, None);
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    match key.as_str() {
                        "model" => model = Some(map.next_value()?),
                        "dataset" => dataset = Some(map.next_value()?),
                        k => {
                            if !req.train.deserialize_field(k, &mut map)?
                                && !req.queue.deserialize_field(k, &mut map)?
                            {
                                return Err(de::Error::custom(format!(
                                    "unknown field `{k}`, expected one of {}",
                                    RunRequest::fields()
                                        .iter()
                                        .map(|f| format!("`{f}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                        }
                    }
                }
                req.model = model.ok_or_else(|| de::Error::missing_field("model"))?;
                req.dataset = dataset.ok_or_else(|| de::Error::missing_field("dataset"))?;
                Ok(req)
            }
        }

        d.deserialize_map(RequestVisitor)
    }
}

/// Every option's JSON Schema as a request gives it (each may be left out), the training
/// options then the queue's: the fields of a run request beside `model` and `dataset`, and of
/// a study's `base`.
pub fn request_option_schemas() -> Vec<(&'static str, utoipa::openapi::schema::Schema)> {
    let usage = options::SchemaUse::Request;
    let mut properties = TrainConfig::schema_properties(usage);
    properties.extend(QueueConfig::schema_properties(usage));
    properties
}

// By hand, as its `Deserialize`: the options' schemas come from their declarations.
impl utoipa::PartialSchema for RunRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let name = |what: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(what))
                .build()
                .into()
        };
        let mut properties = vec![
            (
                "model",
                name("A model under the models root, by folder name (`GET /api/v1/models`)."),
            ),
            (
                "dataset",
                name("A registered dataset, by name (`GET /api/v1/datasets`)."),
            ),
        ];
        properties.extend(request_option_schemas());
        let mut schema = options::object_schema(properties, options::SchemaUse::Request);
        schema.required = vec!["model".into(), "dataset".into()];
        schema.description = Some(
            "A run: a model and a dataset by name, and any options beside them (the others take \
             their defaults). An unknown field, or a value of the wrong kind or out of its range, \
             is a 422 naming the field."
                .into(),
        );
        // a built-in preset on a demo dataset: there wherever the service runs
        schema.example = Some(serde_json::json!(
            {"model": "bert-tiny", "dataset": "demo-news", "epochs": 1, "learning_rate": 1e-4}
        ));
        schema.into()
    }
}

impl utoipa::ToSchema for RunRequest {}

/// The options as a Markdown table (name, kind, default, allowed values, unit, help), for the
/// README: the table there is this one, checked by a test.
pub fn options_table() -> String {
    let mut out = String::from(
        "| option | kind | default | allowed | unit | what it does |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for (spec, default) in option_values(&TrainConfig::default(), &QueueConfig::default()) {
        let default = match default {
            Some(d) => format!("`{d}`"),
            None => format!("unset ({})", spec.unset),
        };
        let allowed = match spec.kind {
            options::Kind::Name => spec.kind.phrase().to_string(),
            _ => spec.range.allowed(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {default} | {allowed} | {} | {} |\n",
            spec.name,
            spec.kind.name(),
            spec.unit,
            spec.help()
        ));
    }
    out
}

/// Every option of a run with its value as shown (`None`: unset): the training options in
/// declaration order, then the queue's. The order of the form, the run page and the README.
pub fn option_values(
    train: &TrainConfig,
    queue: &QueueConfig,
) -> Vec<(&'static options::OptionSpec, Option<String>)> {
    let mut values = train.values();
    values.extend(queue.values());
    values
}

/// A model checkpoint the registry found: its name and folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Name as listed by the registry (the folder's name).
    pub name: String,
    /// Checkpoint folder in Hugging Face layout.
    pub dir: PathBuf,
}

/// A dataset: its name and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Registered name (or folder name, for `modalbench train`), e.g. `demo-news`.
    pub name: String,
    #[serde(flatten)]
    pub source: Source,
}

/// A run whose model and dataset were found and whose options all have checked values:
/// everything its job needs, looked up once.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRun {
    pub model: ModelRef,
    pub dataset: DatasetRef,
    pub config: TrainConfig,
    pub queue: QueueConfig,
}

/// What the caller found under a request's dataset name.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetLookup {
    /// The dataset.
    Found(Box<DatasetRef>),
    /// No dataset of that name; these are known.
    Unknown { known: Vec<String> },
}

/// Why a request cannot become a run. Each case names the request field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown model `{name}` (known: {})", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("model `{name}` cannot be used: {problem}")]
    UnusableModel { name: String, problem: String },
    #[error("unknown dataset `{name}` (known: {})", known.join(", "))]
    UnknownDataset { name: String, known: Vec<String> },
    #[error(
        "dataset `{name}` is registered but its folder is gone; put it back, or register it again"
    )]
    MissingDataset { name: String },
    #[error(transparent)]
    Option(#[from] OptionError),
    /// Something on the service's side (the store, a blocking task).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl SubmitError {
    /// The request field at fault; `None` for an internal error.
    pub fn field(&self) -> Option<&str> {
        match self {
            SubmitError::UnknownModel { .. } | SubmitError::UnusableModel { .. } => Some("model"),
            SubmitError::UnknownDataset { .. } | SubmitError::MissingDataset { .. } => {
                Some("dataset")
            }
            SubmitError::Option(e) => Some(e.field),
            SubmitError::Internal(_) => None,
        }
    }

    /// A stable code for the API: `unknown_model`, `unusable_model`, `unknown_dataset`,
    /// `invalid_value`, `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::UnknownModel { .. } => "unknown_model",
            SubmitError::UnusableModel { .. } => "unusable_model",
            SubmitError::UnknownDataset { .. } => "unknown_dataset",
            SubmitError::MissingDataset { .. } => "dataset_missing",
            SubmitError::Option(_) => "invalid_value",
            SubmitError::Internal(_) => "internal",
        }
    }
}

/// Resolves a request: finds its model under the registry's root (inspecting the checkpoint,
/// so call it on a blocking thread), takes the dataset the caller looked up, applies the
/// defaults and checks every option. The first problem is returned, naming its field.
pub fn resolve(
    req: RunRequest,
    registry: &Registry,
    dataset: DatasetLookup,
) -> Result<ResolvedRun, SubmitError> {
    let model = registry
        .find(&req.model)
        .ok_or_else(|| SubmitError::UnknownModel {
            name: req.model.clone(),
            known: registry.scan().into_iter().map(|m| m.name).collect(),
        })?;
    if let Some(problem) = model.problem {
        return Err(SubmitError::UnusableModel {
            name: req.model,
            problem,
        });
    }
    let dataset = match dataset {
        DatasetLookup::Found(d) => *d,
        DatasetLookup::Unknown { known } => {
            return Err(SubmitError::UnknownDataset {
                name: req.dataset,
                known,
            });
        }
    };
    let mut train = req.train;
    // the model's positions bound `max_length`, and its default
    let positions = model.max_length.unwrap_or(512).clamp(2, u32::MAX as i64) as u32;
    match train.max_length {
        Some(v) if v > positions => {
            let spec = TrainOptions::spec("max_length").expect("declared above");
            return Err(OptionError {
                field: spec.name,
                message: format!(
                    "`max_length` must be between 2 and {positions} (the positions of model `{}`), got {v}",
                    model.name
                ),
            }
            .into());
        }
        Some(_) => {}
        None => train.max_length = Some(TrainConfig::default().max_length.min(positions)),
    }
    if train.freeze_image_encoder == Some(true) {
        let arch = model.architecture.as_deref();
        let arch = arch.and_then(|t| crate::models::Arch::from_model_type(t).ok());
        if arch.and_then(|a| a.image_encoder).is_none() {
            return Err(OptionError {
                field: "freeze_image_encoder",
                message: format!(
                    "model `{}` has no separate image encoder to freeze (text-only models have none; ViLT's image enters its one transformer)",
                    model.name
                ),
            }
            .into());
        }
    }
    Ok(ResolvedRun {
        config: train.resolve()?,
        queue: req.queue.resolve()?,
        model: ModelRef {
            name: model.name,
            dir: model.path,
        },
        dataset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainOptions,
        #[command(flatten)]
        queue: QueueOptions,
    }

    #[test]
    fn every_option_reads_the_same_from_json_a_form_and_flags() {
        let json: RunRequest = serde_json::from_str(
            r#"{"model": "m", "dataset": "d", "epochs": 2, "learning_rate": 5e-5,
                "max_steps": 7, "priority": -3, "seed": 11}"#,
        )
        .unwrap();
        let form: RunRequest = serde_urlencoded::from_str(
            "model=m&dataset=d&epochs=2&learning_rate=5e-5&max_steps=7&priority=-3&seed=11",
        )
        .unwrap();
        assert_eq!(json, form);
        let cli = Cli::try_parse_from([
            "x",
            "--epochs",
            "2",
            "--learning-rate",
            "5e-5",
            "--max-steps",
            "7",
            "--priority",
            "-3",
            "--seed",
            "11",
        ])
        .unwrap();
        assert_eq!((cli.train, cli.queue), (json.train.clone(), json.queue));
        let config = json.train.resolve().unwrap();
        assert_eq!(
            (config.epochs, config.learning_rate, config.max_steps),
            (2, 5e-5, Some(7))
        );
        assert_eq!(config.batch_size, TrainConfig::default().batch_size);
    }

    #[test]
    fn unknown_duplicate_and_missing_fields_are_named() {
        let err = |body: &str| {
            serde_json::from_str::<RunRequest>(body)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(r#"{"model": "m", "dataset": "d", "lr": 1}"#).starts_with("unknown field `lr`")
        );
        assert!(
            err(r#"{"model": "m", "dataset": "d", "epochs": 1, "epochs": 2}"#)
                .starts_with("duplicate field `epochs`")
        );
        assert!(err(r#"{"dataset": "d"}"#).starts_with("missing field `model`"));
        let e = serde_urlencoded::from_str::<RunRequest>("model=m&dataset=d&epochs=two");
        assert!(e.is_err());
    }

    #[test]
    fn out_of_range_values_are_named_with_the_range() {
        let mut o = TrainOptions {
            learning_rate: Some(-0.5),
            ..Default::default()
        };
        let e = o.clone().resolve().unwrap_err();
        assert_eq!(e.field, "learning_rate");
        assert_eq!(
            e.message,
            "`learning_rate` must be a number in (0, 1], got -0.5"
        );
        o.learning_rate = None;
        o.max_steps = Some(0);
        assert_eq!(o.resolve().unwrap_err().field, "max_steps");
        let q = QueueOptions {
            priority: Some(5000),
            ..Default::default()
        };
        assert_eq!(
            q.resolve().unwrap_err().message,
            "`priority` must be between -1000 and 1000, got 5000"
        );
        // a name reaches sbatch as one argument of letters, digits and `_-.:+` only
        let req = |partition: &str| {
            serde_json::from_value::<RunRequest>(serde_json::json!(
                {"model": "m", "dataset": "d", "slurm_partition": partition}
            ))
        };
        let ok = req("gpu-a100").unwrap();
        assert_eq!(ok.queue.slurm_partition.unwrap().as_str(), "gpu-a100");
        for bad in ["gpu --wrap=id", "", "gpu;id", &"x".repeat(33)] {
            let e = req(bad).unwrap_err().to_string();
            assert!(e.contains("is not a name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_flags_help_names_every_option_with_its_range_and_default() {
        let help = Cli::command().render_long_help().to_string();
        for spec in TrainOptions::SPECS.iter().chain(QueueOptions::SPECS) {
            assert!(
                help.contains(&spec.flag()),
                "{} missing:\n{help}",
                spec.flag()
            );
        }
        assert!(help.contains("[default: 2e-5]"), "{help}");
        assert!(help.contains("between 1 and 1000"), "{help}");
        assert!(help.contains("[default: unset, all epochs]"), "{help}");
    }

    #[test]
    fn the_readme_lists_every_option_as_declared() {
        let readme = include_str!("../../README.md");
        let table = options_table();
        let between = readme
            .split("<!-- options:start -->\n")
            .nth(1)
            .and_then(|r| r.split("<!-- options:end -->").next());
        assert_eq!(
            between,
            Some(table.as_str()),
            "README.md's options table is out of date; between the markers it should read:\n{table}"
        );
    }

    #[test]
    fn options_give_their_config_back() {
        let c = TrainConfig {
            epochs: 9,
            max_steps: Some(3),
            ..Default::default()
        };
        assert_eq!(TrainOptions::of(&c).resolve().unwrap(), c);
        let values = c.values();
        assert_eq!(values.len(), TrainOptions::SPECS.len());
        assert_eq!(values[0].1.as_deref(), Some("9"));
        assert_eq!(
            values
                .iter()
                .find(|(s, _)| s.name == "learning_rate")
                .unwrap()
                .1
                .as_deref(),
            Some("2e-5")
        );
    }
}
