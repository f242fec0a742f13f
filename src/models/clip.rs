//! CLIP: "Learning Transferable Visual Models From Natural Language Supervision" (Radford et
//! al., 2021), ported from Hugging Face transformers `models/clip/modeling_clip.py`
//! (`CLIPModel`, `CLIPTextModel`, `CLIPVisionModel`). Parameter paths equal the checkpoint
//! keys (`pre_layrnorm` typo included), so `openai/clip-vit-*` and other `CLIPModel`
//! checkpoints load unchanged.
//!
//! Hugging Face has no CLIP classifier for text+image tasks; [`CLIPForMultimodalClassification`]
//! is ours, after the CLIP baselines of the Hateful Memes challenge: an MLP over the fused
//! projected embeddings.
//!
//! The config (and the `clip-tiny` preset's files) are in `clip/config.rs`, the text and vision
//! towers in `clip/towers.rs`; the joint model, the classifier and the [`SPEC`] here.

mod config;
mod towers;

pub use config::{
    CLIP_TINY, Config, TextConfig, VisionConfig, config, tiny_config, tiny_preprocessor_config,
};
pub use towers::{
    CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPMLP, CLIPTextEmbeddings, CLIPTextModel,
    CLIPVisionEmbeddings, CLIPVisionModel,
};

use crate::models::layers::{self, DECAY, Linear, dropout};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits};
use anyhow::Result;
use serde_json::Value;
use tch::Tensor;
use tch::nn::{self, Init, Module};

fn normal(stdev: f64) -> Init {
    Init::Randn { mean: 0.0, stdev }
}

/// Outputs of [`CLIPModel`], named as Hugging Face's `CLIPOutput` names them.
#[derive(Debug)]
pub struct CLIPOutput {
    /// Projected, L2-normalised text embeddings `[texts, projection_dim]`.
    pub text_embeds: Tensor,
    /// Projected, L2-normalised image embeddings `[images, projection_dim]`.
    pub image_embeds: Tensor,
    /// `[images, texts]` cosine similarities times `exp(logit_scale)`.
    pub logits_per_image: Tensor,
    /// `[texts, images]`, the transpose.
    pub logits_per_text: Tensor,
}

impl CLIPOutput {
    /// The outputs under their Hugging Face names.
    pub fn named(self) -> Vec<(String, Tensor)> {
        vec![
            ("text_embeds".into(), self.text_embeds),
            ("image_embeds".into(), self.image_embeds),
            ("logits_per_image".into(), self.logits_per_image),
            ("logits_per_text".into(), self.logits_per_text),
        ]
    }
}

/// `CLIPModel`: `text_model`, `vision_model`, `text_projection`, `visual_projection`,
/// `logit_scale`.
#[derive(Debug)]
pub struct CLIPModel {
    pub text_model: CLIPTextModel,
    pub vision_model: CLIPVisionModel,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: Tensor,
}

impl CLIPModel {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let (t, v, f) = (&c.text_config, &c.vision_config, c.initializer_factor);
        CLIPModel {
            text_model: CLIPTextModel::new(&p / "text_model", c),
            vision_model: CLIPVisionModel::new(&p / "vision_model", c),
            text_projection: Linear::with_bias(
                &p / "text_projection",
                t.hidden_size,
                c.projection_dim,
                (t.hidden_size as f64).powf(-0.5) * f,
                false,
            ),
            visual_projection: Linear::with_bias(
                &p / "visual_projection",
                v.hidden_size,
                c.projection_dim,
                (v.hidden_size as f64).powf(-0.5) * f,
                false,
            ),
            // a plain parameter, so weight decay applies as in Hugging Face's Trainer
            logit_scale: layers::param(
                &p.set_group(DECAY),
                "logit_scale",
                &[],
                Init::Const(c.logit_scale_init_value),
            ),
        }
    }

    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pixel_values: &Tensor,
        train: bool,
    ) -> CLIPOutput {
        let unit = |x: Tensor| &x / x.norm_scalaropt_dim(2, [-1], true);
        let (_, image) = self.vision_model.forward_t(pixel_values, train);
        let image_embeds = unit(self.visual_projection.forward(&image));
        let (_, text) = self.text_model.forward_t(input_ids, attention_mask, train);
        let text_embeds = unit(self.text_projection.forward(&text));
        let logits_per_text = text_embeds.matmul(&image_embeds.tr()) * self.logit_scale.exp();
        CLIPOutput {
            logits_per_image: logits_per_text.tr(),
            logits_per_text,
            text_embeds,
            image_embeds,
        }
    }
}

