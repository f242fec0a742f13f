//! The dataset readers on small datasets written in their published layouts.

mod news;
mod snli_ve;
pub mod vqa;

use modalbench::data::{Check, Dataset, Options, Source, load};
use std::path::Path;

pub fn source(format: &str, root: &Path, options: Options) -> Source {
    Source {
        format: format.into(),
        root: root.to_path_buf(),
        options,
    }
}

/// Writes `lines` as a file, creating its folder.
pub fn write_lines(path: &Path, lines: &[&str]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Writes a real 2x2 image (JPEG or PNG by the extension), creating its folder.
pub fn write_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(2, 2, image::Rgb([200, 30, 90]))
        .save(path)
        .unwrap();
}

/// The error of a strict read, with its causes.
pub fn strict_error(source: &Source) -> String {
    format!("{:#}", load("t", source, Check::Strict).unwrap_err())
}

/// A report read that must succeed.
pub fn report(source: &Source) -> Dataset {
    load("t", source, Check::Report).unwrap()
}

/// The ids of examples.
pub fn ids(examples: &[modalbench::data::Example]) -> Vec<&str> {
    examples.iter().map(|e| e.id.as_str()).collect()
}
