//! What defines a run: [`PretrainConfig`] (stored in the checkpoint) and [`PretrainRequest`]
//! (the method's defaults plus the user's overrides, resolved into a config).
use crate::augment::AugmentConfig;
use crate::method::heads::HeadKind;
use crate::method::Method;
use crate::model::ResNetConfig;
use crate::train::schedule::Schedule;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that defines a run (stored in the checkpoint; a resumed run reuses it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Stored as `supervised`, `moco-v1`, `moco-v2`, `exemplar-v1`, `exemplar-v2`.
    pub method: Method,
    pub data: PathBuf,
    /// The backbone; `num_classes` is set for supervised runs (the classifier `fc`).
    pub model: ResNetConfig,
    pub image_size: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// The learning rate at this batch size (already scaled).
    pub lr: f64,
    pub weight_decay: f64,
    pub sgd_momentum: f64,
    pub schedule: Schedule,
    /// Contrastive: queue length K, temperature τ, EMA momentum m, embedding dim, head.
    pub queue: usize,
    pub tau: f64,
    pub ema_momentum: f64,
    pub dim: usize,
    pub head: Option<HeadKind>,
    /// One augmentation per view (both MoCo views use the same config).
    pub aug: AugmentConfig,
    /// BN groups of the single-device shuffle-BN emulation (1 = off).
    pub bn_groups: usize,
    /// Threads the step's batch is split over, each with whole BN groups
    /// ([`crate::train::replicas`]). Part of the run: the float sums are grouped by it, so a
    /// resumed run keeps it. Checkpoints from before it existed ran on one.
    #[serde(default = "one")]
    pub replicas: usize,
    pub seed: u64,
    /// Held-out images the kNN monitor classifies each epoch (0 = off).
    pub knn_images: usize,
    /// Log a metrics line every this many steps (and at each epoch end).
    pub log_every: usize,
}

fn one() -> usize {
    1
}

impl PretrainConfig {
    /// The method (infallible since the config holds the type; kept as a `Result` for its
    /// callers' `?`).
    pub fn method(&self) -> Result<Method> {
        Ok(self.method)
    }

    /// Checks that can fail before any work is done, with messages that say what to change.
    pub fn validate(&self) -> Result<()> {
        let method = self.method()?;
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(
            self.image_size >= 8,
            "--image-size {} is too small (at least 8)",
            self.image_size
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "--lr must be a positive number"
        );
        self.model.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if method.is_contrastive() {
            ensure!(self.queue > 0, "--queue must be positive");
            if !self.queue.is_multiple_of(self.batch_size) {
                bail!(
                    "--queue {} is not a multiple of --batch-size {}: MoCo enqueues whole batches (K % B == 0); \
                     try --queue {}",
                    self.queue,
                    self.batch_size,
                    (self.queue / self.batch_size).max(1) * self.batch_size
                );
            }
            ensure!(self.tau > 0.0, "--tau must be positive");
            ensure!(
                (0.0..=1.0).contains(&self.ema_momentum),
                "--momentum must be in [0, 1]"
            );
            ensure!(self.bn_groups >= 1, "--bn-groups must be at least 1");
            if !self.batch_size.is_multiple_of(self.bn_groups)
                || self.batch_size / self.bn_groups < 2
            {
                bail!(
                    "--batch-size {} cannot be split into {} shuffle-BN groups of at least 2 images; \
                     choose --bn-groups dividing the batch, or --no-shuffle-bn",
                    self.batch_size,
                    self.bn_groups
                );
            }
        }
        Ok(())
    }
}

/// Build the config of a new run from the method's defaults and the user's overrides.
#[derive(Debug, Clone)]
pub struct PretrainRequest {
    pub method: Method,
    pub data: PathBuf,
    pub model: ResNetConfig,
    pub image_size: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub queue: Option<usize>,
    pub tau: Option<f64>,
    pub ema_momentum: Option<f64>,
    pub dim: Option<usize>,
    pub aug: Option<String>,
    pub bn_groups: Option<usize>,
    /// `--replicas` (`None` = 1: the library's default is the single-threaded-step-free,
    /// thread-count-independent run; the CLI resolves its own default, the cores available).
    pub replicas: Option<usize>,
    pub seed: u64,
    pub knn_images: usize,
    pub log_every: usize,
}

impl PretrainRequest {
    /// A request whose data is never read, with the method's defaults: what the step
    /// benchmarks ([`StepBench`], `host-trainer bench-step`, the criterion bench) time.
    pub fn for_bench(
        method: Method,
        model: ResNetConfig,
        image_size: usize,
        batch_size: usize,
        queue: usize,
    ) -> PretrainRequest {
        PretrainRequest {
            method,
            data: PathBuf::new(),
            model,
            image_size,
            epochs: 1,
            batch_size,
            lr: None,
            weight_decay: None,
            queue: Some(queue),
            tau: None,
            ema_momentum: None,
            dim: None,
            aug: None,
            bn_groups: None,
            replicas: None,
            seed: 0,
            knn_images: 0,
            log_every: 1,
        }
    }

    /// Resolve defaults (per method and version) into a full config.
    pub fn resolve(&self, num_classes: usize) -> Result<PretrainConfig> {
        use crate::method::AugPreset;
        let d = self.method.defaults();
        let preset = match d.aug {
            AugPreset::MocoV1 => AugmentConfig::moco_v1(self.image_size),
            AugPreset::MocoV2 => AugmentConfig::moco_v2(self.image_size),
            // Supervised baseline: the full Table-1 pipeline (HFlip+RRC+Jitter+Gray+Blur), the
            // same augmentations as MoCo v2 so the comparison isolates the loss.
            AugPreset::Standard => AugmentConfig::table1(5, self.image_size),
        };
        let aug = match &self.aug {
            Some(list) => AugmentConfig::parse_aug_list(list, &preset)?,
            None => preset,
        };
        let mut model = self.model.clone();
        model.num_classes = (!self.method.is_contrastive()).then_some(num_classes);
        let cfg = PretrainConfig {
            method: self.method,
            data: self.data.clone(),
            model,
            image_size: self.image_size,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr.unwrap_or_else(|| d.lr_for_batch(self.batch_size)),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            sgd_momentum: d.sgd_momentum,
            schedule: d.schedule.clone(),
            queue: self.queue.unwrap_or(d.queue_len),
            tau: self.tau.or(d.tau).unwrap_or(1.0),
            ema_momentum: self.ema_momentum.unwrap_or(d.ema_momentum),
            dim: self.dim.unwrap_or(d.dim),
            head: d.head,
            aug,
            bn_groups: if self.method.is_contrastive() {
                self.bn_groups.unwrap_or(d.shuffle_bn_groups.unwrap_or(1))
            } else {
                1
            },
            replicas: self.replicas.unwrap_or(1),
            seed: self.seed,
            knn_images: self.knn_images,
            log_every: self.log_every.max(1),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
