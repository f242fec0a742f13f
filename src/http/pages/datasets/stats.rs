//! Statistics the dataset pages show: label balance, text lengths (whitespace tokens) as a
//! histogram, and a summary of image sizes and formats over a deterministic sample.

use crate::data::Example;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// How many examples carry each label, and how many carry none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Balance {
    /// Examples per label index.
    pub counts: Vec<usize>,
    /// Examples without a label (a prediction-only split has only these).
    pub unlabeled: usize,
}

impl Balance {
    /// Examples with a label.
    pub fn labeled(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// Counts labels over `examples`; a label at or past `num_labels` widens the counts rather than
/// being dropped, so that nothing is silently lost.
pub fn balance(examples: &[Example], num_labels: usize) -> Balance {
    let mut b = Balance {
        counts: vec![0; num_labels],
        unlabeled: 0,
    };
    for e in examples {
        match e.label {
            Some(l) => {
                if l >= b.counts.len() {
                    b.counts.resize(l + 1, 0);
                }
                b.counts[l] += 1;
            }
            None => b.unlabeled += 1,
        }
    }
    b
}

/// Whitespace-separated tokens of an example's text and, for pair tasks, its second text.
pub fn token_count(e: &Example) -> usize {
    e.text.split_whitespace().count()
        + e.text_pair
            .as_deref()
            .map_or(0, |t| t.split_whitespace().count())
}

/// Counts of values in equal bins starting at 0: bin `i` holds `i * width ..= (i + 1) * width - 1`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub width: usize,
    pub counts: Vec<usize>,
    /// Number of values.
    pub total: usize,
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
}

/// The smallest of 1, 2, 5, 10, 20, 50, ... that puts `0..=max` into at most `max_bins` bins.
pub fn bin_width(max: usize, max_bins: usize) -> usize {
    let max_bins = max_bins.max(1);
    let mut decade = 1usize;
    loop {
        for step in [1, 2, 5] {
            let w = step * decade;
            if max / w < max_bins {
                return w;
            }
        }
        decade *= 10;
    }
}

/// Bins `values` into at most `max_bins` bins of a round width, and summarises them.
pub fn histogram(values: &[usize], max_bins: usize) -> Histogram {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let Some(&max) = sorted.last() else {
        return Histogram {
            width: 1,
            ..Default::default()
        };
    };
    let width = bin_width(max, max_bins);
    let mut counts = vec![0; max / width + 1];
    for v in &sorted {
        counts[v / width] += 1;
    }
    Histogram {
        width,
        counts,
        total: sorted.len(),
        min: sorted.first().copied(),
        max: Some(max),
        mean: Some(sorted.iter().sum::<usize>() as f64 / sorted.len() as f64),
        median: median(&sorted),
    }
}

/// Counts and pixel sizes, as floats for [`median`].
pub trait Measure: Copy {
    fn to_f64(self) -> f64;
}

impl Measure for usize {
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Measure for u32 {
    fn to_f64(self) -> f64 {
        self.into()
    }
}

/// The median of sorted values: the middle one, or the mean of the middle two.
pub fn median<T: Measure>(sorted: &[T]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2].to_f64()),
        _ => Some((sorted[n / 2 - 1].to_f64() + sorted[n / 2].to_f64()) / 2.0),
    }
}

/// `k` indices spread evenly over `0..n` (`i * n / k`), or all of them when `n <= k`.
pub fn sample_evenly(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    (0..k).map(|i| i * n / k).collect()
}

/// Smallest, median and largest of a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: u32,
    pub median: f64,
    pub max: u32,
}

fn spread(mut v: Vec<u32>) -> Option<Spread> {
    v.sort_unstable();
    Some(Spread {
        min: *v.first()?,
        median: median(&v)?,
        max: *v.last()?,
    })
}

