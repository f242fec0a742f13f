//! The embedded demo data, generated deterministically in the Hateful Memes layout.
//!
//! `demo-news`: short news lines in four topics (world, sports, business, science). The topic
//! follows from the words of the text; each example also has a small picture whose colour agrees
//! with the topic only two times in three, so the image is decoration, not evidence.

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::Path;

/// Name of the text-decided demo dataset.
pub const DEMO_NEWS: &str = "demo-news";

/// Topic names, in label order.
pub const NEWS_TOPICS: [&str; 4] = ["world", "sports", "business", "science"];

struct Topic {
    subjects: &'static [&'static str],
    verbs: &'static [&'static str],
    objects: &'static [&'static str],
    places: &'static [&'static str],
    colour: [u8; 3],
}

const TOPICS: [Topic; 4] = [
    Topic {
        subjects: &[
            "the prime minister",
            "foreign ministers",
            "the united nations",
            "rebel leaders",
            "the embassy",
            "border officials",
        ],
        verbs: &[
            "condemned",
            "negotiated",
            "signed",
            "rejected",
            "announced",
            "debated",
        ],
        objects: &[
            "a ceasefire",
            "new sanctions",
            "the peace treaty",
            "an election date",
            "a refugee plan",
            "the trade embargo",
        ],
        places: &[
            "at the summit",
            "in the capital",
            "after the vote",
            "near the border",
            "at the assembly",
        ],
        colour: [200, 60, 50],
    },
    Topic {
        subjects: &[
            "the striker",
            "the home team",
            "the coach",
            "the goalkeeper",
            "the champions",
            "the captain",
        ],
        verbs: &[
            "scored",
            "won",
            "lost",
            "defended",
            "celebrated",
            "equalised",
        ],
        objects: &[
            "a late goal",
            "the final match",
            "the league title",
            "a penalty",
            "the tournament",
            "the derby",
        ],
        places: &[
            "in extra time",
            "at the stadium",
            "before the fans",
            "in the second half",
            "on the pitch",
        ],
        colour: [60, 170, 70],
    },
    Topic {
        subjects: &[
            "the central bank",
            "shareholders",
            "the retailer",
            "investors",
            "the chief executive",
            "the airline",
        ],
        verbs: &[
            "raised",
            "cut",
            "reported",
            "forecast",
            "acquired",
            "invested in",
        ],
        objects: &[
            "interest rates",
            "quarterly profits",
            "a merger",
            "its dividend",
            "the stock price",
            "a new factory",
        ],
        places: &[
            "on wall street",
            "in the markets",
            "this quarter",
            "at the earnings call",
            "after trading closed",
        ],
        colour: [50, 90, 200],
    },
    Topic {
        subjects: &[
            "astronomers",
            "the research team",
            "biologists",
            "the space agency",
            "physicists",
            "chemists",
        ],
        verbs: &[
            "discovered",
            "measured",
            "observed",
            "sequenced",
            "launched",
            "simulated",
        ],
        objects: &[
            "a distant galaxy",
            "the genome",
            "a new particle",
            "the telescope",
            "a vaccine candidate",
            "quantum effects",
        ],
        places: &[
            "in the laboratory",
            "in orbit",
            "in a new study",
            "at the observatory",
            "in the journal",
        ],
        colour: [220, 180, 40],
    },
];

/// Words that carry no topic, mixed in so that no single position gives the answer away.
const FILLER: &[&str] = &[
    "reportedly",
    "on monday",
    "late on friday",
    "officials said",
    "according to sources",
    "once again",
    "for the first time",
];

/// Writes `demo-news` into `dir/demo-news` (train 384, dev 96, test 160 examples).
/// Same seed, same bytes.
pub fn write_demo_news(dir: &Path, seed: u64) -> Result<()> {
    let root = dir.join(DEMO_NEWS);
    let img_dir = root.join("img");
    std::fs::create_dir_all(&img_dir).with_context(|| format!("creating {}", img_dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next_id = 10_000u64;
    for (split, n) in [("train", 384), ("dev", 96), ("test", 160)] {
        // balanced labels, shuffled
        let mut labels: Vec<usize> = (0..n).map(|i| i % TOPICS.len()).collect();
        labels.shuffle(&mut rng);
        let path = root.join(format!("{split}.jsonl"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for label in labels {
            let id = next_id;
            next_id += 1;
            let text = news_line(&TOPICS[label], &mut rng);
            let img = format!("img/{id}.png");
            news_image(label, &mut rng)
                .save(root.join(&img))
                .with_context(|| format!("writing {img}"))?;
            let line = serde_json::json!({"id": id, "img": img, "text": text, "label": label});
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    Ok(())
}

fn news_line(t: &Topic, rng: &mut ChaCha8Rng) -> String {
    let pick = |xs: &[&'static str], rng: &mut ChaCha8Rng| *xs.choose(rng).expect("non-empty");
    let (s, v, o, p) = (
        pick(t.subjects, rng),
        pick(t.verbs, rng),
        pick(t.objects, rng),
        pick(t.places, rng),
    );
    match rng.random_range(0..3) {
        0 => format!("{s} {v} {o} {p}"),
        1 => format!("{p}, {s} {v} {o}, {}", pick(FILLER, rng)),
        _ => format!("{} {s} {v} {o}", pick(FILLER, rng)),
    }
}

/// A 48x48 picture: a coloured disc on a noisy background. The disc has the topic's colour
/// two times in three and a random topic's colour otherwise.
fn news_image(label: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let colour_of = if rng.random_range(0..3) < 2 {
        label
    } else {
        rng.random_range(0..TOPICS.len())
    };
    let c = TOPICS[colour_of].colour;
    let (cx, cy, r) = (
        rng.random_range(14..34i32),
        rng.random_range(14..34i32),
        rng.random_range(8..14i32),
    );
    RgbImage::from_fn(48, 48, |x, y| {
        let (dx, dy) = (x as i32 - cx, y as i32 - cy);
        if dx * dx + dy * dy <= r * r {
            Rgb(c)
        } else {
            let g = rng.random_range(200..250u8);
            Rgb([g, g, g])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_the_same_for_the_same_seed_and_balanced() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_demo_news(a.path(), 7).unwrap();
        write_demo_news(b.path(), 7).unwrap();
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(DEMO_NEWS).join(f)).unwrap();
        assert_eq!(read(a.path(), "train.jsonl"), read(b.path(), "train.jsonl"));
        let train = crate::data::formats::hateful_memes::read_file(
            &a.path().join(DEMO_NEWS).join("train.jsonl"),
        )
        .unwrap();
        assert_eq!(train.len(), 384);
        for k in 0..4 {
            assert_eq!(train.iter().filter(|e| e.label == k).count(), 96);
        }
        let img = train[0].image.as_ref().unwrap();
        let decoded = image::open(a.path().join(DEMO_NEWS).join(img)).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (48, 48));
    }
}
