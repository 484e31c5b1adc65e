//! Nearest-centroid few-shot classifier with cosine similarity: each class centroid is the mean
//! of its L2-normalised support features; a query goes to the centroid with the highest cosine.
//! Normalising before averaging keeps one large-norm shot from dominating its class.
//!
//! Two storage flavours run the same code (one private implementation over a flat row-major
//! slice with a row stride), so they give bit-identical scores:
//! * [`NearestCentroid<W, D>`]: a fixed `[[f32; D]; W]` array, no heap (the MCU).
//! * [`CentroidHead`]: heap-backed (`alloc`), any number of classes and feature dimensions (the
//!   host's episode scorer, [`crate::protocol::fewshot::episode_accuracy_pct`]).

use alloc::vec;
use alloc::vec::Vec;

use super::{argmax_by, check_support, HeadError};

fn norm(v: &[f32]) -> f32 {
    libm::sqrtf(v.iter().map(|x| x * x).sum::<f32>())
}

/// Accumulates the normalised support features into rows `c * stride..+dim` of `centroids`
/// (all zero on entry) and normalises each row; inputs as [`check_support`] accepted them.
fn fit_core(
    features: &[f32],
    labels: &[u8],
    n_way: usize,
    dim: usize,
    centroids: &mut [f32],
    stride: usize,
) {
    for (f, &l) in features.chunks_exact(dim).zip(labels) {
        let n = norm(f).max(1e-12);
        for (a, &x) in centroids[l as usize * stride..][..dim].iter_mut().zip(f) {
            *a += x / n;
        }
    }
    // The mean's scale does not change cosine; normalise once for cheap queries.
    for c in 0..n_way {
        let row = &mut centroids[c * stride..][..dim];
        let n = norm(row).max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// Cosine of `feature` (norm `n`) with centroid row `c`.
#[inline(always)]
fn score(centroids: &[f32], stride: usize, c: usize, feature: &[f32], n: f32) -> f32 {
    centroids[c * stride..][..feature.len()]
        .iter()
        .zip(feature)
        .map(|(a, b)| a * b)
        .sum::<f32>()
        / n
}

fn scores_core(centroids: &[f32], stride: usize, feature: &[f32], scores: &mut [f32]) {
    let n = norm(feature).max(1e-12);
    for (c, s) in scores.iter_mut().enumerate() {
        *s = score(centroids, stride, c, feature, n);
    }
}

fn predict_core(centroids: &[f32], stride: usize, n_way: usize, feature: &[f32]) -> usize {
    let n = norm(feature).max(1e-12);
    argmax_by(n_way, |c| score(centroids, stride, c, feature, n))
}

/// Fixed-capacity nearest-centroid head for up to `W` classes of `D`-dimensional features (no
/// heap; see [`CentroidHead`] for the heap-backed twin).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NearestCentroid<const W: usize, const D: usize> {
    n_way: usize,
    dim: usize,
    centroids: [[f32; D]; W],
}

impl<const W: usize, const D: usize> NearestCentroid<W, D> {
    /// Fits centroids from `labels.len()` support features (row-major, `dim` each): at most `W`
    /// classes and `D` dimensions, else [`HeadError::Capacity`].
    pub fn fit(
        features: &[f32],
        labels: &[u8],
        n_way: usize,
        dim: usize,
    ) -> Result<Self, HeadError> {
        check_support(features, labels, n_way, dim, W, D)?;
        let mut c = NearestCentroid {
            n_way,
            dim,
            centroids: [[0.0; D]; W],
        };
        fit_core(
            features,
            labels,
            n_way,
            dim,
            c.centroids.as_flattened_mut(),
            D,
        );
        Ok(c)
    }

    /// Number of classes.
    pub fn n_way(&self) -> usize {
        self.n_way
    }

    /// Feature dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Cosine similarity of `feature` with each centroid into `scores[..n_way]`.
    pub fn scores(&self, feature: &[f32], scores: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || scores.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        let out = &mut scores[..self.n_way];
        scores_core(self.centroids.as_flattened(), D, feature, out);
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        if feature.len() != self.dim {
            return Err(HeadError::Shape);
        }
        let c = self.centroids.as_flattened();
        Ok(predict_core(c, D, self.n_way, feature))
    }
}

/// Heap-backed nearest-centroid head: any number of classes (labels are `u8`, so at most 256)
/// and any feature dimension. Same code as [`NearestCentroid`], so both give bit-identical
/// scores; it allocates `n_way·dim` f32.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CentroidHead {
    n_way: usize,
    dim: usize,
    /// Row-major `[n_way][dim]`, each row of unit norm.
    centroids: Vec<f32>,
}

impl CentroidHead {
    /// Fits centroids from `labels.len()` support features (row-major, `dim` each).
    pub fn fit(
        features: &[f32],
        labels: &[u8],
        n_way: usize,
        dim: usize,
    ) -> Result<Self, HeadError> {
        check_support(features, labels, n_way, dim, usize::MAX, usize::MAX)?;
        let size = n_way.checked_mul(dim).ok_or(HeadError::Capacity)?;
        let mut c = CentroidHead {
            n_way,
            dim,
            centroids: vec![0.0; size],
        };
        fit_core(features, labels, n_way, dim, &mut c.centroids, dim);
        Ok(c)
    }

    /// Number of classes.
    pub fn n_way(&self) -> usize {
        self.n_way
    }

    /// Feature dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Cosine similarity of `feature` with each centroid into `scores[..n_way]`.
    pub fn scores(&self, feature: &[f32], scores: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || scores.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        scores_core(
            &self.centroids,
            self.dim,
            feature,
            &mut scores[..self.n_way],
        );
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        if feature.len() != self.dim {
            return Err(HeadError::Shape);
        }
        Ok(predict_core(&self.centroids, self.dim, self.n_way, feature))
    }
}
