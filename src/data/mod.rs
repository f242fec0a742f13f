//! Datasets on disk: formats, validation, the demo, and image preprocessing.
//!
//! A dataset is read from a [`Source`]: its folder, its format and the format's [`Options`]
//! (from the folder's `modalbench.toml`, a registration request, or recognised from the files).
//! Readers report bad lines as [`Problem`]s: a strict read fails with the first 20, a report
//! read skips them and counts them.

pub mod demo;
pub mod formats;
pub mod image;
pub mod loader;
pub mod paths;
pub mod resize;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a model is trained to predict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One label per example; softmax cross-entropy.
    #[default]
    Classification,
    /// Soft scores over the labels (VQA's answer classes); binary cross-entropy, VQA accuracy.
    SoftLabels,
}

impl Task {
    /// The dev metric that picks the best checkpoint and decides early stopping: accuracy, or
    /// VQA accuracy for soft-label tasks.
    pub fn primary_metric(self) -> crate::eval::Metric {
        match self {
            Task::Classification => crate::eval::Metric::Accuracy,
            Task::SoftLabels => crate::eval::Metric::VqaAccuracy,
        }
    }
}

/// One example, whatever the file format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    /// The example's id in its file (kept as text: Hateful Memes ids are numbers, others not).
    pub id: String,
    /// The text to classify.
    pub text: String,
    /// A second text for pair tasks, if the dataset has one.
    pub text_pair: Option<String>,
    /// Image file: absolute, or relative to the dataset's image folder.
    pub image: Option<PathBuf>,
    /// Label index in `0..num_labels`; `None` in a split published without labels.
    pub label: Option<usize>,
    /// Soft scores per label index, for [`Task::SoftLabels`] (VQA: 0.3, 0.6, 0.9, 1.0).
    pub soft_labels: Vec<(usize, f32)>,
    /// The annotators' normalised answers, for VQA accuracy.
    pub answers: Vec<String>,
}

impl Example {
    /// The text, and the second text of a pair task, as a tokenizer takes them.
    pub fn texts(&self) -> (&str, Option<&str>) {
        (&self.text, self.text_pair.as_deref())
    }
}

/// Column names of tabular formats (the news layout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// Column(s) whose values, joined with a space, are the text: `"text"` or
    /// `["headline", "abstract", "caption"]`.
    #[serde(default)]
    pub text: Option<OneOrMany>,
    /// Column holding the image path.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// Column naming each row's split (`train` / `dev` / `test`), when the splits share a file.
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Format options, as `modalbench.toml` or a registration request gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Folder image paths are relative to (SNLI-VE's Flickr30k folder, VQA's COCO folder);
    /// relative to the dataset root; default: the dataset root.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub images: Option<PathBuf>,
    /// Tabular formats: which column is what.
    #[serde(default)]
    pub columns: Option<Columns>,
    /// Label names in index order (otherwise the format's own, or the sorted label values).
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    /// VQA: how many of the most frequent answers become classes (default 3129).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Split files by role (`train`, `dev`, `test`), relative to the root, where the format's
    /// own names do not apply.
    #[serde(default)]
    pub splits: Option<BTreeMap<Split, String>>,
}

/// Where a dataset is and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    /// Format name, e.g. `hateful_memes`.
    pub format: String,
    /// The dataset folder.
    #[schema(value_type = String)]
    pub root: PathBuf,
    #[serde(default)]
    pub options: Options,
}

impl Source {
    /// The folder image paths are relative to.
    pub fn image_dir(&self) -> PathBuf {
        match &self.options.images {
            Some(p) => self.root.join(p),
            None => self.root.clone(),
        }
    }
}

/// Something wrong in a dataset's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// The file, relative to the dataset root where possible.
    pub file: String,
    /// 1-based line (or row) number, where one applies.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Problems collected while reading.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
}

impl Problems {
    /// Records a problem of `file` (shown relative to `root`) at `line`.
    pub fn push(
        &mut self,
        root: &Path,
        file: &Path,
        line: Option<usize>,
        message: impl Into<String>,
    ) {
        let file = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        self.list.push(Problem {
            file,
            line,
            message: message.into(),
        });
    }
}

/// How a read treats bad lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Any problem fails the read, naming the first 20.
    #[default]
    Strict,
    /// Bad lines are skipped and reported.
    Report,
}

/// What a format reader returns.
#[derive(Debug, Default)]
pub struct Splits {
    pub task: Task,
    /// Label names in index order.
    pub label_names: Vec<String>,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    /// The file each split came from, relative to the root (or a description).
    pub files: [String; 3],
}

