//! Multimodal news classification (N24News, BreakingNews, GoodNews-style exports): CSV files with
//! a header, or JSON-lines files, one article per row. Either one file per split (`train`,
//! `dev` — or `valid`, `validation` — and `test`, each `.csv` or `.jsonl`, or the options'
//! `splits`) or one file (`data.csv`, `data.jsonl`, or the folder's only CSV/JSON-lines file)
//! whose `split` column says `train`, `dev` (`valid`, `validation`, `val`) or `test`.
//!
//! Columns, unless the options' `columns` name them: the text is `text`, else `headline`,
//! `abstract` and `caption` (those present, joined with a space); the image path is `image`,
//! `image_path` or `img` (optional: articles without images have none); the label is `label`
//! or `category`; the id is `id`, else the row number. Labels are strings: the label names are
//! the options' `label_names`, else the train split's distinct labels, sorted. A test split
//! with no labels at all is prediction-only.

mod table;

use super::{Format, LineError, relative};
use crate::data::{Columns, Example, Problems, Source, Split, Splits, Task};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use table::{Table, is_csv, read_table};

/// The layout.
pub static FORMAT: Format = Format {
    name: "news",
    detect,
    read,
};

const TEXT_PARTS: [&str; 3] = ["headline", "abstract", "caption"];
const IMAGE_COLUMNS: [&str; 3] = ["image", "image_path", "img"];
const LABEL_COLUMNS: [&str; 2] = ["label", "category"];
const SPLIT_FILES: [&[&str]; 3] = [&["train"], &["dev", "valid", "validation"], &["test"]];
const SINGLE_FILE: &str = "data";
const EXTENSIONS: [&str; 2] = ["csv", "jsonl"];

