//! The kNN monitor MoCo users expect (Wu et al. 2018's weighted kNN): classify each held-out image
//! by the labels of its `k` most cosine-similar training images, each vote weighted by
//! `exp(sim / t)`. It needs no training, so it tracks representation quality every epoch.
use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::augment::loader::{ImageSource, Loader, LoaderSpec};
use crate::augment::AugmentConfig;
use crate::model::{BnMode, ResNet};

/// Neighbours and temperature of the monitor (InstDisc / MoCo-demo values, k scaled down for the
/// small embedded datasets).
pub const KNN_K: usize = 20;
pub const KNN_T: f32 = 0.1;

/// L2-normalised pooled features `[n, d]` (eval-mode BN) of `indices` of `source`, with labels.
pub fn extract_features(
    model: &ResNet,
    source: Arc<dyn ImageSource>,
    indices: Vec<usize>,
    image_size: usize,
    batch: usize,
    device: &Device,
) -> Result<(Tensor, Vec<usize>)> {
    let spec = LoaderSpec::new(batch.max(1), vec![AugmentConfig::none(image_size)], 0, 0);
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    for b in Loader::new(source, indices, spec)? {
        let b = b?;
        let x = b.view_tensor(0, device)?;
        let f = model.forward_features(&x, BnMode::Eval)?;
        feats.push(crate::method::contrastive::l2_normalize(&f)?);
        labels.extend_from_slice(&b.labels);
    }
    Ok((Tensor::cat(&feats, 0)?, labels))
}

/// Weighted-kNN top-1 accuracy (%) of `query` against `bank` (both L2-normalised rows).
pub fn knn_top1(
    bank: &Tensor,
    bank_labels: &[usize],
    query: &Tensor,
    query_labels: &[usize],
    k: usize,
    t: f32,
) -> Result<f64> {
    let sims: Vec<Vec<f32>> = query.matmul(&bank.t()?)?.to_vec2()?;
    let classes = bank_labels
        .iter()
        .chain(query_labels)
        .copied()
        .max()
        .map_or(0, |m| m + 1);
    let mut correct = 0usize;
    for (row, &truth) in sims.iter().zip(query_labels) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Stable sort by descending similarity: ties resolve by bank order, deterministically.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut votes = vec![0f64; classes];
        for &j in order.iter().take(k) {
            votes[bank_labels[j]] += f64::from((row[j] / t).exp());
        }
        let pred = (0..classes).fold(0, |best, c| if votes[c] > votes[best] { c } else { best });
        correct += usize::from(pred == truth);
    }
    Ok(100.0 * correct as f64 / query_labels.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_votes_by_weighted_nearest_neighbours() {
        let dev = Device::Cpu;
        // Bank: two tight clusters on the unit circle, class 0 near (1,0), class 1 near (0,1).
        let bank = Tensor::new(
            &[[1f32, 0.0], [0.995, 0.0998], [0.0, 1.0], [0.0998, 0.995]],
            &dev,
        )
        .unwrap();
        let q = Tensor::new(&[[0.98f32, 0.199], [0.199, 0.98], [0.6, 0.8]], &dev).unwrap();
        let acc = knn_top1(&bank, &[0, 0, 1, 1], &q, &[0, 1, 1], 2, 0.1).unwrap();
        assert!((acc - 100.0).abs() < 1e-9, "{acc}");
        // With k = 4 every class gets two votes; the weights decide: query 3 is nearer class 1.
        let acc = knn_top1(&bank, &[0, 0, 1, 1], &q, &[0, 1, 0], 4, 0.1).unwrap();
        assert!((acc - 200.0 / 3.0).abs() < 1e-9, "{acc}");
    }
}
