//! FLAVA: "FLAVA: A Foundational Language And Vision Alignment Model" (Singh et al., 2022),
//! ported from Hugging Face transformers `models/flava/modeling_flava.py` (`FlavaModel` with its
//! `FlavaTextModel`, `FlavaImageModel` and `FlavaMultimodalModel`). Parameter paths equal the
//! checkpoint keys, so a `FlavaModel` checkpoint (keys at the root) and a `FlavaForPreTraining`
//! one (keys under `flava.`, with pre-training heads and an image codebook that go unused)
//! both load.
//!
//! Three pre-LN (ViT-style) transformers: a BERT-like text encoder, a ViT image encoder, and a
//! multimodal encoder over its own CLS token followed by the image and text encoders' last
//! hidden states (before their final LayerNorm), each projected to the multimodal width. Each
//! encoder ends in a LayerNorm and a tanh pooler over its first token.
//!
//! Hugging Face has no FLAVA classifier; [`FlavaForMultimodalClassification`] puts ViLT's VQA
//! head (`classifier.0` Linear(H, 2H), `classifier.1` LayerNorm, GELU, `classifier.3`
//! Linear(2H, labels)) on the multimodal pooled output.
//!
//! The image must have the config's `image_size`: `FlavaModel` never asks its image encoder to
//! interpolate position embeddings, and the patch embedding rejects other sizes, so this port
//! does too.
//!
//! The config (and the `flava-tiny` preset's files) live in `flava/config.rs`, the transformer
//! stack the three encoders share in `flava/encoder.rs`, to keep each file near 400 lines.

mod config;
mod encoder;

pub use config::{
    Config, EncoderDims, FLAVA_TINY, ImageConfig, MultimodalConfig, Size, TextConfig, tiny_config,
    tiny_preprocessor_config,
};
pub use encoder::{EncoderOutput, FlavaEncoder, FlavaLayer, FlavaPooler};

use crate::models::bert::{BertEmbeddings, EmbeddingSizes};
use crate::models::layers::{self, DECAY, LayerNorm, Linear, NO_DECAY};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits, VocabFiles};
use anyhow::{Result, anyhow};
use encoder::EncoderWithPooler;
use serde_json::Value;
use tch::Tensor;
use tch::nn::{self, Init, Module};

/// `FlavaTextModel`: `embeddings`, then the pre-LN encoder, `layernorm` and `pooler`.
#[derive(Debug)]
pub struct FlavaTextModel {
    /// BERT's embeddings (`FlavaTextEmbeddings` in Hugging Face's file).
    embeddings: BertEmbeddings,
    body: EncoderWithPooler,
}

impl FlavaTextModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let d = c.text_dims().expect("validated config");
        FlavaTextModel {
            embeddings: BertEmbeddings::with_sizes(
                &p / "embeddings",
                &EmbeddingSizes {
                    vocab_size: c.text_config.vocab_size,
                    hidden_size: c.text_config.hidden_size,
                    max_position_embeddings: c.text_config.max_position_embeddings,
                    type_vocab_size: c.text_config.type_vocab_size,
                    pad_token_id: c.text_config.pad_token_id,
                    layer_norm_eps: c.text_config.layer_norm_eps,
                    hidden_dropout_prob: c.text_config.hidden_dropout_prob,
                    initializer_range: d.std,
                },
            ),
            body: EncoderWithPooler::new(&p, &d),
        }
    }

    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        train: bool,
    ) -> EncoderOutput {
        let xs = self.embeddings.forward_t(input_ids, token_type_ids, train);
        self.body.forward_t(xs, Some(attention_mask), train)
    }
}

/// `PatchEmbeddings`: a `projection` convolution with stride = kernel = the patch size.
#[derive(Debug)]
pub struct PatchEmbeddings {
    weight: Tensor,
    bias: Tensor,
    patch: (i64, i64),
}

impl PatchEmbeddings {
    pub fn new(p: nn::Path, c: &ImageConfig, std: f64) -> Self {
        let p = &p / "projection";
        let (ph, pw) = c.patch_size.hw();
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        PatchEmbeddings {
            weight: layers::param(
                &p.set_group(DECAY),
                "weight",
                &[c.hidden_size, c.num_channels, ph, pw],
                normal,
            ),
            bias: layers::param(
                &p.set_group(NO_DECAY),
                "bias",
                &[c.hidden_size],
                Init::Const(0.0),
            ),
            patch: (ph, pw),
        }
    }

