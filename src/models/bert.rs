//! BERT: "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
//! (Devlin et al., 2019), ported from Hugging Face transformers `models/bert/modeling_bert.py`
//! (`BertModel`, `BertForSequenceClassification`). Parameter paths equal the checkpoint keys,
//! so `bert-base-uncased`, BETO, MiniLM and any other BERT checkpoint load unchanged.

use crate::models::checkpointing;
use crate::models::layers::{
    Activation, ConfigError, Embedding, LayerNorm, Linear, SelfAttention, dropout,
};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits, VocabFiles};
use anyhow::{Result, anyhow};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `config.json` of a BERT checkpoint; field names are the file's keys.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-12
}

impl Config {
    /// Checks what the port supports, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Activation::from_name(&self.hidden_act)?;
        ConfigError::check_heads(self.hidden_size, self.num_attention_heads)?;
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => Ok(()),
            Some(other) => Err(ConfigError::Unsupported(format!(
                "position_embedding_type `{other}` is not supported (only `absolute`)"
            ))),
        }
    }
}

/// `BertEmbeddings`: word + position + token type, then LayerNorm and dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
}

/// The sizes BERT-style text embeddings are built from (ViLT's and FLAVA's text embeddings
/// are BERT's too, under their own config fields).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingSizes {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub pad_token_id: Option<i64>,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub initializer_range: f64,
}

impl BertEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        Self::with_sizes(
            p,
            &EmbeddingSizes {
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
                max_position_embeddings: c.max_position_embeddings,
                type_vocab_size: c.type_vocab_size,
                pad_token_id: c.pad_token_id,
                layer_norm_eps: c.layer_norm_eps,
                hidden_dropout_prob: c.hidden_dropout_prob,
                initializer_range: c.initializer_range,
            },
        )
    }

    /// Embeddings of the given sizes, under `p`.
    pub fn with_sizes(p: nn::Path, s: &EmbeddingSizes) -> Self {
        let (h, std) = (s.hidden_size, s.initializer_range);
        BertEmbeddings {
            word_embeddings: Embedding::new(
                &p / "word_embeddings",
                s.vocab_size,
                h,
                std,
                s.pad_token_id,
            ),
            position_embeddings: Embedding::new(
                &p / "position_embeddings",
                s.max_position_embeddings,
                h,
                std,
                None,
            ),
            token_type_embeddings: Embedding::new(
                &p / "token_type_embeddings",
                s.type_vocab_size,
                h,
                std,
                None,
            ),
            layer_norm: LayerNorm::new(&p / "LayerNorm", h, s.layer_norm_eps),
            dropout: s.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, input_ids: &Tensor, token_type_ids: &Tensor, train: bool) -> Tensor {
        let seq = input_ids.size()[1];
        let positions = Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let xs = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(&positions);
        dropout(&self.layer_norm.forward(&xs), self.dropout, train)
    }
}

/// `BertSelfOutput` / `BertOutput`: dense, dropout, residual, LayerNorm.
#[derive(Debug)]
pub struct BertResidual {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl BertResidual {
    pub fn new(p: nn::Path, input: i64, c: &Config) -> Self {
        BertResidual {
            dense: Linear::new(&p / "dense", input, c.hidden_size, c.initializer_range),
            layer_norm: LayerNorm::new(&p / "LayerNorm", c.hidden_size, c.layer_norm_eps),
            dropout: c.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Tensor {
        let ys = dropout(&self.dense.forward(xs), self.dropout, train);
        self.layer_norm.forward(&(ys + residual))
    }
}

/// `BertLayer`: `attention.self`, `attention.output`, `intermediate.dense`, `output`.
#[derive(Debug)]
pub struct BertLayer {
    attention_self: SelfAttention,
    attention_output: BertResidual,
    intermediate: Linear,
    output: BertResidual,
    act: Activation,
}

impl BertLayer {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let attention = &p / "attention";
        BertLayer {
            attention_self: SelfAttention::new(
                &attention / "self",
                c.hidden_size,
                c.num_attention_heads,
                c.attention_probs_dropout_prob,
                c.initializer_range,
                true,
            ),
            attention_output: BertResidual::new(&attention / "output", c.hidden_size, c),
            intermediate: Linear::new(
                &p / "intermediate" / "dense",
                c.hidden_size,
                c.intermediate_size,
                c.initializer_range,
            ),
            output: BertResidual::new(&p / "output", c.intermediate_size, c),
            act: Activation::from_name(&c.hidden_act).expect("validated config"),
        }
    }

    /// `mask`: as [`SelfAttention::forward_t`] takes it; `None` when every token is attended.
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let attended = self.attention_self.forward_t(xs, mask, train);
        let xs = self.attention_output.forward_t(&attended, xs, train);
        let inner = self.act.apply(&self.intermediate.forward(&xs));
        self.output.forward_t(&inner, &xs, train)
    }
}

/// `BertEncoder`: the stack `encoder.layer.N` (shared with RoBERTa, whose layers are BERT's).
#[derive(Debug)]
pub struct BertEncoder {
    layers: Vec<Rc<BertLayer>>,
}

impl BertEncoder {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let layer = &p / "layer";
        BertEncoder {
            layers: (0..c.num_hidden_layers)
                .map(|i| Rc::new(BertLayer::new(&layer / i, c)))
                .collect(),
        }
    }

