//! Late-fusion and concatenation baselines from "The Hateful Memes Challenge: Detecting Hate
//! Speech in Multimodal Memes" (Kiela et al., 2020; reference code: facebookresearch/mmf,
//! `mmf/models/late_fusion.py` and `concat_bert.py`): a pretrained text encoder and an image
//! encoder side by side.
//!
//! - `concat` ("Concat BERT"): the text pooled output and the image features are concatenated
//!   and classified by an MLP (`classifier.0` Linear, ReLU, dropout, `classifier.3` Linear).
//! - `late` ("Late Fusion"): each modality has its own linear classifier (`text_classifier`,
//!   `image_classifier`); the logits are averaged.
//!
//! The text encoder is any BERT checkpoint (`text_config` is its config.json; weights under
//! `text_model.`), so the demo can pit a pretrained text model against the same model with an
//! image added. The image encoder (weights under `vision_model.`) is either
//! - torchvision's MobileNetV2 (`vision_config` `{"model_type": "torchvision_mobilenet_v2"}`),
//!   pretrained on ImageNet, its 1280 pooled features; or
//! - a small CNN trained from scratch (`{"model_type": "cnn", "channels": [...]}`): 3x3
//!   convolutions with ReLU and 2x2 max pooling, then global average pooling.
//!
//! The image encoder can be frozen for a run (`freeze_image_encoder`): its weights keep their
//! pretrained values and its batch normalisation its running statistics.

use crate::models::bert::{self, BertModel};
use crate::models::layers::{DECAY, Linear, NO_DECAY, dropout, param};
use crate::models::mobilenet::{self, MobileNetV2};
use crate::models::registry::Modality;
use crate::models::{Arch, Batch, Family, Head, Model, TextLimits, VocabFiles};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tch::Tensor;
use tch::nn::{self, Init, Module};

/// The config.json `model_type` of fusion checkpoints.
pub const MODEL_TYPE: &str = "modalbench-fusion";

/// How the two modalities meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    Concat,
    Late,
}

/// config.json of a fusion checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub fusion: Fusion,
    /// The text encoder's own config.json (a BERT).
    pub text_config: Value,
    pub vision_config: VisionConfig,
    /// Width of the concatenation MLP's hidden layer.
    #[serde(default = "default_hidden")]
    pub classifier_hidden_size: i64,
    #[serde(default = "default_dropout")]
    pub classifier_dropout: f64,
}

fn default_hidden() -> i64 {
    256
}
fn default_dropout() -> f64 {
    0.1
}

/// The image encoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type", rename_all = "snake_case")]
pub enum VisionConfig {
    /// A CNN trained from scratch.
    Cnn { channels: Vec<i64> },
    /// torchvision's MobileNetV2.
    #[serde(rename = "torchvision_mobilenet_v2")]
    MobileNetV2 {},
}

/// The image encoder, built.
#[derive(Debug)]
enum Vision {
    Cnn(Cnn),
    MobileNetV2(Box<MobileNetV2>),
}

impl Vision {
    fn out_channels(&self) -> i64 {
        match self {
            Vision::Cnn(c) => c.out_channels,
            Vision::MobileNetV2(_) => mobilenet::FEATURES,
        }
    }

    fn forward(&self, pixels: &Tensor, train: bool) -> Tensor {
        match self {
            Vision::Cnn(c) => c.forward(pixels),
            Vision::MobileNetV2(m) => m.features(pixels, train),
        }
    }
}

/// `vision_model`: 3x3 convolutions with ReLU and 2x2 max pooling, global average pooling.
#[derive(Debug)]
pub struct Cnn {
    layers: Vec<(Tensor, Tensor)>,
    pub out_channels: i64,
}

impl Cnn {
    pub fn new(p: nn::Path, channels: &[i64]) -> Cnn {
        let mut inputs = 3;
        let mut layers = Vec::new();
        for (i, &c) in channels.iter().enumerate() {
            let l = &p / "layers" / i;
            // He initialisation for ReLU layers
            let std = (2.0 / (inputs * 9) as f64).sqrt();
            let w = param(
                &l.set_group(DECAY),
                "weight",
                &[c, inputs, 3, 3],
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            );
            let b = param(&l.set_group(NO_DECAY), "bias", &[c], Init::Const(0.0));
            layers.push((w, b));
            inputs = c;
        }
        Cnn {
            layers,
            out_channels: inputs,
        }
    }

    /// `[batch, 3, H, W]` -> `[batch, channels]`.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let mut xs = pixels.shallow_clone();
        for (w, b) in &self.layers {
            xs = xs
                .conv2d(w, Some(b), [1, 1], [1, 1], [1, 1], 1)
                .relu()
                .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
        }
        xs.mean_dim([-2, -1].as_slice(), false, tch::Kind::Float)
    }
}

/// The heads: concatenation MLP or one linear classifier per modality.
#[derive(Debug)]
enum Heads {
    Concat { first: Linear, last: Linear },
    Late { text: Linear, image: Linear },
}

/// Text encoder + image encoder, optionally with a classification head.
#[derive(Debug)]
pub struct FusionModel {
    text_model: BertModel,
    vision_model: Vision,
    heads: Option<Heads>,
    dropout: f64,
}

