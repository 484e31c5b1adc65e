//! The MAFL landmark metric (paper §4.2): the inter-ocular-normalised error, and the mean-face
//! baseline it is read against.
//!
//! The error of one landmark of one image is `‖pred − gt‖ / ‖gt_lefteye − gt_righteye‖`; it is
//! scale-invariant, so it is the same in the model's resized frame and the original crop. The
//! reported `iod_error` is 100 × its mean over images and the 5 landmarks; `per_landmark` is 100 ×
//! the mean over images of each landmark (CelebA order, [`LANDMARK_NAMES`]). Images whose two
//! ground-truth eyes coincide have no defined error and are skipped. The accumulation itself is
//! runtime-core's [`IodError`], the one definition runtime-cli and the MCU use too.
use anyhow::{bail, Result};
use runtime_core::heads::landmarks::Point;
use runtime_core::metrics::IodError;

use trainer::data::{Landmarks, LANDMARK_NAMES, NUM_LANDMARKS};

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

/// The inter-ocular error of `pred` against `gt` (same frame, pairs by index), accumulated by
/// runtime-core's [`IodError`], the one definition of the metric that runtime-cli and the MCU use.
pub fn iod_error(pred: &[Landmarks], gt: &[Landmarks]) -> Result<IodReport> {
    if pred.len() != gt.len() {
        bail!(
            "{} predictions for {} ground-truth faces",
            pred.len(),
            gt.len()
        );
    }
    let pt = |l: &Landmarks| l.map(|[x, y]| Point { x, y });
    let mut m = IodError::new();
    for (p, g) in pred.iter().zip(gt) {
        m.add(&pt(p), &pt(g));
    }
    let (Some(iod_error), Some(per_landmark)) = (m.value(), m.per_landmark()) else {
        bail!("no face with distinct ground-truth eyes: the inter-ocular error is undefined");
    };
    Ok(IodReport {
        iod_error,
        per_landmark,
        images: m.images() as usize,
    })
}

/// The mean landmark layout (per landmark and axis) of `lms`; `None` when empty. Predicting it
/// for every test face is the no-image baseline: a model that does not beat it learned nothing
/// from the pixels.
pub fn mean_face(lms: &[Landmarks]) -> Option<Landmarks> {
    if lms.is_empty() {
        return None;
    }
    let mut sum = [[0f64; 2]; NUM_LANDMARKS];
    for l in lms {
        for (s, p) in sum.iter_mut().zip(l) {
            s[0] += f64::from(p[0]);
            s[1] += f64::from(p[1]);
        }
    }
    let n = lms.len() as f64;
    Some(sum.map(|[x, y]| [(x / n) as f32, (y / n) as f32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt() -> Landmarks {
        // Eyes 10 px apart.
        [
            [10.0, 10.0],
            [20.0, 10.0],
            [15.0, 15.0],
            [11.0, 20.0],
            [19.0, 20.0],
        ]
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
        assert!(
            (r.per_landmark[0] - 25.0).abs() < 1e-9,
            "{:?}",
            r.per_landmark
        );
        assert!((r.per_landmark[2] - 5.0).abs() < 1e-9);
        assert_eq!(r.per_landmark[1], 0.0);
        // (50 + 10) / (2 images · 5 landmarks).
        assert!((r.iod_error - 6.0).abs() < 1e-9);
        assert_eq!(
            r.per_landmark_json()["lefteye"],
            serde_json::json!(r.per_landmark[0])
        );
    }

    /// The mean face and its baseline error on hand-made faces.
    #[test]
    fn mean_face_baseline_by_hand() {
        // Two training faces: gt() and gt() shifted by (+4, +2) → the mean is gt() + (2, 1).
        let shifted = gt().map(|[x, y]| [x + 4.0, y + 2.0]);
        let m = mean_face(&[gt(), shifted]).unwrap();
        for (a, b) in m.iter().zip(gt()) {
            assert!((a[0] - (b[0] + 2.0)).abs() < 1e-6 && (a[1] - (b[1] + 1.0)).abs() < 1e-6);
        }
        assert!(mean_face(&[]).is_none());
        // Test face gt() (IOD 10): every landmark is off by √(2² + 1²) = √5 → 100·√5/10 % each.
        // Test face gt() + (2, 1): exact → 0. Mean over the two images: 5·√5 %.
        let test = [gt(), gt().map(|[x, y]| [x + 2.0, y + 1.0])];
        let r = iod_error(&[m, m], &test).unwrap();
        let want = 5.0 * 5f64.sqrt();
        assert!(
            (r.iod_error - want).abs() < 1e-5,
            "{} vs {want}",
            r.iod_error
        );
        assert!(r.per_landmark.iter().all(|v| (v - want).abs() < 1e-5));
    }

    #[test]
    fn mismatched_or_degenerate_inputs_are_errors() {
        assert!(iod_error(&[gt()], &[]).is_err());
        assert!(iod_error(&[[[0.0; 2]; 5]], &[[[0.0; 2]; 5]]).is_err());
    }
}
