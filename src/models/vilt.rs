//! ViLT: "ViLT: Vision-and-Language Transformer Without Convolution or Region Supervision"
//! (Kim et al., 2021), ported from Hugging Face transformers `models/vilt/modeling_vilt.py`
//! (`ViltModel`, `ViltForQuestionAnswering`). Text tokens (BERT embeddings) and image patches
//! (a strided convolution, ViT style) are concatenated, tagged with a modality type embedding,
//! and run through one pre-LayerNorm transformer. Parameter paths equal the checkpoint keys, so
//! `dandelin/vilt-b32-*` checkpoints load unchanged.
//!
//! # Which patches become image tokens
//!
//! `ViltEmbeddings.visual_embed` gives every image of a batch the same number `L` of image
//! tokens: the largest valid patch count in the batch, capped at `max_image_length` when that is
//! positive. Hugging Face picks them with `torch.multinomial`, in eval mode too: an image with
//! at least `L` valid patches gets a random `L` of them in random order, an image with fewer gets
//! all of them in row-major order followed by randomly chosen padding patches (masked out of
//! attention). Here the choice is deterministic outside training:
//! - valid patches in row-major order; with more than `L`, `L` evenly spaced ones
//!   (`i * valid / L`), so the subsample covers the whole image;
//! - then the first `L - valid` padding patches in row-major order.
//!
//! With `L` or fewer valid patches this is a permutation of Hugging Face's choice, and the
//! encoder (no positional operation after the embeddings, attention permutation-equivariant)
//! gives the same `pooler_output`, `logits` and text states, the image states permuted alike.
//! The parity fixtures (`tests/reference/make_vilt_fixtures.py`) compute transformers' outputs
//! with `torch.multinomial` replaced by exactly this choice, so every output is compared whole,
//! and check against unmodified transformers that the choice is only a permutation.
//!
//! In training, an image with more than `L` valid patches gets a random subset (torch's
//! `randperm`, so `tch::manual_seed` governs it, as `torch.multinomial` is governed in Python),
//! kept in row-major order. Padding patches stay deterministic in training too: they are masked
//! out of attention and out of the pooled output, so which ones fill the slots changes nothing
//! that is trained.

use crate::models::bert::{BertEmbeddings, EmbeddingSizes};
use crate::models::checkpointing;
use crate::models::layers::{
    Activation, DECAY, Embedding, LayerNorm, Linear, NO_DECAY, dropout, param,
};
use crate::models::layers::{ConfigError, SelfAttention};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits, VocabFiles};
use anyhow::{Result, anyhow};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

/// `config.json` of a ViLT checkpoint; field names are the file's keys, defaults those of
/// `ViltConfig` (the `dandelin/vilt-b32-mlm` architecture).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub vocab_size: i64,
    pub type_vocab_size: i64,
    /// Rows of the modality embedding (0 text, 1 image, 2 a second image in NLVR2).
    pub modality_type_vocab_size: i64,
    /// Length of the text position table: the longest text input.
    pub max_position_embeddings: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    /// Side of the square image the patch position table was trained for.
    pub image_size: i64,
    pub patch_size: i64,
    pub num_channels: i64,
    pub qkv_bias: bool,
    /// Most image tokens per image; -1: as many as the largest image in the batch has patches.
    pub max_image_length: i64,
    pub tie_word_embeddings: bool,
    pub num_images: i64,
    pub pad_token_id: Option<i64>,
    pub id2label: Option<BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vocab_size: 30522,
            type_vocab_size: 2,
            modality_type_vocab_size: 2,
            max_position_embeddings: 40,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size: 384,
            patch_size: 32,
            num_channels: 3,
            qkv_bias: true,
            max_image_length: -1,
            tie_word_embeddings: true,
            num_images: -1,
            pad_token_id: None,
            id2label: None,
        }
    }
}