    /// `[batch, channels, height, width]` to `[batch, patches, hidden]`, patches row by row.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let stride = [self.patch.0, self.patch.1];
        pixel_values
            .conv2d(&self.weight, Some(&self.bias), stride, [0, 0], [1, 1], 1)
            .flatten(2, -1)
            .transpose(1, 2)
    }
}

/// `FlavaImageEmbeddings`: `cls_token`, the patches, `position_embeddings`; `mask_token` is
/// kept for checkpoints but only pre-training's masked images use it.
#[derive(Debug)]
pub struct FlavaImageEmbeddings {
    cls_token: Tensor,
    _mask_token: Option<Tensor>,
    patch_embeddings: PatchEmbeddings,
    position_embeddings: Tensor,
    image_size: (i64, i64),
    dropout: f64,
}

impl FlavaImageEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let i = &c.image_config;
        let h = i.hidden_size;
        let (gh, gw) = c.patch_grid();
        // Hugging Face starts these at zero and decays them (they are neither biases nor norms)
        let decayed = p.set_group(DECAY);
        FlavaImageEmbeddings {
            cls_token: layers::param(&decayed, "cls_token", &[1, 1, h], Init::Const(0.0)),
            _mask_token: i
                .mask_token
                .then(|| layers::param(&decayed, "mask_token", &[1, 1, h], Init::Const(0.0))),
            patch_embeddings: PatchEmbeddings::new(&p / "patch_embeddings", i, c.initializer_range),
            position_embeddings: layers::param(
                &decayed,
                "position_embeddings",
                &[1, gh * gw + 1, h],
                Init::Const(0.0),
            ),
            image_size: i.image_size.hw(),
            dropout: i.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let (_, _, height, width) = pixel_values
            .size4()
            .expect("pixel_values are [batch, channels, height, width]");
        // as Hugging Face's PatchEmbeddings, which FlavaModel never asks to interpolate
        assert!(
            (height, width) == self.image_size,
            "Input image size ({height}*{width}) doesn't match model ({}*{}): the preprocessor must produce the config's image_size",
            self.image_size.0,
            self.image_size.1
        );
        let patches = self.patch_embeddings.forward(pixel_values);
        let b = patches.size()[0];
        let cls = self.cls_token.expand([b, -1, -1], false);
        let xs = Tensor::cat(&[cls, patches], 1) + &self.position_embeddings;
        layers::dropout(&xs, self.dropout, train)
    }
}

/// `FlavaImageModel`: `embeddings`, then the pre-LN encoder, `layernorm` and `pooler`.
#[derive(Debug)]
pub struct FlavaImageModel {
    embeddings: FlavaImageEmbeddings,
    body: EncoderWithPooler,
}

impl FlavaImageModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let d = c.image_dims().expect("validated config");
        FlavaImageModel {
            embeddings: FlavaImageEmbeddings::new(&p / "embeddings", c),
            body: EncoderWithPooler::new(&p, &d),
        }
    }

    /// Every patch is attended to (FlavaModel passes no image attention mask).
    pub fn forward_t(&self, pixel_values: &Tensor, train: bool) -> EncoderOutput {
        let xs = self.embeddings.forward_t(pixel_values, train);
        self.body.forward_t(xs, None, train)
    }
}

/// `FlavaMultimodalModel`: its own `cls_token` (if `use_cls_token`) before the projected image
/// and text states, then the pre-LN encoder, `layernorm` and `pooler`.
#[derive(Debug)]
pub struct FlavaMultimodalModel {
    cls_token: Option<Tensor>,
    body: EncoderWithPooler,
}

