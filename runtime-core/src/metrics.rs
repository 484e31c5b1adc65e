//! Evaluation metrics, defined exactly as the paper's protocols report them.

use crate::heads::landmarks::{Point, LEFT_EYE, N_LANDMARKS, RIGHT_EYE};

/// Mean and 95% half-interval of a sample: `mean ± 1.96·σ/√n` with the population standard
/// deviation σ (as Chen et al.'s few-shot code, `np.std`, reports episodes). The one interval of
/// the project: episodes, per-image landmark errors and the study's tables all use it. Computed
/// in f64 with two passes; `None` for an empty slice.
pub fn mean_ci95(x: &[f64]) -> Option<(f64, f64)> {
    if x.is_empty() {
        return None;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
    Some((mean, 1.96 * libm::sqrt(var) / libm::sqrt(n)))
}

/// Mean accuracy and 95% half-interval of per-episode accuracies (in %): [`mean_ci95`].
pub fn episode_accuracy(accs: &[f64]) -> Option<(f64, f64)> {
    mean_ci95(accs)
}

/// Streaming inter-ocular-distance error: `100 · mean over images and the 5 landmarks of
/// ‖pred − gt‖ / ‖gt_left_eye − gt_right_eye‖` (paper §4.2), with the same mean per landmark.
/// The one definition of the metric: host-trainer, runtime-cli and the MCU all accumulate here.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IodError {
    /// Σ over images of ‖pred − gt‖ / IOD, per landmark.
    per: [f64; N_LANDMARKS],
    images: u64,
}

impl IodError {
    /// Empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image; returns `false` (and ignores it) if the ground-truth eyes coincide, where
    /// the normalised error is undefined.
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(iod > 0)` also rejects NaN
    pub fn add(&mut self, pred: &[Point; N_LANDMARKS], gt: &[Point; N_LANDMARKS]) -> bool {
        let iod = dist(&gt[LEFT_EYE], &gt[RIGHT_EYE]);
        if !(iod > 0.0) {
            return false;
        }
        for ((s, p), g) in self.per.iter_mut().zip(pred).zip(gt) {
            *s += dist(p, g) / iod;
        }
        self.images += 1;
        true
    }

    /// The error in percent of the inter-ocular distance (`None` before any image).
    pub fn value(&self) -> Option<f64> {
        let per = self.per_landmark()?;
        Some(per.iter().sum::<f64>() / N_LANDMARKS as f64)
    }

    /// The error of each landmark (CelebA column order) in percent (`None` before any image).
    pub fn per_landmark(&self) -> Option<[f64; N_LANDMARKS]> {
        let n = self.images as f64;
        (self.images > 0).then(|| self.per.map(|s| 100.0 * s / n))
    }

    /// Number of images added.
    pub fn images(&self) -> u64 {
        self.images
    }
}

fn dist(a: &Point, b: &Point) -> f64 {
    let (dx, dy) = (a.x as f64 - b.x as f64, a.y as f64 - b.y as f64);
    libm::sqrt(dx * dx + dy * dy)
}
