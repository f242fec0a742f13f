//! What the dataset templates draw: statistics turned into rows, bar widths and SVG geometry.

use super::stats::{Balance, Histogram, ImageSummary, Spread};
use crate::data::{Split, SplitInfo, Task};
use crate::http::pages::num;
use std::collections::BTreeMap;

/// `12,345`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `25` or `25.5`.
fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// `s` percent-encoded for one URL path segment (a dataset name is a folder name: any text).
pub(super) fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first `max` characters of `s`, with an ellipsis if it was longer.
pub(in crate::http::pages) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub(super) fn task_name(t: Task) -> &'static str {
    match t {
        Task::Classification => "classification",
        Task::SoftLabels => "soft labels",
    }
}

/// How a split stands: empty, prediction-only (no labels), partly or fully labeled.
pub(super) fn split_note(examples: usize, labeled: usize) -> String {
    match (examples, labeled) {
        (0, _) => "empty".into(),
        (_, 0) => "prediction-only".into(),
        (n, l) if l < n => format!("partly labeled ({} of {})", thousands(l), thousands(n)),
        _ => "labeled".into(),
    }
}

/// `train 384 · dev 96 · test 160 (prediction-only)` for the list, in role order.
pub(super) fn split_summary(splits: &BTreeMap<Split, SplitInfo>) -> String {
    let ordered: Vec<_> = splits.iter().collect();
    ordered
        .into_iter()
        .map(|(name, s)| {
            let note = split_note(s.examples, s.labeled);
            match note.as_str() {
                "labeled" => format!("{name} {}", thousands(s.examples)),
                _ => format!("{name} {} ({note})", thousands(s.examples)),
            }
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One label's bar.
pub(super) struct BarRow {
    pub label: String,
    pub count: String,
    pub share: String,
    /// Percent of the split's labeled examples, for the bar's CSS width.
    pub width: String,
}

/// A split's label balance.
pub(super) struct BalanceView {
    pub split: &'static str,
    pub labeled: String,
    pub unlabeled: usize,
    pub rows: Vec<BarRow>,
    /// Labels left out of a long list, and how many examples they hold.
    pub hidden: Option<String>,
}

/// Most labels listed per split; the rest are summed (VQA has thousands of answer classes).
const SHOWN_LABELS: usize = 30;

pub(super) fn balance_view(split: &'static str, b: &Balance, names: &[String]) -> BalanceView {
    let labeled = b.labeled();
    let pct = |c: usize| 100.0 * c as f64 / labeled.max(1) as f64;
    let mut order: Vec<usize> = (0..b.counts.len()).collect();
    if order.len() > SHOWN_LABELS {
        // the most frequent first, ties in label order
        order.sort_by_key(|&i| std::cmp::Reverse(b.counts[i]));
    }
    let (shown, rest) = order.split_at(order.len().min(SHOWN_LABELS));
    let rest_examples: usize = rest.iter().map(|&i| b.counts[i]).sum();
    BalanceView {
        split,
        labeled: thousands(labeled),
        unlabeled: b.unlabeled,
        rows: shown
            .iter()
            .map(|&i| BarRow {
                label: names.get(i).cloned().unwrap_or_else(|| format!("#{i}")),
                count: thousands(b.counts[i]),
                share: format!("{}%", num(Some(pct(b.counts[i])), 1)),
                width: num(Some(pct(b.counts[i])), 2),
            })
            .collect(),
        hidden: (!rest.is_empty()).then(|| {
            format!(
                "{} more labels with {} examples",
                thousands(rest.len()),
                thousands(rest_examples)
            )
        }),
    }
}

/// One histogram bar, in SVG user units.
pub(super) struct SvgBar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub count: usize,
    pub title: String,
}

/// A tick: its position along the axis and its label.
pub(super) struct Tick {
    pub at: String,
    pub label: String,
}

/// A histogram drawn into a `W` x `H` view box with margins for the axes.
pub(super) struct HistogramSvg {
    pub w: f64,
    pub h: f64,
    /// Plot area: x from `left` to `right`, y from `top` to `base` (the x axis).
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub base: f64,
    pub bars: Vec<SvgBar>,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: Vec<Tick>,
    pub summary: String,
}

const W: f64 = 560.0;
const H: f64 = 230.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 46.0;

fn px(x: f64) -> String {
    format!("{x:.1}")
}

/// `None` for a histogram of nothing.
pub(super) fn histogram_svg(h: &Histogram) -> Option<HistogramSvg> {
    let n = h.counts.len();
    let top = *h.counts.iter().max()?;
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let bw = plot_w / n as f64;
    let gap = if bw > 4.0 { 1.0 } else { 0.0 };
    let y_of = |c: usize| H - BOTTOM - plot_h * c as f64 / top.max(1) as f64;
    let bars = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let (lo, hi) = (i * h.width, (i + 1) * h.width - 1);
            let range = if lo == hi {
                format!("{lo} tokens")
            } else {
                format!("{lo}–{hi} tokens")
            };
            SvgBar {
                x: px(LEFT + i as f64 * bw + gap / 2.0),
                y: px(y_of(c)),
                w: px(bw - gap),
                h: px(H - BOTTOM - y_of(c)),
                count: c,
                title: format!("{range}: {} examples", thousands(c)),
            }
        })
        .collect();
    // at most 9 labelled edges, evenly spaced (the last edge only when it falls on the step,
    // so that two labels never crowd each other)
    let every = n.div_ceil(8).max(1);
    let x_ticks = (0..=n)
        .filter(|i| i.is_multiple_of(every))
        .map(|i| Tick {
            at: px(LEFT + i as f64 * bw),
            label: (i * h.width).to_string(),
        })
        .collect();
    let y_ticks = [0, top / 2, top]
        .into_iter()
        .filter(|&c| c > 0 || top > 0)
        .map(|c| Tick {
            at: px(y_of(c)),
            label: thousands(c),
        })
        .collect();
    Some(HistogramSvg {
        w: W,
        h: H,
        left: LEFT,
        right: W - RIGHT,
        top: TOP,
        base: H - BOTTOM,
        bars,
        x_ticks,
        y_ticks,
        summary: format!(
            "{} examples · tokens min {} · median {} · mean {} · max {}",
            thousands(h.total),
            h.min.unwrap_or(0),
            trim(h.median.unwrap_or(0.0)),
            num(h.mean, 1),
            h.max.unwrap_or(0)
        ),
    })
}

