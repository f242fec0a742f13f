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

use super::{Format, relative};
use crate::data::{Columns, Example, Problems, SPLITS, Source, Splits, Task};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

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
    let columns = if is_csv(&train) {
        csv::Reader::from_path(&train)
            .and_then(|mut r| Ok(r.headers()?.iter().map(str::to_string).collect()))
            .unwrap_or_default()
    } else {
        let first = std::fs::File::open(&train).ok().and_then(|f| {
            let mut lines = BufReader::new(f).lines();
            lines
                .find(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))?
                .ok()
        });
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

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("csv"))
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
        for (i, (role, stems)) in SPLITS.into_iter().zip(SPLIT_FILES).enumerate() {
            files[i] = match given.and_then(|s| s.get(role)) {
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

/// A CSV or JSON-lines file: its columns and rows (line number, fields in column order).
struct Table {
    file: PathBuf,
    columns: Vec<String>,
    rows: Vec<(usize, Vec<Option<Value>>)>,
}

fn read_table(root: &Path, file: &Path, problems: &mut Problems) -> Result<Table> {
    let name = relative(root, file);
    let mut table = Table {
        file: file.to_path_buf(),
        columns: Vec::new(),
        rows: Vec::new(),
    };
    if is_csv(file) {
        let mut r = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(file)
            .with_context(|| format!("opening {name}"))?;
        let header = r.headers().with_context(|| format!("reading {name}"))?;
        table.columns = header.iter().map(|h| h.trim().to_string()).collect();
        for record in r.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                    return Err(e).with_context(|| format!("reading {name}"));
                }
                Err(e) => {
                    let line = e.position().map(|p| p.line() as usize);
                    problems.push(root, file, line, format!("not valid CSV ({e})"));
                    continue;
                }
            };
            let line = record.position().map_or(0, |p| p.line() as usize);
            if record.len() > table.columns.len() {
                let msg = format!(
                    "{} fields, the header has {}",
                    record.len(),
                    table.columns.len()
                );
                problems.push(root, file, Some(line), msg);
                continue;
            }
            let mut fields: Vec<Option<Value>> = record.iter().map(|f| Some(f.into())).collect();
            fields.resize(table.columns.len(), None);
            table.rows.push((line, fields));
        }
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {name}"))?;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut objects = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("reading {name}"))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Map<String, Value>>(&line) {
                Ok(object) => {
                    for k in object.keys() {
                        if !index.contains_key(k) {
                            index.insert(k.clone(), table.columns.len());
                            table.columns.push(k.clone());
                        }
                    }
                    objects.push((i + 1, object));
                }
                Err(e) => {
                    problems.push(root, file, Some(i + 1), format!("not a JSON object ({e})"))
                }
            }
        }
        for (line, object) in objects {
            let mut fields = vec![None; table.columns.len()];
            for (k, v) in object {
                fields[index[&k]] = Some(v);
            }
            table.rows.push((line, fields));
        }
    }
    Ok(table)
}

/// Column indices of a table.
struct Cols {
    text: Vec<usize>,
    image: Option<usize>,
    label: Option<usize>,
    id: Option<usize>,
    split: Option<usize>,
}

fn resolve(root: &Path, table: &Table, given: &Columns, one_file: bool) -> Result<Cols> {
    let position = |c: &str| table.columns.iter().position(|t| t == c);
    let missing = |what: &str, c: &str| {
        anyhow::anyhow!(
            "{}: no {what} column `{c}` (columns: {})",
            relative(root, &table.file),
            table.columns.join(", ")
        )
    };
    let named = |what: &str, c: &Option<String>, defaults: &[&str]| -> Result<Option<usize>> {
        match c {
            Some(c) => position(c).map(Some).ok_or_else(|| missing(what, c)),
            None => Ok(defaults.iter().find_map(|d| position(d))),
        }
    };
    let text = match &given.text {
        Some(names) => names
            .to_vec()
            .iter()
            .map(|c| position(c).ok_or_else(|| missing("text", c)))
            .collect::<Result<Vec<_>>>()?,
        None => match position("text") {
            Some(t) => vec![t],
            None => TEXT_PARTS.iter().filter_map(|c| position(c)).collect(),
        },
    };
    if text.is_empty() {
        return Err(missing("text", "text")).context("nor `headline`, `abstract` or `caption`");
    }
    Ok(Cols {
        text,
        image: named("image", &given.image, &IMAGE_COLUMNS)?,
        label: named("label", &given.label, &LABEL_COLUMNS)?,
        id: named("id", &given.id, &["id"])?,
        split: match one_file {
            true => Some(
                named("split", &given.split, &["split"])?
                    .ok_or_else(|| missing("split", given.split.as_deref().unwrap_or("split")))?,
            ),
            false => None,
        },
    })
}