impl FusionModel {
    pub fn new(p: nn::Path, c: &Config, labels: Option<i64>) -> Result<FusionModel> {
        let text = bert::config(&c.text_config).context("text_config")?;
        let vision_model = match &c.vision_config {
            VisionConfig::Cnn { channels } => {
                if channels.is_empty() {
                    bail!("vision_config.channels is empty");
                }
                Vision::Cnn(Cnn::new(&p / "vision_model", channels))
            }
            VisionConfig::MobileNetV2 {} => {
                Vision::MobileNetV2(Box::new(MobileNetV2::new(&p / "vision_model", None)))
            }
        };
        let (th, iw, std) = (
            text.hidden_size,
            vision_model.out_channels(),
            text.initializer_range,
        );
        let heads = labels.map(|n| match c.fusion {
            Fusion::Concat => Heads::Concat {
                first: Linear::new(
                    &p / "classifier" / 0,
                    th + iw,
                    c.classifier_hidden_size,
                    std,
                ),
                last: Linear::new(&p / "classifier" / 3, c.classifier_hidden_size, n, std),
            },
            Fusion::Late => Heads::Late {
                text: Linear::new(&p / "text_classifier", th, n, std),
                image: Linear::new(&p / "image_classifier", iw, n, std),
            },
        });
        Ok(FusionModel {
            text_model: BertModel::new(&p / "text_model", &text),
            vision_model,
            heads,
            dropout: c.classifier_dropout,
        })
    }
}

impl Model for FusionModel {
    fn forward(&self, b: &Batch, train: bool) -> Vec<(String, Tensor)> {
        let text =
            self.text_model
                .forward_t(&b.input_ids, &b.attention_mask, &b.token_type_ids, train);
        let pooled = text
            .pooler_output
            .expect("the fusion text encoder has a pooler");
        let pixels = b
            .pixel_values
            .as_ref()
            .expect("a text+image model gets pixel_values");
        let image = self.vision_model.forward(pixels, train);
        let logits = self.heads.as_ref().map(|h| {
            let (t, i) = (
                dropout(&pooled, self.dropout, train),
                dropout(&image, self.dropout, train),
            );
            match h {
                Heads::Concat { first, last } => {
                    let hidden = first.forward(&Tensor::cat(&[t, i], 1)).relu();
                    last.forward(&dropout(&hidden, self.dropout, train))
                }
                Heads::Late { text, image } => (text.forward(&t) + image.forward(&i)) / 2.0,
            }
        });
        let mut out = vec![
            ("text_pooler_output".to_string(), pooled),
            ("image_features".to_string(), image),
        ];
        if let Some(l) = logits {
            out.push(("logits".into(), l));
        }
        out
    }

    fn freeze_image_encoder(&mut self) {
        if let Vision::MobileNetV2(m) = &self.vision_model {
            m.freeze();
        }
    }
}

/// The architecture as the service sees it.
pub static SPEC: Arch = Arch {
    model_types: &[MODEL_TYPE],
    modality: Modality::TextImage,
    base_prefix: "",
    classifier_class: "FusionForSequenceClassification",
    image_encoder: Some("vision_model."),
    family: Family::Fusion,
    may_be_fresh,
    text_limits,
    vocab_files: Some(VocabFiles::WordPiece),
};

fn config(v: &Value) -> Result<Config> {
    serde_json::from_value(v.clone()).map_err(|e| anyhow!("{e}"))
}

pub(crate) fn build(v: &Value, head: Head, p: nn::Path) -> Result<Box<dyn Model>> {
    let labels = match head {
        Head::Classifier(n) => Some(n as i64),
        Head::Base { .. } => None,
    };
    Ok(Box::new(FusionModel::new(p, &config(v)?, labels)?))
}

fn may_be_fresh(name: &str, head: Head) -> bool {
    matches!(head, Head::Classifier(_))
        && ["classifier.", "text_classifier.", "image_classifier."]
            .iter()
            .any(|p| name.starts_with(p))
}

fn text_limits(v: &Value) -> Result<TextLimits> {
    let c = bert::config(&config(v)?.text_config).context("text_config")?;
    Ok(TextLimits {
        pad_token_id: c.pad_token_id.unwrap_or(0),
        max_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
    })
}

/// config.json of a fusion model over the text checkpoint config `text_config`, with the image
/// encoder `vision_config` (`{"model_type": "cnn", "channels": [...]}` or
/// `{"model_type": "torchvision_mobilenet_v2"}`).
pub fn preset_config(fusion: Fusion, text_config: &Value, vision_config: Value) -> Value {
    let mut text = text_config.clone();
    if let Some(o) = text.as_object_mut() {
        o.remove("architectures");
        o.remove("_name_or_path");
    }
    json!({
        "model_type": MODEL_TYPE,
        "architectures": ["FusionModel"],
        "fusion": match fusion { Fusion::Concat => "concat", Fusion::Late => "late" },
        "text_config": text,
        "vision_config": vision_config,
        "classifier_hidden_size": 256,
        "classifier_dropout": 0.1,
    })
}
