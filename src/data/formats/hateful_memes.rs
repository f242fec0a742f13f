//! The Hateful Memes layout (Kiela et al., 2020): a folder with `img/`, `train.jsonl`, a dev file
//! (`dev.jsonl`, `dev_seen.jsonl` or `dev_unseen.jsonl`) and a test file (`test.jsonl`,
//! `test_seen.jsonl` or `test_unseen.jsonl`); one JSON object per line with `id`, `img`, `text`
//! and `label`.

use crate::data::Example;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The format's registry name.
pub const FORMAT: &str = "hateful_memes";

const DEV_FILES: [&str; 3] = ["dev.jsonl", "dev_seen.jsonl", "dev_unseen.jsonl"];
const TEST_FILES: [&str; 3] = ["test.jsonl", "test_seen.jsonl", "test_unseen.jsonl"];

/// The train, dev and test files of the folder, first match in the published order.
pub fn split_files(root: &Path) -> Result<[PathBuf; 3]> {
    let train = root.join("train.jsonl");
    if !train.is_file() {
        bail!("{}: no train.jsonl", root.display());
    }
    let pick = |names: &[&str], role: &str| -> Result<PathBuf> {
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
    Ok([train, pick(&DEV_FILES, "dev")?, pick(&TEST_FILES, "test")?])
}

/// Reads the three splits.
pub fn read(root: &Path) -> Result<(Vec<Example>, Vec<Example>, Vec<Example>)> {
    let [train, dev, test] = split_files(root)?;
    Ok((read_file(&train)?, read_file(&dev)?, read_file(&test)?))
}

/// Reads one JSON-lines file; errors name the file, the line and the field.
pub fn read_file(path: &Path) -> Result<Vec<Example>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let field = |name: &str| -> Result<&Value> {
            v.get(name)
                .with_context(|| format!("{}: missing field `{name}`", at()))
        };
        let id = match field("id")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => bail!(
                "{}: field `id` must be a string or number, found {other}",
                at()
            ),
        };
        let text = field("text")?
            .as_str()
            .with_context(|| format!("{}: field `text` must be a string", at()))?
            .to_string();
        let label = field("label")?
            .as_u64()
            .with_context(|| format!("{}: field `label` must be a non-negative integer", at()))?
            as usize;
        let image = match v.get("img") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(other) => bail!("{}: field `img` must be a path string, found {other}", at()),
        };
        out.push(Example {
            id,
            text,
            text_pair: None,
            image,
            label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_a_label_is_an_error_naming_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.jsonl");
        std::fs::write(
            &p,
            "{\"id\": 1, \"img\": \"img/1.png\", \"text\": \"a\", \"label\": 0}\n\
             {\"id\": 2, \"img\": \"img/2.png\", \"text\": \"b\"}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_file(&p).unwrap_err());
        assert!(err.contains("train.jsonl line 2"), "{err}");
        assert!(err.contains("missing field `label`"), "{err}");
    }

    #[test]
    fn numeric_and_string_ids_are_both_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.jsonl");
        std::fs::write(
            &p,
            "{\"id\": 42953, \"img\": \"img/42953.png\", \"text\": \"x\", \"label\": 1}\n\n\
             {\"id\": \"a7\", \"text\": \"y\", \"label\": 0}\n",
        )
        .unwrap();
        let ex = read_file(&p).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].id, "42953");
        assert_eq!(ex[0].image.as_deref(), Some(Path::new("img/42953.png")));
        assert_eq!(ex[1].id, "a7");
        assert_eq!(ex[1].image, None);
    }
}
