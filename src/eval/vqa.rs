//! VQA accuracy (Antol et al., 2015; the official evaluation, `vqaEval.py` of
//! GT-Vision-Lab/VQA): an answer scores min(1, matches / 3) against each leave-one-out subset
//! of the ten annotators' answers, averaged over the subsets.

/// VQA accuracy of `pred` against the annotators' `answers` (both already normalised with
/// [`crate::data::formats::vqa::normalize_answer`]). No answers: 0.
pub fn vqa_accuracy(pred: &str, answers: &[String]) -> f64 {
    let n = answers.len();
    if n == 0 {
        return 0.0;
    }
    let total = answers.iter().filter(|a| *a == pred).count();
    let sum: f64 = answers
        .iter()
        .map(|left_out| {
            let matches = total - usize::from(left_out == pred);
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    sum / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_or_more_matching_annotators_give_full_credit_fewer_give_a_share() {
        // worked by hand from vqaEval.py: with k matches among ten, each leave-one-out subset
        // holds k-1 matches (if a matching answer is left out, k times) or k (10-k times)
        let ten = |k: usize| answers(&[vec!["yes"; k], vec!["no"; 10 - k]].concat());
        assert_eq!(vqa_accuracy("yes", &ten(0)), 0.0);
        assert!((vqa_accuracy("yes", &ten(1)) - 0.3).abs() < 1e-12); // 9/10 * 1/3
        assert!((vqa_accuracy("yes", &ten(2)) - 0.6).abs() < 1e-12); // (2*1/3 + 8*2/3) / 10
        assert!((vqa_accuracy("yes", &ten(3)) - 0.9).abs() < 1e-12); // (3*2/3 + 7*1) / 10
        assert_eq!(vqa_accuracy("yes", &ten(4)), 1.0);
        assert_eq!(vqa_accuracy("maybe", &[]), 0.0);
    }
}
