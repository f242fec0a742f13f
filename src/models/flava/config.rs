//! FLAVA's `config.json` (`FlavaConfig` and its three sub-configs, Hugging Face
//! transformers `models/flava/configuration_flava.py`) and the `flava-tiny` preset's config
//! files.

use crate::models::layers::{Activation, ConfigError};
use serde::Deserialize;
use serde_json::{Value, json};

/// `image_size` / `patch_size`: one number for a square, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Square(i64),
    HeightWidth([i64; 2]),
}

impl Size {
    /// (height, width).
    pub fn hw(self) -> (i64, i64) {
        match self {
            Size::Square(s) => (s, s),
            Size::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// `text_config` (`FlavaTextConfig`; missing keys take its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub type_vocab_size: i64,
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
    pub pad_token_id: Option<i64>,
    pub qkv_bias: bool,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 30522,
            type_vocab_size: 2,
            max_position_embeddings: 512,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            qkv_bias: true,
        }
    }
}

/// `image_config` (`FlavaImageConfig`; missing keys take its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub image_size: Size,
    pub patch_size: Size,
    pub num_channels: i64,
    pub qkv_bias: bool,
    /// Whether the embeddings have a `mask_token` (used in pre-training only).
    pub mask_token: bool,
    /// Size of the image codebook's vocabulary (pre-training heads only).
    pub vocab_size: i64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size: Size::Square(224),
            patch_size: Size::Square(16),
            num_channels: 3,
            qkv_bias: true,
            mask_token: true,
            vocab_size: 8192,
        }
    }
}

/// `multimodal_config` (`FlavaMultimodalConfig`; missing keys take its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MultimodalConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    /// Whether the multimodal encoder prepends its own CLS token.
    pub use_cls_token: bool,
}

impl Default for MultimodalConfig {
    fn default() -> Self {
        MultimodalConfig {
            hidden_size: 768,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            qkv_bias: true,
            use_cls_token: true,
        }
    }
}

/// `config.json` of a FLAVA checkpoint (`FlavaConfig`); field names are the file's keys.
/// `image_codebook_config` is ignored: the codebook only makes pre-training targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub text_config: TextConfig,
    pub image_config: ImageConfig,
    pub multimodal_config: MultimodalConfig,
    /// Width of the pre-training heads (unused here).
    pub hidden_size: i64,
    pub layer_norm_eps: f64,
    /// Width of `image_projection` / `text_projection` (the contrastive embeddings).
    pub projection_dim: i64,
    pub logit_scale_init_value: f64,
    /// Initialisation of every weight: Hugging Face initialises `FlavaModel` from the top-level
    /// config.
    pub initializer_range: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            text_config: TextConfig::default(),
            image_config: ImageConfig::default(),
            multimodal_config: MultimodalConfig::default(),
            hidden_size: 768,
            layer_norm_eps: 1e-12,
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
            initializer_range: 0.02,
        }
    }
}

/// What one transformer stack (`FlavaEncoder`, its layers and pooler) needs of a sub-config.
#[derive(Debug, Clone)]
pub struct EncoderDims {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    /// Standard deviation of the weights' initialisation.
    pub std: f64,
}

impl EncoderDims {
    #[allow(clippy::too_many_arguments)]
    fn checked(
        section: &'static str,
        hidden_size: i64,
        num_hidden_layers: i64,
        num_attention_heads: i64,
        intermediate_size: i64,
        hidden_act: &str,
        dropouts: (f64, f64),
        layer_norm_eps: f64,
        qkv_bias: bool,
        std: f64,
    ) -> Result<EncoderDims, ConfigError> {
        let act = Activation::from_name(hidden_act).map_err(|e| e.within(section))?;
        ConfigError::check_heads(hidden_size, num_attention_heads)
            .map_err(|e| e.within(section))?;
        Ok(EncoderDims {
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            act,
            hidden_dropout_prob: dropouts.0,
            attention_probs_dropout_prob: dropouts.1,
            layer_norm_eps,
            qkv_bias,
            std,
        })
    }
}

