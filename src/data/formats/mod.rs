//! Readers for the on-disk layouts datasets are published in, and the `modalbench.toml` that
//! names a folder's format and options.

pub mod hateful_memes;
pub mod manifest;
pub mod news;
pub mod snli_ve;
pub mod vqa;

use super::{Problems, Source, Splits};
use anyhow::{Result, bail};
use std::path::Path;

/// What is wrong with one line, row or entry of a dataset file; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is not JSON.
    #[error("not valid JSON ({0})")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(String),
    /// A field is absent.
    #[error("missing field `{0}`")]
    Missing(String),
    /// A field's value cannot be used; the message says what it must be.
    #[error("{message}")]
    Invalid { field: String, message: String },
}

impl LineError {
    /// `field` has a value that cannot be used, as `message` says.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> LineError {
        LineError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The JSON parser's complaint.
    pub fn not_json(e: serde_json::Error) -> LineError {
        LineError::NotJson(e.to_string())
    }
}

/// A dataset layout.
pub struct Format {
    /// The name registrations and `modalbench.toml` use.
    pub name: &'static str,
    /// Whether a folder has this layout's files.
    pub detect: fn(&Path) -> bool,
    /// Reads every split; bad lines go to `problems`, a missing file is an error.
    pub read: fn(&Source, &mut Problems) -> Result<Splits>,
}

/// Every layout, in detection order.
pub static FORMATS: &[&Format] = &[
    &hateful_memes::FORMAT,
    &snli_ve::FORMAT,
    &vqa::FORMAT,
    &news::FORMAT,
];

/// Names of the known formats.
pub fn names() -> Vec<&'static str> {
    FORMATS.iter().map(|f| f.name).collect()
}

/// The format of a folder's files, if one matches.
pub fn detect(root: &Path) -> Option<&'static str> {
    FORMATS.iter().find(|f| (f.detect)(root)).map(|f| f.name)
}

/// The format called `name`; the error lists the known ones.
pub fn by_name(name: &str) -> Result<&'static Format> {
    match FORMATS.iter().find(|f| f.name == name) {
        Some(f) => Ok(f),
        None => bail!(
            "unknown dataset format `{name}` (known: {})",
            names().join(", ")
        ),
    }
}

/// Reads a dataset with its source's format.
pub fn read(source: &Source, problems: &mut Problems) -> Result<Splits> {
    let o = &source.options;
    if let Some(images) = &o.images {
        let dir = crate::data::paths::inside(&source.root, images)
            .map_err(|e| anyhow::anyhow!("options.images: {e}"))?;
        if !dir.is_dir() {
            anyhow::bail!("options.images: `{}` is not a folder", images.display());
        }
    }
    for (split, file) in o.splits.iter().flatten() {
        crate::data::paths::inside(&source.root, Path::new(file))
            .map_err(|e| anyhow::anyhow!("options.splits.{split}: {e}"))?;
    }
    (by_name(&source.format)?.read)(source, problems)
}

/// `file`, relative to `root` where it is inside it, for messages.
pub fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}
