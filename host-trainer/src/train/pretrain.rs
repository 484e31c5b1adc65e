//! The pretraining loop shared by every method (paper §3): supervised cross-entropy, MoCo v1/v2,
//! Exemplar v1/v2.
//!
//! One step of MoCo/Exemplar, as in MoCo's `builder.py`:
//! 1. q = normalize(head_q(encoder_q(x_q)))          (BN over `bn_groups` contiguous groups)
//! 2. θ_k ← m·θ_k + (1−m)·θ_q                          (before the key forward, no gradients)
//! 3. k = unshuffle(normalize(head_k(encoder_k(shuffle(x_k)))))   (shuffle-BN emulation)
//! 4. loss = CE([q·k, q·queue]/τ, 0), Exemplar masking same-label queue slots (eq. 2)
//! 5. SGD step on θ_q; enqueue k with its labels (after the loss).
//!
//! Everything random is keyed by (seed, epoch, step/index) (see [`crate::rng`]), and the
//! checkpoint holds every tensor that evolves, so a resumed run continues bit-identically.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointMeta, CHECKPOINT_FORMAT};
use super::data::{open_pretrain_data, source, PretrainData};
use super::knn;
use super::optim::{Sgd, SgdConfig};
use super::schedule::{lr_at, Schedule};
use crate::augment::loader::{epoch_order, Loader, LoaderSpec};
use crate::augment::AugmentConfig;
use crate::fsutil;
use crate::method::contrastive::contrastive_loss;
use crate::method::ema::{copy_into, ema_update};
use crate::method::heads::{Head, HeadKind};
use crate::method::queue::LabelQueue;
use crate::method::shuffle_bn::ShuffleBn;
use crate::method::supervised::{supervised_loss, top1_accuracy};
use crate::method::Method;
use crate::model::{BnMode, LoadOptions, ResNet, ResNetConfig};

/// File names inside `--out`.
pub const LAST: &str = "last.safetensors";
pub const BACKBONE: &str = "backbone.safetensors";
pub const METRICS: &str = "metrics.jsonl";

/// Everything that defines a run (stored in the checkpoint; a resumed run reuses it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// `supervised`, `moco-v1`, `moco-v2`, `exemplar-v1`, `exemplar-v2`.
    pub method: String,
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
    pub seed: u64,
    /// Held-out images the kNN monitor classifies each epoch (0 = off).
    pub knn_images: usize,
    /// Log a metrics line every this many steps (and at each epoch end).
    pub log_every: usize,
}

