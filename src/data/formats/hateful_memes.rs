//! The Hateful Memes layout (Kiela et al., 2020): a folder with `img/`, `train.jsonl`, a dev
//! file (`dev_seen.jsonl`, `dev_unseen.jsonl` or `dev.jsonl`) and a test file
//! (`test_seen.jsonl`, `test_unseen.jsonl` or `test.jsonl`); one JSON object per line with
//! `id`, `img`, `text` and `label`. A test file may come without labels: that split is then
//! prediction-only. Label names come from `modalbench.toml` (`label_names`), else they are the
//! integer values.

use super::{Format, LineError, relative};
use crate::data::{Example, Problems, Source, Split, Splits, Task, integer_label_names};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The layout.
pub static FORMAT: Format = Format {
    name: "hateful_memes",
    detect,
    read,
};

const DEV_FILES: [&str; 3] = ["dev_seen.jsonl", "dev_unseen.jsonl", "dev.jsonl"];
const TEST_FILES: [&str; 3] = ["test_seen.jsonl", "test_unseen.jsonl", "test.jsonl"];

fn detect(root: &Path) -> bool {
    root.join("train.jsonl").is_file()
        && DEV_FILES.iter().any(|f| root.join(f).is_file())
        && TEST_FILES.iter().any(|f| root.join(f).is_file())
}

/// The train, dev and test files: the options' `splits` where given, else the first of the
/// published names that exists.
pub fn split_files(source: &Source) -> Result<[PathBuf; 3]> {
    let root = &source.root;
    let given = |role: Split| {
        source
            .options
            .splits
            .as_ref()
            .and_then(|s| s.get(&role))
            .map(|f| root.join(f))
    };
    let pick = |role: Split, names: &[&str]| -> Result<PathBuf> {
        if let Some(f) = given(role) {
            return Ok(f);
        }
        names
            .iter()
            .map(|n| root.join(n))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: no {role} file (one of {})",
                    root.display(),
                    names.join(", ")
                )
            })
    };
    Ok([
        pick(Split::Train, &["train.jsonl"])?,
        pick(Split::Dev, &DEV_FILES)?,
        pick(Split::Test, &TEST_FILES)?,
    ])
}

fn read(source: &Source, problems: &mut Problems) -> Result<Splits> {
    let files = split_files(source)?;
    let mut splits = Splits {
        task: Task::Classification,
        ..Default::default()
    };
    let mut max_label = None;
    for (i, file) in files.iter().enumerate() {
        // only the test split may come without labels
        let examples = read_file(&source.root, file, i == 2, problems)?;
        max_label = examples.iter().filter_map(|e| e.label).max().max(max_label);
        splits.files[i] = relative(&source.root, file);
        match i {
            0 => splits.train = examples,
            1 => splits.dev = examples,
            _ => splits.test = examples,
        }
    }
    splits.label_names = integer_label_names(max_label, source.options.label_names.as_ref());
    let n = splits.label_names.len();
    for (examples, file) in [&mut splits.train, &mut splits.dev, &mut splits.test]
        .into_iter()
        .zip(&files)
    {
        examples.retain(|e| match e.label {
            Some(l) if l >= n => {
                problems.push(
                    &source.root,
                    file,
                    None,
                    format!(
                        "example `{}`: label {l} has no name (label_names has {n})",
                        e.id
                    ),
                );
                false
            }
            _ => true,
        });
    }
    Ok(splits)
}

