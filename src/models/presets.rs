//! Built-in presets: small randomly initialised models for CPU work and tests, written out as
//! ordinary checkpoint folders so they load through the same path as downloaded ones.

use crate::models::{Arch, Head, checkpoint, clip, flava, fusion, vilt};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use tch::nn::VarStore;

/// Name of the tiny BERT preset.
pub const BERT_TINY: &str = "bert-tiny";
/// Name of the tiny ViLT preset.
pub const VILT_TINY: &str = "vilt-tiny";

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Common English words given whole-word tokens; everything else is spelled out in characters.
const WORDS: &str = "the of and to a in is it you that he was for on are with as i his they be at one \
have this from or had by word but what some we can out other were all there when up use your how \
said an each she which do their time if will way about many then them write would like so these her \
long make thing see him two has look more day could go come did number sound no most people my over \
know water than call first who may down side been now find any new work part take get place made live \
where after back little only round man year came show every good me give our under name very through \
just form sentence great think say help low line differ turn cause much mean before move right boy old \
too same tell does set three want air well also play small end put home read hand port large spell add \
even land here must big high such follow act why ask men change went light kind off need house picture \
try us again animal point mother world near build self earth father head stand own page should country \
found answer school grow study still learn plant cover food sun four between state keep eye never last \
let thought city tree cross farm hard start might story saw far sea draw left late run while press close \
night real life few north open seem together next white children begin got walk example ease paper group \
always music those both mark often letter until mile river car feet care second book carry took science \
eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main \
enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct \
pose leave song measure door product black short numeral class wind question happen complete ship area \
half rock order fire south problem piece told knew pass since top whole king space heard best hour better \
true during hundred five remember step early hold west ground interest reach fast verb sing listen six \
table travel less morning ten simple several vowel toward war lay against pattern slow center love person \
money serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall \
lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty drive \
stood contain front teach week final gave green oh quick develop ocean warm free minute strong special \
mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object \
decide surface deep moon island foot system busy test record boat common gold possible plane stead dry \
wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant \
fill east paint language among news team bank market government minister match goal price vote";

/// The preset's WordPiece vocabulary: special tokens, single characters (as word starts and as
/// `##` continuations) and the common words.
fn vocabulary() -> Vec<String> {
    let mut vocab: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()/&%$#@*+=";
    vocab.extend(chars.chars().map(|c| c.to_string()));
    vocab.extend(
        chars
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| format!("##{c}")),
    );
    for w in WORDS.split_whitespace() {
        if !vocab.iter().any(|v| v == w) {
            vocab.push(w.to_string());
        }
    }
    vocab
}

/// A BERT-style `tokenizer.json` (lower-casing, WordPiece) over `vocab`.
fn tokenizer_json(vocab: &[String]) -> Value {
    let id = |t: &str| {
        vocab
            .iter()
            .position(|v| v == t)
            .expect("special token in vocab")
    };
    let added: Vec<Value> = SPECIALS
        .iter()
        .map(|t| {
            json!({"id": id(t), "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0)],
            "pair": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0), seq("B", 1), special("[SEP]", 1)],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [id("[CLS]")], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [id("[SEP]")], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {
            "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect::<serde_json::Map<_, _>>()
        }
    })
}

/// config.json of `bert-tiny`: 2 layers, hidden size 64.
fn bert_tiny_config(vocab_size: i64) -> Value {
    json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    })
}

/// Writes a preset with random weights (seed 0) for `config` (whose `model_type` picks the
/// architecture; saved as the base model, so that fine-tuning adds a head), the preset WordPiece
/// tokenizer, and for text+image models `preprocessor`.
fn write_random(dir: &Path, config: Value, preprocessor: Option<Value>) -> Result<()> {
    let model_type = config["model_type"]
        .as_str()
        .context("preset config without model_type")?;
    let arch = Arch::from_model_type(model_type)?;
    tch::manual_seed(0);
    let vs = VarStore::new(tch::Device::Cpu);
    let _model = arch.build(&config, Head::Base { pooler: true }, vs.root())?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let vocab = vocabulary();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer_json(&vocab))?,
    )?;
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n")?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "BertTokenizer", "do_lower_case": true, "model_max_length": 512}"#,
    )?;
    if let Some(p) = preprocessor {
        std::fs::write(
            dir.join("preprocessor_config.json"),
            serde_json::to_string_pretty(&p)?,
        )?;
    }
    checkpoint::save_safetensors(&vs, &dir.join("model.safetensors"))
}

/// Writes the `bert-tiny` checkpoint to `dir`.
pub fn write_bert_tiny(dir: &Path) -> Result<()> {
    write_random(dir, bert_tiny_config(vocabulary().len() as i64), None)
}

/// Id of a special token of the preset vocabulary.
fn special(token: &str) -> i64 {
    SPECIALS
        .iter()
        .position(|t| *t == token)
        .expect("a preset special token") as i64
}

