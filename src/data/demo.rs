//! The embedded demo benchmark, generated deterministically (same seed, same bytes) in the
//! Hateful Memes layout, with a `modalbench.toml` naming the labels.
//!
//! - `demo-news` (the image is decoration): short news lines in four topics (world, sports,
//!   business, science). Three examples in four are clear: their words name the topic, and
//!   their picture, a disc in the topic's colour, repeats it. One in four is ambiguous: its
//!   words come from two topics in equal part (the label is either, at random), and its
//!   picture is a grey disc that says as little. The words decide what can be decided; the
//!   picture adds nothing to them, so the best possible accuracy is about 7/8 with or without
//!   it.
//! - `demo-memes` (the image decides): meme captions in the spirit of Hateful Memes' benign
//!   confounders. Every caption appears once with a picture that makes it `benign` (a cool-
//!   coloured round sign) and once with one that makes it `mean` (a warm-coloured pointed
//!   sign), on noisy backgrounds with a faint distractor shape; the caption alone says nothing
//!   about the label, caption and picture together decide it.

use crate::data::formats::{hateful_memes, manifest};
use crate::data::{Example, Options};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// Writes `examples` of each split and the manifest naming `labels` into `root`.
fn write_dataset(root: &Path, splits: [(&str, Vec<Example>); 3], labels: &[&str]) -> Result<()> {
    for (split, examples) in &splits {
        hateful_memes::write_file(&root.join(format!("{split}.jsonl")), examples)?;
    }
    let options = Options {
        label_names: Some(labels.iter().map(|l| l.to_string()).collect()),
        ..Default::default()
    };
    std::fs::write(
        root.join(manifest::FILE),
        manifest::render("hateful_memes", &options)?,
    )
    .context("writing modalbench.toml")
}