/// A row read into an example, its label not yet an index.
struct Row {
    example: Example,
    label: Option<String>,
    table: usize,
    line: usize,
}

fn row(
    table: &Table,
    cols: &Cols,
    number: usize,
    fields: &[Option<Value>],
) -> Result<(Example, Option<String>, Option<usize>), String> {
    let name = |c: usize| &table.columns[c];
    // a field as text: `None` if empty or null; numbers and booleans as written
    let text = |c: usize| -> Result<Option<String>, String> {
        match &fields[c] {
            None => Err(format!("missing field `{}`", name(c))),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(v) => Err(format!("field `{}` must be text, found {v}", name(c))),
        }
    };
    let mut parts = Vec::new();
    for &c in &cols.text {
        parts.extend(text(c)?);
    }
    if parts.is_empty() {
        let names: Vec<&str> = cols.text.iter().map(|&c| name(c).as_str()).collect();
        return Err(format!("empty text (field `{}`)", names.join("`, `")));
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
        Some(c) => text(c)?.ok_or_else(|| format!("empty field `{}`", name(c)))?,
        None => number.to_string(),
    };
    let split = match cols.split {
        None => None,
        Some(c) => match text(c)?.as_deref() {
            Some("train") => Some(0),
            Some("dev" | "valid" | "validation" | "val") => Some(1),
            Some("test") => Some(2),
            other => {
                return Err(format!(
                    "field `{}` must be train, dev (or valid, validation, val) or test, found {}",
                    name(c),
                    other.map_or("nothing".into(), |s| format!("`{s}`"))
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
    let mut tables = Vec::new();
    let mut rows: [Vec<Row>; 3] = Default::default();
    let mut label_columns = Vec::new();
    for (t, file) in files.iter().enumerate() {
        let table = read_table(root, file, problems)?;
        let cols = resolve(root, &table, &given, one_file)?;
        // only a test file may come without a label column (prediction-only)
        if cols.label.is_none() && (one_file || t < 2) {
            let c = given.label.as_deref().unwrap_or("label");
            bail!(
                "{}: no label column `{c}` (nor `category`; columns: {})",
                relative(root, file),
                table.columns.join(", ")
            );
        }
        label_columns.push(
            cols.label
                .map_or("label".into(), |c| table.columns[c].clone()),
        );
        for (number, (line, fields)) in table.rows.iter().enumerate() {
            match row(&table, &cols, number + 1, fields) {
                Ok((example, label, split)) => rows[split.unwrap_or(t)].push(Row {
                    example,
                    label,
                    table: t,
                    line: *line,
                }),
                Err(msg) => problems.push(root, file, Some(*line), msg),
            }
        }
        tables.push(table);
    }
    let label_names: Vec<String> = match &source.options.label_names {
        Some(names) => names.clone(),
        None => {
            let train: BTreeSet<&String> =
                rows[0].iter().filter_map(|r| r.label.as_ref()).collect();
            train.into_iter().cloned().collect()
        }
    };
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
            let file = &tables[r.table].file;
            let column = &label_columns[r.table];
            let label = match &r.label {
                None if prediction_only => None,
                None => {
                    let msg = format!("missing field `{column}`");
                    problems.push(root, file, Some(r.line), msg);
                    continue;
                }
                Some(l) => match index.get(l.as_str()) {
                    Some(&i) => Some(i),
                    None => {
                        let why = match source.options.label_names {
                            Some(_) => {
                                format!("is not one of label_names ({})", label_names.join(", "))
                            }
                            None => "does not occur in the train split".into(),
                        };
                        problems.push(
                            root,
                            file,
                            Some(r.line),
                            format!("field `{column}`: label `{l}` {why}"),
                        );
                        continue;
                    }
                },
            };
            r.example.label = label;
            out[split].push(r.example);
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
