//! The statistics behind comparisons and verdicts: percentile-bootstrap 95% intervals of a
//! split's accuracy, F1 and AUROC over its examples; the paired bootstrap of the difference
//! between two runs scored on the same examples (the same resampled examples for both), with
//! its two-sided p-value; McNemar's exact test on the examples one run gets right and the other
//! wrong; and the mean, standard deviation and count of a figure across seeds.
//!
//! Resamples are drawn from a seeded generator ([`resamples`]), so a page shows the same
//! interval every time it is drawn; percentiles interpolate linearly between order statistics,
//! as numpy's default does.

use crate::eval::metrics::{accuracy, argmax, auroc, f1};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Confidence of every interval.
pub const CONFIDENCE: f64 = 0.95;
/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2000;
/// Seed of the resamples.
pub const SEED: u64 = 20_211_101;
/// Differences this close to zero are ties (the same metric computed two ways can differ in
/// the last bits).
const TIE: f64 = 1e-12;

/// A figure with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Interval {
    /// The figure on all the examples.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// `count` resamples of `n` examples, with replacement.
pub fn resamples(n: usize, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| (0..n).map(|_| rng.random_range(0..n.max(1))).collect())
        .collect()
}

/// The `q` quantile (0 to 1) of sorted values, interpolating linearly between neighbours.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The central [`CONFIDENCE`] interval of bootstrap values (those that are defined).
fn percentile_interval(estimate: f64, mut values: Vec<f64>) -> Option<Interval> {
    values.retain(|v| v.is_finite());
    if values.is_empty() || !estimate.is_finite() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    Some(Interval {
        estimate,
        low: quantile(&values, tail),
        high: quantile(&values, 1.0 - tail),
    })
}

/// A scored split: each example's label and class scores.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    pub labels: &'a [usize],
    pub probs: &'a [Vec<f32>],
    pub num_labels: usize,
}

/// A classification metric of a scored split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    Accuracy,
    F1,
    Auroc,
}

impl Statistic {
    pub const ALL: [Statistic; 3] = [Statistic::Accuracy, Statistic::F1, Statistic::Auroc];

    /// The metric on the examples `idx` (repeats count); `None` where it is undefined (AUROC
    /// with a class missing).
    pub fn on(self, s: Scored, idx: &[usize]) -> Option<f64> {
        let labels: Vec<usize> = idx.iter().map(|&i| s.labels[i]).collect();
        match self {
            Statistic::Accuracy | Statistic::F1 => {
                let preds: Vec<usize> = idx.iter().map(|&i| argmax(&s.probs[i])).collect();
                Some(if self == Statistic::Accuracy {
                    accuracy(&labels, &preds)
                } else {
                    f1(&labels, &preds, s.num_labels)
                })
            }
            Statistic::Auroc => {
                let probs: Vec<Vec<f32>> = idx.iter().map(|&i| s.probs[i].clone()).collect();
                auroc(&labels, &probs, s.num_labels)
            }
        }
    }
}

/// The bootstrap interval of `stat` on a scored split, over `resamples` of its examples.
pub fn interval(stat: Statistic, s: Scored, resamples: &[Vec<usize>]) -> Option<Interval> {
    let all: Vec<usize> = (0..s.labels.len()).collect();
    let estimate = stat.on(s, &all)?;
    let values = resamples
        .iter()
        .map(|idx| stat.on(s, idx).unwrap_or(f64::NAN))
        .collect();
    percentile_interval(estimate, values)
}

/// The difference `a − b` of two runs scored on the same examples (same order), with its
/// paired interval and two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Difference {
    #[serde(flatten)]
    pub interval: Interval,
    /// Twice the smaller share of resampled differences on either side of zero (at least one
    /// resample's worth): how often a difference of the other sign turns up.
    pub p_value: f64,
}

/// The paired bootstrap of `stat(a) − stat(b)`: both runs scored on the same resampled
/// examples.
pub fn paired_difference(
    stat: Statistic,
    a: Scored,
    b: Scored,
    resamples: &[Vec<usize>],
) -> Option<Difference> {
    assert_eq!(a.labels.len(), b.labels.len(), "the same examples");
    let all: Vec<usize> = (0..a.labels.len()).collect();
    let estimate = stat.on(a, &all)? - stat.on(b, &all)?;
    let diffs: Vec<f64> = resamples
        .iter()
        .map(|idx| match (stat.on(a, idx), stat.on(b, idx)) {
            (Some(x), Some(y)) => x - y,
            _ => f64::NAN,
        })
        .collect();
    difference_of(estimate, diffs)
}

