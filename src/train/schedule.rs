//! Learning-rate schedule: linear warm-up from 0 to the peak, then linear decay to 0
//! (Hugging Face's `get_linear_schedule_with_warmup`).

/// Learning rate for optimisation step `step` (0-based) of `total` steps with `warmup` warm-up
/// steps.
pub fn linear_with_warmup(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    peak * (remaining / total.saturating_sub(warmup).max(1) as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_rises_linearly_then_decays_to_zero() {
        // the same values torch.optim.lr_scheduler.LambdaLR gives with Hugging Face's lambda:
        // step < warmup: step / warmup; else (total - step) / (total - warmup)
        let lrs: Vec<f64> = (0..=10)
            .map(|s| linear_with_warmup(1.0, s, 2, 10))
            .collect();
        let expected = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!(linear_with_warmup(1.0, 0, 0, 4), 1.0);
    }
}
