//! The models root: one checkpoint folder per model, in Hugging Face layout. Inspecting a
//! folder reads config.json and the weights' headers and checks them against the model the
//! config describes, without loading weights; a [`Registry`] keeps the results until the files
//! change.

use crate::models::{self, checkpoint};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Inputs a model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
/// Building a model takes libtorch, so the service, which does not load it, has the worker
/// program inspect folders ([`Registry::with_program`]).
#[derive(Clone)]
pub struct Registry {
    root: PathBuf,
    cache: Arc<Mutex<Cache>>,
    inspector: Inspector,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root)
            .finish()
    }
}

/// Inspects checkpoint folders, one [`ModelInfo`] each in order; an error (the inspecting
/// program did not start) is not kept, so the folders are inspected again next time.
type Inspector = Arc<dyn Fn(&[PathBuf]) -> Result<Vec<ModelInfo>> + Send + Sync>;

type Signature = Vec<(String, u64, Option<SystemTime>)>;
type Cache = HashMap<PathBuf, (Signature, ModelInfo)>;

impl Registry {
    /// The registry of the models under `root`, inspecting in this process.
    pub fn new(root: impl Into<PathBuf>) -> Registry {
        Self::with_inspector(root.into(), Arc::new(|dirs| Ok(inspect_here(dirs))))
    }

    /// The registry of the models under `root`, inspecting with `worker_exe inspect-models`.
    pub fn with_program(root: impl Into<PathBuf>, worker_exe: PathBuf) -> Registry {
        Self::with_inspector(
            root.into(),
            Arc::new(move |dirs| inspect_with(&worker_exe, dirs)),
        )
    }

    fn with_inspector(root: PathBuf, inspector: Inspector) -> Registry {
        Registry {
            root,
            cache: Arc::default(),
            inspector,
        }
    }

    /// Every sub-folder of the root that holds a config.json, sorted by name.
    pub fn scan(&self) -> Vec<ModelInfo> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.join("config.json").is_file())
            .collect();
        let mut out = self.inspect_all(dirs);
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
            .then(|| self.inspect_all(vec![dir]).remove(0))
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

    /// What the registry shows about each of `dirs`: kept inspections whose files are
    /// unchanged, the others inspected (all in one go).
    fn inspect_all(&self, dirs: Vec<PathBuf>) -> Vec<ModelInfo> {
        let sigs: Vec<Signature> = dirs.iter().map(|d| signature(d)).collect();
        let mut out: Vec<Option<ModelInfo>> = {
            let cache = self.lock();
            dirs.iter()
                .zip(&sigs)
                .map(|(d, sig)| match cache.get(d) {
                    Some((s, info)) if s == sig => Some(info.clone()),
                    _ => None,
                })
                .collect()
        };
        let todo: Vec<PathBuf> = dirs
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(d, _)| d.clone())
            .collect();
        if !todo.is_empty() {
            match (self.inspector)(&todo) {
                Ok(infos) => {
                    let mut cache = self.lock();
                    let mut infos = infos.into_iter();
                    for (i, slot) in out.iter_mut().enumerate() {
                        if slot.is_none()
                            && let Some(mut info) = infos.next()
                        {
                            info.path = dirs[i].clone();
                            cache.insert(dirs[i].clone(), (sigs[i].clone(), info.clone()));
                            *slot = Some(info);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "could not inspect the models");
                    for (i, slot) in out.iter_mut().enumerate() {
                        if slot.is_none() {
                            let mut info = unread(&dirs[i]);
                            info.problem = Some(format!("could not be inspected: {e:#}"));
                            *slot = Some(info);
                        }
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every folder inspected"))
            .collect()
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

/// Inspects `dirs` in this process (building their models, so with libtorch).
pub fn inspect_here(dirs: &[PathBuf]) -> Vec<ModelInfo> {
    dirs.iter().map(|d| inspect_uncached(d)).collect()
}

/// Inspects `dirs` with `worker_exe inspect-models`, which prints [`inspect_here`]'s answers as
/// JSON lines.
fn inspect_with(worker_exe: &Path, dirs: &[PathBuf]) -> Result<Vec<ModelInfo>> {
    let out = std::process::Command::new(worker_exe)
        .arg("inspect-models")
        .args(dirs)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting {}", worker_exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} inspect-models: {}; {}",
            worker_exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let infos = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<ModelInfo>, _>>()
        .with_context(|| {
            format!(
                "reading what {} inspect-models printed",
                worker_exe.display()
            )
        })?;
    if infos.len() != dirs.len() {
        bail!(
            "{} inspect-models answered for {} of {} folders",
            worker_exe.display(),
            infos.len(),
            dirs.len()
        );
    }
    Ok(infos)
}

/// What is known of a folder before reading it: its name.
fn unread(dir: &Path) -> ModelInfo {
    ModelInfo {
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
    }
}

fn inspect_uncached(dir: &Path) -> ModelInfo {
    let mut info = unread(dir);
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