    /// `attention_mask`: `[batch, seq]`, 1 for tokens, 0 for padding.
    pub fn forward_t(&self, xs: Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (b, s) = attention_mask
            .size2()
            .expect("attention_mask is [batch, seq]");
        let mask = attention_mask.to_kind(Kind::Bool).view([b, 1, 1, s]);
        // a batch without padding needs no mask: the attention then skips filling the scores
        // (and on the CPU, evaluation takes the fused kernel without a mask); on CUDA the
        // check would wait for the device, so the mask stays
        let keep =
            attention_mask.device().is_cuda() || !bool::try_from(mask.all()).unwrap_or(false);
        let mask = keep.then_some(mask);
        let forward =
            move |layer: &BertLayer, xs: &Tensor| layer.forward_t(xs, mask.as_ref(), train);
        checkpointing::stack(&self.layers, xs, train, Rc::new(forward))
    }
}

/// `BertPooler`: `dense` + tanh over the first token.
#[derive(Debug)]
pub struct BertPooler {
    dense: Linear,
}

impl BertPooler {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        BertPooler {
            dense: Linear::new(
                &p / "dense",
                c.hidden_size,
                c.hidden_size,
                c.initializer_range,
            ),
        }
    }

    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.dense.forward(&hidden.select(1, 0)).tanh()
    }
}

/// Outputs of a base model, named as Hugging Face names them.
#[derive(Debug)]
pub struct BaseOutput {
    pub last_hidden_state: Tensor,
    /// Absent for a model built without a pooler.
    pub pooler_output: Option<Tensor>,
}

impl BaseOutput {
    /// The outputs under their Hugging Face names.
    pub fn named(self) -> Vec<(String, Tensor)> {
        let mut out = vec![("last_hidden_state".to_string(), self.last_hidden_state)];
        if let Some(p) = self.pooler_output {
            out.push(("pooler_output".into(), p));
        }
        out
    }
}

/// `BertModel`: `embeddings`, `encoder`, and (unless built without) `pooler`.
#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    pooler: Option<BertPooler>,
}

impl BertModel {
    /// A BERT with its pooler.
    pub fn new(p: nn::Path, c: &Config) -> Self {
        Self::with_pooler(p, c, true)
    }

    /// A BERT with or without `pooler` (Hugging Face's `add_pooling_layer`).
    pub fn with_pooler(p: nn::Path, c: &Config, pooler: bool) -> Self {
        BertModel {
            embeddings: BertEmbeddings::new(&p / "embeddings", c),
            encoder: BertEncoder::new(&p / "encoder", c),
            pooler: pooler.then(|| BertPooler::new(&p / "pooler", c)),
        }
    }

    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        train: bool,
    ) -> BaseOutput {
        let xs = self.embeddings.forward_t(input_ids, token_type_ids, train);
        let xs = self.encoder.forward_t(xs, attention_mask, train);
        let pooled = self.pooler.as_ref().map(|p| p.forward(&xs));
        BaseOutput {
            last_hidden_state: xs,
            pooler_output: pooled,
        }
    }
}

/// `BertForSequenceClassification`: `bert` + dropout + `classifier` on the pooled output.
#[derive(Debug)]
pub struct BertForSequenceClassification {
    pub bert: BertModel,
    classifier: Linear,
    dropout: f64,
}

impl BertForSequenceClassification {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        BertForSequenceClassification {
            bert: BertModel::new(&p / "bert", c),
            classifier: Linear::new(
                &p / "classifier",
                c.hidden_size,
                num_labels,
                c.initializer_range,
            ),
            dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
        }
    }

    /// Model outputs and the logits `[batch, num_labels]`.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        train: bool,
    ) -> (BaseOutput, Tensor) {
        let out = self
            .bert
            .forward_t(input_ids, attention_mask, token_type_ids, train);
        let pooled = out
            .pooler_output
            .as_ref()
            .expect("the classifier model has a pooler");
        let logits = self
            .classifier
            .forward(&dropout(pooled, self.dropout, train));
        (out, logits)
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &["bert"],
    modality: Modality::Text,
    base_prefix: "bert.",
    classifier_class: "BertForSequenceClassification",
    image_encoder: None,
    family: Family::Bert,
    may_be_fresh,
    text_limits,
    vocab_files: Some(VocabFiles::WordPiece),
};

/// Parses and checks a BERT config.json; errors name the field.
pub fn config(v: &Value) -> Result<Config> {
    let c: Config = serde_json::from_value(v.clone()).map_err(|e| anyhow!("{e}"))?;
    c.validate()?;
    Ok(c)
}

pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let c = config(v)?;
    Ok(match head {
        Head::Classifier(n) => Box::new(BertForSequenceClassification::new(p, &c, n as i64)),
        Head::Base { pooler } => Box::new(BertModel::with_pooler(p, &c, pooler)),
    })
}

/// A new classification head, and a pooler the checkpoint lacks (Hugging Face initialises a
/// missing pooler too).
fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_))
        && (name.starts_with("classifier.") || name.starts_with("bert.pooler."))
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let c = config(v)?;
    Ok(TextLimits {
        pad_token_id: c.pad_token_id.unwrap_or(0),
        max_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
    })
}

impl Model for BertModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        self.forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train)
            .named()
    }
}

impl Model for BertForSequenceClassification {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (out, logits) =
            self.forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train);
        let mut named = out.named();
        named.push(("logits".into(), logits));
        named
    }
}
