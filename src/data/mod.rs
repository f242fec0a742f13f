//! Datasets on disk: formats, validation, the demo, and turning examples into model inputs.

pub mod batch;
pub mod demo;
pub mod formats;
pub mod image;
pub mod resize;
pub mod text;

use crate::protocol::DatasetRef;
use anyhow::{Result, bail};
pub use batch::Batch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One classification example, whatever the file format.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The example's id in its file (kept as text: Hateful Memes ids are numbers, others not).
    pub id: String,
    /// The text to classify.
    pub text: String,
    /// A second text for pair tasks (premise/hypothesis), if the dataset has one.
    pub text_pair: Option<String>,
    /// Image file, relative to the dataset root, if the example has one.
    pub image: Option<PathBuf>,
    /// Label index in `0..num_labels`.
    pub label: usize,
}

/// Split roles a run uses.
pub const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// A dataset read into memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub root: PathBuf,
    pub num_labels: usize,
    pub label_names: Vec<String>,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
}

/// What registration learned about a dataset: stored as JSON in `datasets.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: String,
    pub num_labels: usize,
    pub label_names: Vec<String>,
    pub splits: BTreeMap<String, SplitInfo>,
}

/// One split's file and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// File name, relative to the dataset root.
    pub file: String,
    pub examples: usize,
    /// Examples per label index.
    pub label_counts: Vec<usize>,
}

/// Recognises the format of the folder at `root`; `None` if no known layout matches.
pub fn detect_format(root: &Path) -> Option<&'static str> {
    if formats::hateful_memes::split_files(root).is_ok() {
        return Some(formats::hateful_memes::FORMAT);
    }
    None
}

/// Reads every split of a dataset in the given format.
pub fn load(dataset: &DatasetRef) -> Result<Dataset> {
    let (train, dev, test) = match dataset.format.as_str() {
        formats::hateful_memes::FORMAT => formats::hateful_memes::read(&dataset.root)?,
        other => bail!("unknown dataset format `{other}` (known: hateful_memes)"),
    };
    if train.is_empty() {
        bail!("dataset `{}`: the train split is empty", dataset.name);
    }
    let num_labels = [&train, &dev, &test]
        .iter()
        .flat_map(|s| s.iter().map(|e| e.label + 1))
        .max()
        .unwrap_or(0)
        .max(2);
    Ok(Dataset {
        name: dataset.name.clone(),
        root: dataset.root.clone(),
        num_labels,
        label_names: (0..num_labels).map(|i| i.to_string()).collect(),
        train,
        dev,
        test,
    })
}

/// Reads and validates a dataset folder, returning what the registry stores about it.
pub fn inspect(root: &Path, format: &str) -> Result<DatasetInfo> {
    let ds = load(&DatasetRef {
        name: root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: format.to_string(),
        root: root.to_path_buf(),
    })?;
    let files = match format {
        formats::hateful_memes::FORMAT => formats::hateful_memes::split_files(root)?,
        other => bail!("unknown dataset format `{other}`"),
    };
    let mut splits = BTreeMap::new();
    for ((name, examples), file) in SPLITS.iter().zip([&ds.train, &ds.dev, &ds.test]).zip(files) {
        let mut label_counts = vec![0; ds.num_labels];
        for e in examples.iter() {
            label_counts[e.label] += 1;
        }
        splits.insert(
            name.to_string(),
            SplitInfo {
                file: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                examples: examples.len(),
                label_counts,
            },
        );
    }
    Ok(DatasetInfo {
        format: format.to_string(),
        num_labels: ds.num_labels,
        label_names: ds.label_names,
        splits,
    })
}