/// Reads one JSON-lines file. Bad lines are reported to `problems` with their line number and
/// field and skipped. `unlabeled_ok`: a file where no line has a label is prediction-only.
pub fn read_file(
    root: &Path,
    path: &Path,
    unlabeled_ok: bool,
    problems: &mut Problems,
) -> Result<Vec<Example>> {
    let name = relative(root, path);
    let file = crate::data::paths::open(root, path).with_context(|| format!("opening {name}"))?;
    let mut out = Vec::new();
    let mut missing_label = Vec::new();
    for (i, line) in crate::data::paths::lines(file).enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(e) => {
                if e.label.is_none() {
                    missing_label.push(i + 1);
                }
                out.push(e);
            }
            Err(e) => problems.push(root, path, Some(i + 1), e.to_string()),
        }
    }
    // a wholly unlabeled file is prediction-only where allowed; otherwise every line needs one
    let prediction_only = unlabeled_ok && !out.is_empty() && missing_label.len() == out.len();
    if !prediction_only && !missing_label.is_empty() {
        for &line in &missing_label {
            problems.push(root, path, Some(line), "missing field `label`");
        }
        out.retain(|e| e.label.is_some());
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Example, LineError> {
    let v: Value = serde_json::from_str(line).map_err(LineError::not_json)?;
    let field = |name: &str| {
        v.get(name)
            .ok_or_else(|| LineError::Missing(name.to_string()))
    };
    let id = match field("id")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(LineError::invalid(
                "id",
                format!("field `id` must be a string or number, found {other}"),
            ));
        }
    };
    let text = field("text")?
        .as_str()
        .ok_or_else(|| LineError::invalid("text", "field `text` must be a string"))?
        .to_string();
    let label = match v.get("label") {
        None | Some(Value::Null) => None,
        Some(l) => match l.as_u64() {
            Some(n) if (n as usize) < crate::data::MAX_LABELS => Some(n as usize),
            _ => {
                return Err(LineError::invalid(
                    "label",
                    format!(
                        "field `label` must be an integer from 0 to {}, found {l}",
                        crate::data::MAX_LABELS - 1
                    ),
                ));
            }
        },
    };
    let image = match v.get("img") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(PathBuf::from(s)),
        Some(other) => {
            return Err(LineError::invalid(
                "img",
                format!("field `img` must be a path string, found {other}"),
            ));
        }
    };
    Ok(Example {
        id,
        text,
        image,
        label,
        ..Default::default()
    })
}

/// Writes examples as a Hateful Memes JSON-lines file (the demo data uses it).
pub fn write_file(path: &Path, examples: &[Example]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for e in examples {
        let id: Value =
            e.id.parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(e.id.clone()));
        let mut line = serde_json::json!({"id": id, "img": e.image, "text": e.text});
        if let Some(l) = e.label {
            line["label"] = l.into();
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if examples.is_empty() {
        bail!("{}: no examples to write", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Check, Options, load};

    fn source(root: &Path) -> Source {
        Source {
            format: "hateful_memes".into(),
            root: root.to_path_buf(),
            options: Options::default(),
        }
    }

    fn write(dir: &Path, name: &str, lines: &[&str]) {
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn bad_lines_are_reported_with_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "train.jsonl",
            &[
                r#"{"id": 1, "img": "img/1.png", "text": "a", "label": 0}"#,
                r#"{"id": 2, "img": "img/2.png", "text": "b"}"#,
                r#"{"id": 3, "text": 7, "label": 1}"#,
                "not json",
                r#"{"id": 5, "text": "fine", "label": 1}"#,
            ],
        );
        write(
            dir.path(),
            "dev_seen.jsonl",
            &[r#"{"id": "a7", "text": "y", "label": 1}"#],
        );
        write(
            dir.path(),
            "test_unseen.jsonl",
            &[r#"{"id": 9, "text": "z"}"#],
        );
        let e = format!(
            "{:#}",
            load("m", &source(dir.path()), Check::Strict).unwrap_err()
        );
        assert!(
            e.contains("train.jsonl line 2: missing field `label`"),
            "{e}"
        );
        assert!(
            e.contains("train.jsonl line 3: field `text` must be a string"),
            "{e}"
        );
        assert!(e.contains("train.jsonl line 4: not valid JSON"), "{e}");
        assert!(
            e.contains("img/1.png: train example `1`: image not found"),
            "{e}"
        );

        let ds = load("m", &source(dir.path()), Check::Report).unwrap();
        assert_eq!(ds.problems.len(), 4);
        assert_eq!(
            ds.train.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["5"]
        );
        assert_eq!(ds.dev[0].id, "a7");
        assert_eq!(
            ds.files,
            [
                "train.jsonl".to_string(),
                "dev_seen.jsonl".into(),
                "test_unseen.jsonl".into()
            ]
        );
        assert_eq!(
            ds.test[0].label, None,
            "an unlabeled test file is prediction-only"
        );
    }
}
