//! Model architectures in tch, their checkpoints and tokenizers, the inputs they take
//! ([`Batch`]), the built-in presets and the registry of the models root.

pub mod batch;
pub mod bert;
pub mod checkpoint;
pub mod checkpointing;
pub mod clip;
pub mod direct;
pub mod dropout;
pub mod flava;
pub mod fusion;
pub mod layers;
pub mod mobilenet;
pub mod presets;
pub mod registry;
pub mod roberta;
pub mod tokenizer;
pub mod torch_pickle;
pub mod vilt;

use anyhow::{Context, Result, bail};
pub use batch::Batch;
use checkpoint::{LoadReport, Naming};
use registry::Modality;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, VarStore};
use tch::{Device, Tensor};

/// How a checkpoint's tokenizer is built when the folder has no `tokenizer.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabFiles {
    /// `vocab.txt`, as `BertTokenizerFast` reads it.
    WordPiece,
    /// `vocab.json` + `merges.txt`, as `RobertaTokenizerFast` reads them.
    ByteLevelBpe,
}

/// Text-side numbers of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    /// Id of the padding token.
    pub pad_token_id: i64,
    /// Longest input, in tokens.
    pub max_length: i64,
    pub vocab_size: i64,
}

/// What the service needs to know of an architecture; each model module defines one `SPEC`,
/// listed in [`ARCHITECTURES`].
pub struct Arch {
    /// config.json `model_type`s built by this architecture.
    pub model_types: &'static [&'static str],
    pub modality: Modality,
    /// Where the base model sits inside the classification model (`bert.`), empty if at the root.
    pub base_prefix: &'static str,
    /// Class name written to `architectures` of a fine-tuned checkpoint.
    pub classifier_class: &'static str,
    /// Where a separate image encoder's parameters sit in the classification model
    /// (`vision_model.`), which `freeze_image_encoder` freezes; `None` for text-only models
    /// and single-stream ones such as ViLT, whose image enters the one transformer.
    pub image_encoder: Option<&'static str>,
    /// The module whose code builds it ([`Arch::build`]).
    pub family: Family,
    /// Parameters that may keep a fresh initialisation (a new classification head).
    pub may_be_fresh: fn(&str, Head) -> bool,
    /// Padding id, longest input and vocabulary size of the text side.
    pub text_limits: fn(&Value) -> Result<TextLimits>,
    /// Tokenizer files a folder without `tokenizer.json` may have.
    pub vocab_files: Option<VocabFiles>,
}

/// The model modules, each building one [`Arch`]. The table of architectures names them
/// instead of holding their builders, so that the service, which reads the table but builds no
/// model, does not link libtorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    Fusion,
    Flava,
    Clip,
    Vilt,
}

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_types[0])
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Arch) -> bool {
        std::ptr::eq(self, other)
    }
}

/// Every architecture the service builds.
pub static ARCHITECTURES: &[&Arch] = &[
    &bert::SPEC,
    &roberta::SPEC,
    &fusion::SPEC,
    &flava::SPEC,
    &clip::SPEC,
    &vilt::SPEC,
];

impl Arch {
    /// The architecture of a `model_type`; the error lists the supported ones.
    pub fn from_model_type(t: &str) -> Result<&'static Arch> {
        ARCHITECTURES
            .iter()
            .copied()
            .find(|a| a.model_types.contains(&t))
            .with_context(|| {
                let all: Vec<&str> = ARCHITECTURES
                    .iter()
                    .flat_map(|a| a.model_types.iter().copied())
                    .collect();
                format!(
                    "unsupported model_type `{t}` (supported: {})",
                    all.join(", ")
                )
            })
    }

    /// Builds the model a config describes, with `head`, under `p`.
    pub fn build(&self, config: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
        match self.family {
            Family::Bert => bert::build(config, head, p),
            Family::Roberta => roberta::build(config, head, p),
            Family::Fusion => fusion::build(config, head, p),
            Family::Flava => flava::build(config, head, p),
            Family::Clip => clip::build(config, head, p),
            Family::Vilt => vilt::build(config, head, p),
        }
    }

    /// The name a `model_type` is shown under (the first of the architecture's types).
    pub fn name(&self) -> &'static str {
        self.model_types[0]
    }
}

/// A checkpoint folder whose config.json has been read.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    pub arch: &'static Arch,
}

impl Checkpoint {
    /// Reads `config.json` of `dir`; an unknown `model_type` is an error naming it.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let config = read_config(dir)?;
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .context("config.json has no `model_type`")?;
        let arch = Arch::from_model_type(model_type)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            arch,
        })
    }

    /// `architectures[0]`, e.g. `BertForSequenceClassification`.
    pub fn class_name(&self) -> Option<&str> {
        self.config.get("architectures")?.get(0)?.as_str()
    }

    /// Labels of the classification head the checkpoint was saved with, if it has one (its
    /// weights include `classifier.*`): the size of `id2label`, else `num_labels`, else 2.
    pub fn head_labels(&self, shapes: &HashMap<String, Vec<i64>>) -> Option<usize> {
        if !shapes.keys().any(|k| k.starts_with("classifier.")) {
            return None;
        }
        let n = self
            .config
            .get("id2label")
            .and_then(Value::as_object)
            .map(|m| m.len());
        n.or_else(|| {
            self.config
                .get("num_labels")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        })
        .or(Some(2))
    }

    /// Padding id, longest input and vocabulary size of the text side.
    pub fn text_limits(&self) -> Result<TextLimits> {
        (self.arch.text_limits)(&self.config).context("config.json")
    }

    /// Id of the padding token.
    pub fn pad_token_id(&self) -> Result<i64> {
        Ok(self.text_limits()?.pad_token_id)
    }

    /// Longest input, in tokens.
    pub fn max_length(&self) -> Result<i64> {
        Ok(self.text_limits()?.max_length)
    }
}