impl PretrainConfig {
    pub fn method(&self) -> Result<Method> {
        self.method.parse()
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
            if self.queue % self.batch_size != 0 {
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
            if self.batch_size % self.bn_groups != 0 || self.batch_size / self.bn_groups < 2 {
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

/// How to run (not part of the run's identity).
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// Stop after this many epochs of this invocation (the run stays resumable).
    pub stop_after: Option<usize>,
    pub progress: bool,
}

/// What a finished (or stopped) invocation reports.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    pub method: String,
    pub epochs_done: usize,
    pub epochs: usize,
    pub final_loss: f64,
    pub knn_top1: Option<f64>,
    pub images_per_sec: f64,
    pub backbone: Option<PathBuf>,
    pub wall_seconds: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsLine {
    /// `step` or `epoch`.
    pub kind: String,
    pub epoch: usize,
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_sec: f64,
    /// Instance (MoCo) or class (supervised) top-1 of the training batch, %.
    pub train_top1: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top1: Option<f64>,
}

/// The momentum (key) side of MoCo/Exemplar.
struct KeySide {
    encoder: ResNet,
    head: Head,
    queue: LabelQueue,
}

/// The live training state.
struct Trainer {
    cfg: PretrainConfig,
    method: Method,
    device: Device,
    encoder: ResNet,
    head: Option<Head>,
    key: Option<KeySide>,
    sgd: Sgd,
    next_epoch: usize,
    global_step: u64,
}

fn prefixed(prefix: &str, vars: Vec<(String, Var)>) -> Vec<(String, Var)> {
    vars.into_iter()
        .map(|(n, v)| (format!("{prefix}{n}"), v))
        .collect()
}

impl Trainer {
    fn new(cfg: PretrainConfig, device: Device) -> Result<Trainer> {
        let method = cfg.method()?;
        let encoder = ResNet::new(&cfg.model, cfg.seed, &device)?;
        let feat = cfg.model.feature_dim();
        let (head, key) = if method.is_contrastive() {
            let kind = cfg
                .head
                .context("contrastive method without a projection head")?;
            let head = Head::new(kind, feat, cfg.dim, cfg.seed, &device)?;
            let k_enc = ResNet::new(&cfg.model, cfg.seed, &device)?;
            k_enc.copy_from(&encoder)?;
            let k_head = Head::new(kind, feat, cfg.dim, cfg.seed, &device)?;
            copy_into(&k_head.named_vars(), &head.named_vars())?;
            let queue = LabelQueue::new(cfg.queue, cfg.dim, cfg.seed, &device)?;
            (
                Some(head),
                Some(KeySide {
                    encoder: k_enc,
                    head: k_head,
                    queue,
                }),
            )
        } else {
            (None, None)
        };
        let mut params = prefixed("encoder_q.", encoder.named_params());
        if let Some(h) = &head {
            params.extend(prefixed("head_q.", h.named_vars()));
        }
        let sgd = Sgd::new(
            params,
            SgdConfig {
                momentum: cfg.sgd_momentum,
                ..SgdConfig::pretrain(cfg.lr, cfg.weight_decay)
            },
        )?;
        Ok(Trainer {
            cfg,
            method,
            device,
            encoder,
            head,
            key,
            sgd,
            next_epoch: 0,
            global_step: 0,
        })
    }

    /// Every tensor that evolves during training, by checkpoint name.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut t: Vec<(String, Tensor)> = self
            .encoder
            .all_tensors()
            .into_iter()
            .map(|(n, x)| (format!("encoder_q.{n}"), x))
            .collect();
        if let Some(h) = &self.head {
            t.extend(
                h.named_vars()
                    .into_iter()
                    .map(|(n, v)| (format!("head_q.{n}"), v.as_detached_tensor())),
            );
        }
        if let Some(k) = &self.key {
            t.extend(
                k.encoder
                    .all_tensors()
                    .into_iter()
                    .map(|(n, x)| (format!("encoder_k.{n}"), x)),
            );
            t.extend(
                k.head
                    .named_vars()
                    .into_iter()
                    .map(|(n, v)| (format!("head_k.{n}"), v.as_detached_tensor())),
            );
            t.extend(k.queue.to_tensors()?);
        }
        t.extend(
            self.sgd
                .state_tensors()
                .into_iter()
                .map(|(n, x)| (format!("optim.{n}"), x)),
        );
        Ok(t)
    }

    fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            config: self.cfg.clone(),
            next_epoch: self.next_epoch,
            global_step: self.global_step,
        };
        checkpoint::to_bytes(&self.state_tensors()?, &meta)
    }

