//! The transformer stack the three FLAVA encoders share: `FlavaSelfAttention`, `FlavaLayer`
//! (pre-LN, as ViT), `FlavaEncoder` and `FlavaPooler` from Hugging Face transformers
//! `models/flava/modeling_flava.py`.

use super::EncoderDims;
use crate::models::layers::{self, Activation, DECAY, LayerNorm, Linear};
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// A `torch.nn.Linear` that has a bias only if `bias` (`qkv_bias: false` drops them).
fn linear(p: nn::Path, input: i64, output: i64, std: f64, bias: bool) -> Linear {
    if bias {
        return Linear::new(p, input, output, std);
    }
    let normal = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    Linear {
        weight: layers::param(&p.set_group(DECAY), "weight", &[output, input], normal),
        bias: None,
    }
}

/// `FlavaSelfAttention` (`query`, `key`, `value`), computed with scaled dot-product attention.
#[derive(Debug)]
pub struct FlavaSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: i64,
    dropout: f64,
}

impl FlavaSelfAttention {
    pub fn new(p: nn::Path, d: &EncoderDims) -> Self {
        let h = d.hidden_size;
        FlavaSelfAttention {
            query: linear(&p / "query", h, h, d.std, d.qkv_bias),
            key: linear(&p / "key", h, h, d.std, d.qkv_bias),
            value: linear(&p / "value", h, h, d.std, d.qkv_bias),
            heads: d.num_attention_heads,
            dropout: d.attention_probs_dropout_prob,
        }
    }

    /// `mask`: boolean `[batch, 1, 1, seq]`, true where a token may be attended to; `None`:
    /// every token may.
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, s, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |t: Tensor| t.view([b, s, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.query.forward(xs));
        let k = split(self.key.forward(xs));
        let v = split(self.value.forward(xs));
        let p = if train { self.dropout } else { 0.0 };
        Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, false, None, false)
            .transpose(1, 2)
            .contiguous()
            .view([b, s, h])
    }
}

/// `FlavaLayer`: pre-LN attention (`attention.attention`, `attention.output.dense`) and MLP
/// (`intermediate.dense`, `output.dense`), each with a residual around it.
#[derive(Debug)]
pub struct FlavaLayer {
    attention: FlavaSelfAttention,
    attention_output: Linear,
    intermediate: Linear,
    output: Linear,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    act: Activation,
    dropout: f64,
}

impl FlavaLayer {
    pub fn new(p: nn::Path, d: &EncoderDims) -> Self {
        let (h, i) = (d.hidden_size, d.intermediate_size);
        let attention = &p / "attention";
        FlavaLayer {
            attention: FlavaSelfAttention::new(&attention / "attention", d),
            attention_output: Linear::new(&attention / "output" / "dense", h, h, d.std),
            intermediate: Linear::new(&p / "intermediate" / "dense", h, i, d.std),
            output: Linear::new(&p / "output" / "dense", i, h, d.std),
            layernorm_before: LayerNorm::new(&p / "layernorm_before", h, d.layer_norm_eps),
            layernorm_after: LayerNorm::new(&p / "layernorm_after", h, d.layer_norm_eps),
            act: d.act,
            dropout: d.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let attended = self
            .attention
            .forward_t(&self.layernorm_before.forward(xs), mask, train);
        let xs = layers::dropout(
            &self.attention_output.forward(&attended),
            self.dropout,
            train,
        ) + xs;
        let inner = self.act.apply(
            &self
                .intermediate
                .forward(&self.layernorm_after.forward(&xs)),
        );
        layers::dropout(&self.output.forward(&inner), self.dropout, train) + xs
    }
}

/// `FlavaEncoder`: the stack `layer.N`.
#[derive(Debug)]
pub struct FlavaEncoder {
    layers: Vec<FlavaLayer>,
}

impl FlavaEncoder {
    pub fn new(p: nn::Path, d: &EncoderDims) -> Self {
        let layer = &p / "layer";
        FlavaEncoder {
            layers: (0..d.num_hidden_layers)
                .map(|i| FlavaLayer::new(&layer / i, d))
                .collect(),
        }
    }

    /// The last layer's output (no final LayerNorm). `attention_mask`: `[batch, seq]`, 1 for
    /// tokens, 0 for padding; `None` for none.
    pub fn forward_t(&self, xs: Tensor, attention_mask: Option<&Tensor>, train: bool) -> Tensor {
        let mask = attention_mask.map(|m| {
            let (b, s) = m.size2().expect("attention_mask is [batch, seq]");
            m.to_kind(Kind::Bool).view([b, 1, 1, s])
        });
        self.layers
            .iter()
            .fold(xs, |xs, layer| layer.forward_t(&xs, mask.as_ref(), train))
    }
}

/// `FlavaPooler`: `dense` + tanh over the first token.
#[derive(Debug)]
pub struct FlavaPooler {
    dense: Linear,
}

impl FlavaPooler {
    pub fn new(p: nn::Path, d: &EncoderDims) -> Self {
        FlavaPooler {
            dense: Linear::new(&p / "dense", d.hidden_size, d.hidden_size, d.std),
        }
    }

    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.dense.forward(&hidden.select(1, 0)).tanh()
    }
}

/// What an encoder model gives: its normalised last hidden state and pooled first token, and
/// the last layer's output before the final LayerNorm (the multimodal encoder's input).
#[derive(Debug)]
pub struct EncoderOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Tensor,
    pub unnormalised: Tensor,
}

/// `encoder`, `layernorm`, `pooler`: the part the three encoder models share.
#[derive(Debug)]
pub(super) struct EncoderWithPooler {
    encoder: FlavaEncoder,
    layernorm: LayerNorm,
    pooler: FlavaPooler,
}

impl EncoderWithPooler {
    pub(super) fn new(p: &nn::Path, d: &EncoderDims) -> Self {
        EncoderWithPooler {
            encoder: FlavaEncoder::new(p / "encoder", d),
            layernorm: LayerNorm::new(p / "layernorm", d.hidden_size, d.layer_norm_eps),
            pooler: FlavaPooler::new(p / "pooler", d),
        }
    }

    pub(super) fn forward_t(
        &self,
        xs: Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        let unnormalised = self.encoder.forward_t(xs, mask, train);
        let last_hidden_state = self.layernorm.forward(&unnormalised);
        EncoderOutput {
            pooler_output: self.pooler.forward(&last_hidden_state),
            last_hidden_state,
            unnormalised,
        }
    }
}
