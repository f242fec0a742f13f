//! The transformer stack the three FLAVA encoders share: `FlavaSelfAttention` (the shared
//! [`SelfAttention`]), `FlavaLayer`
//! (pre-LN, as ViT), `FlavaEncoder` and `FlavaPooler` from Hugging Face transformers
//! `models/flava/modeling_flava.py`.

use super::EncoderDims;
use crate::models::checkpointing;
use crate::models::layers::{self, Activation, LayerNorm, Linear, SelfAttention};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `FlavaLayer`: pre-LN attention (`attention.attention`, `attention.output.dense`) and MLP
/// (`intermediate.dense`, `output.dense`), each with a residual around it.
#[derive(Debug)]
pub struct FlavaLayer {
    attention: SelfAttention,
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
            attention: SelfAttention::new(
                &attention / "attention",
                h,
                d.num_attention_heads,
                d.attention_probs_dropout_prob,
                d.std,
                d.qkv_bias,
            ),
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
    layers: Vec<Rc<FlavaLayer>>,
}

impl FlavaEncoder {
    pub fn new(p: nn::Path, d: &EncoderDims) -> Self {
        let layer = &p / "layer";
        FlavaEncoder {
            layers: (0..d.num_hidden_layers)
                .map(|i| Rc::new(FlavaLayer::new(&layer / i, d)))
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
        let forward =
            move |layer: &FlavaLayer, xs: &Tensor| layer.forward_t(xs, mask.as_ref(), train);
        checkpointing::stack(&self.layers, xs, train, Rc::new(forward))
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
