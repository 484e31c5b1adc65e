//! Nearest-centroid few-shot classifier with cosine similarity: each class centroid is the mean
//! of its L2-normalised support features; a query goes to the centroid with the highest cosine.
//! Normalising before averaging keeps one large-norm shot from dominating its class.

use super::{check_support, HeadError};

fn norm(v: &[f32]) -> f32 {
    libm::sqrtf(v.iter().map(|x| x * x).sum::<f32>())
}

/// Fixed-capacity nearest-centroid head for up to `W` classes of `D`-dimensional features.
#[derive(Debug, Clone)]
pub struct NearestCentroid<const W: usize, const D: usize> {
    n_way: usize,
    dim: usize,
    centroids: [[f32; D]; W],
}

impl<const W: usize, const D: usize> NearestCentroid<W, D> {
    /// Fits centroids from `labels.len()` support features (row-major, `dim` each).
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
        for (f, &l) in features.chunks_exact(dim).zip(labels) {
            let n = norm(f).max(1e-12);
            for (a, &x) in c.centroids[l as usize][..dim].iter_mut().zip(f) {
                *a += x / n;
            }
        }
        // The mean's scale does not change cosine; normalise once for cheap queries.
        for row in c.centroids[..n_way].iter_mut() {
            let n = norm(&row[..dim]).max(1e-12);
            row[..dim].iter_mut().for_each(|x| *x /= n);
        }
        Ok(c)
    }

    /// Cosine similarity of `feature` with each centroid into `scores[..n_way]`.
    pub fn scores(&self, feature: &[f32], scores: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || scores.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        let n = norm(feature).max(1e-12);
        for (s, row) in scores.iter_mut().zip(&self.centroids[..self.n_way]) {
            *s = row[..self.dim]
                .iter()
                .zip(feature)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                / n;
        }
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        let mut s = [0.0f32; W];
        self.scores(feature, &mut s)?;
        Ok(super::argmax(&s[..self.n_way]))
    }
}
