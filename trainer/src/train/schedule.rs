//! Learning-rate schedules, evaluated once per epoch (as MoCo's `adjust_learning_rate` does at
//! the start of every epoch), and the linear batch-size scaling rule.

/// A per-epoch learning-rate schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Schedule {
    /// lr·½(1 + cos(π·epoch/epochs)) — MoCo v2's `--cos`.
    Cosine,
    /// Multiply by `gamma` at each milestone. Milestones are *fractions* of the run so that
    /// short runs keep MoCo v1's shape (120 and 160 of 200 epochs = 0.6, 0.8); milestone `f`
    /// takes effect from epoch ⌈f·epochs⌉.
    Step { milestones: Vec<f64>, gamma: f64 },
    /// Constant lr (few-shot classifier, debugging).
    Constant,
}

impl Schedule {
    /// MoCo v1: ×0.1 at 60 % and 80 % of the epochs (120, 160 of 200).
    pub fn moco_v1_step() -> Schedule {
        Schedule::Step {
            milestones: vec![0.6, 0.8],
            gamma: 0.1,
        }
    }
}

/// The epoch from which a fractional milestone applies: ⌈f·epochs⌉. The small epsilon keeps
/// 0.6·200 (= 120.00000000000001 in binary floating point, or just below) at 120.
fn milestone_epoch(fraction: f64, epochs: usize) -> usize {
    (fraction * epochs as f64 - 1e-9).ceil().max(0.0) as usize
}

/// The learning rate for 0-based `epoch` of `epochs`.
pub fn lr_at(epoch: usize, epochs: usize, base_lr: f64, schedule: &Schedule) -> f64 {
    match schedule {
        Schedule::Cosine => {
            let t = if epochs == 0 {
                0.0
            } else {
                epoch as f64 / epochs as f64
            };
            base_lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step { milestones, gamma } => {
            let passed = milestones
                .iter()
                .filter(|&&f| epoch >= milestone_epoch(f, epochs))
                .count();
            base_lr * gamma.powi(passed as i32)
        }
        Schedule::Constant => base_lr,
    }
}

/// Linear scaling rule (Goyal et al. 2017, as in MoCo and the paper): the lr at `batch` when
/// `base` is the lr at `base_batch`. The one place the rule is written.
pub fn scaled_lr(base: f64, base_batch: usize, batch: usize) -> f64 {
    base * batch as f64 / base_batch as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_values() {
        let e = 200;
        assert_eq!(lr_at(0, e, 0.03, &Schedule::Cosine), 0.03);
        assert!((lr_at(100, e, 0.03, &Schedule::Cosine) - 0.015).abs() < 1e-15);
        assert!(lr_at(200, e, 0.03, &Schedule::Cosine).abs() < 1e-15);
        // A quarter of the way: ½(1 + cos(π/4)) = ½ + √2/4.
        let q = lr_at(50, e, 1.0, &Schedule::Cosine);
        assert!((q - (0.5 + 2f64.sqrt() / 4.0)).abs() < 1e-15);
    }

    #[test]
    fn moco_v1_steps_at_120_and_160_of_200() {
        let s = Schedule::moco_v1_step();
        assert_eq!(lr_at(0, 200, 0.03, &s), 0.03);
        assert_eq!(lr_at(119, 200, 0.03, &s), 0.03);
        assert!((lr_at(120, 200, 0.03, &s) - 0.003).abs() < 1e-15);
        assert!((lr_at(159, 200, 0.03, &s) - 0.003).abs() < 1e-15);
        assert!((lr_at(160, 200, 0.03, &s) - 0.0003).abs() < 1e-15);
        // A 10-epoch run decays at 6 and 8.
        assert_eq!(lr_at(5, 10, 1.0, &s), 1.0);
        assert!((lr_at(6, 10, 1.0, &s) - 0.1).abs() < 1e-15);
        assert!((lr_at(8, 10, 1.0, &s) - 0.01).abs() < 1e-15);
    }

    #[test]
    fn linear_scaling() {
        assert_eq!(scaled_lr(0.03, 256, 256), 0.03);
        assert_eq!(scaled_lr(0.03, 256, 64), 0.0075);
        assert_eq!(scaled_lr(0.1, 256, 512), 0.2);
        assert_eq!(scaled_lr(0.02, 128, 32), 0.005);
    }
}