    /// Restore from `dir/last.safetensors`; the config there wins, except `epochs`, which a
    /// resumed run may extend.
    fn resume(dir: &Path, epochs: Option<usize>, device: Device) -> Result<Trainer> {
        let path = dir.join(LAST);
        if !path.is_file() {
            bail!(
                "--resume {}: no {LAST} there (nothing to resume)",
                dir.display()
            );
        }
        let (tensors, meta) = checkpoint::read::<PretrainConfig>(&path, &device)?;
        let mut cfg = meta.config;
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
        cfg.validate()?;
        let mut tr = Trainer::new(cfg, device.clone())?;
        let bytes_of = |prefix: &str| -> Result<Vec<u8>> {
            let sub: Vec<(String, Tensor)> = checkpoint::with_prefix(&tensors, prefix)
                .into_iter()
                .collect();
            Ok(safetensors::serialize(sub, None)?)
        };
        tr.encoder
            .load_safetensors_bytes(&bytes_of("encoder_q.")?, &path, &LoadOptions::exact())
            .with_context(|| format!("{}: query encoder", path.display()))?;
        if let Some(h) = &tr.head {
            h.load(&checkpoint::with_prefix(&tensors, "head_q."))?;
        }
        if let Some(k) = &mut tr.key {
            k.encoder
                .load_safetensors_bytes(&bytes_of("encoder_k.")?, &path, &LoadOptions::exact())
                .with_context(|| format!("{}: key encoder", path.display()))?;
            k.head.load(&checkpoint::with_prefix(&tensors, "head_k."))?;
            k.queue = LabelQueue::from_tensors(&tensors, &device)?;
        }
        tr.sgd
            .load_state_tensors(&checkpoint::with_prefix(&tensors, "optim."))?;
        tr.next_epoch = meta.next_epoch;
        tr.global_step = meta.global_step;
        Ok(tr)
    }