impl Config {
    /// Checks what the port supports, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Activation::from_name(&self.hidden_act)?;
        ConfigError::check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.patch_size <= 0 || self.image_size < self.patch_size {
            return Err(ConfigError::NoPatch {
                image: self.image_size.to_string(),
                patch: self.patch_size.to_string(),
            });
        }
        if self.max_image_length == 0 {
            return Err(ConfigError::Unsupported(
                "max_image_length 0 leaves no image tokens (use -1 for no cap)".into(),
            ));
        }
        if self.modality_type_vocab_size < 2 {
            return Err(ConfigError::Unsupported(format!(
                "modality_type_vocab_size {} has no image row (needs at least 2)",
                self.modality_type_vocab_size
            )));
        }
        Ok(())
    }

    /// Side of the patch position grid.
    fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

/// `ViltPatchEmbeddings`: `projection`, a convolution with kernel and stride `patch_size`.
#[derive(Debug)]
pub struct ViltPatchEmbeddings {
    weight: Tensor,
    bias: Tensor,
    patch_size: i64,
}

impl ViltPatchEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let p = &p / "projection";
        let normal = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let (h, k) = (c.hidden_size, c.patch_size);
        ViltPatchEmbeddings {
            weight: param(
                &p.set_group(DECAY),
                "weight",
                &[h, c.num_channels, k, k],
                normal,
            ),
            bias: param(&p.set_group(NO_DECAY), "bias", &[h], Init::Const(0.0)),
            patch_size: k,
        }
    }

    /// `[batch, channels, height, width]` -> `[batch, hidden, height / patch, width / patch]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let k = self.patch_size;
        pixel_values.conv2d(&self.weight, Some(&self.bias), [k, k], [0, 0], [1, 1], 1)
    }
}

/// The patches one image contributes: indices into its row-major patch grid, and whether
/// each is a valid (image) patch rather than padding. See the module documentation.
fn select_patches(valid: &[bool], slots: usize, train: bool) -> Vec<(i64, bool)> {
    let picked: Vec<i64> = (0..valid.len() as i64)
        .filter(|&i| valid[i as usize])
        .collect();
    let n = picked.len();
    if n >= slots {
        let chosen: Vec<usize> = if train && n > slots {
            let perm = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu))
                .narrow(0, 0, slots as i64)
                .sort(0, false)
                .0;
            Vec::<i64>::try_from(perm)
                .expect("a CPU index tensor")
                .into_iter()
                .map(|i| i as usize)
                .collect()
        } else {
            (0..slots).map(|i| i * n / slots).collect()
        };
        return chosen.into_iter().map(|i| (picked[i], true)).collect();
    }
    let padding: Vec<i64> = (0..valid.len() as i64)
        .filter(|&i| !valid[i as usize])
        .collect();
    let mut out: Vec<(i64, bool)> = picked.into_iter().map(|i| (i, true)).collect();
    // a rectangular mask always leaves enough padding patches; cycling guards any other mask
    out.extend(
        (0..slots - n)
            .filter(|_| !padding.is_empty())
            .map(|j| (padding[j % padding.len()], false)),
    );
    out
}

/// `ViltEmbeddings`: `text_embeddings`, `patch_embeddings`, `cls_token`, the patch
/// `position_embeddings` and the modality `token_type_embeddings`.
#[derive(Debug)]
pub struct ViltEmbeddings {
    /// BERT's embeddings (`TextEmbeddings` in Hugging Face's file).
    text_embeddings: BertEmbeddings,
    cls_token: Tensor,
    patch_embeddings: ViltPatchEmbeddings,
    /// `[1, 1 + grid * grid, hidden]`: the class token's, then the grid's in row-major order.
    position_embeddings: Tensor,
    token_type_embeddings: Embedding,
    grid: i64,
    image_size: i64,
    max_image_length: i64,
    dropout: f64,
}