/// A folder whose `train.csv` (or `train.jsonl`) has a label column (`label`, `category`) and a
/// text column (`text`, `headline`, `abstract`, `caption`). Other news layouts need a
/// `modalbench.toml`.
fn detect(root: &Path) -> bool {
    let Some(train) = find(root, SPLIT_FILES[0]) else {
        return false;
    };
    let Ok(file) = crate::data::paths::open(root, &train) else {
        return false;
    };
    let columns = if is_csv(&train) {
        csv::Reader::from_reader(file)
            .headers()
            .map(|h| h.iter().map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        let first = crate::data::paths::lines(file)
            .find(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
            .and_then(Result::ok);
        match first.and_then(|l| serde_json::from_str::<Map<String, Value>>(&l).ok()) {
            Some(object) => object.keys().cloned().collect(),
            None => Vec::new(),
        }
    };
    let has = |names: &[&str]| columns.iter().any(|c: &String| names.contains(&c.trim()));
    has(&LABEL_COLUMNS) && (has(&["text"]) || has(&TEXT_PARTS))
}

/// The first of `stems` with a known extension that is a file in `root`.
fn find(root: &Path, stems: &[&str]) -> Option<PathBuf> {
    stems
        .iter()
        .flat_map(|s| EXTENSIONS.map(|x| root.join(format!("{s}.{x}"))))
        .find(|p| p.is_file())
}

/// Where the splits are: one file each, or one file with a split column.
enum Layout {
    PerSplit([PathBuf; 3]),
    OneFile(PathBuf),
}

fn layout(source: &Source) -> Result<Layout> {
    let root = &source.root;
    let given = source.options.splits.as_ref();
    if given.is_some() || find(root, SPLIT_FILES[0]).is_some() {
        let mut files: [PathBuf; 3] = Default::default();
        for (i, (role, stems)) in Split::ALL.into_iter().zip(SPLIT_FILES).enumerate() {
            files[i] = match given.and_then(|s| s.get(&role)) {
                Some(f) => root.join(f),
                None => find(root, stems).with_context(|| {
                    let names: Vec<String> = stems.iter().map(|s| format!("{s}.csv")).collect();
                    format!(
                        "{}: no {role} file ({} or the same in .jsonl)",
                        root.display(),
                        names.join(", ")
                    )
                })?,
            };
        }
        return Ok(Layout::PerSplit(files));
    }
    if let Some(f) = find(root, &[SINGLE_FILE]) {
        return Ok(Layout::OneFile(f));
    }
    let mut tables: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("listing {}", root.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
        })
        .collect();
    match tables.len() {
        1 => Ok(Layout::OneFile(tables.remove(0))),
        n => bail!(
            "{}: no news files: expected train/dev/test .csv or .jsonl files, data.csv or \
             data.jsonl with a split column, or a single .csv/.jsonl file (found {n})",
            root.display()
        ),
    }
}

/// Column indices of a table.
struct Cols {
    text: Vec<usize>,
    image: Option<usize>,
    label: Option<usize>,
    id: Option<usize>,
    split: Option<usize>,
}

/// The columns of `table` (the file of split `role`, or `None` for one file holding every
/// split): those `given` names, which must exist, else the defaults present. Every file needs
/// a text column; only a test file may lack a label column; one file needs a split column.
fn resolve(root: &Path, table: &Table, given: &Columns, role: Option<usize>) -> Result<Cols> {
    let position = |c: &str| table.columns.iter().position(|t| t == c);
    let missing = |what: &str| {
        anyhow::anyhow!(
            "{}: no {what} (columns: {})",
            relative(root, &table.file),
            table.columns.join(", ")
        )
    };
    let named = |what: &str, c: &Option<String>, defaults: &[&str]| -> Result<Option<usize>> {
        match c {
            Some(c) => Ok(Some(
                position(c).ok_or_else(|| missing(&format!("{what} column `{c}`")))?,
            )),
            None => Ok(defaults.iter().find_map(|d| position(d))),
        }
    };
    let text = match &given.text {
        Some(names) => names
            .to_vec()
            .iter()
            .map(|c| position(c).ok_or_else(|| missing(&format!("text column `{c}`"))))
            .collect::<Result<Vec<_>>>()?,
        None => match position("text") {
            Some(t) => vec![t],
            None => TEXT_PARTS.iter().filter_map(|c| position(c)).collect(),
        },
    };
    if text.is_empty() {
        return Err(missing(
            "text column `text` (nor `headline`, `abstract`, `caption`)",
        ));
    }
    let label = named("label", &given.label, &LABEL_COLUMNS)?;
    if label.is_none() && role != Some(2) {
        return Err(missing("label column `label` (nor `category`)"));
    }
    let split = match role {
        Some(_) => None,
        None => named("split", &given.split, &["split"])?,
    };
    if role.is_none() && split.is_none() {
        return Err(missing("split column `split`"));
    }
    Ok(Cols {
        text,
        image: named("image", &given.image, &IMAGE_COLUMNS)?,
        label,
        id: named("id", &given.id, &["id"])?,
        split,
    })
}

/// A row read into an example, its label not yet an index.
struct Row {
    example: Example,
    label: Option<String>,
    /// Where the row is: file index and line.
    file: usize,
    line: usize,
}

fn row(
    table: &Table,
    cols: &Cols,
    number: usize,
    fields: &[Option<Value>],
) -> Result<(Example, Option<String>, Option<usize>), LineError> {
    let name = |c: usize| &table.columns[c];
    // a field as text: `None` if empty or null; numbers and booleans as written
    let text = |c: usize| -> Result<Option<String>, LineError> {
        match &fields[c] {
            None => Err(LineError::Missing(name(c).clone())),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(v) => Err(LineError::invalid(
                name(c),
                format!("field `{}` must be text, found {v}", name(c)),
            )),
        }
    };
    let mut parts = Vec::new();
    for &c in &cols.text {
        parts.extend(text(c)?);
    }
    if parts.is_empty() {
        let names: Vec<&str> = cols.text.iter().map(|&c| name(c).as_str()).collect();
        return Err(LineError::invalid(
            names.join(", "),
            format!("empty text (field `{}`)", names.join("`, `")),
        ));
    }
    let image = match cols.image {
        // a row may leave the image out: the article has none
        Some(c) if fields[c].is_some() => text(c)?,
        _ => None,
    };
    let label = match cols.label {
        Some(c) if fields[c].is_some() => text(c)?,
        _ => None,
    };
    let id = match cols.id {
        Some(c) => text(c)?
            .ok_or_else(|| LineError::invalid(name(c), format!("empty field `{}`", name(c))))?,
        None => number.to_string(),
    };
    let split = match cols.split {
        None => None,
        Some(c) => match text(c)?.as_deref() {
            Some("train") => Some(0),
            Some("dev" | "valid" | "validation" | "val") => Some(1),
            Some("test") => Some(2),
            other => {
                return Err(LineError::invalid(
                    name(c),
                    format!(
                        "field `{}` must be train, dev (or valid, validation, val) or test, found {}",
                        name(c),
                        other.map_or("nothing".into(), |s| format!("`{s}`"))
                    ),
                ));
            }
        },
    };
    let example = Example {
        id,
        text: parts.join(" "),
        image: image.map(PathBuf::from),
        ..Default::default()
    };
    Ok((example, label, split))
}

fn read(source: &Source, problems: &mut Problems) -> Result<Splits> {
    let root = &source.root;
    let given = source.options.columns.clone().unwrap_or_default();
    let (files, one_file) = match layout(source)? {
        Layout::PerSplit(files) => (files.to_vec(), false),
        Layout::OneFile(file) => (vec![file], true),
    };
    let mut rows: [Vec<Row>; 3] = Default::default();
    let mut label_columns = Vec::new();
    for (f, file) in files.iter().enumerate() {
        let table = read_table(root, file, problems)?;
        let cols = resolve(root, &table, &given, (!one_file).then_some(f))?;
        label_columns.push(
            cols.label
                .map_or("label", |c| &table.columns[c])
                .to_string(),
        );
        for (number, (line, fields)) in table.rows.iter().enumerate() {
            match row(&table, &cols, number + 1, fields) {
                Ok((example, label, split)) => rows[split.unwrap_or(f)].push(Row {
                    example,
                    label,
                    file: f,
                    line: *line,
                }),
                Err(e) => problems.push(root, file, Some(*line), e.to_string()),
            }
        }
    }
    let label_names: Vec<String> = match &source.options.label_names {
        Some(names) => names.clone(),
        None => {
            let train: BTreeSet<&String> =
                rows[0].iter().filter_map(|r| r.label.as_ref()).collect();
            train.into_iter().cloned().collect()
        }
    };
    if label_names.len() > crate::data::MAX_LABELS {
        anyhow::bail!(
            "{} distinct labels, more than the {} classes a dataset may have",
            label_names.len(),
            crate::data::MAX_LABELS
        );
    }
    let index: HashMap<&str, usize> = label_names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut out: [Vec<Example>; 3] = Default::default();
    for (split, rows) in rows.into_iter().enumerate() {
        let prediction_only =
            split == 2 && !rows.is_empty() && rows.iter().all(|r| r.label.is_none());
        for mut r in rows {
            let column = &label_columns[r.file];
            let problem = match &r.label {
                None if prediction_only => None,
                None => Some(format!("missing field `{column}`")),
                Some(l) => match index.get(l.as_str()) {
                    Some(&i) => {
                        r.example.label = Some(i);
                        None
                    }
                    None if source.options.label_names.is_some() => Some(format!(
                        "field `{column}`: label `{l}` is not one of label_names ({})",
                        label_names.join(", ")
                    )),
                    None => Some(format!(
                        "field `{column}`: label `{l}` does not occur in the train split"
                    )),
                },
            };
            match problem {
                Some(msg) => problems.push(root, &files[r.file], Some(r.line), msg),
                None => out[split].push(r.example),
            }
        }
    }
    let [train, dev, test] = out;
    let names = |i: usize| relative(root, &files[if one_file { 0 } else { i }]);
    Ok(Splits {
        task: Task::Classification,
        label_names,
        train,
        dev,
        test,
        files: [names(0), names(1), names(2)],
    })
}
