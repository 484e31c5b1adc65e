//! MAFL landmark evaluation (paper §4.2): the inter-ocular-normalised error.
//!
//! Only the metric is here so far; the `eval landmarks` training loop is a later step.
//! The error of one landmark of one image is `‖pred − gt‖ / ‖gt_lefteye − gt_righteye‖`; it is
//! scale-invariant, so it is the same in the model's resized frame and the original crop. The
//! reported `iod_error` is 100 × its mean over images and the 5 landmarks; `per_landmark` is 100 ×
//! the mean over images of each landmark (CelebA order, [`LANDMARK_NAMES`]). Images whose two
//! ground-truth eyes coincide have no defined error and are skipped (as runtime-core's `IodError`).
use anyhow::{bail, Result};

use crate::data::{Landmarks, LANDMARK_NAMES, NUM_LANDMARKS};

/// Mean IOD error (%) and the per-landmark breakdown (%) over images.
#[derive(Debug, Clone, PartialEq)]
pub struct IodReport {
    pub iod_error: f64,
    pub per_landmark: [f64; NUM_LANDMARKS],
    /// Images counted (those with distinct ground-truth eyes).
    pub images: usize,
}

impl IodReport {
    /// `{"lefteye": %, ...}`.
    pub fn per_landmark_json(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = LANDMARK_NAMES
            .iter()
            .zip(self.per_landmark)
            .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
            .collect();
        serde_json::Value::Object(m)
    }
}

/// The inter-ocular error of `pred` against `gt` (same frame, pairs by index).
pub fn iod_error(pred: &[Landmarks], gt: &[Landmarks]) -> Result<IodReport> {
    if pred.len() != gt.len() {
        bail!("{} predictions for {} ground-truth faces", pred.len(), gt.len());
    }
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] as f64 - b[0] as f64).powi(2) + (a[1] as f64 - b[1] as f64).powi(2)).sqrt();
    let mut sums = [0f64; NUM_LANDMARKS];
    let mut images = 0usize;
    for (p, g) in pred.iter().zip(gt) {
        let iod = dist(g[0], g[1]);
        if !(iod > 0.0) {
            continue;
        }
        for k in 0..NUM_LANDMARKS {
            sums[k] += dist(p[k], g[k]) / iod;
        }
        images += 1;
    }
    if images == 0 {
        bail!("no face with distinct ground-truth eyes: the inter-ocular error is undefined");
    }
    let per_landmark = sums.map(|s| 100.0 * s / images as f64);
    let iod_error = per_landmark.iter().sum::<f64>() / NUM_LANDMARKS as f64;
    Ok(IodReport {
        iod_error,
        per_landmark,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_core::heads::landmarks::Point;
    use runtime_core::metrics::IodError;

    fn gt() -> Landmarks {
        // Eyes 10 px apart.
        [[10.0, 10.0], [20.0, 10.0], [15.0, 15.0], [11.0, 20.0], [19.0, 20.0]]
    }

    #[test]
    fn hand_made_case() {
        // Image 1: left eye off by (3, 4) = 5 px = 50% of the IOD, the rest exact.
        let mut p1 = gt();
        p1[0] = [13.0, 14.0];
        // Image 2 (eyes 20 px apart, twice the scale): nose off by 2 px = 10%.
        let g2 = gt().map(|[x, y]| [2.0 * x, 2.0 * y]);
        let mut p2 = g2;
        p2[2][0] += 2.0;
        // Image 3: coinciding eyes, skipped.
        let g3 = [[1.0, 1.0]; 5];
        let r = iod_error(&[p1, p2, g3], &[gt(), g2, g3]).unwrap();
        assert_eq!(r.images, 2);
        assert!((r.per_landmark[0] - 25.0).abs() < 1e-9, "{:?}", r.per_landmark);
        assert!((r.per_landmark[2] - 5.0).abs() < 1e-9);
        assert_eq!(r.per_landmark[1], 0.0);
        // (50 + 10) / (2 images · 5 landmarks).
        assert!((r.iod_error - 6.0).abs() < 1e-9);
        assert_eq!(r.per_landmark_json()["lefteye"], serde_json::json!(r.per_landmark[0]));

        // runtime-core's streaming metric agrees.
        let pt = |l: &Landmarks| l.map(|[x, y]| Point { x, y });
        let mut m = IodError::new();
        for (p, g) in [(p1, gt()), (p2, g2), (g3, g3)] {
            m.add(&pt(&p), &pt(&g));
        }
        assert!((m.value().unwrap() - r.iod_error).abs() < 1e-6);
    }

    #[test]
    fn mismatched_or_degenerate_inputs_are_errors() {
        assert!(iod_error(&[gt()], &[]).is_err());
        assert!(iod_error(&[[[0.0; 2]; 5]], &[[[0.0; 2]; 5]]).is_err());
    }
}
