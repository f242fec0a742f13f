//! Classification metrics computed in pure Rust, matching scikit-learn.
//!
//! All sums are accumulated in `f64`. The semantics follow scikit-learn's
//! `accuracy_score`, `f1_score` and `roc_auc_score`; the integration test
//! `tests/api/metrics.rs` checks them against scikit-learn itself.

use serde::Serialize;

/// Summary metrics for one evaluation pass over a labelled data set.
///
/// Built by [`classification_metrics`] from gold labels and per-class
/// probabilities, where predictions are the [`argmax`] of each row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    /// Fraction of examples whose argmax prediction equals the label (see [`accuracy`]).
    pub accuracy: f64,
    /// Binary F1 of class 1, or macro F1 over all classes (see [`f1`]).
    pub f1: f64,
    /// Area under the ROC curve, `None` when undefined (see [`auroc`]).
    pub auroc: Option<f64>,
    /// Number of examples the metrics were computed over.
    pub num_examples: usize,
}

/// Computes accuracy, F1 and AUROC from per-class probabilities.
///
/// `probs[i][k]` is the probability of class `k` for example `i` (rows sum to 1)
/// and `labels[i]` is in `0..num_labels`. Predictions are `argmax(probs[i])`.
///
/// # Panics
/// If `labels` and `probs` differ in length, a label is not below `num_labels`,
/// or a row has fewer than `num_labels` entries.
pub fn classification_metrics(
    labels: &[usize],
    probs: &[Vec<f32>],
    num_labels: usize,
) -> ClassificationMetrics {
    assert_eq!(
        labels.len(),
        probs.len(),
        "labels and probs differ in length"
    );
    let preds: Vec<usize> = probs.iter().map(|row| argmax(row)).collect();
    ClassificationMetrics {
        accuracy: accuracy(labels, &preds),
        f1: f1(labels, &preds, num_labels),
        auroc: auroc(labels, probs, num_labels),
        num_examples: labels.len(),
    }
}

/// Fraction of positions where `preds` equals `labels`; `0.0` for empty input.
///
/// # Panics
/// If `labels` and `preds` differ in length.
pub fn accuracy(labels: &[usize], preds: &[usize]) -> f64 {
    assert_eq!(
        labels.len(),
        preds.len(),
        "labels and preds differ in length"
    );
    if labels.is_empty() {
        return 0.0;
    }
    let correct = labels.iter().zip(preds).filter(|(l, p)| l == p).count();
    correct as f64 / labels.len() as f64
}

/// F1 score, as scikit-learn's `f1_score` with `zero_division=0`.
///
/// * binary (`num_labels == 2`): F1 of the positive class 1 (`average='binary'`);
/// * multi-class: unweighted mean of the per-class F1 over all classes
///   `0..num_labels` (`average='macro'`, `labels=range(num_labels)`), so a class
///   that is neither present nor predicted contributes 0.
///
/// A class with no predicted positives has precision 0 and F1 0. Empty input
/// (or `num_labels == 0`) gives `0.0`.
///
/// # Panics
/// If `labels` and `preds` differ in length, or any label or prediction is not
/// below `num_labels`.
pub fn f1(labels: &[usize], preds: &[usize], num_labels: usize) -> f64 {
    assert_eq!(
        labels.len(),
        preds.len(),
        "labels and preds differ in length"
    );
    if labels.is_empty() || num_labels == 0 {
        return 0.0;
    }
    // Per class: true positives, and how often it is the label / the prediction.
    let mut tp = vec![0usize; num_labels];
    let mut actual = vec![0usize; num_labels];
    let mut predicted = vec![0usize; num_labels];
    for (&l, &p) in labels.iter().zip(preds) {
        assert!(
            l < num_labels,
            "label {l} is not below num_labels {num_labels}"
        );
        assert!(
            p < num_labels,
            "prediction {p} is not below num_labels {num_labels}"
        );
        actual[l] += 1;
        predicted[p] += 1;
        if l == p {
            tp[l] += 1;
        }
    }
    // F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (actual + predicted); 0 when tp == 0.
    let class_f1 = |k: usize| {
        let denom = actual[k] + predicted[k];
        if tp[k] == 0 {
            0.0
        } else {
            2.0 * tp[k] as f64 / denom as f64
        }
    };
    if num_labels == 2 {
        class_f1(1)
    } else {
        (0..num_labels).map(class_f1).sum::<f64>() / num_labels as f64
    }
}