impl ViltEmbeddings {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let h = c.hidden_size;
        let grid = c.grid();
        let decay = p.set_group(DECAY);
        ViltEmbeddings {
            text_embeddings: BertEmbeddings::with_sizes(
                &p / "text_embeddings",
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
            ),
            // zeros, as transformers creates them (its `_init_weights` leaves them alone)
            cls_token: param(&decay, "cls_token", &[1, 1, h], Init::Const(0.0)),
            patch_embeddings: ViltPatchEmbeddings::new(&p / "patch_embeddings", c),
            position_embeddings: param(
                &decay,
                "position_embeddings",
                &[1, grid * grid + 1, h],
                Init::Const(0.0),
            ),
            token_type_embeddings: Embedding::new(
                &p / "token_type_embeddings",
                c.modality_type_vocab_size,
                h,
                c.initializer_range,
                None,
            ),
            grid,
            image_size: c.image_size,
            max_image_length: c.max_image_length,
            dropout: c.hidden_dropout_prob,
        }
    }

    /// `visual_embed`: patch embeddings plus position embeddings interpolated to each image's
    /// valid region, the class token first. Returns `[batch, 1 + L, hidden]` and the mask
    /// `[batch, 1 + L]` (0 on padding patches).
    pub fn visual_embed(
        &self,
        pixel_values: &Tensor,
        pixel_mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let x = self.patch_embeddings.forward(pixel_values);
        let (b, hidden, ph, pw) = x.size4().expect("patch embeddings are 4-D");
        let device = x.device();
        // the pixel mask at the patch grid, nearest-neighbour as transformers resizes it
        let mask = pixel_mask
            .unsqueeze(1)
            .to_kind(Kind::Float)
            .upsample_nearest2d([ph, pw], None, None)
            .to_kind(Kind::Int64)
            .reshape([b, ph * pw]);
        let mask = Vec::<i64>::try_from(mask.to_device(Device::Cpu).reshape([-1]))
            .expect("an integer mask");
        let n = (ph * pw) as usize;
        let images: Vec<&[i64]> = mask.chunks(n.max(1)).take(b as usize).collect();
        // valid rows (down the first column) and columns (along the first row), as transformers
        // measures the valid region
        let extent: Vec<(i64, i64)> = images
            .iter()
            .map(|m| {
                let h = (0..ph).map(|r| m[(r * pw) as usize]).sum::<i64>();
                let w = (0..pw).map(|c| m[c as usize]).sum::<i64>();
                (h, w)
            })
            .collect();

        // the position grid bilinearly resized to each image's valid region, zero elsewhere
        let g = self.grid;
        let spatial = self
            .position_embeddings
            .narrow(1, 1, g * g)
            .transpose(1, 2)
            .reshape([1, hidden, g, g]);
        let mut resized: HashMap<(i64, i64), Tensor> = HashMap::new();
        let pos: Vec<Tensor> = extent
            .iter()
            .map(|&(h, w)| {
                resized
                    .entry((h, w))
                    .or_insert_with(|| {
                        if h <= 0 || w <= 0 {
                            return Tensor::zeros([1, hidden, ph, pw], (x.kind(), device));
                        }
                        spatial
                            .upsample_bilinear2d([h, w], true, None, None)
                            .constant_pad_nd([0, pw - w, 0, ph - h])
                    })
                    .shallow_clone()
            })
            .collect();
        let pos = Tensor::cat(&pos, 0);
        let tokens = (x.flatten(2, 3).transpose(1, 2) + pos.flatten(2, 3).transpose(1, 2))
            .reshape([b * ph * pw, hidden]);

        let largest = extent.iter().map(|&(h, w)| h * w).max().unwrap_or(0);
        let slots = if self.max_image_length < 0 {
            largest
        } else {
            largest.min(self.max_image_length)
        } as usize;
        let mut index = Vec::with_capacity(b as usize * slots);
        let mut image_mask = Vec::with_capacity(b as usize * slots);
        for (i, m) in images.iter().enumerate() {
            let valid: Vec<bool> = m.iter().map(|&v| v != 0).collect();
            for (patch, is_valid) in select_patches(&valid, slots, train) {
                index.push(i as i64 * n as i64 + patch);
                image_mask.push(is_valid as i64);
            }
        }
        assert_eq!(
            index.len(),
            b as usize * slots,
            "an image has no patch to fill its slots"
        );
        let index = Tensor::from_slice(&index).to_device(device);
        let patches = tokens
            .index_select(0, &index)
            .view([b, slots as i64, hidden]);
        let cls = (&self.cls_token + self.position_embeddings.narrow(1, 0, 1))
            .expand([b, 1, hidden], false);
        let xs = Tensor::cat(&[cls, patches], 1);
        let image_mask = Tensor::from_slice(&image_mask)
            .view([b, slots as i64])
            .to_device(device);
        let image_mask = Tensor::cat(
            &[Tensor::ones([b, 1], (Kind::Int64, device)), image_mask],
            1,
        );
        (dropout(&xs, self.dropout, train), image_mask)
    }

    /// The text tokens then the image tokens, each with its modality embedding, and the joint
    /// attention mask.
    pub fn forward_t(&self, b: &Batch, train: bool) -> (Tensor, Tensor) {
        let text = self
            .text_embeddings
            .forward_t(&b.input_ids, &b.token_type_ids, train);
        let pixel_values = b
            .pixel_values
            .as_ref()
            .expect("ViLT needs pixel_values: every input is a text and an image");
        // transformers' default: the whole image_size x image_size square is image
        let pixel_mask = b.pixel_mask.as_ref().map_or_else(
            || {
                let n = pixel_values.size()[0];
                Tensor::ones(
                    [n, self.image_size, self.image_size],
                    (Kind::Int64, pixel_values.device()),
                )
            },
            Tensor::shallow_clone,
        );
        let (image, image_mask) = self.visual_embed(pixel_values, &pixel_mask, train);
        let modality = &self.token_type_embeddings.weight;
        let text = text + modality.get(0);
        let image = image + modality.get(1);
        let xs = Tensor::cat(&[text, image], 1);
        let mask = Tensor::cat(&[b.attention_mask.to_kind(Kind::Int64), image_mask], 1);
        (xs, mask)
    }
}