/// Sizes and formats of a dataset's images, read from their headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageSummary {
    /// Distinct image files the examples refer to.
    pub total: usize,
    /// How many of them were looked at (all, or an even sample).
    pub sampled: usize,
    /// Sampled images whose size could be read.
    pub readable: usize,
    pub width: Option<Spread>,
    pub height: Option<Spread>,
    /// Images per format (`png`, `jpeg`, ...), by name.
    pub formats: BTreeMap<String, usize>,
    /// Sampled files that do not exist.
    pub missing: usize,
    /// Sampled files that exist but whose header cannot be read.
    pub unreadable: usize,
    /// The first few missing or unreadable files with the reason, paths relative to the root.
    pub failures: Vec<String>,
}

impl ImageSummary {
    /// Whether only a sample was read.
    pub fn is_sample(&self) -> bool {
        self.sampled < self.total
    }
}

/// How many failures an [`ImageSummary`] names.
const SHOWN_FAILURES: usize = 5;

enum Probe {
    Ok {
        width: u32,
        height: u32,
        format: String,
    },
    Missing,
    Unreadable(String),
}

fn probe(path: &Path) -> Probe {
    if !path.is_file() {
        return Probe::Missing;
    }
    let reader = match image::ImageReader::open(path).and_then(|r| r.with_guessed_format()) {
        Ok(r) => r,
        Err(e) => return Probe::Unreadable(e.to_string()),
    };
    let Some(format) = reader.format() else {
        return Probe::Unreadable("not an image format this service reads".into());
    };
    match reader.into_dimensions() {
        Ok((width, height)) => Probe::Ok {
            width,
            height,
            format: format
                .extensions_str()
                .first()
                .copied()
                .unwrap_or("?")
                .into(),
        },
        Err(e) => Probe::Unreadable(e.to_string()),
    }
}