/// The role of a split: what a run trains on, selects on, and is finally scored on. Named
/// `train`, `dev` and `test` everywhere (files, metric keys, predictions, query parameters).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Split {
    Train,
    Dev,
    /// The default where one is needed: a run's summary is the test split's unless said.
    #[default]
    Test,
}

impl Split {
    /// The three roles, in the order of [`Splits`] and [`Dataset::splits`].
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// Position in [`Split::ALL`] (and in per-split arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is not one of a closed set of names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not a {what}; use {allowed}")]
pub struct UnknownName {
    /// What was given.
    pub given: String,
    /// What kind of name was expected (`split`, `metric key`).
    pub what: &'static str,
    /// The names allowed, as a phrase (`train, dev or test`).
    pub allowed: String,
}

impl UnknownName {
    /// The one of `all` whose `name` is `given`, or the error listing every name.
    pub fn find<T: Copy>(
        given: &str,
        what: &'static str,
        all: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> Result<T, UnknownName> {
        all.iter()
            .copied()
            .find(|&x| name(x) == given)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|&x| name(x)).collect();
                UnknownName::new(given, what, &names)
            })
    }

    /// The error for `given`, listing `allowed` as "a, b or c".
    pub fn new(given: &str, what: &'static str, allowed: &[&str]) -> Self {
        let allowed = match allowed {
            [] => String::new(),
            [one] => one.to_string(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        UnknownName {
            given: given.to_string(),
            what,
            allowed,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Split, UnknownName> {
        UnknownName::find(s, "split", &Split::ALL, Split::as_str)
    }
}

impl TryFrom<String> for Split {
    type Error = UnknownName;
    fn try_from(s: String) -> Result<Split, UnknownName> {
        s.parse()
    }
}

/// A dataset read into memory.
#[derive(Debug)]
pub struct Dataset {
    pub name: String,
    pub source: Source,
    pub task: Task,
    pub label_names: Vec<String>,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    pub files: [String; 3],
    /// Problems skipped by a [`Check::Report`] read.
    pub problems: Vec<Problem>,
}

impl Dataset {
    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }

    /// The three splits with their roles.
    pub fn splits(&self) -> [(Split, &[Example]); 3] {
        [
            (Split::Train, &self.train),
            (Split::Dev, &self.dev),
            (Split::Test, &self.test),
        ]
    }

    /// The examples of one split.
    pub fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }

    /// Where an example's image file is.
    pub fn image_path(&self, e: &Example) -> Option<PathBuf> {
        e.image.as_ref().map(|p| self.source.image_dir().join(p))
    }
}

/// What registration learned about a dataset: stored as JSON in `datasets.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetInfo {
    pub source: Source,
    pub task: Task,
    pub num_labels: usize,
    pub label_names: Vec<String>,
    pub splits: BTreeMap<Split, SplitInfo>,
    /// Problems a report-mode registration skipped (the first 20), and their count.
    #[serde(default)]
    pub problems: Vec<Problem>,
    #[serde(default)]
    pub problem_count: usize,
    /// [`folder_signature`] of the folder when it was read, for start-up registration.
    #[serde(default)]
    pub signature: String,
}

/// Names, sizes and modification times of the files directly in a dataset folder (its split
/// files and manifest): when they are unchanged, the folder need not be read again.
pub fn folder_signature(root: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let t = m
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            m.is_file()
                .then(|| format!("{}:{}:{t}", e.file_name().to_string_lossy(), m.len()))
        })
        .collect();
    files.sort();
    files.join("|")
}

/// One split's file and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitInfo {
    /// File name, relative to the dataset root.
    pub file: String,
    pub examples: usize,
    /// Examples with a label; a split without any is prediction-only.
    pub labeled: usize,
    /// Examples per label index.
    pub label_counts: Vec<usize>,
    /// Examples with an image.
    pub images: usize,
}

/// How many problems an error or a report lists.
pub const SHOWN_PROBLEMS: usize = 20;

/// Recognises the format of the folder at `root`: its `modalbench.toml`, else the first format
/// whose files are there. `None` if neither.
pub fn detect(root: &Path) -> Result<Option<Source>> {
    // an absolute root: the files found in it are named `root/...`, which the confined reads
    // (`paths`) take as relative to the folder when the root is relative
    let root = &std::path::absolute(root)
        .with_context(|| format!("resolving the dataset folder {}", root.display()))?;
    if let Some(source) = formats::manifest::read(root)? {
        return Ok(Some(source));
    }
    Ok(formats::detect(root).map(|format| Source {
        format: format.to_string(),
        root: root.to_path_buf(),
        options: Options::default(),
    }))
}

