//! The parallel batch loader: decodes and augments each batch with rayon on a background thread
//! and keeps up to `prefetch` finished batches waiting in a bounded channel, so the training step
//! rarely waits for data.
//!
//! Determinism: the caller fixes the index order ([`epoch_order`]); each view of each image draws
//! from its own stream ([`super::view_rng`]) keyed by dataset index, not by position or thread.
//! Batches are assembled in order, so the output is identical for any thread count.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom as _;
use rayon::prelude::*;

use super::{augment, view_rng, AugmentConfig};
use crate::data::Landmarks;
use crate::rng;

/// A dataset the loader can read by index: the image, its label (class, identity or instance
/// id — whatever the method trains on) and, for face data, its landmarks.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Load image `i` (`i < len()`). Errors should name the file.
    fn load(&self, i: usize) -> Result<(image::RgbImage, usize, Option<Landmarks>)>;
}

/// The shuffled visiting order of `n` images in `epoch`: a Fisher–Yates shuffle drawn from
/// `rng::stream(seed, [SHUFFLE, epoch])`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng::stream(seed, &[rng::purpose::SHUFFLE, epoch]));
    order
}

/// One batch. `views[v]` is `B × 3 × S × S` (NCHW, row-major), normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Dataset indices of the images, in batch order.
    pub indices: Vec<usize>,
    pub labels: Vec<usize>,
    pub views: Vec<Vec<f32>>,
    /// `landmarks[v][b]`: each view has its own crop and flip, so its own landmarks (output pixel
    /// coordinates). `Some` exactly when the source gives landmarks.
    pub landmarks: Option<Vec<Vec<Landmarks>>>,
    /// Output side `S`.
    pub size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// View `v` as a `(B, 3, S, S)` f32 tensor.
    pub fn view_tensor(
        &self,
        v: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let data = self.views.get(v).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "batch has {} views, asked for view {v}",
                self.views.len()
            ))
        })?;
        candle_core::Tensor::from_slice(data, (self.len(), 3, self.size, self.size), device)
    }

    /// Labels as a `(B,)` u32 tensor (what candle's cross-entropy takes).
    pub fn labels_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let l: Vec<u32> = self.labels.iter().map(|&x| x as u32).collect();
        candle_core::Tensor::from_vec(l, self.len(), device)
    }

    /// Landmarks of view `v` as a `(B, 10)` f32 tensor `[x0, y0, x1, y1, ...]` in output pixels;
    /// `None` for data without landmarks.
    pub fn landmarks_tensor(
        &self,
        v: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        let Some(all) = &self.landmarks else {
            return Ok(None);
        };
        let lm = all.get(v).ok_or_else(|| {
            candle_core::Error::Msg(format!("batch has {} views, asked for view {v}", all.len()))
        })?;
        let flat: Vec<f32> = lm
            .iter()
            .flat_map(|l| l.iter().flatten().copied())
            .collect();
        let n = flat.len() / self.len().max(1);
        candle_core::Tensor::from_vec(flat, (self.len(), n), device).map(Some)
    }
}