/// Name of the concatenation baseline over the real MiniLM-L6 and a CNN from scratch.
pub const FUSION_MINILM: &str = "fusion-minilm";
/// Name of the late-fusion baseline over the real MiniLM-L6 and a CNN from scratch.
pub const FUSION_LATE_MINILM: &str = "fusion-late-minilm";
/// Name of the concatenation baseline over the real MiniLM-L6 and the ImageNet MobileNetV2.
pub const FUSION_MOBILENET: &str = "fusion-mobilenet";
/// Name of the late-fusion baseline over the real MiniLM-L6 and the ImageNet MobileNetV2.
pub const FUSION_LATE_MOBILENET: &str = "fusion-late-mobilenet";
/// The text checkpoint the fusion presets start from.
const MINILM: &str = "minilm-l6";
/// The folder of torchvision's ImageNet MobileNetV2 weights (the setup step installs them).
pub const MOBILENET_DIR: &str = "mobilenet-v2";
/// torchvision's file of those weights.
pub const MOBILENET_FILE: &str = "mobilenet_v2-b0353104.pth";
/// Side of the square images the MobileNetV2 presets take.
pub const MOBILENET_IMAGE_SIZE: u32 = 96;

/// `preprocessor_config.json` of a preset: resized to `size` x `size` with Pillow filter
/// `resample` (2 bilinear, 3 bicubic), ImageNet statistics.
fn image_preprocessor(size: u32, resample: u8) -> Value {
    json!({
        "image_processor_type": "BaseImageProcessor",
        "do_resize": true,
        "size": {"height": size, "width": size},
        "resample": resample,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225]
    })
}

/// The image encoder a fusion preset starts from.
#[derive(Debug, Clone, Copy)]
enum VisionStart {
    /// A small CNN, randomly initialised, for 64x64 images.
    Scratch,
    /// torchvision's ImageNet MobileNetV2, for [`MOBILENET_IMAGE_SIZE`] images.
    MobileNetV2,
}

/// Writes a fusion preset: the MiniLM-L6 checkpoint of `models_dir` as the text encoder (its
/// weights under `text_model.`, its tokenizer files), and as the image encoder (under
/// `vision_model.`) a CNN from scratch or the pretrained MobileNetV2 of `models_dir`.
fn write_fusion(
    dir: &Path,
    models_dir: &Path,
    kind: fusion::Fusion,
    vision: VisionStart,
) -> Result<()> {
    let text_dir = models_dir.join(MINILM);
    let text_config = crate::models::read_config(&text_dir)?;
    let (vision_config, preprocessor, mut pretrained) = match vision {
        VisionStart::Scratch => (
            json!({"model_type": "cnn", "channels": [16, 32, 64]}),
            image_preprocessor(64, 3),
            Vec::new(),
        ),
        VisionStart::MobileNetV2 => {
            let file = models_dir.join(MOBILENET_DIR).join(MOBILENET_FILE);
            let tensors = checkpoint::read_torch_bin(&file)?;
            let features: Vec<(String, tch::Tensor)> = tensors
                .into_iter()
                .filter(|(k, _)| k.starts_with("features.") && !k.ends_with("num_batches_tracked"))
                .map(|(k, t)| (format!("vision_model.{k}"), t))
                .collect();
            (
                json!({"model_type": "torchvision_mobilenet_v2"}),
                image_preprocessor(MOBILENET_IMAGE_SIZE, 2),
                features,
            )
        }
    };
    let config = fusion::preset_config(kind, &text_config, vision_config);
    tch::manual_seed(0);
    let vs = VarStore::new(tch::Device::Cpu);
    let c: fusion::Config = serde_json::from_value(config.clone())?;
    let _model = fusion::FusionModel::new(vs.root(), &c, None)?;
    let built = vs.variables();
    for (k, t) in &pretrained {
        match built.get(k) {
            Some(b) if b.size() == t.size() => {}
            Some(b) => anyhow::bail!(
                "{k}: {:?} in the weights, {:?} in the model",
                t.size(),
                b.size()
            ),
            None => anyhow::bail!("{k} is not a parameter of the model"),
        }
    }
    let text = checkpoint::read_tensors(&text_dir)?;
    pretrained.extend(
        text.into_iter()
            .filter(|(k, _)| !k.ends_with("position_ids"))
            .map(|(k, t)| (format!("text_model.{k}"), t)),
    );
    let mut named: Vec<(String, tch::Tensor)> = built
        .into_iter()
        .filter(|(k, _)| !pretrained.iter().any(|(p, _)| p == k))
        .collect();
    named.extend(pretrained);
    named.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(
        dir.join("preprocessor_config.json"),
        serde_json::to_string_pretty(&preprocessor)?,
    )?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        if text_dir.join(f).is_file() {
            std::fs::copy(text_dir.join(f), dir.join(f))?;
        }
    }
    super::checkpoint::write_safetensors(&named, &dir.join("model.safetensors"))
}

/// The MiniLM checkpoint's weights (folder, file).
const MINILM_WEIGHTS: (&str, &str) = (MINILM, "model.safetensors");
/// The MobileNetV2 weights (folder, file).
const MOBILENET_WEIGHTS: (&str, &str) = (MOBILENET_DIR, MOBILENET_FILE);