impl FlavaMultimodalModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let d = c.multimodal_dims().expect("validated config");
        FlavaMultimodalModel {
            cls_token: c.multimodal_config.use_cls_token.then(|| {
                layers::param(
                    &p.set_group(DECAY),
                    "cls_token",
                    &[1, 1, d.hidden_size],
                    Init::Const(0.0),
                )
            }),
            body: EncoderWithPooler::new(&p, &d),
        }
    }

    /// `hidden_states`: `[batch, seq, hidden]`; `attention_mask`: `[batch, seq]` over them
    /// (the CLS token is always attended to).
    pub fn forward_t(
        &self,
        hidden_states: Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> EncoderOutput {
        let (xs, mask) = match &self.cls_token {
            Some(cls) => {
                let b = hidden_states.size()[0];
                let ones = Tensor::ones([b, 1], (attention_mask.kind(), attention_mask.device()));
                (
                    Tensor::cat(&[cls.expand([b, -1, -1], false), hidden_states], 1),
                    Tensor::cat(&[&ones, attention_mask], 1),
                )
            }
            None => (hidden_states, attention_mask.shallow_clone()),
        };
        self.body.forward_t(xs, Some(&mask), train)
    }
}

/// Outputs of [`FlavaModel`]: each encoder's normalised last hidden state and pooled output.
#[derive(Debug)]
pub struct FlavaModelOutput {
    pub text: EncoderOutput,
    pub image: EncoderOutput,
    pub multimodal: EncoderOutput,
}

impl FlavaModelOutput {
    /// `text_last_hidden_state`, `text_pooler_output`, and the same for `image_` and
    /// `multimodal_`: Hugging Face's `{text,image,multimodal}_output` fields.
    pub fn named(self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (part, o) in [
            ("text", self.text),
            ("image", self.image),
            ("multimodal", self.multimodal),
        ] {
            out.push((format!("{part}_last_hidden_state"), o.last_hidden_state));
            out.push((format!("{part}_pooler_output"), o.pooler_output));
        }
        out
    }
}

/// `FlavaModel`: the three encoders, the projections into the multimodal width, and the
/// contrastive `image_projection`, `text_projection` and `logit_scale` (kept for checkpoints,
/// not used by classification).
#[derive(Debug)]
pub struct FlavaModel {
    text_model: FlavaTextModel,
    image_model: FlavaImageModel,
    multimodal_model: FlavaMultimodalModel,
    _image_projection: Linear,
    _text_projection: Linear,
    _logit_scale: Tensor,
    image_to_mm_projection: Linear,
    text_to_mm_projection: Linear,
}

impl FlavaModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let std = c.initializer_range;
        let (ti, ii, mm) = (
            c.text_config.hidden_size,
            c.image_config.hidden_size,
            c.multimodal_config.hidden_size,
        );
        FlavaModel {
            text_model: FlavaTextModel::new(&p / "text_model", c),
            image_model: FlavaImageModel::new(&p / "image_model", c),
            multimodal_model: FlavaMultimodalModel::new(&p / "multimodal_model", c),
            _image_projection: Linear::new(&p / "image_projection", ii, c.projection_dim, std),
            _text_projection: Linear::new(&p / "text_projection", ti, c.projection_dim, std),
            _logit_scale: layers::param(
                &p.set_group(DECAY),
                "logit_scale",
                &[],
                Init::Const(c.logit_scale_init_value),
            ),
            image_to_mm_projection: Linear::new(&p / "image_to_mm_projection", ii, mm, std),
            text_to_mm_projection: Linear::new(&p / "text_to_mm_projection", ti, mm, std),
        }
    }

    /// `attention_mask`: the text's, `[batch, seq]`; every image patch is attended to.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        pixel_values: &Tensor,
        train: bool,
    ) -> FlavaModelOutput {
        let image = self.image_model.forward_t(pixel_values, train);
        let text = self
            .text_model
            .forward_t(input_ids, attention_mask, token_type_ids, train);
        // the multimodal encoder reads the last layers' outputs, before the final LayerNorm
        let image_mm = self.image_to_mm_projection.forward(&image.unnormalised);
        let text_mm = self.text_to_mm_projection.forward(&text.unnormalised);
        let (b, image_len, _) = image_mm.size3().expect("[batch, patches + 1, hidden]");
        let image_mask = Tensor::ones(
            [b, image_len],
            (attention_mask.kind(), attention_mask.device()),
        );
        let mask = Tensor::cat(&[&image_mask, attention_mask], 1);
        let multimodal =
            self.multimodal_model
                .forward_t(Tensor::cat(&[image_mm, text_mm], 1), &mask, train);
        FlavaModelOutput {
            text,
            image,
            multimodal,
        }
    }
}