/// Area under the ROC curve, as scikit-learn's `roc_auc_score`.
///
/// * binary (`num_labels == 2`): AUROC of the class-1 scores `probs[i][1]`,
///   computed as the Mann-Whitney statistic with average ranks for ties (a tied
///   positive/negative pair counts one half);
/// * multi-class: one-vs-rest AUROC of `probs[i][k]` for each class `k`,
///   averaged without weights (`multi_class='ovr'`, `average='macro'`).
///
/// Returns `None` when undefined: empty input, only one class present in the
/// labels (binary), **any** class in `0..num_labels` absent from the labels
/// (multi-class; scikit-learn yields NaN or raises there), or a NaN score.
///
/// # Panics
/// If `labels` and `probs` differ in length, a label is not below `num_labels`,
/// or a row has fewer than `num_labels` entries.
pub fn auroc(labels: &[usize], probs: &[Vec<f32>], num_labels: usize) -> Option<f64> {
    assert_eq!(
        labels.len(),
        probs.len(),
        "labels and probs differ in length"
    );
    for &l in labels {
        assert!(
            l < num_labels,
            "label {l} is not below num_labels {num_labels}"
        );
    }
    let one_vs_rest = |k: usize| {
        let scored: Vec<(f64, bool)> = labels
            .iter()
            .zip(probs)
            .map(|(&l, row)| (f64::from(row[k]), l == k))
            .collect();
        binary_auroc(scored)
    };
    match num_labels {
        0 | 1 => None,
        2 => one_vs_rest(1),
        _ => {
            let mut sum = 0.0;
            for k in 0..num_labels {
                sum += one_vs_rest(k)?;
            }
            Some(sum / num_labels as f64)
        }
    }
}

/// Mann-Whitney AUROC of `(score, is_positive)` pairs; `None` without both
/// classes or with a NaN score.
fn binary_auroc(mut scored: Vec<(f64, bool)>) -> Option<f64> {
    if scored.iter().any(|(s, _)| s.is_nan()) {
        return None;
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Walk groups of equal scores in ascending order; each positive beats every
    // negative below its group and ties (half credit) with negatives in it.
    let (mut wins, mut neg_below, mut pos_total) = (0.0f64, 0usize, 0usize);
    let mut start = 0;
    while start < scored.len() {
        let score = scored[start].0;
        let len = scored[start..]
            .iter()
            .take_while(|(s, _)| *s == score)
            .count();
        let pos = scored[start..start + len]
            .iter()
            .filter(|(_, p)| *p)
            .count();
        let neg = len - pos;
        wins += pos as f64 * (neg_below as f64 + 0.5 * neg as f64);
        neg_below += neg;
        pos_total += pos;
        start += len;
    }
    if pos_total == 0 || neg_below == 0 {
        return None;
    }
    Some(wins / (pos_total as f64 * neg_below as f64))
}

/// Index of the largest value, the first one on ties, like `numpy.argmax`
/// (a NaN counts as the maximum, so the first NaN wins). Returns 0 for an
/// empty row.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(scores: &[f32]) -> Vec<Vec<f32>> {
        scores.iter().map(|&s| vec![1.0 - s, s]).collect()
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_the_first_nan() {
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[0.1, f32::NAN, 0.9, f32::NAN]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn auroc_is_one_for_perfect_zero_for_inverted_and_half_for_all_ties() {
        let labels = [0, 0, 1, 1];
        assert_eq!(auroc(&labels, &binary(&[0.1, 0.2, 0.8, 0.9]), 2), Some(1.0));
        assert_eq!(auroc(&labels, &binary(&[0.9, 0.8, 0.2, 0.1]), 2), Some(0.0));
        assert_eq!(auroc(&labels, &binary(&[0.5; 4]), 2), Some(0.5));
    }

    #[test]
    fn auroc_gives_tied_pairs_half_credit() {
        // Pairs (pos, neg): 0.5 vs 0.5 tie -> 0.5, 0.5 vs 0.1 -> 1, 0.9 vs both -> 2.
        let labels = [0, 0, 1, 1];
        let got = auroc(&labels, &binary(&[0.1, 0.5, 0.5, 0.9]), 2).unwrap();
        assert!((got - 3.5 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn auroc_is_none_with_a_single_class_or_an_absent_class() {
        assert_eq!(auroc(&[1, 1], &binary(&[0.3, 0.7]), 2), None);
        assert_eq!(auroc(&[], &[], 2), None);
        let probs = vec![vec![0.6, 0.3, 0.1], vec![0.2, 0.7, 0.1]];
        assert_eq!(auroc(&[0, 1], &probs, 3), None);
    }

    #[test]
    fn f1_scores_a_never_predicted_class_as_zero() {
        // Binary: positive class never predicted.
        assert_eq!(f1(&[0, 1, 1], &[0, 0, 0], 2), 0.0);
        // Macro over 3 classes: class 2 is absent and never predicted.
        let got = f1(&[0, 1, 1, 0], &[0, 1, 0, 0], 3);
        let expected = (0.8 + 2.0 / 3.0 + 0.0) / 3.0;
        assert!((got - expected).abs() < 1e-12);
    }

    #[test]
    fn empty_input_gives_zero_accuracy_and_f1_and_no_auroc() {
        let m = classification_metrics(&[], &[], 3);
        assert_eq!(
            m,
            ClassificationMetrics {
                accuracy: 0.0,
                f1: 0.0,
                auroc: None,
                num_examples: 0
            }
        );
    }
}