/// Reads `config.json` of a checkpoint folder.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A model of any architecture: maps a batch to its outputs under Hugging Face's names
/// (`last_hidden_state`, `pooler_output`, `logits`, ...).
pub trait Model {
    /// The outputs; `train` switches dropout on.
    fn forward(&self, batch: &Batch, train: bool) -> Vec<(String, Tensor)>;

    /// Runs the image encoder as in evaluation from now on (batch normalisation on its running
    /// statistics); the trainer also takes its parameters out of the optimisation. Only
    /// called on architectures with an [`Arch::image_encoder`].
    fn freeze_image_encoder(&mut self) {}
}

/// The `logits` output of a classifier's forward pass.
pub fn logits(outputs: Vec<(String, Tensor)>) -> Tensor {
    outputs
        .into_iter()
        .find(|(k, _)| k == "logits")
        .map(|(_, t)| t)
        .expect("a classifier outputs logits")
}

/// What to build on top of the base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A classification head for this many labels (kept from the checkpoint if it has one of
    /// that size, fresh otherwise).
    Classifier(usize),
    /// The base model alone; its pooler only if the checkpoint has one.
    Base { pooler: bool },
}

/// Whether the checkpoint's tensors include a pooler.
pub fn has_pooler(base_prefix: &str, keys: &HashMap<String, Vec<i64>>) -> bool {
    let key = "pooler.dense.weight";
    keys.contains_key(key) || keys.contains_key(&format!("{base_prefix}{key}"))
}

/// A model built from a checkpoint folder, with the weights loaded.
pub struct Loaded {
    pub vs: VarStore,
    pub model: Box<dyn Model>,
    pub checkpoint: Checkpoint,
    pub head: Head,
    /// What loading initialised fresh or left unused.
    pub report: LoadReport,
}

/// The head the checkpoint itself has: its classifier, or the base model.
fn own_head(ckpt: &Checkpoint, shapes: &HashMap<String, Vec<i64>>) -> Head {
    match ckpt.head_labels(shapes) {
        Some(n) => Head::Classifier(n),
        None => Head::Base {
            pooler: has_pooler(ckpt.arch.base_prefix, shapes),
        },
    }
}

/// Builds the model of a checkpoint folder and loads its weights. `labels`: a classifier for
/// that many labels; `None`: the model as saved (with its head, or the base model).
pub fn load(dir: &Path, labels: Option<usize>, device: Device) -> Result<Loaded> {
    let ckpt = Checkpoint::open(dir)?;
    let head = match labels {
        Some(n) => Head::Classifier(n),
        None => own_head(&ckpt, &checkpoint::read_shapes(dir)?),
    };
    let mut vs = VarStore::new(device);
    // no random values drawn for the weights the checkpoint replaces
    let (model, inits) = layers::uninitialised(|| ckpt.arch.build(&ckpt.config, head, vs.root()));
    let model = model.context("config.json")?;
    let arch = ckpt.arch;
    let fresh = move |name: &str| (arch.may_be_fresh)(name, head);
    let naming = Naming {
        base_prefix: arch.base_prefix,
        may_be_fresh: &fresh,
    };
    let report = checkpoint::load(&mut vs, dir, naming, &inits)?;
    Ok(Loaded {
        vs,
        model,
        checkpoint: ckpt,
        head,
        report,
    })
}

/// Checks a checkpoint folder without loading its weights: the config builds a model, and the
/// weight files have every tensor that model needs, in the right shape.
pub fn check(dir: &Path) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(dir)?;
    ckpt.text_limits()?;
    let shapes = checkpoint::read_shapes(dir)?;
    // as a fine-tuning run builds it: with a classification head
    let head = Head::Classifier(ckpt.head_labels(&shapes).unwrap_or(2));
    let mut built = Ok(());
    let params = layers::parameter_shapes(|p| {
        built = ckpt.arch.build(&ckpt.config, head, p).map(drop);
    });
    built.context("config.json")?;
    let arch = ckpt.arch;
    let fresh = move |name: &str| (arch.may_be_fresh)(name, head);
    let naming = Naming {
        base_prefix: arch.base_prefix,
        may_be_fresh: &fresh,
    };
    checkpoint::plan(&params, &shapes, naming, &checkpoint::weights_label(dir))?;
    tokenizer::TextEncoder::for_checkpoint(&ckpt, 8).context("tokenizer")?;
    Ok(ckpt)
}