/// Our text+image classifier: `clip` and the MLP `classifier` over
/// `[text, image, text * image, text - image]` of the L2-normalised projected embeddings
/// (4 × `projection_dim`), as the CLIP baselines for Hateful Memes fuse the two towers.
/// The MLP is `nn.Sequential(Linear(4P, P), ReLU(), Dropout(p), Linear(P, num_labels))`, whence
/// the parameter names `classifier.0.*` and `classifier.3.*`.
#[derive(Debug)]
pub struct CLIPForMultimodalClassification {
    pub clip: CLIPModel,
    dense: Linear,
    out: Linear,
    dropout: f64,
}

impl CLIPForMultimodalClassification {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        let (dim, f) = (c.projection_dim, c.initializer_factor);
        let classifier = &p / "classifier";
        CLIPForMultimodalClassification {
            clip: CLIPModel::new(&p / "clip", c),
            dense: Linear::new(
                &classifier / 0,
                4 * dim,
                dim,
                ((4 * dim) as f64).powf(-0.5) * f,
            ),
            out: Linear::new(
                &classifier / 3,
                dim,
                num_labels,
                (dim as f64).powf(-0.5) * f,
            ),
            dropout: c.classifier_dropout.unwrap_or(0.1),
        }
    }

    /// Model outputs and the logits `[batch, num_labels]` (one image per text).
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pixel_values: &Tensor,
        train: bool,
    ) -> (CLIPOutput, Tensor) {
        let out = self
            .clip
            .forward_t(input_ids, attention_mask, pixel_values, train);
        let (t, i) = (&out.text_embeds, &out.image_embeds);
        let fused = Tensor::cat(&[t.shallow_clone(), i.shallow_clone(), t * i, t - i], -1);
        let hidden = self.dense.forward(&fused).relu();
        let logits = self.out.forward(&dropout(&hidden, self.dropout, train));
        (out, logits)
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &["clip"],
    modality: Modality::TextImage,
    base_prefix: "clip.",
    classifier_class: "CLIPForMultimodalClassification",
    image_encoder: Some("clip.vision_model."),
    family: Family::Clip,
    may_be_fresh,
    text_limits,
    // CLIP checkpoints ship tokenizer.json
    vocab_files: None,
};

pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let c = config(v)?;
    Ok(match head {
        Head::Classifier(n) => Box::new(CLIPForMultimodalClassification::new(p, &c, n as i64)),
        Head::Base { .. } => Box::new(CLIPModel::new(p, &c)),
    })
}

fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_)) && name.starts_with("classifier.")
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let t = config(v)?.text_config;
    Ok(TextLimits {
        pad_token_id: t.pad_token_id.unwrap_or(1),
        max_length: t.max_position_embeddings,
        vocab_size: t.vocab_size,
    })
}

fn pixel_values(b: &Batch) -> &Tensor {
    b.pixel_values
        .as_ref()
        .expect("CLIP reads pixel_values along with the text")
}

impl Model for CLIPModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        self.forward_t(&b.input_ids, &b.attention_mask, pixel_values(b), train)
            .named()
    }
}

impl Model for CLIPForMultimodalClassification {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (out, logits) = self.forward_t(&b.input_ids, &b.attention_mask, pixel_values(b), train);
        let mut named = out.named();
        named.push(("logits".into(), logits));
        named
    }
}