impl Config {
    /// The text encoder's shape.
    pub fn text_dims(&self) -> Result<EncoderDims, ConfigError> {
        let t = &self.text_config;
        EncoderDims::checked(
            "text_config",
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.intermediate_size,
            &t.hidden_act,
            (t.hidden_dropout_prob, t.attention_probs_dropout_prob),
            t.layer_norm_eps,
            t.qkv_bias,
            self.initializer_range,
        )
    }

    /// The image encoder's shape.
    pub fn image_dims(&self) -> Result<EncoderDims, ConfigError> {
        let i = &self.image_config;
        EncoderDims::checked(
            "image_config",
            i.hidden_size,
            i.num_hidden_layers,
            i.num_attention_heads,
            i.intermediate_size,
            &i.hidden_act,
            (i.hidden_dropout_prob, i.attention_probs_dropout_prob),
            i.layer_norm_eps,
            i.qkv_bias,
            self.initializer_range,
        )
    }

    /// The multimodal encoder's shape.
    pub fn multimodal_dims(&self) -> Result<EncoderDims, ConfigError> {
        let m = &self.multimodal_config;
        EncoderDims::checked(
            "multimodal_config",
            m.hidden_size,
            m.num_hidden_layers,
            m.num_attention_heads,
            m.intermediate_size,
            &m.hidden_act,
            (m.hidden_dropout_prob, m.attention_probs_dropout_prob),
            m.layer_norm_eps,
            m.qkv_bias,
            self.initializer_range,
        )
    }

    /// Patches along (height, width).
    pub fn patch_grid(&self) -> (i64, i64) {
        let (h, w) = self.image_config.image_size.hw();
        let (ph, pw) = self.image_config.patch_size.hw();
        (h / ph, w / pw)
    }

    /// Checks what the port supports, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.text_dims()?;
        self.image_dims()?;
        self.multimodal_dims()?;
        let i = &self.image_config;
        let ((h, w), (ph, pw)) = (i.image_size.hw(), i.patch_size.hw());
        if ph <= 0 || pw <= 0 || h < ph || w < pw {
            return Err(ConfigError::NoPatch {
                image: format!("{h}x{w}"),
                patch: format!("{ph}x{pw}"),
            }
            .within("image_config"));
        }
        Ok(())
    }
}

/// Name of the tiny FLAVA preset.
pub const FLAVA_TINY: &str = "flava-tiny";

/// config.json of `flava-tiny`: every encoder hidden 64, 2 layers, 2 heads (as `bert-tiny`),
/// 64x64 images in 16x16 patches (16 patches), 64 text positions; small enough to fine-tune
/// on two CPU cores. `vocab_size`: the tokenizer's.
pub fn tiny_config(vocab_size: i64) -> Value {
    let encoder = json!({
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "qkv_bias": true
    });
    let with = |extra: Value| {
        let mut v = encoder.clone();
        v.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        v
    };
    json!({
        "architectures": ["FlavaModel"],
        "model_type": "flava",
        "text_config": with(json!({
            "model_type": "flava_text_model",
            "vocab_size": vocab_size,
            "type_vocab_size": 2,
            "max_position_embeddings": 64,
            "pad_token_id": 0
        })),
        "image_config": with(json!({
            "model_type": "flava_image_model",
            "image_size": 64,
            "patch_size": 16,
            "num_channels": 3,
            "mask_token": true,
            "vocab_size": 8192
        })),
        "multimodal_config": with(json!({
            "model_type": "flava_multimodal_model",
            "use_cls_token": true
        })),
        // no codebook: it only makes pre-training targets, and its default is large
        "init_codebook": false,
        "hidden_size": 64,
        "projection_dim": 64,
        "logit_scale_init_value": 2.6592,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12
    })
}

/// preprocessor_config.json of `flava-tiny`, as `FlavaImageProcessor` writes it for 64x64:
/// bicubic resize to 64x64, center crop 64, rescale by 1/255, normalise with FLAVA's (CLIP's)
/// mean and std.
pub fn tiny_preprocessor_config() -> Value {
    json!({
        "image_processor_type": "FlavaImageProcessor",
        "do_resize": true,
        "size": {"height": 64, "width": 64},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": 64, "width": 64},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "return_image_mask": false,
        "return_codebook_pixels": false
    })
}