/// Files of a checkpoint folder that describe its tokenizer and image preprocessing, copied
/// along with fine-tuned weights.
const CARRIED_FILES: [&str; 7] = [
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// Writes a fine-tuned classifier as a Hugging Face `*ForSequenceClassification` checkpoint:
/// config.json with `id2label`/`label2id`, model.safetensors, and the source's tokenizer files.
pub fn save_classifier(m: &Loaded, out_dir: &Path, label_names: &[String]) -> Result<()> {
    ClassifierFiles::of(m, label_names)?.write(out_dir)
}

/// What [`save_classifier`] writes, gathered so that another thread may write it while the
/// model is used for anything that leaves its weights alone: config.json's text, the weights
/// (sharing the model's memory on the CPU, copied there from other devices), and the files to
/// copy from the source checkpoint.
pub struct ClassifierFiles {
    config: String,
    weights: Vec<(String, Tensor)>,
    carried: Vec<(&'static str, PathBuf)>,
}

impl ClassifierFiles {
    /// The files of `m` as a classifier of the labels `label_names`.
    pub fn of(m: &Loaded, label_names: &[String]) -> Result<ClassifierFiles> {
        let mut config = m.checkpoint.config.clone();
        config["architectures"] = json!([m.checkpoint.arch.classifier_class]);
        config["id2label"] = Value::Object(
            label_names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), json!(n)))
                .collect(),
        );
        config["label2id"] = Value::Object(
            label_names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), json!(i)))
                .collect(),
        );
        Ok(ClassifierFiles {
            config: serde_json::to_string_pretty(&config)?,
            weights: checkpoint::on_cpu(checkpoint::named_variables(&m.vs)),
            carried: CARRIED_FILES
                .iter()
                .map(|&f| (f, m.checkpoint.dir.join(f)))
                .filter(|(_, src)| src.is_file())
                .collect(),
        })
    }

    /// Writes the checkpoint into `out_dir`.
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        std::fs::write(out_dir.join("config.json"), &self.config).context("writing config.json")?;
        checkpoint::write_safetensors(&self.weights, &out_dir.join("model.safetensors"))?;
        for (f, src) in &self.carried {
            std::fs::copy(src, out_dir.join(f)).with_context(|| format!("copying {f}"))?;
        }
        Ok(())
    }
}

/// Input tensors `forward` accepts, by Hugging Face name.
pub const INPUT_NAMES: [&str; 5] = [
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "pixel_values",
    "pixel_mask",
];

/// Runs a checkpoint's forward pass in eval mode on the tensors of `inputs` (a safetensors
/// file with `input_ids` and optionally `attention_mask`, `token_type_ids`, `pixel_values`,
/// `pixel_mask`) and writes the outputs under Hugging Face's names to `output`. Returns the
/// names written.
pub fn forward_file(
    dir: &Path,
    inputs: &Path,
    output: &Path,
    device: Device,
) -> Result<Vec<String>> {
    let mut given: HashMap<String, Tensor> = Tensor::read_safetensors(inputs)
        .with_context(|| format!("reading {}", inputs.display()))?
        .into_iter()
        .collect();
    if let Some(unknown) = given.keys().find(|k| !INPUT_NAMES.contains(&k.as_str())) {
        bail!(
            "{}: unknown input `{unknown}` (known: {})",
            inputs.display(),
            INPUT_NAMES.join(", ")
        );
    }
    let ids = given
        .remove("input_ids")
        .with_context(|| format!("{} has no `input_ids`", inputs.display()))?
        .to_kind(tch::Kind::Int64)
        .to_device(device);
    if ids.dim() != 2 {
        bail!("`input_ids` must be [batch, seq], got {:?}", ids.size());
    }
    let mut int = |name: &str, default: fn(&Tensor) -> Tensor| -> Result<Tensor> {
        let t = match given.remove(name) {
            Some(t) => t.to_kind(tch::Kind::Int64).to_device(device),
            None => default(&ids),
        };
        if t.size() != ids.size() {
            bail!(
                "`{name}` has shape {:?}, `input_ids` {:?}",
                t.size(),
                ids.size()
            );
        }
        Ok(t)
    };
    let attention_mask = int("attention_mask", Tensor::ones_like)?;
    let token_type_ids = int("token_type_ids", Tensor::zeros_like)?;
    let batch = Batch {
        pixel_values: given
            .remove("pixel_values")
            .map(|t| t.to_kind(tch::Kind::Float).to_device(device)),
        pixel_mask: given
            .remove("pixel_mask")
            .map(|t| t.to_kind(tch::Kind::Int64).to_device(device)),
        input_ids: ids,
        attention_mask,
        token_type_ids,
    };
    let loaded = load(dir, None, device)?;
    let outputs = tch::no_grad(|| loaded.model.forward(&batch, false));
    let outputs: Vec<(String, Tensor)> = outputs
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.to_kind(tch::Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous(),
            )
        })
        .collect();
    checkpoint::write_safetensors(&outputs, output)?;
    Ok(outputs.into_iter().map(|(k, _)| k).collect())
}