/// Writes `demo-news` into `dir/demo-news` (train 384, dev 96, test 160 examples).
pub fn write_demo_news(dir: &Path, seed: u64) -> Result<()> {
    let root = dir.join(DEMO_NEWS);
    let img_dir = root.join("img");
    std::fs::create_dir_all(&img_dir).with_context(|| format!("creating {}", img_dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next_id = 10_000u64;
    let mut split = |n: usize, rng: &mut ChaCha8Rng| -> Result<Vec<Example>> {
        // balanced labels, shuffled
        let mut labels: Vec<usize> = (0..n).map(|i| i % TOPICS.len()).collect();
        labels.shuffle(rng);
        let mut out = Vec::with_capacity(n);
        for label in labels {
            let id = next_id;
            next_id += 1;
            let img = format!("img/{id}.png");
            let ambiguous = rng.random_range(0..4) == 0;
            let text = if ambiguous {
                let other = (label + rng.random_range(1..TOPICS.len())) % TOPICS.len();
                // which topic gives the subject and which the rest: a coin, so the words
                // favour neither
                let (a, b) = if rng.random_range(0..2) == 0 {
                    (label, other)
                } else {
                    (other, label)
                };
                mixed_news_line(&TOPICS[a], &TOPICS[b], rng)
            } else {
                news_line(&TOPICS[label], rng)
            };
            news_image((!ambiguous).then_some(label), rng)
                .save(root.join(&img))
                .with_context(|| format!("writing {img}"))?;
            out.push(Example {
                id: id.to_string(),
                text,
                image: Some(img.into()),
                label: Some(label),
                ..Default::default()
            });
        }
        Ok(out)
    };
    let splits = [
        ("train", split(384, &mut rng)?),
        ("dev", split(96, &mut rng)?),
        ("test", split(160, &mut rng)?),
    ];
    write_dataset(&root, splits, &NEWS_TOPICS)
}

/// A demo dataset: its name and its writer (`fn(parent dir, seed)`).
pub type Writer = fn(&Path, u64) -> Result<()>;

/// Every demo dataset.
pub const DEMOS: [(&str, Writer); 2] =
    [(DEMO_NEWS, write_demo_news), (DEMO_MEMES, write_demo_memes)];

/// Name of the image-decided demo dataset.
pub const DEMO_MEMES: &str = "demo-memes";

/// Label names of `demo-memes`.
pub const MEME_LABELS: [&str; 2] = ["benign", "mean"];

const MEME_OPENERS: &[&str] = &[
    "when you finally",
    "me trying to",
    "nobody:",
    "my face when they",
    "that moment you",
    "look at them",
    "this is what happens when you",
    "they said we could not",
    "everyone when you",
    "imagine if they",
    "how it feels to",
    "guess who decided to",
    "pov: you",
];
const MEME_ACTIONS: &[&str] = &[
    "show up to the meeting",
    "explain the plan again",
    "bring snacks for everyone",
    "get the weekend off",
    "move into the neighbourhood",
    "start talking about politics",
    "join the team",
    "cook dinner",
    "win the match",
    "open a new shop",
    "post on the group chat",
    "visit the city",
    "read the news",
    "go back to school",
    "take the last seat",
    "ask for directions",
    "wear that outfit",
    "sing at the party",
    "fix the computer",
    "arrive late again",
];
const MEME_ENDINGS: &[&str] = &["", " lol", " again", " today", " 😂", " for real", " smh"];

/// Writes `demo-memes` into `dir/demo-memes`: 1,200 captions, each twice (once per label):
/// train 1,600, dev 400, test 400 examples, 64x64 pictures.
pub fn write_demo_memes(dir: &Path, seed: u64) -> Result<()> {
    let root = dir.join(DEMO_MEMES);
    let img_dir = root.join("img");
    std::fs::create_dir_all(&img_dir).with_context(|| format!("creating {}", img_dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d656d65);
    let mut captions: Vec<String> = Vec::new();
    for o in MEME_OPENERS {
        for a in MEME_ACTIONS {
            for e in MEME_ENDINGS {
                captions.push(format!("{o} {a}{e}"));
            }
        }
    }
    captions.shuffle(&mut rng);
    captions.truncate(1200);
    let mut next_id = 50_000u64;
    let mut pairs = |captions: &[String], rng: &mut ChaCha8Rng| -> Result<Vec<Example>> {
        let mut out = Vec::with_capacity(captions.len() * 2);
        for text in captions {
            for label in [0, 1] {
                let id = next_id;
                next_id += 1;
                let img = format!("img/{id}.png");
                meme_image(label, rng)
                    .save(root.join(&img))
                    .with_context(|| format!("writing {img}"))?;
                out.push(Example {
                    id: id.to_string(),
                    text: text.clone(),
                    image: Some(img.into()),
                    label: Some(label),
                    ..Default::default()
                });
            }
        }
        out.shuffle(rng);
        Ok(out)
    };
    let splits = [
        ("train", pairs(&captions[..800], &mut rng)?),
        ("dev", pairs(&captions[800..1000], &mut rng)?),
        ("test", pairs(&captions[1000..], &mut rng)?),
    ];
    write_dataset(&root, splits, &MEME_LABELS)
}

/// A 64x64 picture: a noisy pale background, a faint distractor, and the sign that decides the
/// label: a cool-coloured disc (`benign`) or a warm-coloured triangle (`mean`), at a random
/// place and size.
fn meme_image(label: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let base: [i32; 3] = [
        rng.random_range(170..235),
        rng.random_range(170..235),
        rng.random_range(170..235),
    ];
    let mut img = RgbImage::from_fn(64, 64, |_, _| {
        let n = rng.random_range(-18..18);
        Rgb(base.map(|c| (c + n).clamp(0, 255) as u8))
    });
    // the distractor: a small low-contrast square anywhere
    let (dx, dy, ds) = (
        rng.random_range(0..56u32),
        rng.random_range(0..56u32),
        rng.random_range(4..9u32),
    );
    let shade = [base[0] - 25, base[1] - 25, base[2] - 25].map(|c| c.clamp(0, 255) as u8);
    for y in dy..(dy + ds).min(64) {
        for x in dx..(dx + ds).min(64) {
            img.put_pixel(x, y, Rgb(shade));
        }
    }
    let (cx, cy, r) = (
        rng.random_range(18..46) as f32,
        rng.random_range(18..46) as f32,
        rng.random_range(9..16) as f32,
    );
    let colour = if label == 0 {
        [
            rng.random_range(0..90u8),
            rng.random_range(90..200u8),
            rng.random_range(150..255u8),
        ]
    } else {
        [
            rng.random_range(190..255u8),
            rng.random_range(30..140u8),
            rng.random_range(0..60u8),
        ]
    };
    for y in 0..64 {
        for x in 0..64 {
            let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = if label == 0 {
                px * px + py * py <= r * r
            } else {
                // an upward triangle inside the circle of radius r
                py <= r * 0.5 && py >= -r && px.abs() <= (py + r) * 0.577
            };
            if inside {
                img.put_pixel(x, y, Rgb(colour));
            }
        }
    }
    img
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

/// A line whose subject and place come from topic `a` and whose verb and object come from `b`.
fn mixed_news_line(a: &Topic, b: &Topic, rng: &mut ChaCha8Rng) -> String {
    let pick = |xs: &[&'static str], rng: &mut ChaCha8Rng| *xs.choose(rng).expect("non-empty");
    let (s, v, o, p) = (
        pick(a.subjects, rng),
        pick(b.verbs, rng),
        pick(b.objects, rng),
        pick(a.places, rng),
    );
    match rng.random_range(0..2) {
        0 => format!("{s} {v} {o} {p}"),
        _ => format!("{} {s} {v} {o}", pick(FILLER, rng)),
    }
}

/// Colour of the disc of an ambiguous example's picture.
const GREY_DISC: [u8; 3] = [150, 150, 150];

/// A 48x48 picture: a disc on a noisy background, in the topic's colour, or grey for an
/// ambiguous example (`None`).
fn news_image(topic: Option<usize>, rng: &mut ChaCha8Rng) -> RgbImage {
    let c = topic.map_or(GREY_DISC, |t| TOPICS[t].colour);
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
    fn the_demos_are_the_same_for_the_same_seed_balanced_and_readable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for dir in [&a, &b] {
            write_demo_news(dir.path(), 7).unwrap();
            write_demo_memes(dir.path(), 7).unwrap();
        }
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        for f in [
            "demo-news/train.jsonl",
            "demo-memes/test.jsonl",
            "demo-memes/img/50000.png",
        ] {
            assert_eq!(read(a.path(), f), read(b.path(), f), "{f}");
        }
        let news = crate::data::detect(&a.path().join(DEMO_NEWS))
            .unwrap()
            .unwrap();
        let ds = crate::data::load(DEMO_NEWS, &news, crate::data::Check::Strict).unwrap();
        assert_eq!(ds.label_names, NEWS_TOPICS);
        assert_eq!(ds.train.len(), 384);
        for k in 0..4 {
            assert_eq!(ds.train.iter().filter(|e| e.label == Some(k)).count(), 96);
        }
        // clear pictures repeat the topic, ambiguous ones are grey: about one in four
        let grey = ds
            .train
            .iter()
            .filter(|e| {
                let img = image::open(ds.image_path(e).unwrap()).unwrap().to_rgb8();
                img.pixels().any(|p| p.0 == GREY_DISC)
            })
            .count();
        assert!((70..=120).contains(&grey), "{grey} ambiguous of 384");
        let memes = crate::data::detect(&a.path().join(DEMO_MEMES))
            .unwrap()
            .unwrap();
        let ds = crate::data::load(DEMO_MEMES, &memes, crate::data::Check::Strict).unwrap();
        assert_eq!(
            (ds.train.len(), ds.dev.len(), ds.test.len()),
            (1600, 400, 400)
        );
        // every caption has both labels, so the caption alone cannot tell them apart
        for split in [&ds.train, &ds.dev, &ds.test] {
            let mut by_text: std::collections::HashMap<&str, Vec<usize>> = Default::default();
            for e in split.iter() {
                by_text.entry(&e.text).or_default().push(e.label.unwrap());
            }
            assert!(by_text.values().all(|l| {
                let mut l = l.clone();
                l.sort();
                l == [0, 1]
            }));
        }
        let decoded = image::open(ds.image_path(&ds.train[0]).unwrap()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 64));
    }
}
