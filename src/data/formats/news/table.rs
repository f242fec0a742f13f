//! News files as tables: CSV with a header, or JSON lines (whose columns are the keys seen).

use crate::data::Problems;
use crate::data::formats::relative;
use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Whether a file is CSV (else JSON lines), by its extension.
pub fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("csv"))
}

/// A CSV or JSON-lines file: its columns and rows (line number, fields in column order).
pub struct Table {
    pub file: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<(usize, Vec<Option<Value>>)>,
}

/// Reads a table; a row that cannot be parsed goes to `problems` with its line.
pub fn read_table(root: &Path, file: &Path, problems: &mut Problems) -> Result<Table> {
    let name = relative(root, file);
    let mut table = Table {
        file: file.to_path_buf(),
        columns: Vec::new(),
        rows: Vec::new(),
    };
    if is_csv(file) {
        let f = crate::data::paths::open(root, file).with_context(|| format!("opening {name}"))?;
        let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(f);
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
        let f = crate::data::paths::open(root, file).with_context(|| format!("opening {name}"))?;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut objects = Vec::new();
        for (i, line) in crate::data::paths::lines(f).enumerate() {
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
