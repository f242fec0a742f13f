//! CLIP's two towers and the encoder they share: `CLIPTextModel` (causal, pooled at the
//! end-of-text token) and `CLIPVisionModel` (patches and a class token, pooled at the class
//! token), from Hugging Face transformers `models/clip/modeling_clip.py`.

use super::config::{Config, Tower};
use super::normal;
use crate::models::checkpointing;
use crate::models::layers::{self, Activation, DECAY, Embedding, LayerNorm, Linear};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj`, scaled dot-product attention.
#[derive(Debug)]
pub struct CLIPAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    dropout: f64,
}

impl CLIPAttention {
    fn new(p: nn::Path, t: &Tower) -> Self {
        let h = t.hidden;
        let width = (h as f64).powf(-0.5);
        let in_std = width * ((2 * t.layers) as f64).powf(-0.5) * t.factor;
        CLIPAttention {
            q_proj: Linear::new(&p / "q_proj", h, h, in_std),
            k_proj: Linear::new(&p / "k_proj", h, h, in_std),
            v_proj: Linear::new(&p / "v_proj", h, h, in_std),
            out_proj: Linear::new(&p / "out_proj", h, h, width * t.factor),
            heads: t.heads,
            dropout: t.attention_dropout,
        }
    }

    /// `mask`: additive `[batch, 1, seq, seq]`, or none (the vision tower attends everywhere).
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, s, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |t: Tensor| t.view([b, s, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.q_proj.forward(xs));
        let k = split(self.k_proj.forward(xs));
        let v = split(self.v_proj.forward(xs));
        let p = if train { self.dropout } else { 0.0 };
        let attended =
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, false, None, false)
                .transpose(1, 2)
                .contiguous()
                .view([b, s, h]);
        self.out_proj.forward(&attended)
    }
}

/// `CLIPMLP`: `fc1`, activation, `fc2`.
#[allow(clippy::upper_case_acronyms)] // Hugging Face's name
#[derive(Debug)]
pub struct CLIPMLP {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl CLIPMLP {
    fn new(p: nn::Path, t: &Tower) -> Self {
        let h = t.hidden as f64;
        let fc_std = (2.0 * h).powf(-0.5) * t.factor;
        let in_std = h.powf(-0.5) * ((2 * t.layers) as f64).powf(-0.5) * t.factor;
        CLIPMLP {
            fc1: Linear::new(&p / "fc1", t.hidden, t.intermediate, fc_std),
            fc2: Linear::new(&p / "fc2", t.intermediate, t.hidden, in_std),
            act: t.act,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention (`layer_norm1`, `self_attn`) and MLP
/// (`layer_norm2`, `mlp`), each with a residual.
#[derive(Debug)]
pub struct CLIPEncoderLayer {
    self_attn: CLIPAttention,
    layer_norm1: LayerNorm,
    mlp: CLIPMLP,
    layer_norm2: LayerNorm,
}

impl CLIPEncoderLayer {
    fn new(p: nn::Path, t: &Tower) -> Self {
        CLIPEncoderLayer {
            self_attn: CLIPAttention::new(&p / "self_attn", t),
            layer_norm1: LayerNorm::new(&p / "layer_norm1", t.hidden, t.eps),
            mlp: CLIPMLP::new(&p / "mlp", t),
            layer_norm2: LayerNorm::new(&p / "layer_norm2", t.hidden, t.eps),
        }
    }

    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let xs = xs
            + self
                .self_attn
                .forward_t(&self.layer_norm1.forward(xs), mask, train);
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs))
    }
}

/// `CLIPEncoder`: the stack `layers.N`.
#[derive(Debug)]
pub struct CLIPEncoder {
    layers: Vec<Rc<CLIPEncoderLayer>>,
}

impl CLIPEncoder {
    fn new(p: nn::Path, t: &Tower) -> Self {
        let layers = &p / "layers";
        CLIPEncoder {
            layers: (0..t.layers)
                .map(|i| Rc::new(CLIPEncoderLayer::new(&layers / i, t)))
                .collect(),
        }
    }

    pub fn forward_t(&self, xs: Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let mask = mask.map(Tensor::shallow_clone);
        let forward =
            move |layer: &CLIPEncoderLayer, xs: &Tensor| layer.forward_t(xs, mask.as_ref(), train);
        checkpointing::stack(&self.layers, xs, train, Rc::new(forward))
    }
}

/// `CLIPTextEmbeddings`: `token_embedding` + `position_embedding`.
#[derive(Debug)]
pub struct CLIPTextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

impl CLIPTextEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let (t, std) = (&c.text_config, 0.02 * c.initializer_factor);
        CLIPTextEmbeddings {
            token_embedding: Embedding::new(
                &p / "token_embedding",
                t.vocab_size,
                t.hidden_size,
                std,
                None,
            ),
            position_embedding: Embedding::new(
                &p / "position_embedding",
                t.max_position_embeddings,
                t.hidden_size,
                std,
                None,
            ),
        }
    }

    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let seq = input_ids.size()[1];
        let positions = Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0);
        self.token_embedding.forward(input_ids) + self.position_embedding.forward(&positions)
    }
}

/// Most negative finite value of a float kind: masked scores, never `-inf`, so that a row with
/// nothing to attend to (left padding) averages instead of turning into NaN.
fn mask_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => f64::from(half::f16::MIN),
        Kind::BFloat16 => f64::from(half::bf16::MIN),
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

/// `CLIPTextModel`: `embeddings`, `encoder` under a causal and padding mask,
/// `final_layer_norm`, pooled at the end-of-text token.
#[derive(Debug)]
pub struct CLIPTextModel {
    embeddings: CLIPTextEmbeddings,
    encoder: CLIPEncoder,
    final_layer_norm: LayerNorm,
    eos_token_id: i64,
}

impl CLIPTextModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let t = c.text_tower();
        CLIPTextModel {
            embeddings: CLIPTextEmbeddings::new(&p / "embeddings", c),
            encoder: CLIPEncoder::new(&p / "encoder", &t),
            final_layer_norm: LayerNorm::new(&p / "final_layer_norm", t.hidden, t.eps),
            eos_token_id: c.text_config.eos_token_id,
        }
    }

    /// Position of the token each row is pooled at. `eos_token_id` 2 marks configs from before
    /// transformers PR #24773, pooled at the highest id (openai's end-of-text is the last
    /// vocabulary entry); others at the first position holding `eos_token_id` (padding may be
    /// the same token), position 0 for a row without it, as in Hugging Face.
    pub fn eos_positions(&self, input_ids: &Tensor) -> Tensor {
        if self.eos_token_id == 2 {
            input_ids.argmax(-1, false)
        } else {
            input_ids
                .eq(self.eos_token_id)
                .to_kind(Kind::Int)
                .argmax(-1, false)
        }
    }

    /// Last hidden state `[batch, seq, hidden]` and pooled output `[batch, hidden]`.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let xs = self.embeddings.forward(input_ids);
        let (b, s) = input_ids.size2().expect("input_ids is [batch, seq]");
        let causal = Tensor::ones([s, s], (Kind::Bool, xs.device())).tril(0);
        let allowed = causal
            .view([1, 1, s, s])
            .logical_and(&attention_mask.to_kind(Kind::Bool).view([b, 1, 1, s]));
        let mask = Tensor::zeros([b, 1, s, s], (xs.kind(), xs.device()))
            .masked_fill(&allowed.logical_not(), mask_value(xs.kind()));
        let xs = self.encoder.forward_t(xs, Some(&mask), train);
        let xs = self.final_layer_norm.forward(&xs);
        let h = xs.size()[2];
        let at = self
            .eos_positions(input_ids)
            .view([b, 1, 1])
            .expand([b, 1, h], false);
        let pooled = xs.gather(1, &at, false).squeeze_dim(1);
        (xs, pooled)
    }
}

/// `CLIPVisionEmbeddings`: `class_embedding`, `patch_embedding` (a convolution without bias)
/// and `position_embedding`.
#[derive(Debug)]
pub struct CLIPVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Embedding,
    image_size: i64,
    patch_size: i64,
}

impl CLIPVisionEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let (v, factor) = (&c.vision_config, c.initializer_factor);
        let std = v.initializer_range * factor;
        let p = p.set_group(DECAY);
        let patches = (v.image_size / v.patch_size).pow(2);
        CLIPVisionEmbeddings {
            class_embedding: layers::param(
                &p,
                "class_embedding",
                &[v.hidden_size],
                normal((v.hidden_size as f64).powf(-0.5) * factor),
            ),
            patch_embedding: layers::param(
                &(&p / "patch_embedding"),
                "weight",
                &[v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
                normal(std),
            ),
            position_embedding: Embedding::new(
                &p / "position_embedding",
                patches + 1,
                v.hidden_size,
                std,
                None,
            ),
            image_size: v.image_size,
            patch_size: v.patch_size,
        }
    }

    /// `pixel_values`: `[batch, channels, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let size = pixel_values.size();
        assert!(
            size.len() == 4 && size[2] == self.image_size && size[3] == self.image_size,
            "pixel_values have shape {size:?}; this CLIP reads [batch, channels, {0}, {0}]",
            self.image_size
        );
        let patches = pixel_values
            .to_kind(self.patch_embedding.kind())
            .conv2d(
                &self.patch_embedding,
                None::<&Tensor>,
                [self.patch_size, self.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let (b, hidden) = (size[0], self.class_embedding.size()[0]);
        let class = self.class_embedding.expand([b, 1, hidden], false);
        Tensor::cat(&[class, patches], 1) + self.position_embedding.weight.unsqueeze(0)
    }
}

/// `CLIPVisionModel`: `embeddings`, `pre_layrnorm`, `encoder`, `post_layernorm` on the class
/// token.
#[derive(Debug)]
pub struct CLIPVisionModel {
    embeddings: CLIPVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: CLIPEncoder,
    post_layernorm: LayerNorm,
}

impl CLIPVisionModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let t = c.vision_tower();
        CLIPVisionModel {
            embeddings: CLIPVisionEmbeddings::new(&p / "embeddings", c),
            pre_layrnorm: LayerNorm::new(&p / "pre_layrnorm", t.hidden, t.eps),
            encoder: CLIPEncoder::new(&p / "encoder", &t),
            post_layernorm: LayerNorm::new(&p / "post_layernorm", t.hidden, t.eps),
        }
    }

    /// Last hidden state `[batch, 1 + patches, hidden]` and pooled output `[batch, hidden]`.
    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> (Tensor, Tensor) {
        let xs = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values));
        let xs = self.encoder.forward_t(xs, None, train);
        let pooled = self.post_layernorm.forward(&xs.select(1, 0));
        (xs, pooled)
    }
}