/// `ViltLayer`: pre-LayerNorm attention (`attention.attention`, `attention.output.dense`) and
/// MLP (`intermediate.dense`, `output.dense`), each with a residual connection.
#[derive(Debug)]
pub struct ViltLayer {
    attention: SelfAttention,
    attention_output: Linear,
    intermediate: Linear,
    output: Linear,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    act: Activation,
    dropout: f64,
}

impl ViltLayer {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let (h, std, eps) = (c.hidden_size, c.initializer_range, c.layer_norm_eps);
        let attention = &p / "attention";
        ViltLayer {
            attention: SelfAttention::new(
                &attention / "attention",
                c.hidden_size,
                c.num_attention_heads,
                c.attention_probs_dropout_prob,
                c.initializer_range,
                c.qkv_bias,
            ),
            attention_output: Linear::new(&attention / "output" / "dense", h, h, std),
            intermediate: Linear::new(&p / "intermediate" / "dense", h, c.intermediate_size, std),
            output: Linear::new(&p / "output" / "dense", c.intermediate_size, h, std),
            layernorm_before: LayerNorm::new(&p / "layernorm_before", h, eps),
            layernorm_after: LayerNorm::new(&p / "layernorm_after", h, eps),
            act: Activation::from_name(&c.hidden_act).expect("validated config"),
            dropout: c.hidden_dropout_prob,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let attended =
            self.attention
                .forward_t(&self.layernorm_before.forward(xs), Some(mask), train);
        let attended = dropout(
            &self.attention_output.forward(&attended),
            self.dropout,
            train,
        );
        let xs = attended + xs;
        let inner = self.act.apply(
            &self
                .intermediate
                .forward(&self.layernorm_after.forward(&xs)),
        );
        dropout(&self.output.forward(&inner), self.dropout, train) + xs
    }
}