/// A difference's interval and two-sided p-value from its resampled values.
fn difference_of(estimate: f64, diffs: Vec<f64>) -> Option<Difference> {
    let defined: Vec<f64> = diffs.iter().copied().filter(|d| d.is_finite()).collect();
    let n = defined.len().max(1) as f64;
    // differences within rounding of zero are ties, counted on both sides
    let below = defined.iter().filter(|d| **d <= TIE).count() as f64 / n;
    let above = defined.iter().filter(|d| **d >= -TIE).count() as f64 / n;
    let p_value = (2.0 * below.min(above)).clamp(1.0 / n, 1.0);
    Some(Difference {
        interval: percentile_interval(estimate, diffs)?,
        p_value,
    })
}

/// The paired bootstrap of the difference of mean accuracy between two groups of runs (the
/// seeds of two configurations) on the same examples: each row of `a` and `b` says which
/// examples one run got right; each resample draws examples, and every run is scored on them.
pub fn pooled_accuracy_difference(
    a: &[Vec<bool>],
    b: &[Vec<bool>],
    resamples: &[Vec<usize>],
) -> Option<Difference> {
    let n = a.first()?.len();
    if b.is_empty() || a.iter().chain(b).any(|r| r.len() != n) || n == 0 {
        return None;
    }
    let mean = |runs: &[Vec<bool>], idx: &[usize]| {
        runs.iter()
            .map(|r| idx.iter().filter(|&&i| r[i]).count() as f64 / idx.len() as f64)
            .sum::<f64>()
            / runs.len() as f64
    };
    let all: Vec<usize> = (0..n).collect();
    let estimate = mean(a, &all) - mean(b, &all);
    let diffs = resamples
        .iter()
        .map(|idx| mean(a, idx) - mean(b, idx))
        .collect();
    difference_of(estimate, diffs)
}

/// McNemar's exact test of two runs' accuracy on the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Examples only the first run gets right.
    pub only_first: usize,
    /// Examples only the second run gets right.
    pub only_second: usize,
    /// Two-sided exact binomial p-value of the split of the discordant examples.
    pub p_value: f64,
}

/// McNemar's exact test on the examples each run gets right.
pub fn mcnemar(first_right: &[bool], second_right: &[bool]) -> McNemar {
    assert_eq!(first_right.len(), second_right.len(), "the same examples");
    let only_first = first_right
        .iter()
        .zip(second_right)
        .filter(|(a, b)| **a && !**b)
        .count();
    let only_second = first_right
        .iter()
        .zip(second_right)
        .filter(|(a, b)| !**a && **b)
        .count();
    McNemar {
        only_first,
        only_second,
        p_value: binomial_two_sided(only_first.min(only_second), only_first + only_second),
    }
}

/// The exact two-sided p-value of `k` or fewer successes in `n` fair trials (the smaller
/// tail, doubled, at most 1).
fn binomial_two_sided(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    // ln C(n, i) − n ln 2, summed in log space
    let mut ln_term = -(n as f64) * std::f64::consts::LN_2;
    let mut terms = vec![ln_term];
    for i in 0..k {
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        terms.push(ln_term);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    if 2 * k == n {
        return 1.0;
    }
    (2.0 * tail).min(1.0)
}

/// Whether each example's top class is its label.
pub fn right(s: Scored) -> Vec<bool> {
    s.labels
        .iter()
        .zip(s.probs)
        .map(|(l, p)| *l == argmax(p))
        .collect()
}

/// A figure across seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single value.
    pub std: f64,
    pub n: usize,
}

/// Mean, sample standard deviation and count of `values`.
pub fn spread(values: &[f64]) -> Spread {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Spread {
        mean,
        std: var.sqrt(),
        n,
    }
}

/// The 95% interval of the mean of `values` by Student's t (`n − 1` degrees of freedom, the
/// standard error from the sample standard deviation), as `scipy.stats.t.interval` gives it;
/// `None` for fewer than two values.
pub fn mean_interval(values: &[f64]) -> Option<Interval> {
    let s = spread(values);
    if s.n < 2 {
        return None;
    }
    let half = t_critical((s.n - 1) as u64) * s.std / (s.n as f64).sqrt();
    Some(Interval {
        estimate: s.mean,
        low: s.mean - half,
        high: s.mean + half,
    })
}