/// How a preset is made. The table of presets holds these rather than writer functions, so
/// that the service, which reads the table but writes no weights, does not link libtorch.
#[derive(Debug, Clone, Copy)]
enum Recipe {
    BertTiny,
    ClipTiny,
    ViltTiny,
    FlavaTiny,
    /// MiniLM-L6 with an image encoder, joined by `Fusion`.
    Fusion(fusion::Fusion, VisionStart),
}

impl Recipe {
    /// The files (folder, file name) of the models root it is built from.
    fn requires(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Recipe::Fusion(_, VisionStart::Scratch) => &[MINILM_WEIGHTS],
            Recipe::Fusion(_, VisionStart::MobileNetV2) => &[MINILM_WEIGHTS, MOBILENET_WEIGHTS],
            _ => &[],
        }
    }

    /// Writes the preset into `dir`, from the checkpoints of `models`.
    fn write(self, dir: &Path, models: &Path) -> Result<()> {
        match self {
            Recipe::BertTiny => write_bert_tiny(dir),
            Recipe::ClipTiny => {
                // the WordPiece vocabulary's [SEP] ends a text, so CLIP pools at it
                let config = clip::tiny_config(
                    vocabulary().len() as i64,
                    special("[SEP]"),
                    special("[PAD]"),
                );
                write_random(dir, config, Some(clip::tiny_preprocessor_config()))
            }
            Recipe::ViltTiny => write_random(
                dir,
                vilt::tiny_config(vocabulary().len() as i64),
                Some(vilt::tiny_preprocessor_config()),
            ),
            Recipe::FlavaTiny => write_random(
                dir,
                flava::tiny_config(vocabulary().len() as i64),
                Some(flava::tiny_preprocessor_config()),
            ),
            Recipe::Fusion(kind, vision) => write_fusion(dir, models, kind, vision),
        }
    }
}

/// The presets by name.
const PRESETS: [(&str, Recipe); 8] = [
    (BERT_TINY, Recipe::BertTiny),
    (clip::CLIP_TINY, Recipe::ClipTiny),
    (VILT_TINY, Recipe::ViltTiny),
    (flava::FLAVA_TINY, Recipe::FlavaTiny),
    (
        FUSION_MINILM,
        Recipe::Fusion(fusion::Fusion::Concat, VisionStart::Scratch),
    ),
    (
        FUSION_LATE_MINILM,
        Recipe::Fusion(fusion::Fusion::Late, VisionStart::Scratch),
    ),
    (
        FUSION_MOBILENET,
        Recipe::Fusion(fusion::Fusion::Concat, VisionStart::MobileNetV2),
    ),
    (
        FUSION_LATE_MOBILENET,
        Recipe::Fusion(fusion::Fusion::Late, VisionStart::MobileNetV2),
    ),
];

/// The presets missing from `models_dir` whose source weights are there: what
/// [`ensure_presets`] would write. Reads no weights (the service, which does not load
/// libtorch, asks this before starting `modalbench-worker presets`).
pub fn missing(models_dir: &Path) -> Vec<&'static str> {
    missing_recipes(models_dir).map(|(name, _)| name).collect()
}

fn missing_recipes(models_dir: &Path) -> impl Iterator<Item = (&'static str, Recipe)> + '_ {
    PRESETS.into_iter().filter(|(name, recipe)| {
        !models_dir.join(name).exists()
            && recipe
                .requires()
                .iter()
                .all(|(d, f)| models_dir.join(d).join(f).is_file())
    })
}

/// Writes every preset missing from `models_dir` whose source weights are there. Each is
/// written to a temporary folder and renamed into place, so an interrupted write leaves
/// nothing half-made. Returns the names written.
pub fn ensure_presets(models_dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (name, recipe) in missing_recipes(models_dir) {
        let dest = models_dir.join(name);
        let tmp = models_dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        recipe
            .write(&tmp, models_dir)
            .with_context(|| format!("writing preset {name}"))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("installing preset {name}"))?;
        written.push(name.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_preset_loads_as_a_bert_checkpoint_and_tokenizes_unknown_words() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ensure_presets(dir.path()).unwrap(),
            [BERT_TINY, clip::CLIP_TINY, VILT_TINY, flava::FLAVA_TINY],
            "without minilm-l6, no fusion presets"
        );
        assert!(
            ensure_presets(dir.path()).unwrap().is_empty(),
            "second call writes nothing"
        );
        let p = dir.path().join(BERT_TINY);
        let enc = crate::models::tokenizer::TextEncoder::from_file(&p.join("tokenizer.json"), 16)
            .unwrap();
        let ids = &enc.encode([("The team scored, zyx!", None)]).unwrap()[0].ids;
        let vocab = vocabulary();
        let toks: Vec<&str> = ids.iter().map(|&i| vocab[i as usize].as_str()).collect();
        assert_eq!(
            toks,
            [
                "[CLS]", "the", "team", "s", "##c", "##o", "##r", "##e", "##d", ",", "z", "##y",
                "##x", "!", "[SEP]"
            ]
        );
        let m = crate::models::load(&p, Some(3), tch::Device::Cpu).unwrap();
        assert_eq!(m.report.fresh, vec!["classifier.bias", "classifier.weight"]);
    }
}