/// ViLT's VQA head on the multimodal pooled output: `0` Linear(H, 2H), `1` LayerNorm(2H)
/// (torch's default eps 1e-5), GELU, `3` Linear(2H, labels).
#[derive(Debug)]
pub struct ClassifierHead {
    dense: Linear,
    layer_norm: LayerNorm,
    out: Linear,
}

impl ClassifierHead {
    pub fn new(p: nn::Path, hidden: i64, num_labels: i64, std: f64) -> Self {
        ClassifierHead {
            dense: Linear::new(&p / 0, hidden, 2 * hidden, std),
            layer_norm: LayerNorm::new(&p / 1, 2 * hidden, 1e-5),
            out: Linear::new(&p / 3, 2 * hidden, num_labels, std),
        }
    }

    pub fn forward(&self, pooled: &Tensor) -> Tensor {
        let xs = self.layer_norm.forward(&self.dense.forward(pooled));
        self.out.forward(&xs.gelu("none"))
    }
}

/// `flava` ([`FlavaModel`]) and `classifier` ([`ClassifierHead`]) on its multimodal pooled
/// output; saved under [`SPEC`]'s `classifier_class`.
#[derive(Debug)]
pub struct FlavaForMultimodalClassification {
    pub flava: FlavaModel,
    classifier: ClassifierHead,
}

impl FlavaForMultimodalClassification {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        FlavaForMultimodalClassification {
            flava: FlavaModel::new(&p / "flava", c),
            classifier: ClassifierHead::new(
                &p / "classifier",
                c.multimodal_config.hidden_size,
                num_labels,
                c.initializer_range,
            ),
        }
    }

    /// Model outputs and the logits `[batch, num_labels]`.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        pixel_values: &Tensor,
        train: bool,
    ) -> (FlavaModelOutput, Tensor) {
        let out = self.flava.forward_t(
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            train,
        );
        let logits = self.classifier.forward(&out.multimodal.pooler_output);
        (out, logits)
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &["flava"],
    modality: Modality::TextImage,
    base_prefix: "flava.",
    classifier_class: "FlavaForMultimodalClassification",
    image_encoder: Some("flava.image_model."),
    family: Family::Flava,
    may_be_fresh,
    text_limits,
    // FLAVA's tokenizer is BERT's
    vocab_files: Some(VocabFiles::WordPiece),
};

/// Parses and checks a FLAVA config.json; errors name the field.
pub fn config(v: &Value) -> Result<Config> {
    let c: Config = serde_json::from_value(v.clone()).map_err(|e| anyhow!("{e}"))?;
    c.validate()?;
    Ok(c)
}

/// A FLAVA checkpoint always has its three poolers, so `Head::Base`'s `pooler` (which looks
/// for BERT's `pooler.dense.weight`) is not consulted.
pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let c = config(v)?;
    Ok(match head {
        Head::Classifier(n) => Box::new(FlavaForMultimodalClassification::new(p, &c, n as i64)),
        Head::Base { .. } => Box::new(FlavaModel::new(p, &c)),
    })
}

/// Only a new classification head.
fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_)) && name.starts_with("classifier.")
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let c = config(v)?;
    let t = &c.text_config;
    Ok(TextLimits {
        pad_token_id: t.pad_token_id.unwrap_or(0),
        max_length: t.max_position_embeddings,
        vocab_size: t.vocab_size,
    })
}

fn pixels(b: &Batch) -> &Tensor {
    b.pixel_values
        .as_ref()
        .expect("FLAVA needs pixel_values with every batch")
}

impl Model for FlavaModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        self.forward_t(
            &b.input_ids,
            &b.attention_mask,
            &b.token_type_ids,
            pixels(b),
            train,
        )
        .named()
    }
}

impl Model for FlavaForMultimodalClassification {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (out, logits) = self.forward_t(
            &b.input_ids,
            &b.attention_mask,
            &b.token_type_ids,
            pixels(b),
            train,
        );
        let mut named = out.named();
        named.push(("logits".into(), logits));
        named
    }
}
