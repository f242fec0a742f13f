//! Checks `modalbench::eval::metrics` against scikit-learn.
//!
//! The expected values are not stored here: they are computed by scikit-learn
//! at test time, by running `tests/reference/sklearn_metrics.py` with the
//! project's Python on cases generated deterministically below.

use std::process::Command;

use crate::helpers::python;

use modalbench::eval::metrics::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Case {
    labels: Vec<usize>,
    /// Sent as f64 so scikit-learn sees exactly the f32 values Rust scores.
    probs: Vec<Vec<f64>>,
    num_labels: usize,
    #[serde(skip)]
    probs_f32: Vec<Vec<f32>>,
}

#[derive(Deserialize, Debug)]
struct Expected {
    accuracy: f64,
    f1: f64,
    auroc: Option<f64>,
}

/// xorshift64* generator, so the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a case's labels and scores are drawn.
#[derive(Clone, Copy)]
struct Style {
    /// Scores in tenths, so many ties.
    tenths: bool,
    /// Probability that a label is class 0 (otherwise uniform over the rest);
    /// `None` for uniform labels.
    majority: Option<f64>,
    /// The last class always gets probability 0, so it is never predicted.
    starve_last: bool,
}

fn make_case(rng: &mut Rng, n: usize, k: usize, style: Style) -> Case {
    let mut labels = Vec::with_capacity(n);
    let mut probs_f32 = Vec::with_capacity(n);
    let live = if style.starve_last { k - 1 } else { k };
    for _ in 0..n {
        let label = match style.majority {
            Some(p) if rng.unit() < p => 0,
            Some(_) => 1 + rng.below(k - 1),
            None => rng.below(k),
        };
        // Informative but noisy scores: the true class gets a bonus.
        let row: Vec<f32> = if style.tenths {
            let mut units = vec![0u32; k];
            for _ in 0..10 {
                let c = if rng.unit() < 0.3 && label < live {
                    label
                } else {
                    rng.below(live)
                };
                units[c] += 1;
            }
            units.iter().map(|&u| u as f32 / 10.0).collect()
        } else {
            let mut w: Vec<f64> = (0..k).map(|_| rng.unit()).collect();
            w[label] += 0.5 * rng.unit();
            if style.starve_last {
                w[k - 1] = 0.0;
            }
            let total: f64 = w.iter().sum();
            w.iter().map(|&x| (x / total) as f32).collect()
        };
        labels.push(label);
        probs_f32.push(row);
    }
    Case {
        labels,
        probs: probs_f32
            .iter()
            .map(|r| r.iter().map(|&p| f64::from(p)).collect())
            .collect(),
        num_labels: k,
        probs_f32,
    }
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let plain = Style {
        tenths: false,
        majority: None,
        starve_last: false,
    };
    let styles = [
        plain,
        Style {
            tenths: true,
            ..plain
        },
        Style {
            majority: Some(0.9),
            ..plain
        },
        Style {
            tenths: true,
            majority: Some(0.85),
            ..plain
        },
        Style {
            starve_last: true,
            ..plain
        },
        Style {
            tenths: true,
            starve_last: true,
            ..plain
        },
    ];
    let mut out = Vec::new();
    for k in [2, 3, 5] {
        for n in [1, 2, 3, 7, 20, 64, 150, 333, 500] {
            for style in styles {
                out.push(make_case(&mut rng, n, k, style));
            }
        }
    }
    // Hand-made edge cases: all scores tied, a single class, perfect and inverted ranking.
    let fixed = |labels: Vec<usize>, probs_f32: Vec<Vec<f32>>, num_labels| Case {
        probs: probs_f32
            .iter()
            .map(|r| r.iter().map(|&p| f64::from(p)).collect())
            .collect(),
        labels,
        num_labels,
        probs_f32,
    };
    out.push(fixed(vec![0, 1, 0, 1], vec![vec![0.5, 0.5]; 4], 2));
    out.push(fixed(
        vec![1, 1, 1],
        vec![vec![0.2, 0.8], vec![0.6, 0.4], vec![0.5, 0.5]],
        2,
    ));
    out.push(fixed(
        vec![0, 0, 1, 1],
        vec![
            vec![0.9, 0.1],
            vec![0.7, 0.3],
            vec![0.4, 0.6],
            vec![0.1, 0.9],
        ],
        2,
    ));
    out.push(fixed(
        vec![1, 1, 0, 0],
        vec![
            vec![0.9, 0.1],
            vec![0.7, 0.3],
            vec![0.4, 0.6],
            vec![0.1, 0.9],
        ],
        2,
    ));
    out.push(fixed(vec![0, 1, 2], vec![vec![1.0 / 3.0; 3]; 3], 3));
    out
}

fn sklearn_reference(cases: &[Case]) -> Vec<Expected> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!(
        "modalbench-metrics-cases-{}-{nanos}.json",
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_vec(cases).unwrap()).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/sklearn_metrics.py");
    let python = python();
    let output = Command::new(&python).arg(&script).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = output.unwrap_or_else(|e| panic!("could not run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "{} {} failed ({}); is scikit-learn installed (run `make test`)?\n{}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bad reference output ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

#[test]
fn metrics_match_scikit_learn_on_binary_multiclass_and_tied_cases() {
    let cases = cases();
    let expected = sklearn_reference(&cases);
    assert_eq!(expected.len(), cases.len());
    let mut defined_auroc = [0usize; 6];
    for (i, (case, want)) in cases.iter().zip(&expected).enumerate() {
        let got = classification_metrics(&case.labels, &case.probs_f32, case.num_labels);
        let what = format!(
            "case {i} (n={}, K={}): rust {got:?}, sklearn {want:?}",
            case.labels.len(),
            case.num_labels
        );
        assert_eq!(got.num_examples, case.labels.len(), "{what}");
        assert!(
            close(got.accuracy, want.accuracy),
            "accuracy differs in {what}"
        );
        assert!(close(got.f1, want.f1), "f1 differs in {what}");
        match (got.auroc, want.auroc) {
            (Some(a), Some(b)) => {
                assert!(close(a, b), "auroc differs in {what}");
                defined_auroc[case.num_labels] += 1;
            }
            (None, None) => {}
            _ => panic!("auroc definedness differs in {what}"),
        }
    }
    // The comparison must have exercised defined AUROC for every class count.
    for k in [2, 3, 5] {
        assert!(
            defined_auroc[k] >= 10,
            "too few defined AUROC cases for K={k}: {defined_auroc:?}"
        );
    }
}