/// Load and augment the images `indices` (in parallel, in the current rayon pool) into a batch.
/// `views` must share one `out_size`.
pub fn load_batch(
    source: &dyn ImageSource,
    indices: &[usize],
    views: &[AugmentConfig],
    seed: u64,
    epoch: u64,
) -> Result<Batch> {
    let size = common_size(views)?;
    let items: Vec<(usize, Vec<super::Augmented>, bool)> = indices
        .par_iter()
        .map(|&i| -> Result<_> {
            let (img, label, lm) = source
                .load(i)
                .with_context(|| format!("loading dataset image {i}"))?;
            let augs = views
                .iter()
                .enumerate()
                .map(|(v, cfg)| {
                    augment(
                        &img,
                        lm.as_ref(),
                        cfg,
                        &mut view_rng(seed, epoch, i as u64, v as u64),
                    )
                    .with_context(|| format!("augmenting dataset image {i}, view {v}"))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((label, augs, lm.is_some()))
        })
        .collect::<Result<_>>()?;

    let has_lm = items.first().is_some_and(|it| it.2);
    if let Some(k) = items.iter().position(|it| it.2 != has_lm) {
        bail!(
            "dataset image {} {} landmarks but image {} {}: a source must give them for all or none",
            indices[0],
            if has_lm { "has" } else { "has no" },
            indices[k],
            if has_lm { "has none" } else { "has some" },
        );
    }
    let per_image = 3 * size * size;
    let mut batch = Batch {
        indices: indices.to_vec(),
        labels: items.iter().map(|it| it.0).collect(),
        views: vec![Vec::with_capacity(indices.len() * per_image); views.len()],
        landmarks: has_lm.then(|| vec![Vec::with_capacity(indices.len()); views.len()]),
        size,
    };
    for (_, augs, _) in items {
        for (v, a) in augs.into_iter().enumerate() {
            batch.views[v].extend_from_slice(&a.pixels);
            if let (Some(all), Some(l)) = (batch.landmarks.as_mut(), a.landmarks) {
                all[v].push(l);
            }
        }
    }
    Ok(batch)
}

fn common_size(views: &[AugmentConfig]) -> Result<usize> {
    let first = views
        .first()
        .ok_or_else(|| anyhow!("the loader needs at least one view"))?;
    if let Some(v) = views.iter().position(|c| c.out_size != first.out_size) {
        bail!(
            "all views must share one output size: view 0 is {} px, view {v} is {} px",
            first.out_size,
            views[v].out_size
        );
    }
    Ok(first.out_size)
}

/// How to batch one epoch.
#[derive(Clone)]
pub struct LoaderSpec {
    pub batch_size: usize,
    /// Drop the last short batch (MoCo needs `K % B == 0`).
    pub drop_last: bool,
    /// One augmentation per view: MoCo 2 equal configs (two independent draws), supervised 1.
    pub views: Vec<AugmentConfig>,
    pub seed: u64,
    pub epoch: u64,
    /// Finished batches that may wait in the channel (at least 1).
    pub prefetch: usize,
    /// The rayon pool to augment in; `None` = the global pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

impl LoaderSpec {
    /// Batch size, views, seed and epoch; keep the last short batch, prefetch 2, global pool.
    pub fn new(batch_size: usize, views: Vec<AugmentConfig>, seed: u64, epoch: u64) -> Self {
        LoaderSpec {
            batch_size,
            drop_last: false,
            views,
            seed,
            epoch,
            prefetch: 2,
            pool: None,
        }
    }
}

/// An iterator of `Result<Batch>` over one epoch, produced ahead on a background thread.
/// After the first error it yields nothing more. Dropping it stops the worker.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
    num_batches: usize,
    yielded: usize,
    done: bool,
}

impl Loader {
    /// Start loading `order` (dataset indices, e.g. [`epoch_order`]) in batches.
    pub fn new(source: Arc<dyn ImageSource>, order: Vec<usize>, spec: LoaderSpec) -> Result<Self> {
        if spec.batch_size == 0 {
            bail!("batch size must be positive");
        }
        common_size(&spec.views)?;
        for (v, c) in spec.views.iter().enumerate() {
            c.validate()
                .with_context(|| format!("augmentation of view {v}"))?;
        }
        let n = source.len();
        if let Some(&bad) = order.iter().find(|&&i| i >= n) {
            bail!("index order names image {bad}, but the source has {n} images");
        }
        let mut chunks: Vec<Vec<usize>> = order
            .chunks(spec.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if spec.drop_last && chunks.last().is_some_and(|c| c.len() < spec.batch_size) {
            chunks.pop();
        }
        let num_batches = chunks.len();
        let (tx, rx) = sync_channel(spec.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("augment-loader".into())
            .spawn(move || {
                for idx in chunks {
                    let make = || load_batch(&*source, &idx, &spec.views, spec.seed, spec.epoch);
                    let batch = match &spec.pool {
                        Some(pool) => pool.install(make),
                        None => make(),
                    };
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break; // receiver gone, or the error ends the epoch
                    }
                }
            })
            .context("spawning the loader thread")?;
        Ok(Loader {
            rx: Some(rx),
            worker: Some(worker),
            num_batches,
            yielded: 0,
            done: false,
        })
    }

    /// Batches this epoch will yield if nothing fails.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Why the worker ended early (it can only be a panic, e.g. inside an `ImageSource`).
    fn worker_failure(&mut self) -> anyhow::Error {
        let why = match self.worker.take().map(JoinHandle::join) {
            Some(Err(p)) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into()),
            _ => "worker ended early".into(),
        };
        anyhow!(
            "the loader thread stopped after {} of {} batches: {why}",
            self.yielded,
            self.num_batches
        )
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let received = self.rx.as_ref()?.recv();
        match received {
            Ok(Ok(b)) => {
                self.yielded += 1;
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                (self.yielded < self.num_batches).then(|| Err(self.worker_failure()))
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it stops after at most the
        // batch it is working on.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation_that_changes_with_epoch() {
        let a = epoch_order(50, 3, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 3, 0));
        assert_ne!(a, epoch_order(50, 3, 1));
        assert_ne!(a, epoch_order(50, 4, 0));
    }
}