/// The two-sided [`CONFIDENCE`] critical value of Student's t with `df` degrees of freedom,
/// [`t_quantile`] computed once per `df` and kept: a profile of the leaderboard over 20,000
/// runs (300 groups, four metrics each) spent 80% of its time in the bisection.
pub fn t_critical(df: u64) -> f64 {
    static KEPT: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, f64>>> =
        std::sync::OnceLock::new();
    let kept = KEPT.get_or_init(Default::default);
    if let Some(&t) = kept.lock().expect("t critical values").get(&df) {
        return t;
    }
    let t = t_quantile(0.5 + CONFIDENCE / 2.0, df as f64);
    kept.lock().expect("t critical values").insert(df, t);
    t
}

/// The `p` quantile of Student's t with `df` degrees of freedom (bisection on [`t_cdf`]).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0 && df > 0.0, "t_quantile({p}, {df})");
    let mut hi = 1.0;
    while t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    let mut lo = -hi;
    while t_cdf(lo, df) > p {
        lo *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi.abs().max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom:
/// `1 − I_{df/(df+t²)}(df/2, 1/2) / 2` for positive `t`.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 { 1.0 - tail } else { tail }
}

/// The regularised incomplete beta function `I_x(a, b)` (the continued fraction of Numerical
/// Recipes' `betai`, on the side where it converges fast).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz's method).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let a = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |a, (i, c)| a + c / (x + i as f64 + 1.0));
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_t_distribution_has_its_textbook_values() {
        // Γ(5) = 24, Γ(1/2) = √π
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        // with one degree of freedom t is Cauchy: P(T ≤ 1) = 3/4, quantile tan(π(p − 1/2))
        assert!((t_cdf(1.0, 1.0) - 0.75).abs() < 1e-13);
        let q = t_quantile(0.975, 1.0);
        assert!(
            (q - (std::f64::consts::PI * 0.475).tan()).abs() < 1e-9,
            "{q}"
        );
        // symmetric, and the normal's 1.959964 in the limit
        assert!((t_cdf(-2.0, 7.0) + t_cdf(2.0, 7.0) - 1.0).abs() < 1e-13);
        assert!((t_quantile(0.975, 1e7) - 1.959_963_984_540_054).abs() < 1e-6);
        assert!(mean_interval(&[0.7]).is_none());
    }

    #[test]
    fn quantiles_interpolate_as_numpy_does() {
        let v = [1.0, 2.0, 4.0, 8.0];
        // numpy.percentile([1, 2, 4, 8], [0, 25, 50, 97.5]) = 1, 1.75, 3, 7.7
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!((quantile(&v, 0.25) - 1.75).abs() < 1e-12);
        assert!((quantile(&v, 0.5) - 3.0).abs() < 1e-12);
        assert!((quantile(&v, 0.975) - 7.7).abs() < 1e-12);
    }

    #[test]
    fn mcnemar_small_cases_follow_the_binomial() {
        // 0 of 5 discordant pairs for the second run: 2 * 0.5^5
        assert!((mcnemar(&[true; 5], &[false; 5]).p_value - 0.0625).abs() < 1e-12);
        // an even split is no evidence
        let m = mcnemar(&[true, false], &[false, true]);
        assert_eq!((m.only_first, m.only_second, m.p_value), (1, 1, 1.0));
        assert_eq!(mcnemar(&[true], &[true]).p_value, 1.0);
    }

    #[test]
    fn spread_uses_the_sample_deviation() {
        let s = spread(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.mean, s.n), (2.5, 4));
        assert!((s.std - 1.290_994_448_735_805_6).abs() < 1e-12);
        assert_eq!(spread(&[0.7]).std, 0.0);
    }

    #[test]
    fn the_pooled_difference_averages_the_runs_of_each_side() {
        let a = vec![
            vec![true, true, false, true],
            vec![true, false, false, true],
        ];
        let b = vec![vec![false, true, false, false]];
        let res = resamples(4, 500, 1);
        let d = pooled_accuracy_difference(&a, &b, &res).unwrap();
        // (0.75 + 0.5) / 2 − 0.25
        assert!((d.interval.estimate - 0.375).abs() < 1e-12);
        assert!(d.interval.low <= 0.375 && 0.375 <= d.interval.high);
        assert!(pooled_accuracy_difference(&a, &[vec![true]], &res).is_none());
    }
}
