//! CLIP's config.json (`CLIPConfig` with its `text_config` and `vision_config`) and the
//! config files of the `clip-tiny` preset.

use crate::models::layers::{Activation, ConfigError};
use anyhow::{Result, anyhow};
use serde::Deserialize;
use serde_json::{Value, json};

/// `text_config` of a CLIP config.json; defaults are `CLIPTextConfig`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub pad_token_id: Option<i64>,
    /// 2 selects the legacy pooling rule (the highest id of each row, openai's end-of-text).
    pub eos_token_id: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            pad_token_id: Some(1),
            eos_token_id: 49407,
        }
    }
}

/// `vision_config` of a CLIP config.json; defaults are `CLIPVisionConfig`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            initializer_range: 0.02,
        }
    }
}

/// `config.json` of a CLIP checkpoint; field names are the file's keys, defaults `CLIPConfig`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub projection_dim: i64,
    pub logit_scale_init_value: f64,
    pub initializer_factor: f64,
    /// Dropout of our classification head (not a Hugging Face key); 0.1 when absent.
    pub classifier_dropout: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            initializer_factor: 1.0,
            classifier_dropout: None,
        }
    }
}

/// What one tower's encoder needs to know, whichever the tower: the encoder modules take this
/// instead of a `Config`, since the text and vision towers share them with different widths.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tower {
    pub(super) hidden: i64,
    pub(super) intermediate: i64,
    pub(super) layers: i64,
    pub(super) heads: i64,
    pub(super) eps: f64,
    pub(super) attention_dropout: f64,
    pub(super) act: Activation,
    /// `initializer_factor`.
    pub(super) factor: f64,
}

impl Config {
    /// Checks what the port supports, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (t, v) = (&self.text_config, &self.vision_config);
        for (section, act, hidden, heads) in [
            (
                "text_config",
                &t.hidden_act,
                t.hidden_size,
                t.num_attention_heads,
            ),
            (
                "vision_config",
                &v.hidden_act,
                v.hidden_size,
                v.num_attention_heads,
            ),
        ] {
            Activation::from_name(act)
                .and_then(|_| ConfigError::check_heads(hidden, heads))
                .map_err(|e| e.within(section))?;
        }
        if v.patch_size <= 0 || v.image_size < v.patch_size {
            return Err(ConfigError::NoPatch {
                image: v.image_size.to_string(),
                patch: v.patch_size.to_string(),
            }
            .within("vision_config"));
        }
        Ok(())
    }

    pub(super) fn text_tower(&self) -> Tower {
        let t = &self.text_config;
        Tower {
            hidden: t.hidden_size,
            intermediate: t.intermediate_size,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            eps: t.layer_norm_eps,
            attention_dropout: t.attention_dropout,
            act: Activation::from_name(&t.hidden_act).expect("validated config"),
            factor: self.initializer_factor,
        }
    }

    pub(super) fn vision_tower(&self) -> Tower {
        let v = &self.vision_config;
        Tower {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            eps: v.layer_norm_eps,
            attention_dropout: v.attention_dropout,
            act: Activation::from_name(&v.hidden_act).expect("validated config"),
            factor: self.initializer_factor,
        }
    }
}

/// Parses and checks a CLIP config.json; errors name the field.
pub fn config(v: &Value) -> Result<Config> {
    let c: Config = serde_json::from_value(v.clone()).map_err(|e| anyhow!("{e}"))?;
    c.validate()?;
    Ok(c)
}

/// Name of the tiny CLIP preset.
pub const CLIP_TINY: &str = "clip-tiny";

/// Side of the square images the tiny preset reads.
const TINY_IMAGE_SIZE: i64 = 64;

/// config.json of the `clip-tiny` preset: two 64-wide layers per tower, 16-pixel patches of
/// 64-pixel images (17 positions), small enough to train on two CPU cores. Its tokenizer is a
/// BERT WordPiece one, so `eos_token_id` is `[SEP]`'s id and pooling takes the first `[SEP]`.
pub fn tiny_config(vocab_size: i64, eos_token_id: i64, pad_token_id: i64) -> Value {
    let (hidden, intermediate, layers, heads, projection) = (64, 256, 2, 2, 64);
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": projection,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": 64,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "projection_dim": projection,
            "pad_token_id": pad_token_id,
            // unused by the model; null rather than CLIPTextConfig's 49406, outside the vocabulary
            "bos_token_id": null,
            "eos_token_id": eos_token_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_channels": 3,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 16,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "projection_dim": projection,
        },
    })
}

/// preprocessor_config.json of the `clip-tiny` preset, as `CLIPImageProcessor` writes it:
/// bicubic resize of the shortest edge to 64, centre crop 64x64, rescale by 1/255, normalise
/// with openai's CLIP mean and std.
pub fn tiny_preprocessor_config() -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": TINY_IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    })
}