/// `ViltEncoder`: the stack `encoder.layer.N`.
#[derive(Debug)]
pub struct ViltEncoder {
    layers: Vec<Rc<ViltLayer>>,
}

impl ViltEncoder {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        let layer = &p / "layer";
        ViltEncoder {
            layers: (0..c.num_hidden_layers)
                .map(|i| Rc::new(ViltLayer::new(&layer / i, c)))
                .collect(),
        }
    }

    /// `mask`: `[batch, seq]`, 1 for tokens, 0 for padding.
    pub fn forward_t(&self, xs: Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, s) = mask.size2().expect("the mask is [batch, seq]");
        let mask = mask.to_kind(Kind::Bool).view([b, 1, 1, s]);
        let forward = move |layer: &ViltLayer, xs: &Tensor| layer.forward_t(xs, &mask, train);
        checkpointing::stack(&self.layers, xs, train, Rc::new(forward))
    }
}

/// `ViltPooler`: `dense` + tanh over the first (text `[CLS]`) token.
#[derive(Debug)]
pub struct ViltPooler {
    dense: Linear,
}

impl ViltPooler {
    pub fn new(p: nn::Path, c: &Config) -> Self {
        ViltPooler {
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

/// `ViltModel`: `embeddings`, `encoder`, the final `layernorm`, and (unless built without)
/// `pooler`.
#[derive(Debug)]
pub struct ViltModel {
    embeddings: ViltEmbeddings,
    encoder: ViltEncoder,
    layernorm: LayerNorm,
    pooler: Option<ViltPooler>,
}

impl ViltModel {
    /// A ViLT with or without `pooler` (Hugging Face's `add_pooling_layer`).
    pub fn new(p: nn::Path, c: &Config, pooler: bool) -> Self {
        ViltModel {
            embeddings: ViltEmbeddings::new(&p / "embeddings", c),
            encoder: ViltEncoder::new(&p / "encoder", c),
            layernorm: LayerNorm::new(&p / "layernorm", c.hidden_size, c.layer_norm_eps),
            pooler: pooler.then(|| ViltPooler::new(&p / "pooler", c)),
        }
    }

    /// `last_hidden_state` `[batch, text + 1 + L, hidden]` (text tokens, the image class token,
    /// the image tokens) and, with a pooler, `pooler_output`.
    pub fn forward_t(&self, b: &Batch, train: bool) -> (Tensor, Option<Tensor>) {
        let (xs, mask) = self.embeddings.forward_t(b, train);
        let xs = self.encoder.forward_t(xs, &mask, train);
        let xs = self.layernorm.forward(&xs);
        let pooled = self.pooler.as_ref().map(|p| p.forward(&xs));
        (xs, pooled)
    }
}

/// `ViltForQuestionAnswering`: `vilt` and `classifier` (Linear to twice the hidden size,
/// LayerNorm, GELU, Linear to the labels) on the pooled output. The VQA head, used here for
/// any classification of a text and image pair.
#[derive(Debug)]
pub struct ViltForQuestionAnswering {
    pub vilt: ViltModel,
    dense: Linear,
    norm: LayerNorm,
    out: Linear,
}

impl ViltForQuestionAnswering {
    pub fn new(p: nn::Path, c: &Config, num_labels: i64) -> Self {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let classifier = &p / "classifier";
        ViltForQuestionAnswering {
            vilt: ViltModel::new(&p / "vilt", c, true),
            dense: Linear::new(&classifier / 0, h, 2 * h, std),
            // `nn.LayerNorm(2 * hidden)` with torch's default eps, not the config's
            norm: LayerNorm::new(&classifier / 1, 2 * h, 1e-5),
            out: Linear::new(&classifier / 3, 2 * h, num_labels, std),
        }
    }

    /// Model outputs and the logits `[batch, num_labels]`.
    pub fn forward_t(&self, b: &Batch, train: bool) -> (Tensor, Tensor, Tensor) {
        let (xs, pooled) = self.vilt.forward_t(b, train);
        let pooled = pooled.expect("the classifier model has a pooler");
        let hidden = Activation::Gelu.apply(&self.norm.forward(&self.dense.forward(&pooled)));
        let logits = self.out.forward(&hidden);
        (xs, pooled, logits)
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &["vilt"],
    modality: Modality::TextImage,
    base_prefix: "vilt.",
    classifier_class: "ViltForQuestionAnswering",
    image_encoder: None,
    family: Family::Vilt,
    may_be_fresh,
    text_limits,
    // ViLT checkpoints use bert-base-uncased's tokenizer
    vocab_files: Some(VocabFiles::WordPiece),
};

/// Parses and checks a ViLT config.json; errors name the field.
pub fn config(v: &Value) -> Result<Config> {
    let c: Config = serde_json::from_value(v.clone()).map_err(|e| anyhow!("{e}"))?;
    c.validate()?;
    Ok(c)
}

pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let c = config(v)?;
    Ok(match head {
        Head::Classifier(n) => Box::new(ViltForQuestionAnswering::new(p, &c, n as i64)),
        Head::Base { pooler } => Box::new(ViltModel::new(p, &c, pooler)),
    })
}

/// Only a new classification head: every ViLT checkpoint (`ViltModel`, `ViltForMaskedLM`, the
/// task models) has a pooler.
fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_)) && name.starts_with("classifier.")
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let c = config(v)?;
    Ok(TextLimits {
        // bert-base-uncased's [PAD]; `ViltConfig` leaves pad_token_id unset
        pad_token_id: c.pad_token_id.unwrap_or(0),
        max_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
    })
}