/// Reads the headers of the distinct files among `paths` (all of them, or `limit` spread
/// evenly over their sorted list, so that the same files give the same sample); `root` only
/// shortens the paths in failure messages.
pub fn image_summary(paths: &[PathBuf], limit: usize, root: &Path) -> ImageSummary {
    let distinct: Vec<&PathBuf> = paths.iter().collect::<BTreeSet<_>>().into_iter().collect();
    let sample: Vec<&PathBuf> = sample_evenly(distinct.len(), limit)
        .into_iter()
        .map(|i| distinct[i])
        .collect();
    let probes: Vec<Probe> = sample.par_iter().map(|p| probe(p)).collect();
    let mut s = ImageSummary {
        total: distinct.len(),
        sampled: sample.len(),
        ..Default::default()
    };
    let (mut widths, mut heights) = (Vec::new(), Vec::new());
    for (path, p) in sample.iter().zip(probes) {
        let shown = path.strip_prefix(root).unwrap_or(path).display();
        match p {
            Probe::Ok {
                width,
                height,
                format,
            } => {
                widths.push(width);
                heights.push(height);
                *s.formats.entry(format).or_default() += 1;
            }
            Probe::Missing => {
                s.missing += 1;
                if s.failures.len() < SHOWN_FAILURES {
                    s.failures.push(format!("{shown}: not found"));
                }
            }
            Probe::Unreadable(why) => {
                s.unreadable += 1;
                if s.failures.len() < SHOWN_FAILURES {
                    s.failures.push(format!("{shown}: {why}"));
                }
            }
        }
    }
    s.readable = widths.len();
    s.width = spread(widths);
    s.height = spread(heights);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labeled(labels: &[Option<usize>]) -> Vec<Example> {
        labels
            .iter()
            .map(|&label| Example {
                label,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn balance_counts_each_label_and_the_unlabeled() {
        let b = balance(&labeled(&[Some(0), Some(2), Some(2), None, Some(2)]), 3);
        assert_eq!(b.counts, vec![1, 0, 3]);
        assert_eq!((b.labeled(), b.unlabeled), (4, 1));
        // a label past the names still counts
        assert_eq!(balance(&labeled(&[Some(3)]), 2).counts, vec![0, 0, 0, 1]);
    }

    #[test]
    fn tokens_are_whitespace_separated_words_of_both_texts() {
        let e = Example {
            text: "  a man\trides\n a horse ".into(),
            text_pair: Some("an animal".into()),
            ..Default::default()
        };
        assert_eq!(token_count(&e), 5 + 2);
    }

    #[test]
    fn bin_widths_are_round_and_fit_the_bin_budget() {
        assert_eq!(bin_width(0, 20), 1);
        assert_eq!(bin_width(19, 20), 1); // 0..=19: 20 bins of 1
        assert_eq!(bin_width(20, 20), 2); // 21 values need 2s: 11 bins
        assert_eq!(bin_width(99, 20), 5); // 99 / 5 = 19 -> 20 bins
        assert_eq!(bin_width(100, 20), 10); // 100 / 5 = 20 -> 21 bins, too many
        assert_eq!(bin_width(1000, 20), 100);
    }

    #[test]
    fn histogram_bins_and_summary_match_a_hand_count() {
        // width: 1 gives 13 bins and 2 gives 7, over 5; 5 gives [0,5) [5,10) [10,15) = 4, 1, 1
        let h = histogram(&[7, 0, 1, 12, 3, 1], 5);
        assert_eq!(h.width, 5);
        assert_eq!(h.counts, vec![4, 1, 1]);
        assert_eq!((h.total, h.min, h.max), (6, Some(0), Some(12)));
        assert_eq!(h.mean, Some(24.0 / 6.0));
        // sorted 0 1 1 3 7 12: the middle two are 1 and 3
        assert_eq!(h.median, Some(2.0));
        let empty = histogram(&[], 5);
        assert!(empty.counts.is_empty() && empty.median.is_none());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3u32, 5, 9]), Some(5.0));
        assert_eq!(median(&[10u32, 20, 30, 40]), Some(25.0));
        assert_eq!(median::<u32>(&[]), None);
    }

    #[test]
    fn an_even_sample_is_deterministic_and_spread_out() {
        assert_eq!(sample_evenly(3, 5), vec![0, 1, 2]);
        assert_eq!(sample_evenly(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(sample_evenly(2400, 2000).len(), 2000);
    }

    #[test]
    fn the_image_summary_reads_sizes_and_formats_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let save = |name: &str, w: u32, h: u32| {
            image::RgbImage::new(w, h).save(root.join(name)).unwrap();
            root.join(name)
        };
        let a = save("a.png", 10, 40);
        let b = save("b.png", 30, 20);
        let c = save("c.jpg", 20, 10);
        std::fs::write(root.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let paths = vec![
            a.clone(),
            b,
            a, // the same file twice is one image
            c,
            root.join("bad.png"),
            root.join("gone.png"),
        ];
        let s = image_summary(&paths, 100, root);
        assert_eq!((s.total, s.sampled, s.readable), (5, 5, 3));
        assert!(!s.is_sample());
        // widths 10 20 30, heights 10 20 40
        assert_eq!(
            s.width,
            Some(Spread {
                min: 10,
                median: 20.0,
                max: 30
            })
        );
        assert_eq!(
            s.height,
            Some(Spread {
                min: 10,
                median: 20.0,
                max: 40
            })
        );
        assert_eq!(
            s.formats.into_iter().collect::<Vec<_>>(),
            vec![("jpg".to_string(), 1), ("png".to_string(), 2)]
        );
        assert_eq!((s.missing, s.unreadable), (1, 1));
        assert!(s.failures.iter().any(|f| f.starts_with("bad.png: ")));
        assert!(s.failures.contains(&"gone.png: not found".to_string()));
        // a sample of 2 of the 5 sorted files (a.png b.png bad.png c.jpg gone.png): indices
        // 0 * 5 / 2 = 0 and 1 * 5 / 2 = 2, that is a.png and bad.png
        let s = image_summary(&paths, 2, root);
        assert_eq!((s.total, s.sampled, s.readable, s.unreadable), (5, 2, 1, 1));
        assert!(s.is_sample());
        assert_eq!(s.width.unwrap().max, 10);
    }
}
