//! Frozen-backbone features of a list of images: the eval transform (`AugmentConfig::none`:
//! stretch to the model size, normalise), eval-mode BN, global-average-pooled features. Raw (not
//! L2-normalised) rows, because that is what the exported runtime model outputs and what Chen et
//! al.'s linear classifier is fitted on.
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use trainer::augment::loader::{ImageSource, Loader, LoaderSpec};
use trainer::augment::AugmentConfig;
use trainer::model::{BnMode, ResNet};

/// Row-major feature matrix: row `r` belongs to dataset image `indices[r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub dim: usize,
    pub indices: Vec<usize>,
    pub data: Vec<f32>,
}

impl Features {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }
}

/// Features of `indices` of `source` (in that order), `batch` images per forward pass.
pub fn extract(
    net: &ResNet,
    source: Arc<dyn ImageSource>,
    indices: &[usize],
    image_size: usize,
    batch: usize,
    device: &Device,
) -> Result<Features> {
    let dim = net.config().feature_dim();
    let spec = LoaderSpec::new(batch.max(1), vec![AugmentConfig::none(image_size)], 0, 0);
    let mut data = Vec::with_capacity(indices.len() * dim);
    let mut seen = Vec::with_capacity(indices.len());
    for b in Loader::new(source, indices.to_vec(), spec)? {
        let b = b?;
        let x = b.view_tensor(0, device)?;
        let f = net
            .forward_features(&x, BnMode::Eval)
            .context("backbone forward pass")?;
        let rows: Vec<Vec<f32>> = f.to_vec2()?;
        for r in rows {
            if r.len() != dim {
                bail!("backbone gave {} features, its config says {dim}", r.len());
            }
            data.extend_from_slice(&r);
        }
        seen.extend_from_slice(&b.indices);
    }
    if seen != indices {
        bail!("internal: the loader returned images out of order");
    }
    Ok(Features {
        dim,
        indices: seen,
        data,
    })
}