/// Reads a dataset: every split, checked. A strict read fails on any problem (naming the first
/// 20, with the file, line and field); a report read skips bad lines and keeps them in
/// [`Dataset::problems`]. Referenced images must exist.
pub fn load(name: &str, source: &Source, check: Check) -> Result<Dataset> {
    let mut problems = Problems::default();
    let splits = formats::read(source, &mut problems).with_context(|| {
        format!(
            "dataset `{name}` ({}) at {}",
            source.format,
            source.root.display()
        )
    })?;
    let mut ds = Dataset {
        name: name.to_string(),
        source: source.clone(),
        task: splits.task,
        label_names: splits.label_names,
        train: splits.train,
        dev: splits.dev,
        test: splits.test,
        files: splits.files,
        problems: Vec::new(),
    };
    check_images(&mut ds, &mut problems);
    if ds.label_names.is_empty() {
        problems.push(
            &source.root,
            &source.root,
            None,
            "no labels: no example has a label",
        );
    }
    if check == Check::Strict && !problems.list.is_empty() {
        let n = problems.list.len();
        let shown: Vec<String> = problems
            .list
            .iter()
            .take(SHOWN_PROBLEMS)
            .map(|p| p.to_string())
            .collect();
        bail!(
            "dataset `{name}`: {n} problem{}:\n{}{}",
            if n == 1 { "" } else { "s" },
            shown.join("\n"),
            if n > SHOWN_PROBLEMS {
                format!("\n... and {} more", n - SHOWN_PROBLEMS)
            } else {
                String::new()
            }
        );
    }
    if ds.train.is_empty() {
        bail!("dataset `{name}`: the train split is empty");
    }
    ds.problems = problems.list;
    Ok(ds)
}

/// Drops (and reports) examples whose image file does not exist.
fn check_images(ds: &mut Dataset, problems: &mut Problems) {
    let dir = ds.source.image_dir();
    let root = ds.source.root.clone();
    // the folder resolved once; every image path is checked against it
    let folder = paths::Folder::new(&root).ok();
    for (split, examples) in [
        (Split::Train, &mut ds.train),
        (Split::Dev, &mut ds.dev),
        (Split::Test, &mut ds.test),
    ] {
        let missing: Vec<bool> = examples
            .par_iter()
            .map(|e| {
                e.image
                    .as_ref()
                    .is_some_and(|p| !folder.as_ref().is_some_and(|f| f.is_file(&dir.join(p))))
            })
            .collect();
        if !missing.contains(&true) {
            continue;
        }
        let mut keep = Vec::with_capacity(examples.len());
        for (e, gone) in examples.drain(..).zip(missing) {
            if gone {
                let path = dir.join(e.image.as_ref().expect("checked"));
                // one message for a missing file and for one outside the folder
                problems.push(
                    &root,
                    &path,
                    None,
                    format!(
                        "{split} example `{}`: image not found in the dataset folder",
                        e.id
                    ),
                );
            } else {
                keep.push(e);
            }
        }
        *examples = keep;
    }
}

/// Reads and checks a dataset, returning what the registry stores about it.
pub fn inspect(name: &str, source: &Source, check: Check) -> Result<DatasetInfo> {
    let ds = load(name, source, check)?;
    let mut splits = BTreeMap::new();
    for ((role, examples), file) in ds.splits().into_iter().zip(&ds.files) {
        let mut label_counts = vec![0; ds.num_labels()];
        for l in examples.iter().filter_map(|e| e.label) {
            label_counts[l] += 1;
        }
        splits.insert(
            role,
            SplitInfo {
                file: file.clone(),
                examples: examples.len(),
                labeled: examples.iter().filter(|e| e.label.is_some()).count(),
                label_counts,
                images: examples.iter().filter(|e| e.image.is_some()).count(),
            },
        );
    }
    Ok(DatasetInfo {
        source: ds.source.clone(),
        task: ds.task,
        num_labels: ds.num_labels(),
        label_names: ds.label_names.clone(),
        splits,
        problem_count: ds.problems.len(),
        problems: ds.problems.into_iter().take(SHOWN_PROBLEMS).collect(),
        signature: String::new(),
    })
}

/// The most classes a dataset may have (an integer label must be below it).
pub const MAX_LABELS: usize = 10_000;

/// Label names for integer labels `0..n` (the values themselves), unless `names` are given.
pub fn integer_label_names(max_label: Option<usize>, names: Option<&Vec<String>>) -> Vec<String> {
    match names {
        Some(n) => n.clone(),
        None => (0..max_label.map(|m| (m + 1).max(2)).unwrap_or(0))
            .map(|i| i.to_string())
            .collect(),
    }
}