impl Model for ViltModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (xs, pooled) = self.forward_t(b, train);
        let mut out = vec![("last_hidden_state".to_string(), xs)];
        if let Some(p) = pooled {
            out.push(("pooler_output".into(), p));
        }
        out
    }
}

impl Model for ViltForQuestionAnswering {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let (xs, pooled, logits) = self.forward_t(b, train);
        vec![
            ("last_hidden_state".into(), xs),
            ("pooler_output".into(), pooled),
            ("logits".into(), logits),
        ]
    }
}

/// config.json of the `vilt-tiny` preset: a small random ViLT that trains on a few CPU cores
/// (hidden size 64, 2 layers, 64x64 images in 16x16 patches, so at most 16 image tokens).
pub fn tiny_config(vocab_size: i64) -> Value {
    json!({
        "architectures": ["ViltModel"],
        "model_type": "vilt",
        "vocab_size": vocab_size,
        "type_vocab_size": 2,
        "modality_type_vocab_size": 2,
        "max_position_embeddings": 64,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "image_size": 64,
        "patch_size": 16,
        "num_channels": 3,
        "qkv_bias": true,
        "max_image_length": -1,
        "tie_word_embeddings": true,
        "num_images": -1,
        "pad_token_id": 0
    })
}

/// preprocessor_config.json of the `vilt-tiny` preset, as `ViltImageProcessor` writes it:
/// shortest edge resized to 64 (bicubic), sides rounded down to multiples of 16, pixels
/// rescaled to [0, 1] and normalised with mean and std 0.5, a batch zero-padded to its largest
/// image with a `pixel_mask`.
pub fn tiny_preprocessor_config() -> Value {
    json!({
        "image_processor_type": "ViltImageProcessor",
        "processor_class": "ViltProcessor",
        "do_resize": true,
        "size": {"shortest_edge": 64},
        "size_divisor": 16,
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": true
    })
}
