//! Evaluation metrics, defined exactly as the paper's protocols report them.

use crate::heads::landmarks::{Point, LEFT_EYE, N_LANDMARKS, RIGHT_EYE};

/// Mean and 95% half-interval of per-episode accuracies: `mean ± 1.96·σ/√n` with the population
/// standard deviation σ (as Chen et al.'s code, `np.std`). Inputs and outputs in the same unit
/// (use percent). Computed in f64 with two passes. `None` for an empty slice.
pub fn episode_accuracy(accs: &[f64]) -> Option<(f64, f64)> {
    if accs.is_empty() {
        return None;
    }
    let n = accs.len() as f64;
    let mean = accs.iter().sum::<f64>() / n;
    let var = accs.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
    Some((mean, 1.96 * libm::sqrt(var) / libm::sqrt(n)))
}

/// Streaming inter-ocular-distance error: `100 · mean over images and the 5 landmarks of
/// ‖pred − gt‖ / ‖gt_left_eye − gt_right_eye‖`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IodError {
    sum: f64,
    n: u64,
}

impl IodError {
    /// Empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image; returns `false` (and ignores it) if the ground-truth eyes coincide, where
    /// the normalised error is undefined.
    pub fn add(&mut self, pred: &[Point; N_LANDMARKS], gt: &[Point; N_LANDMARKS]) -> bool {
        let iod = dist(&gt[LEFT_EYE], &gt[RIGHT_EYE]);
        if !(iod > 0.0) {
            return false;
        }
        for (p, g) in pred.iter().zip(gt) {
            self.sum += dist(p, g) / iod;
        }
        self.n += N_LANDMARKS as u64;
        true
    }

    /// The error in percent of the inter-ocular distance (`None` before any image).
    pub fn value(&self) -> Option<f64> {
        (self.n > 0).then(|| 100.0 * self.sum / self.n as f64)
    }

    /// Number of images added.
    pub fn images(&self) -> u64 {
        self.n / N_LANDMARKS as u64
    }
}

fn dist(a: &Point, b: &Point) -> f64 {
    let (dx, dy) = (a.x as f64 - b.x as f64, a.y as f64 - b.y as f64);
    libm::sqrt(dx * dx + dy * dy)
}