/// The image size summary as table rows.
pub(super) struct ImageView {
    /// Says when the figures come from a sample.
    pub scope: String,
    pub rows: Vec<(&'static str, String)>,
    pub failures: Vec<String>,
}

fn spread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{} / {} / {}", s.min, trim(s.median), s.max),
        None => "–".into(),
    }
}

pub(super) fn image_view(s: &ImageSummary, sample_limit: usize) -> ImageView {
    let scope = if s.is_sample() {
        format!(
            "A sample of {} of the {} distinct images (evenly spread over their sorted paths, \
             the same each time; at most {} are read).",
            thousands(s.sampled),
            thousands(s.total),
            thousands(sample_limit)
        )
    } else {
        format!("All {} distinct images.", thousands(s.total))
    };
    let formats = s
        .formats
        .iter()
        .map(|(f, n)| format!("{f} {}", thousands(*n)))
        .collect::<Vec<_>>()
        .join(" · ");
    ImageView {
        scope,
        rows: vec![
            ("images read", thousands(s.readable)),
            ("width min / median / max", spread(s.width)),
            ("height min / median / max", spread(s.height)),
            (
                "formats",
                if formats.is_empty() {
                    "–".into()
                } else {
                    formats
                },
            ),
            (
                "missing / unreadable",
                format!("{} / {}", thousands(s.missing), thousands(s.unreadable)),
            ),
        ],
        failures: s.failures.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_texts_are_formatted_for_the_page() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(segment("my data/é"), "my%20data%2F%C3%A9");
        assert_eq!(shorten("héllo", 3), "hél…");
        assert_eq!(shorten("hé", 3), "hé");
        assert_eq!(split_note(160, 0), "prediction-only");
        assert_eq!(split_note(10, 4), "partly labeled (4 of 10)");
    }

    #[test]
    fn histogram_bars_scale_to_the_tallest_and_ticks_mark_bin_edges() {
        let h = Histogram {
            width: 5,
            counts: vec![4, 2, 0],
            total: 6,
            ..Default::default()
        };
        let svg = histogram_svg(&h).unwrap();
        let plot_h = H - TOP - BOTTOM;
        assert_eq!(svg.bars[0].h, px(plot_h));
        assert_eq!(svg.bars[1].h, px(plot_h / 2.0));
        assert_eq!(svg.bars[2].h, px(0.0));
        assert_eq!(svg.bars[1].title, "5–9 tokens: 2 examples");
        let labels: Vec<_> = svg.x_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "5", "10", "15"]);
        // 15 bins of 1: every 2nd edge, the 15 at the end left out
        let wide = histogram_svg(&Histogram {
            width: 1,
            counts: vec![1; 15],
            total: 15,
            ..Default::default()
        })
        .unwrap();
        let labels: Vec<_> = wide.x_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8", "10", "12", "14"]);
        assert!(histogram_svg(&Histogram::default()).is_none());
    }

    #[test]
    fn a_long_label_list_keeps_the_most_frequent_and_sums_the_rest() {
        let mut counts = vec![1; 40];
        counts[33] = 50;
        let b = Balance {
            counts,
            unlabeled: 0,
        };
        let v = balance_view("train", &b, &[]);
        assert_eq!(v.rows.len(), SHOWN_LABELS);
        assert_eq!(v.rows[0].label, "#33");
        assert_eq!(v.rows[0].share, "56.2%"); // 50 of 89
        assert_eq!(v.hidden.as_deref(), Some("10 more labels with 10 examples"));
    }
}
