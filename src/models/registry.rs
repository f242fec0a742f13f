//! The models root: one checkpoint folder per model, in Hugging Face layout. Inspecting a
//! folder reads config.json and the weights' headers and checks them against the model the
//! config describes, without loading weights; a [`Registry`] keeps the results until the files
//! change.

use crate::models::{self, checkpoint};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Inputs a model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// A checkpoint folder as the registry sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// The models root and what is known about its folders. Inspections are kept until a
/// folder's files change; clones share them.
///
/// Inspecting reads files, safetensors headers and tokenizers and builds a shapes-only model:
/// the plain methods block, so async code calls the `_async` ones (or uses the blocking pool).
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

type Signature = Vec<(String, u64, Option<SystemTime>)>;
type Cache = HashMap<PathBuf, (Signature, ModelInfo)>;

impl Registry {
    /// The registry of the models under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Registry {
        Registry {
            root: root.into(),
            cache: Arc::default(),
        }
    }

    /// Every sub-folder of the root that holds a config.json, sorted by name.
    pub fn scan(&self) -> Vec<ModelInfo> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<ModelInfo> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.join("config.json").is_file())
            .map(|p| self.inspect(&p))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The model called `name`, if its folder exists.
    pub fn find(&self, name: &str) -> Option<ModelInfo> {
        // names come from users: only plain folder names
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return None;
        }
        let dir = self.root.join(name);
        dir.join("config.json")
            .is_file()
            .then(|| self.inspect(&dir))
    }

    /// [`Registry::scan`] on the blocking pool.
    pub async fn scan_async(&self) -> anyhow::Result<Vec<ModelInfo>> {
        let this = self.clone();
        Ok(tokio::task::spawn_blocking(move || this.scan()).await?)
    }

    /// [`Registry::find`] on the blocking pool.
    pub async fn find_async(&self, name: &str) -> anyhow::Result<Option<ModelInfo>> {
        let (this, name) = (self.clone(), name.to_string());
        Ok(tokio::task::spawn_blocking(move || this.find(&name)).await?)
    }

    /// Reads what the registry shows about one checkpoint folder.
    pub fn inspect(&self, dir: &Path) -> ModelInfo {
        let sig = signature(dir);
        if let Some((s, info)) = self.lock().get(dir)
            && *s == sig
        {
            return info.clone();
        }
        let info = inspect_uncached(dir);
        self.lock().insert(dir.to_path_buf(), (sig, info.clone()));
        info
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Size and modification time of the files an inspection reads: when they change, the folder
/// is inspected again.
fn signature(dir: &Path) -> Signature {
    let mut sig: Signature = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().ok(),
                )
            })
        })
        .collect();
    sig.sort();
    sig
}

fn inspect_uncached(dir: &Path) -> ModelInfo {
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
    if let Ok(config) = models::read_config(dir) {
        info.architecture = config
            .get("model_type")
            .and_then(Value::as_str)
            .map(str::to_string);
        info.class_name = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Ok(shapes) = checkpoint::read_shapes(dir) {
        info.num_parameters = Some(
            shapes
                .iter()
                .filter(|(k, _)| {
                    !k.ends_with("position_ids")
                        && !k.starts_with("cls.")
                        && !k.starts_with("lm_head.")
                })
                .map(|(_, s)| s.iter().product::<i64>())
                .sum(),
        );
    }
    match models::check(dir) {
        Ok(ckpt) => {
            info.modality = Some(ckpt.arch.modality);
            info.max_length = ckpt.max_length().ok();
            info.usable = true;
        }
        Err(e) => info.problem = Some(format!("{e:#}")),
    }
    info
}