    /// One optimiser step on a batch: (loss, train top-1 in [0, 1]).
    fn step(
        &mut self,
        batch: &crate::augment::loader::Batch,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<(f64, f64)> {
        let fwd = self.forward(batch, epoch, step_in_epoch)?;
        if !fwd.value.is_finite() {
            bail!(
                "the loss became {} at epoch {epoch}, step {step_in_epoch}: training stopped; \
                 the last good checkpoint ({LAST}, end of the previous epoch) is kept. Try a lower --lr.",
                fwd.value
            );
        }
        let (value, acc) = (fwd.value, fwd.acc);
        self.apply(fwd)?;
        Ok((value, acc))
    }

    /// The forward half of a step: the loss (with its graph), and for MoCo/Exemplar the EMA
    /// update of the key side and the keys to enqueue.
    fn forward(
        &mut self,
        batch: &crate::augment::loader::Batch,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<StepForward> {
        let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        let xq = batch.view_tensor(0, &self.device)?;
        let (loss, acc, keys) = match self.method {
            Method::Supervised => {
                let logits = self.encoder.forward(&xq, BnMode::TRAIN)?;
                let loss = supervised_loss(&logits, &labels)?;
                let acc = top1_accuracy(&logits, &labels)?;
                (loss, acc, None)
            }
            Method::Moco(_) | Method::Exemplar(_) => {
                let groups = self.cfg.bn_groups;
                let mode = BnMode::Train { groups };
                let head = self.head.as_ref().context("contrastive head missing")?;
                let q = head.forward(&self.encoder.forward_features(&xq, mode)?)?;
                let key = self.key.as_mut().context("key encoder missing")?;
                let m = self.cfg.ema_momentum;
                ema_update(&key.encoder.named_params(), &self.encoder.named_params(), m)?;
                ema_update(&key.head.named_vars(), &head.named_vars(), m)?;
                let xk = batch.view_tensor(1, &self.device)?;
                let k = if groups > 1 {
                    let sh = ShuffleBn::for_step(
                        self.cfg.seed,
                        epoch as u64,
                        step_in_epoch,
                        xk.dim(0)?,
                        groups,
                    )?;
                    let e = key
                        .head
                        .forward(&key.encoder.forward_features(&sh.shuffle(&xk)?, mode)?)?;
                    sh.unshuffle(&e)?
                } else {
                    key.head
                        .forward(&key.encoder.forward_features(&xk, mode)?)?
                }
                .detach();
                let exemplar_labels =
                    matches!(self.method, Method::Exemplar(_)).then_some(labels.as_slice());
                let out = contrastive_loss(&q, &k, &key.queue, exemplar_labels, self.cfg.tau)?;
                let acc = out.instance_accuracy()?;
                (out.loss, acc, Some(out.keys))
            }
        };
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        Ok(StepForward {
            loss,
            value,
            acc: f64::from(acc),
            keys,
            labels,
        })
    }

    /// The backward half: gradients, the SGD update of the query side, then (MoCo/Exemplar) the
    /// batch's keys and labels enter the queue, after the loss used the old queue.
    fn apply(&mut self, fwd: StepForward) -> Result<()> {
        self.sgd.backward_step(&fwd.loss)?;
        if let (Some(keys), Some(key)) = (fwd.keys, self.key.as_mut()) {
            key.queue.enqueue(&keys, Some(&fwd.labels))?;
        }
        self.global_step += 1;
        Ok(())
    }
}

/// What the forward half of a step hands to the backward half.
struct StepForward {
    loss: Tensor,
    value: f64,
    /// Train top-1 in [0, 1].
    acc: f64,
    keys: Option<Tensor>,
    labels: Vec<i64>,
}

/// One training step on a fixed random batch, through exactly the code `pretrain` runs (no data
/// loading, no checkpoints): what the criterion bench `pretrain_step` and `host-trainer
/// bench-step` time.
pub struct StepBench {
    trainer: Trainer,
    batch: crate::augment::loader::Batch,
    steps: u64,
}

/// Seconds spent in one [`StepBench::step`], split where autograd splits it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepTiming {
    /// Query (and key) forward passes, EMA update, loss.
    pub forward_s: f64,
    /// Backward pass, SGD update, enqueue.
    pub backward_s: f64,
}

impl StepTiming {
    pub fn total_s(&self) -> f64 {
        self.forward_s + self.backward_s
    }
}

impl StepBench {
    /// `req.data` is not read; supervised runs get a classifier over `num_classes` classes and
    /// the batch random labels below it.
    pub fn new(req: &PretrainRequest, num_classes: usize, device: Device) -> Result<StepBench> {
        use rand::Rng;
        let cfg = req.resolve(num_classes)?;
        let views = if cfg.method()?.is_contrastive() { 2 } else { 1 };
        let (b, s) = (cfg.batch_size, cfg.image_size);
        let mut rng = crate::rng::stream(cfg.seed, &[0x5354_4550]);
        let batch = crate::augment::loader::Batch {
            indices: (0..b).collect(),
            labels: (0..b).map(|_| rng.gen_range(0..num_classes)).collect(),
            views: (0..views)
                .map(|_| {
                    (0..b * 3 * s * s)
                        .map(|_| rng.gen_range(-2.0..2.0))
                        .collect()
                })
                .collect(),
            landmarks: None,
            size: s,
        };
        Ok(StepBench {
            trainer: Trainer::new(cfg, device)?,
            batch,
            steps: 0,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.batch.len()
    }

    /// One full step; on CUDA the device is synchronised at both ends of each half, so the
    /// times are the GPU's, not the launch queue's.
    pub fn step(&mut self) -> Result<StepTiming> {
        let dev = self.trainer.device.clone();
        dev.synchronize()?;
        let t0 = Instant::now();
        let fwd = self.trainer.forward(&self.batch, 0, self.steps)?;
        dev.synchronize()?;
        let t1 = Instant::now();
        ensure!(
            fwd.value.is_finite(),
            "bench step: the loss became {}",
            fwd.value
        );
        self.trainer.apply(fwd)?;
        dev.synchronize()?;
        self.steps += 1;
        Ok(StepTiming {
            forward_s: (t1 - t0).as_secs_f64(),
            backward_s: t1.elapsed().as_secs_f64(),
        })
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
            method: self.method.to_string(),
            data: self.data.clone(),
            model,
            image_size: self.image_size,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self
                .lr
                .unwrap_or_else(|| super::schedule::scaled_lr(d.base_lr, self.batch_size)),
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
            seed: self.seed,
            knn_images: self.knn_images,
            log_every: self.log_every.max(1),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Start a new run in `opts.out` (which must not hold one already).
pub fn pretrain(req: &PretrainRequest, opts: &RunOptions) -> Result<PretrainSummary> {
    if opts.out.join(LAST).exists() {
        bail!(
            "--out {} already holds a run ({LAST}); continue it with --resume {0}, or choose another --out",
            opts.out.display()
        );
    }
    let data = open_pretrain_data(&req.data, req.seed)?;
    if req.method.uses_labels() && data.num_classes() < 2 {
        bail!(
            "{}: {} needs labels of at least 2 classes, found {}",
            req.data.display(),
            req.method,
            data.num_classes()
        );
    }
    let cfg = req.resolve(data.num_classes())?;
    let trainer = Trainer::new(cfg, opts.device.clone())?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    run_epochs(trainer, data, opts)
}

/// Continue the run saved in `dir` (its config), optionally to a larger number of epochs.
pub fn resume(dir: &Path, epochs: Option<usize>, opts: &RunOptions) -> Result<PretrainSummary> {
    let trainer = Trainer::resume(dir, epochs, opts.device.clone())?;
    let data = open_pretrain_data(&trainer.cfg.data, trainer.cfg.seed)?;
    run_epochs(trainer, data, opts)
}

fn run_epochs(mut tr: Trainer, data: PretrainData, opts: &RunOptions) -> Result<PretrainSummary> {
    let started = Instant::now();
    let cfg = tr.cfg.clone();
    let train_src = source(&data.train);
    let views = if tr.method.is_contrastive() {
        vec![cfg.aug.clone(); 2]
    } else {
        vec![cfg.aug.clone()]
    };
    let steps_per_epoch = data.train.len() / cfg.batch_size;
    if steps_per_epoch == 0 {
        bail!(
            "{}: {} training images are fewer than one batch of {} (batches are dropped when short)",
            cfg.data.display(),
            data.train.len(),
            cfg.batch_size
        );
    }
    let last_epoch = match opts.stop_after {
        Some(n) => cfg.epochs.min(tr.next_epoch + n),
        None => cfg.epochs,
    };
    let metrics_path = opts.out.join(METRICS);
    let mut summary = PretrainSummary {
        method: cfg.method.clone(),
        epochs_done: tr.next_epoch,
        epochs: cfg.epochs,
        final_loss: f64::NAN,
        knn_top1: None,
        images_per_sec: 0.0,
        backbone: None,
        wall_seconds: 0.0,
    };
    let mut images_seen = 0usize;
    let mut train_time = 0.0f64;
    for epoch in tr.next_epoch..last_epoch {
        let lr = lr_at(epoch, cfg.epochs, cfg.lr, &cfg.schedule);
        tr.sgd.set_lr(lr);
        let order = epoch_order(data.train.len(), cfg.seed, epoch as u64);
        let spec = LoaderSpec {
            drop_last: true,
            ..LoaderSpec::new(cfg.batch_size, views.clone(), cfg.seed, epoch as u64)
        };
        let loader = Loader::new(train_src.clone(), order, spec)?;
        let bar = progress_bar(
            opts.progress,
            loader.num_batches() as u64,
            epoch,
            cfg.epochs,
        );
        let (mut loss_sum, mut acc_sum, mut n) = (0.0, 0.0, 0usize);
        let epoch_start = Instant::now();
        let mut window = (Instant::now(), 0usize);
        for (s, batch) in loader.enumerate() {
            let batch = batch.with_context(|| format!("loading a batch of epoch {epoch}"))?;
            let (loss, acc) = tr.step(&batch, epoch, s as u64)?;
            loss_sum += loss;
            acc_sum += acc;
            n += 1;
            window.1 += batch.len();
            images_seen += batch.len();
            if (s + 1) % cfg.log_every == 0 {
                let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                let line = MetricsLine {
                    kind: "step".into(),
                    epoch,
                    step: tr.global_step,
                    loss,
                    lr,
                    images_per_sec: ips,
                    train_top1: 100.0 * acc,
                    knn_top1: None,
                };
                fsutil::append_line(&metrics_path, &serde_json::to_string(&line)?)?;
                bar.set_message(format!("loss {loss:.4} lr {lr:.4} {ips:.1} img/s"));
                window = (Instant::now(), 0);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = epoch_start.elapsed().as_secs_f64();
        train_time += secs;
        let knn_top1 = if cfg.knn_images > 0 && !data.heldout.is_empty() {
            Some(knn_monitor(&tr, &data, &cfg)?)
        } else {
            None
        };
        tr.next_epoch = epoch + 1;
        // The checkpoint of this epoch goes down before anything reports it as done.
        fsutil::write_atomic(&opts.out.join(LAST), &tr.checkpoint_bytes()?)?;
        let mean_loss = loss_sum / n.max(1) as f64;
        let ips = (n * cfg.batch_size) as f64 / secs.max(1e-9);
        let line = MetricsLine {
            kind: "epoch".into(),
            epoch,
            step: tr.global_step,
            loss: mean_loss,
            lr,
            images_per_sec: ips,
            train_top1: 100.0 * acc_sum / n.max(1) as f64,
            knn_top1,
        };
        fsutil::append_line(&metrics_path, &serde_json::to_string(&line)?)?;
        if opts.progress {
            eprintln!(
                "epoch {}/{}: loss {mean_loss:.4}  lr {lr:.5}  {ips:.1} img/s{}",
                epoch + 1,
                cfg.epochs,
                knn_top1
                    .map(|k| format!("  kNN top-1 {k:.2}%"))
                    .unwrap_or_default()
            );
        }
        summary.final_loss = mean_loss;
        summary.knn_top1 = knn_top1;
        summary.epochs_done = epoch + 1;
    }
    summary.images_per_sec = images_seen as f64 / train_time.max(1e-9);
    if tr.next_epoch >= cfg.epochs {
        let path = opts.out.join(BACKBONE);
        save_backbone(&tr.encoder, &path)?;
        summary.backbone = Some(path);
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The query backbone alone (no classifier, no projection head), with torchvision names and its
/// config in the metadata: what the evaluations and the exporter open.
pub fn save_backbone(encoder: &ResNet, path: &Path) -> Result<()> {
    let mut cfg = encoder.config().clone();
    cfg.num_classes = None;
    let backbone = ResNet::new(&cfg, 0, &Device::Cpu)?;
    let bytes = encoder.to_safetensors_bytes()?;
    let opts = LoadOptions {
        ignore_unexpected: vec!["fc.".into()],
        ..LoadOptions::exact()
    };
    backbone.load_safetensors_bytes(&bytes, path, &opts)?;
    backbone.save_safetensors(path)?;
    Ok(())
}

fn knn_monitor(tr: &Trainer, data: &PretrainData, cfg: &PretrainConfig) -> Result<f64> {
    // The bank: a fixed, evenly spread subset of the training images (at most 4 per held-out
    // image, to bound the cost per epoch); the queries: the first `knn_images` held-out images.
    let q_n = cfg.knn_images.min(data.heldout.len());
    let bank_n = data.train.len().min(4 * q_n.max(250));
    let bank_idx: Vec<usize> = (0..bank_n).map(|i| i * data.train.len() / bank_n).collect();
    let bs = cfg.batch_size.max(64);
    let (bank, bank_labels) = knn::extract_features(
        &tr.encoder,
        source(&data.train),
        bank_idx,
        cfg.image_size,
        bs,
        &tr.device,
    )?;
    let (q, q_labels) = knn::extract_features(
        &tr.encoder,
        source(&data.heldout),
        (0..q_n).collect(),
        cfg.image_size,
        bs,
        &tr.device,
    )?;
    knn::knn_top1(&bank, &bank_labels, &q, &q_labels, knn::KNN_K, knn::KNN_T)
}

fn progress_bar(enabled: bool, len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}
