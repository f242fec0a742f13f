//! SNLI-VE (Xie et al., 2019, "Visual Entailment"; github.com/necla-ml/SNLI-VE): SNLI with each
//! premise caption replaced by its Flickr30k image. Files `snli_ve_train.jsonl`,
//! `snli_ve_dev.jsonl` and `snli_ve_test.jsonl`, one JSON object per line with the image id
//! (`Flickr30K_ID`, or `Flikr30kID` in the first release, a number or a string, with or
//! without `.jpg`), the hypothesis `sentence2`, `gold_label` and `pairID`. The premise is the
//! image, so `sentence1` (its caption) is not read. Images are `<id>.jpg` in the image folder:
//! the options' `images`, else `flickr30k_images/` where the root has one, else the root.

use super::{Format, LineError, relative};
use crate::data::{Example, Problems, Source, Split, Splits, Task};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The layout.
pub static FORMAT: Format = Format {
    name: "snli_ve",
    detect,
    read,
};

/// The published split files, in role order.
pub const FILES: [&str; 3] = [
    "snli_ve_train.jsonl",
    "snli_ve_dev.jsonl",
    "snli_ve_test.jsonl",
];

/// `gold_label` values, in label-index order.
pub const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// The image folder Flickr30k unpacks to.
pub const IMAGE_FOLDER: &str = "flickr30k_images";

fn detect(root: &Path) -> bool {
    root.join(FILES[0]).is_file()
}

fn read(source: &Source, problems: &mut Problems) -> Result<Splits> {
    let root = &source.root;
    if let Some(names) = &source.options.label_names
        && names.iter().map(String::as_str).ne(LABELS)
    {
        bail!(
            "snli_ve's labels are {} (in that order); `label_names` {names:?} cannot rename them",
            LABELS.join(", ")
        );
    }
    // image paths are relative to the image folder, which is the root unless `images` is given
    let prefix = match source.options.images {
        None if root.join(IMAGE_FOLDER).is_dir() => PathBuf::from(IMAGE_FOLDER),
        _ => PathBuf::new(),
    };
    let mut splits = Splits {
        task: Task::Classification,
        label_names: LABELS.map(String::from).to_vec(),
        ..Default::default()
    };
    for (i, (role, default)) in Split::ALL.into_iter().zip(FILES).enumerate() {
        let given = source.options.splits.as_ref().and_then(|s| s.get(&role));
        let file = root.join(given.map_or(default, String::as_str));
        let examples = read_file(root, &file, &prefix, i == 2, problems)?;
        splits.files[i] = relative(root, &file);
        match i {
            0 => splits.train = examples,
            1 => splits.dev = examples,
            _ => splits.test = examples,
        }
    }
    Ok(splits)
}

/// Reads one split file; bad lines go to `problems` with their line and field.
/// `unlabeled_ok`: a file where no line has a `gold_label` is prediction-only.
fn read_file(
    root: &Path,
    path: &Path,
    prefix: &Path,
    unlabeled_ok: bool,
    problems: &mut Problems,
) -> Result<Vec<Example>> {
    let name = relative(root, path);
    let file = crate::data::paths::open(root, path).with_context(|| format!("opening {name}"))?;
    let mut out = Vec::new();
    let mut unlabeled = Vec::new();
    for (i, line) in crate::data::paths::lines(file).enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, i + 1, prefix) {
            Ok(e) => {
                if e.label.is_none() {
                    unlabeled.push(i + 1);
                }
                out.push(e);
            }
            Err(e) => problems.push(root, path, Some(i + 1), e.to_string()),
        }
    }
    let prediction_only = unlabeled_ok && !out.is_empty() && unlabeled.len() == out.len();
    if !prediction_only && !unlabeled.is_empty() {
        for &line in &unlabeled {
            problems.push(root, path, Some(line), "missing field `gold_label`");
        }
        out.retain(|e| e.label.is_some());
    }
    Ok(out)
}

fn parse_line(line: &str, number: usize, prefix: &Path) -> Result<Example, LineError> {
    let v: Value = serde_json::from_str(line).map_err(LineError::not_json)?;
    if !v.is_object() {
        return Err(LineError::NotAnObject(v.to_string()));
    }
    let (key, image) = match (v.get("Flickr30K_ID"), v.get("Flikr30kID")) {
        (Some(id), _) => ("Flickr30K_ID", id),
        (None, Some(id)) => ("Flikr30kID", id),
        (None, None) => {
            return Err(LineError::invalid(
                "Flickr30K_ID",
                "missing field `Flickr30K_ID` (or `Flikr30kID`)",
            ));
        }
    };
    let image = match image {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) if !s.trim().is_empty() => {
            let s = s.trim();
            s.strip_suffix(".jpg").unwrap_or(s).to_string()
        }
        other => {
            return Err(LineError::invalid(
                key,
                format!(
                    "field `{key}` must be a Flickr30k image id (a number or a string), found {other}"
                ),
            ));
        }
    };
    let text = match v.get("sentence2") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(LineError::invalid(
                "sentence2",
                format!("field `sentence2` must be a string, found {other}"),
            ));
        }
        None => return Err(LineError::Missing("sentence2".into())),
    };
    let label = match v.get("gold_label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if LABELS.contains(&s.as_str()) => {
            LABELS.iter().position(|l| l == s)
        }
        Some(other) => {
            return Err(LineError::invalid(
                "gold_label",
                format!(
                    "field `gold_label` must be one of {}, found {other}",
                    LABELS.join(", ")
                ),
            ));
        }
    };
    let id = match v.get("pairID") {
        None | Some(Value::Null) => number.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(LineError::invalid(
                "pairID",
                format!("field `pairID` must be a string or number, found {other}"),
            ));
        }
    };
    Ok(Example {
        id,
        text,
        image: Some(prefix.join(format!("{image}.jpg"))),
        label,
        ..Default::default()
    })
}
