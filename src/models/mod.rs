//! Model architectures in tch, their checkpoints, the built-in presets and the registry of the
//! models root.

pub mod bert;
pub mod checkpoint;
pub mod layers;
pub mod presets;
pub mod registry;

use crate::data::text::TextBatch;
use anyhow::{Context, Result, bail};
use checkpoint::LoadReport;
use serde_json::{Value, json};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// A model that maps a batch to classification logits `[batch, num_labels]`.
pub trait SequenceClassifier {
    /// Logits; `train` switches dropout on.
    fn logits(&self, batch: &TextBatch, train: bool) -> Tensor;
}

impl SequenceClassifier for bert::BertForSequenceClassification {
    fn logits(&self, b: &TextBatch, train: bool) -> Tensor {
        self.forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train)
            .1
    }
}

/// A classifier built from a checkpoint folder, with the weights loaded.
pub struct LoadedClassifier {
    pub vs: VarStore,
    pub model: Box<dyn SequenceClassifier>,
    /// `model_type` from config.json.
    pub model_type: String,
    /// Id of the padding token.
    pub pad_token_id: i64,
    /// Longest input the position embeddings allow.
    pub max_positions: i64,
    /// The checkpoint's config.json, to be written back with the fine-tuned weights.
    pub config: Value,
    /// What loading initialised fresh or left unused.
    pub report: LoadReport,
}

/// Reads `config.json` of a checkpoint folder.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Builds the classifier a checkpoint folder describes (its `model_type` picks the
/// architecture) for `num_labels` classes and loads its weights. A head in the checkpoint with
/// the same number of labels is kept; otherwise a fresh head is initialised.
pub fn load_classifier(dir: &Path, num_labels: usize, device: Device) -> Result<LoadedClassifier> {
    let config = read_config(dir)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .context("config.json has no `model_type`")?
        .to_string();
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        bail!("{} has no model.safetensors", dir.display());
    }
    let mut vs = VarStore::new(device);
    let (model, pad_token_id, max_positions): (Box<dyn SequenceClassifier>, i64, i64) =
        match model_type.as_str() {
            "bert" => {
                let c: bert::Config = serde_json::from_value(config.clone())
                    .context("config.json does not describe a BERT model")?;
                c.validate()
                    .map_err(anyhow::Error::msg)
                    .context("config.json")?;
                let m = bert::BertForSequenceClassification::new(vs.root(), &c, num_labels as i64);
                (
                    Box::new(m),
                    c.pad_token_id.unwrap_or(0),
                    c.max_position_embeddings,
                )
            }
            other => bail!("unsupported model_type `{other}` in config.json (supported: bert)"),
        };
    let report = checkpoint::load_safetensors(&mut vs, &weights, "bert.", |name| {
        name.starts_with("classifier.")
    })?;
    Ok(LoadedClassifier {
        vs,
        model,
        model_type,
        pad_token_id,
        max_positions,
        config,
        report,
    })
}

/// Files of a checkpoint folder that describe its tokenizer, copied along with fine-tuned
/// weights.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

/// Writes a fine-tuned classifier as a Hugging Face `*ForSequenceClassification` checkpoint:
/// config.json with `id2label`/`label2id`, model.safetensors, and the source's tokenizer files.
pub fn save_classifier(
    m: &LoadedClassifier,
    source_dir: &Path,
    out_dir: &Path,
    label_names: &[String],
) -> Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut config = m.config.clone();
    let arch = match m.model_type.as_str() {
        "bert" => "BertForSequenceClassification",
        other => bail!("no task architecture name for model_type `{other}`"),
    };
    config["architectures"] = json!([arch]);
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
    std::fs::write(
        out_dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )
    .context("writing config.json")?;
    checkpoint::save_safetensors(&m.vs, &out_dir.join("model.safetensors"))?;
    for f in TOKENIZER_FILES {
        let src = source_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out_dir.join(f)).with_context(|| format!("copying {f}"))?;
        }
    }
    Ok(())
}
