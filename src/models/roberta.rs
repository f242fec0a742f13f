//! RoBERTa: "RoBERTa: A Robustly Optimized BERT Pretraining Approach" (Liu et al., 2019),
//! ported from Hugging Face transformers `models/roberta/modeling_roberta.py` (`RobertaModel`,
//! `RobertaForSequenceClassification`). The encoder layers are BERT's; the differences are the
//! position ids (counted from `padding_idx + 1`, padding keeps `padding_idx`) and the
//! classification head (`classifier.dense` -> tanh -> `classifier.out_proj` on token 0, no
//! pooler). XLM-RoBERTa and CamemBERT checkpoints share this architecture.

use crate::models::bert::{BaseOutput, BertEncoder, BertPooler, Config, config};
use crate::models::layers::{Embedding, LayerNorm, Linear, dropout};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits, VocabFiles};
use anyhow::Result;
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `model_type`s built by this module.
pub const MODEL_TYPES: [&str; 3] = ["roberta", "xlm-roberta", "camembert"];

/// RoBERTa's padding token id when config.json does not say (`RobertaConfig` default).
pub fn padding_idx(c: &Config) -> i64 {
    c.pad_token_id.unwrap_or(1)
}

/// Longest input: the position table minus the `padding_idx + 1` ids positions start after.
pub fn max_length(c: &Config) -> i64 {
    c.max_position_embeddings - padding_idx(c) - 1
}

/// `RobertaEmbeddings`.
#[derive(Debug)]
pub struct RobertaEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    padding_idx: i64,
}

impl RobertaEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let (std, pad) = (c.initializer_range, padding_idx(c));
        RobertaEmbeddings {
            word_embeddings: Embedding::new(
                &p / "word_embeddings",
                c.vocab_size,
                c.hidden_size,
                std,
                Some(pad),
            ),
            position_embeddings: Embedding::new(
                &p / "position_embeddings",
                c.max_position_embeddings,
                c.hidden_size,
                std,
                Some(pad),
            ),
            token_type_embeddings: Embedding::new(
                &p / "token_type_embeddings",
                c.type_vocab_size,
                c.hidden_size,
                std,
                None,
            ),
            layer_norm: LayerNorm::new(&p / "LayerNorm", c.hidden_size, c.layer_norm_eps),
            dropout: c.hidden_dropout_prob,
            padding_idx: pad,
        }
    }

    /// Hugging Face's `create_position_ids_from_input_ids`: non-padding tokens count up from
    /// `padding_idx + 1`, padding tokens get `padding_idx`.
    pub fn position_ids(&self, input_ids: &Tensor) -> Tensor {
        let mask = input_ids.ne(self.padding_idx).to_kind(Kind::Int64);
        mask.cumsum(1, Kind::Int64) * &mask + self.padding_idx
    }

    pub fn forward_t(&self, input_ids: &Tensor, token_type_ids: &Tensor, train: bool) -> Tensor {
        let positions = self.position_ids(input_ids);
        let xs = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(&positions);
        dropout(&self.layer_norm.forward(&xs), self.dropout, train)
    }
}

/// `RobertaModel`: embeddings, BERT's encoder, an optional pooler.
#[derive(Debug)]
pub struct RobertaModel {
    embeddings: RobertaEmbeddings,
    encoder: BertEncoder,
    pooler: Option<BertPooler>,
}

impl RobertaModel {
    /// A RoBERTa with or without `pooler` (`add_pooling_layer`; the classifier has none).
    pub fn new(p: nn::Path, c: &Config, pooler: bool) -> Self {
        RobertaModel {
            embeddings: RobertaEmbeddings::new(&p / "embeddings", c),
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

/// `RobertaClassificationHead`: dropout, `dense`, tanh, dropout, `out_proj` on token 0.
#[derive(Debug)]
pub struct RobertaClassificationHead {
    dense: Linear,
    out_proj: Linear,
    dropout: f64,
}

impl RobertaClassificationHead {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        RobertaClassificationHead {
            dense: Linear::new(
                &p / "dense",
                c.hidden_size,
                c.hidden_size,
                c.initializer_range,
            ),
            out_proj: Linear::new(
                &p / "out_proj",
                c.hidden_size,
                num_labels,
                c.initializer_range,
            ),
            dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
        }
    }

    pub fn forward_t(&self, hidden: &Tensor, train: bool) -> Tensor {
        let x = dropout(&hidden.select(1, 0), self.dropout, train);
        let x = self.dense.forward(&x).tanh();
        self.out_proj.forward(&dropout(&x, self.dropout, train))
    }
}

/// `RobertaForSequenceClassification`: `roberta` (no pooler) + `classifier`.
#[derive(Debug)]
pub struct RobertaForSequenceClassification {
    pub roberta: RobertaModel,
    classifier: RobertaClassificationHead,
}

impl RobertaForSequenceClassification {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        RobertaForSequenceClassification {
            roberta: RobertaModel::new(&p / "roberta", c, false),
            classifier: RobertaClassificationHead::new(&p / "classifier", c, num_labels),
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
            .roberta
            .forward_t(input_ids, attention_mask, token_type_ids, train);
        let logits = self.classifier.forward_t(&out.last_hidden_state, train);
        (out, logits)
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &MODEL_TYPES,
    modality: Modality::Text,
    base_prefix: "roberta.",
    classifier_class: "RobertaForSequenceClassification",
    image_encoder: None,
    family: Family::Roberta,
    may_be_fresh,
    text_limits,
    vocab_files: Some(VocabFiles::ByteLevelBpe),
};

pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let c = config(v)?;
    Ok(match head {
        Head::Classifier(n) => Box::new(RobertaForSequenceClassification::new(p, &c, n as i64)),
        Head::Base { pooler } => Box::new(RobertaModel::new(p, &c, pooler)),
    })
}

fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_)) && name.starts_with("classifier.")
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let c = config(v)?;
    Ok(TextLimits {
        pad_token_id: padding_idx(&c),
        max_length: max_length(&c),
        vocab_size: c.vocab_size,
    })
}

impl Model for RobertaModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        self.forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train)
            .named()
    }
}

impl Model for RobertaForSequenceClassification {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (out, logits) =
            self.forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train);
        let mut named = out.named();
        named.push(("logits".into(), logits));
        named
    }
}
