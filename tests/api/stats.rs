//! The statistics against numpy, scipy and scikit-learn: bootstrap intervals of accuracy, F1
//! and AUROC, the paired bootstrap of a difference with its p-value, McNemar's exact test and
//! the spread across seeds with the t-interval of its mean, on generated cases (`tests/reference/stats_reference.py` computes
//! the reference from the same resamples).

use crate::helpers::run_python;
use modalbench::eval::stats::{self, Scored, Statistic};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::path::Path;

struct Case {
    labels: Vec<usize>,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    num_labels: usize,
    seed_values: Vec<f64>,
}

/// Two runs on `n` examples of `k` classes: `a` right about `skill_a` of the time, `b` about
/// `skill_b`, with noisy scores.
fn case(seed: u64, n: usize, k: usize, skill_a: f64, skill_b: f64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..k)).collect();
    let mut run = |skill: f64| -> Vec<Vec<f32>> {
        labels
            .iter()
            .map(|&l| {
                let mut row: Vec<f32> = (0..k).map(|_| rng.random::<f32>()).collect();
                if rng.random::<f64>() < skill {
                    row[l] += 1.0;
                }
                let sum: f32 = row.iter().sum();
                row.iter().map(|v| v / sum).collect()
            })
            .collect()
    };
    let (a, b) = (run(skill_a), run(skill_b));
    let seed_values = (0..3 + seed as usize % 3)
        .map(|_| 0.6 + 0.2 * rng.random::<f64>())
        .collect();
    Case {
        labels,
        a,
        b,
        num_labels: k,
        seed_values,
    }
}

fn scored<'a>(c: &'a Case, probs: &'a [Vec<f32>]) -> Scored<'a> {
    Scored {
        labels: &c.labels,
        probs,
        num_labels: c.num_labels,
    }
}

fn close(ours: f64, theirs: &Value, what: &str) {
    let theirs = theirs
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no reference value"));
    assert!(
        (ours - theirs).abs() < 1e-9,
        "{what}: ours {ours}, the reference {theirs}"
    );
}

#[test]
fn intervals_differences_mcnemar_and_spread_match_numpy_scipy_and_sklearn() {
    // one example of the positive class: many resamples have no AUROC
    let mut rare = case(4, 8, 2, 0.5, 0.5);
    rare.labels = vec![1, 0, 0, 0, 0, 0, 0, 0];
    let cases = [
        case(1, 150, 2, 0.7, 0.5),
        case(2, 90, 3, 0.6, 0.6),
        case(3, 200, 2, 0.9, 0.85),
        rare,
    ];
    let resamples = 300;
    let mut json_cases = Vec::new();
    let mut all_resamples = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let res = stats::resamples(c.labels.len(), resamples, 100 + i as u64);
        json_cases.push(json!({
            "labels": c.labels, "a": c.a, "b": c.b, "num_labels": c.num_labels,
            "resamples": res, "seed_values": c.seed_values,
        }));
        all_resamples.push(res);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, serde_json::to_string(&json_cases).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/stats_reference.py");
    let out = run_python(
        "the statistics reference",
        [script.as_os_str(), file.as_os_str()],
    );
    let reference: Vec<Value> = serde_json::from_slice(&out).unwrap();

    let mut undefined_auroc_seen = false;
    for ((c, res), r) in cases.iter().zip(&all_resamples).zip(&reference) {
        let scored = |probs| scored(c, probs);
        let (a, b) = (c.a.as_slice(), c.b.as_slice());
        for stat in Statistic::ALL {
            let name = serde_json::to_value(stat).unwrap();
            let name = name.as_str().unwrap();
            for (run, probs) in [("a", a), ("b", b)] {
                let theirs = &r["runs"][run][name];
                match stats::interval(stat, scored(probs), res) {
                    Some(iv) => {
                        close(iv.estimate, &theirs["estimate"], &format!("{run} {name}"));
                        close(iv.low, &theirs["low"], &format!("{run} {name} low"));
                        close(iv.high, &theirs["high"], &format!("{run} {name} high"));
                    }
                    None => assert!(theirs.is_null(), "{run} {name}: the reference has {theirs}"),
                }
            }
            let theirs = &r["difference"][name];
            match stats::paired_difference(stat, scored(a), scored(b), res) {
                Some(d) => {
                    close(
                        d.interval.estimate,
                        &theirs["estimate"],
                        &format!("a-b {name}"),
                    );
                    close(d.interval.low, &theirs["low"], &format!("a-b {name} low"));
                    close(
                        d.interval.high,
                        &theirs["high"],
                        &format!("a-b {name} high"),
                    );
                    close(d.p_value, &theirs["p_value"], &format!("a-b {name} p"));
                }
                None => assert!(theirs.is_null(), "a-b {name}: the reference has {theirs}"),
            }
            if stat == Statistic::Auroc && res.iter().any(|idx| stat.on(scored(a), idx).is_none()) {
                undefined_auroc_seen = true;
            }
        }
        let m = stats::mcnemar(&stats::right(scored(a)), &stats::right(scored(b)));
        assert_eq!(
            m.only_first as u64,
            r["mcnemar"]["only_first"].as_u64().unwrap()
        );
        assert_eq!(
            m.only_second as u64,
            r["mcnemar"]["only_second"].as_u64().unwrap()
        );
        close(m.p_value, &r["mcnemar"]["p_value"], "McNemar p");
        let s = stats::spread(&c.seed_values);
        close(s.mean, &r["spread"]["mean"], "mean");
        close(s.std, &r["spread"]["std"], "std");
        assert_eq!(s.n as u64, r["spread"]["n"].as_u64().unwrap());
        let iv = stats::mean_interval(&c.seed_values).unwrap();
        close(iv.low, &r["mean_interval"]["low"], "t-interval low");
        close(iv.high, &r["mean_interval"]["high"], "t-interval high");
    }
    assert!(
        undefined_auroc_seen,
        "a case with resamples lacking a class"
    );
}
