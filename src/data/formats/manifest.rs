//! `modalbench.toml`: an optional file in a dataset folder naming its format and options, for
//! layouts that cannot be recognised from the files alone (column names, an image folder
//! elsewhere, label names). Keys: `format`, and the [`Options`] fields:
//!
//! ```toml
//! format = "news"
//! images = "pictures"          # image paths are relative to this folder
//! label_names = ["world", "sports", "business", "science"]
//! [columns]
//! text = ["headline", "abstract", "caption"]
//! image = "image_path"
//! label = "category"
//! split = "split"
//! ```

use crate::data::{Options, Source};
use anyhow::{Context, Result};
use std::path::Path;

/// The manifest's file name.
pub const FILE: &str = "modalbench.toml";

/// The source `root/modalbench.toml` describes, if the folder has one.
pub fn read(root: &Path) -> Result<Option<Source>> {
    let path = root.join(FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::io::read_to_string(crate::data::paths::open(root, &path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        parse(&text, root).with_context(|| format!("{}", path.display()))?,
    ))
}

/// Parses a manifest for the dataset at `root`.
pub fn parse(text: &str, root: &Path) -> Result<Source> {
    let mut table: toml::Table = text.parse().context("not valid TOML")?;
    let format = table
        .remove("format")
        .context("missing key `format`")?
        .as_str()
        .context("`format` must be a string")?
        .to_string();
    super::by_name(&format)?;
    let options: Options = toml::Value::Table(table).try_into().context("bad option")?;
    Ok(Source {
        format,
        root: root.to_path_buf(),
        options,
    })
}

/// The manifest text for `options` in `format`.
pub fn render(format: &str, options: &Options) -> Result<String> {
    let mut table = toml::Table::new();
    table.insert("format".into(), toml::Value::String(format.into()));
    if let toml::Value::Table(rest) = toml::Value::try_from(options)? {
        table.extend(rest);
    }
    Ok(toml::to_string(&table)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_names_format_and_options_and_rejects_unknown_keys() {
        let root = Path::new("/data/memes");
        let s = parse(
            "format = \"hateful_memes\"\nlabel_names = [\"benign\", \"hateful\"]\n",
            root,
        )
        .unwrap();
        assert_eq!(s.format, "hateful_memes");
        assert_eq!(
            s.options.label_names.as_deref(),
            Some(&["benign".to_string(), "hateful".to_string()][..])
        );
        let e = format!(
            "{:#}",
            parse("format = \"hateful_memes\"\nlabels = []\n", root).unwrap_err()
        );
        assert!(e.contains("unknown field `labels`"), "{e}");
        let e = format!("{:#}", parse("format = \"parquet\"\n", root).unwrap_err());
        assert!(e.contains("unknown dataset format `parquet`"), "{e}");
        let back = parse(&render("hateful_memes", &s.options).unwrap(), root).unwrap();
        assert_eq!(back, s);
    }
}
