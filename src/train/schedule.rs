//! Learning-rate schedules: linear warm-up from 0 to the peak, then linear decay to 0, half a
//! cosine wave down to 0, or the peak held (Hugging Face's `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` and `get_constant_schedule_with_warmup`).

use crate::runs::LrScheduler;

/// Learning rate for optimisation step `step` (0-based) of `total` steps with `warmup` warm-up
/// steps, under `schedule`.
pub fn learning_rate(schedule: LrScheduler, peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    match schedule {
        LrScheduler::Linear => linear_with_warmup(peak, step, warmup, total),
        LrScheduler::Cosine => cosine_with_warmup(peak, step, warmup, total),
        LrScheduler::ConstantWithWarmup => constant_with_warmup(peak, step, warmup),
    }
}

/// Half a cosine wave from the peak after warm-up to 0 at step `total`.
pub fn cosine_with_warmup(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// The peak after warm-up.
pub fn constant_with_warmup(peak: f64, step: u64, warmup: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    peak
}

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

    #[test]
    fn cosine_and_constant_follow_their_formulas() {
        // Hugging Face: max(0, 0.5 * (1 + cos(pi * 2 * 0.5 * progress))) after warm-up
        let c: Vec<f64> = (0..=6).map(|s| cosine_with_warmup(1.0, s, 2, 6)).collect();
        let expected = [
            0.0,
            0.5,
            1.0,
            0.853_553_390_593_273_8,
            0.5,
            0.146_446_609_406_726_2,
            0.0,
        ];
        for (a, b) in c.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{c:?}");
        }
        let k: Vec<f64> = (0..4).map(|s| constant_with_warmup(2.0, s, 2)).collect();
        assert_eq!(k, [0.0, 1.0, 2.0, 2.0]);
    }
}
