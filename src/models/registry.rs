//! The models root: one checkpoint folder per model, in Hugging Face layout. Listing reads
//! only config.json and the safetensors header, so it is cheap enough to do per request.

use crate::models::checkpoint::tensor_shapes;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Inputs a model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Text only.
    Text,
    /// Text and an image.
    #[serde(rename = "text+image")]
    TextImage,
}

impl Modality {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::TextImage => "text+image",
        }
    }
}

/// `model_type`s the service can build, with their modality.
pub const ARCHITECTURES: [(&str, Modality); 1] = [("bert", Modality::Text)];

/// A checkpoint folder as the registry sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Folder name, the name runs use.
    pub name: String,
    /// `model_type` from config.json.
    pub architecture: Option<String>,
    /// `architectures[0]` from config.json (e.g. `BertModel`).
    pub class_name: Option<String>,
    pub modality: Option<Modality>,
    /// Parameters in model.safetensors (pre-training heads and buffers excluded).
    pub num_parameters: Option<i64>,
    /// Longest input in tokens (`max_position_embeddings`).
    pub max_length: Option<i64>,
    /// Whether runs can use it; if not, `problem` says why.
    pub usable: bool,
    pub problem: Option<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Every sub-folder of `root` that holds a config.json, sorted by name.
pub fn scan(root: &Path) -> Vec<ModelInfo> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<ModelInfo> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| inspect(&p))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The model called `name`, if its folder exists.
pub fn find(root: &Path, name: &str) -> Option<ModelInfo> {
    // names come from users: only plain folder names
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return None;
    }
    let dir = root.join(name);
    dir.join("config.json").is_file().then(|| inspect(&dir))
}

/// Reads what the registry shows about one checkpoint folder.
pub fn inspect(dir: &Path) -> ModelInfo {
    let mut info = ModelInfo {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        architecture: None,
        class_name: None,
        modality: None,
        num_parameters: None,
        max_length: None,
        usable: false,
        problem: None,
        path: dir.to_path_buf(),
    };
    if let Err(problem) = fill(dir, &mut info) {
        info.problem = Some(problem);
    } else {
        info.usable = true;
    }
    info
}

fn fill(dir: &Path, info: &mut ModelInfo) -> Result<(), String> {
    let config: Value = crate::models::read_config(dir).map_err(|e| format!("{e:#}"))?;
    info.class_name = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .map(str::to_string);
    info.max_length = config
        .get("max_position_embeddings")
        .and_then(Value::as_i64);
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or("config.json has no `model_type`")?;
    info.architecture = Some(model_type.to_string());
    let weights = dir.join("model.safetensors");
    if weights.is_file() {
        let shapes = tensor_shapes(&weights).map_err(|e| format!("{e:#}"))?;
        info.num_parameters = Some(
            shapes
                .iter()
                .filter(|(k, _)| !k.ends_with("position_ids") && !k.starts_with("cls."))
                .map(|(_, s)| s.iter().product::<usize>() as i64)
                .sum(),
        );
    }
    let (_, modality) = ARCHITECTURES
        .iter()
        .find(|(t, _)| *t == model_type)
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(t, _)| *t).collect();
            format!(
                "unsupported model_type `{model_type}` (supported: {})",
                known.join(", ")
            )
        })?;
    info.modality = Some(*modality);
    if !weights.is_file() {
        return Err("no model.safetensors".into());
    }
    if !dir.join("tokenizer.json").is_file() {
        return Err("no tokenizer.json".into());
    }
    Ok(())
}
