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
//! Modules: [`config`] (what defines a run), [`trainer`] (the state and one step), [`bench`] (a
//! step on a fixed batch, for the benchmarks), [`replay`] (a step from a given state, batch and
//! shuffle, for the PyTorch parity test); this file is the epoch loop, checkpoints and
//! the run summary.
//!
//! Everything random is keyed by (seed, epoch, step/index) (see [`crate::rng`]), and the
//! checkpoint holds every tensor that evolves, so a resumed run continues bit-identically.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::data::{open_pretrain_data, source, PretrainData};
use super::knn;
use super::schedule::lr_at;
use crate::augment::loader::{epoch_order, ImageSource, Loader, LoaderSpec};
use crate::augment::DecodedCache;
use crate::fsutil;
use crate::method::Method;
use crate::model::{LoadOptions, ResNet};
use crate::train::comm::{check_same_run, Comm};
use std::sync::Arc;

mod bench;
mod config;
mod probe;
mod replay;
mod trainer;

pub use bench::{StepBench, StepTiming};
pub use config::{PretrainConfig, PretrainRequest};
pub use probe::QueueProbe;
pub use replay::{ReplayedStep, StepReplay};
use trainer::Trainer;
pub use trainer::{Diverged, DIVERGED_LOSS_FACTOR};

/// File names inside `--out`.
pub const LAST: &str = "last.safetensors";
pub const BACKBONE: &str = "backbone.safetensors";
pub const METRICS: &str = "metrics.jsonl";

/// How to run (not part of the run's identity).
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// Stop after this many epochs of this invocation (the run stays resumable).
    pub stop_after: Option<usize>,
    pub progress: bool,
    /// Run the queue-staleness probe ([`QueueProbe`]) after every this-many epochs and after the
    /// last; 0 = never. A diagnostic: it changes nothing in the run.
    pub probe_queue_every: usize,
    /// This process's part of a run spread over several (`--distributed mpi`): the run's
    /// replicas are shared among the processes of this [`Comm`], rank 0 writes the files.
    /// `None`: the whole run in this process.
    pub distributed: Option<Arc<dyn Comm>>,
}

/// What a finished (or stopped) invocation reports; also the study's pretraining step record.
/// Figures that may be NaN (a diverged loss) are written as `null` (JSON has no NaN) and read
/// back so; a record lacking one reads it as NaN (every record names its method).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainSummary {
    #[serde(default = "partial_record_method")]
    pub method: Method,
    /// MoCo/Exemplar: the queue length K (`None` for supervised).
    #[serde(default)]
    pub queue: Option<usize>,
    /// N, the training images (an epoch's batches cover N rounded down to whole batches). K/N
    /// above 1/2 puts each instance's own older keys in its queue as negatives.
    #[serde(default)]
    pub train_images: usize,
    #[serde(default)]
    pub epochs_done: usize,
    #[serde(default)]
    pub epochs: usize,
    /// Mean training loss of the last epoch.
    #[serde(
        default = "runtime_cli::nan::nan",
        deserialize_with = "runtime_cli::nan::null_as_nan"
    )]
    pub final_loss: f64,
    /// Mean chance loss of the last epoch (ln of the candidates each softmax compares:
    /// [`chance_loss`] for MoCo/Exemplar, ln(classes) for supervised).
    #[serde(
        default = "runtime_cli::nan::nan",
        deserialize_with = "runtime_cli::nan::null_as_nan"
    )]
    pub chance_loss: f64,
    /// Training images (views of the query side) seen over all epochs done, resumes included.
    #[serde(default)]
    pub images_seen: u64,
    /// kNN top-1 (%) of held-out base images against the training images, after the last epoch.
    #[serde(default)]
    pub knn_top1: Option<f64>,
    /// kNN top-1 of guessing (100 / number of training classes), for comparison.
    #[serde(
        default = "runtime_cli::nan::nan",
        deserialize_with = "runtime_cli::nan::null_as_nan"
    )]
    pub knn_chance: f64,
    /// kNN top-1 (%) of this run's network *at initialisation* (its seed, before any step), on
    /// the same bank and queries: the level a run must beat to have learnt more than random
    /// convolutional features give (which are far above guessing). Recomputed from the seed on
    /// resume, so it is the same however the run was split.
    #[serde(default)]
    pub knn_init_top1: Option<f64>,
    /// Held-out queries of the kNN monitor (the binomial noise of `knn_top1` is
    /// √(p(1−p)/knn_queries)).
    #[serde(default)]
    pub knn_queries: usize,
    /// The queue-staleness probe after the last epoch, when it ran ([`RunOptions::probe_queue_every`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_probe: Option<QueueProbe>,
    #[serde(
        default = "runtime_cli::nan::nan",
        deserialize_with = "runtime_cli::nan::null_as_nan"
    )]
    pub images_per_sec: f64,
    #[serde(default)]
    pub backbone: Option<PathBuf>,
    #[serde(
        default = "runtime_cli::nan::nan",
        deserialize_with = "runtime_cli::nan::null_as_nan"
    )]
    pub wall_seconds: f64,
}

/// The method of a summary record that lacks one. Every summary this crate writes names its
/// method; only partial records do not (the study reads them, like any record lacking its
/// figures, as empty cells: their final loss reads as NaN).
fn partial_record_method() -> Method {
    Method::Supervised
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
    /// Epoch lines: the queue-staleness probe, on the epochs it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_probe: Option<QueueProbe>,
}

/// Takes `dir`'s one-writer lock ([`fsutil::DirLock`]) for `what`, or refuses with the other
/// process's PID. Held until the returned guard drops; released by the OS if the process dies.
/// On a file system without locks it warns and goes on unprotected (`None`).
pub fn lock_dir(dir: &Path, what: &str) -> Result<Option<fsutil::DirLock>> {
    match fsutil::DirLock::acquire(dir, what) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!(
                "warning: {}: the file system has no locks; nothing stops a second process \
                 from writing there at the same time",
                dir.display()
            );
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e.into()),
        Err(e) => Err(e).with_context(|| format!("locking {}", dir.display())),
    }
}

/// [`lock_dir`] for the process that writes the run's files: all but the ranks above 0 of a
/// distributed run, which only read (and would otherwise be refused by rank 0's lock).
fn lock_unless_follower(
    opts: &RunOptions,
    dir: &Path,
    what: &str,
) -> Result<Option<fsutil::DirLock>> {
    if opts.distributed.as_ref().is_some_and(|c| c.rank() != 0) {
        return Ok(None);
    }
    lock_dir(dir, what)
}

/// Start a new run in `opts.out` (which must not hold one already, nor be in use by another
/// process: [`lock_dir`]).
pub fn pretrain(req: &PretrainRequest, opts: &RunOptions) -> Result<PretrainSummary> {
    let _lock = lock_unless_follower(opts, &opts.out, "host-trainer pretrain")?;
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
    let trainer = Trainer::new(cfg, opts.device.clone(), opts.distributed.clone())?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    run_epochs(trainer, data, opts)
}

/// Continue the run saved in `dir` (its config), optionally to a larger number of epochs.
pub fn resume(dir: &Path, epochs: Option<usize>, opts: &RunOptions) -> Result<PretrainSummary> {
    if !dir.join(LAST).is_file() {
        bail!(
            "--resume {}: no {LAST} there (nothing to resume)",
            dir.display()
        );
    }
    let _lock = lock_unless_follower(opts, dir, "host-trainer pretrain --resume")?;
    let trainer = Trainer::resume(dir, epochs, opts.device.clone(), opts.distributed.clone())?;
    let data = open_pretrain_data(&trainer.cfg.data, trainer.cfg.seed)?;
    run_epochs(trainer, data, opts)
}

/// What every process of a distributed run must agree on, one setting per line: the run's
/// config, where it resumes, and the training list (names, labels and file sizes).
fn run_fingerprint(cfg: &PretrainConfig, data: &PretrainData, next_epoch: usize) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, label) in &data.train.items {
        path.strip_prefix(&data.root).unwrap_or(path).hash(&mut h);
        label.hash(&mut h);
        std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(u64::MAX)
            .hash(&mut h);
    }
    let config = serde_json::to_value(cfg)?;
    let mut lines: Vec<String> = match config {
        serde_json::Value::Object(m) => m.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        other => vec![other.to_string()],
    };
    lines.push(format!("resumes at epoch={next_epoch}"));
    lines.push(format!(
        "training list={} images, hash {:016x}",
        data.train.len(),
        h.finish()
    ));
    Ok(lines.join("\n"))
}

fn run_epochs(mut tr: Trainer, data: PretrainData, opts: &RunOptions) -> Result<PretrainSummary> {
    let started = Instant::now();
    let cfg = tr.cfg.clone();
    if let Some(comm) = tr.replicas.comm() {
        check_same_run(comm, &run_fingerprint(&cfg, &data, tr.next_epoch)?)?;
    }
    // Rank 0 of a distributed run writes the files (and draws the progress); the others compute.
    let root = tr.replicas.is_root();
    let opts = &RunOptions {
        progress: opts.progress && root,
        out: opts.out.clone(),
        device: opts.device.clone(),
        stop_after: opts.stop_after,
        probe_queue_every: opts.probe_queue_every,
        distributed: opts.distributed.clone(),
    };
    // Decoded once, augmented every epoch (see `DecodedCache` for the memory bound).
    let train_src: Arc<dyn ImageSource> = Arc::new(DecodedCache::new(source(&data.train)));
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
        method: cfg.method,
        queue: cfg.method.is_contrastive().then_some(cfg.queue),
        train_images: data.train.len(),
        epochs_done: tr.next_epoch,
        epochs: cfg.epochs,
        final_loss: f64::NAN,
        chance_loss: f64::NAN,
        images_seen: 0,
        knn_top1: None,
        knn_chance: 100.0 / data.num_classes().max(1) as f64,
        knn_init_top1: None,
        knn_queries: 0,
        queue_probe: None,
        images_per_sec: 0.0,
        backbone: None,
        wall_seconds: 0.0,
    };
    if cfg.knn_images > 0 && !data.heldout.is_empty() {
        let init = ResNet::new(&cfg.model, cfg.seed, &tr.device)?;
        summary.knn_init_top1 = Some(knn_monitor(&init, &tr.device, &data, &cfg)?);
        summary.knn_queries = cfg.knn_images.min(data.heldout.len());
    }
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
        let loader = Loader::new(train_src.clone(), order.clone(), spec)?;
        let bar = progress_bar(
            opts.progress,
            loader.num_batches() as u64,
            epoch,
            cfg.epochs,
        );
        let (mut loss_sum, mut acc_sum, mut chance_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
        let epoch_start = Instant::now();
        let mut window = (Instant::now(), 0usize);
        for (s, batch) in loader.enumerate() {
            let batch = batch.with_context(|| format!("loading a batch of epoch {epoch}"))?;
            let (loss, acc, chance) = tr.step(&batch, epoch, s as u64)?;
            loss_sum += loss;
            acc_sum += acc;
            chance_sum += chance;
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
                    queue_probe: None,
                };
                if root {
                    fsutil::append_line(&metrics_path, &serde_json::to_string(&line)?)
                        .with_context(|| format!("writing {}", metrics_path.display()))?;
                }
                bar.set_message(format!("loss {loss:.4} lr {lr:.4} {ips:.1} img/s"));
                window = (Instant::now(), 0);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = epoch_start.elapsed().as_secs_f64();
        train_time += secs;
        let knn_top1 = if cfg.knn_images > 0 && !data.heldout.is_empty() {
            Some(knn_monitor(&tr.encoder, &tr.device, &data, &cfg)?)
        } else {
            None
        };
        let every = opts.probe_queue_every;
        let queue_probe = if every > 0 && ((epoch + 1) % every == 0 || epoch + 1 == cfg.epochs) {
            tr.probe_queue(&train_src, &views, epoch, &order)?
        } else {
            None
        };
        tr.next_epoch = epoch + 1;
        // The checkpoint of this epoch goes down before anything reports it as done.
        // A write that fails (disk full, quota, file size limit) leaves the previous one whole.
        let last = opts.out.join(LAST);
        if root {
            fsutil::write_atomic(&last, &tr.checkpoint_bytes()?).with_context(|| {
                format!(
                    "writing the checkpoint {} (the previous one is kept; free space, then --resume)",
                    last.display()
                )
            })?;
        }
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
            queue_probe,
        };
        if root {
            fsutil::append_line(&metrics_path, &serde_json::to_string(&line)?)
                .with_context(|| format!("writing {}", metrics_path.display()))?;
        }
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
        summary.chance_loss = chance_sum / n.max(1) as f64;
        summary.knn_top1 = knn_top1;
        summary.queue_probe = queue_probe;
        summary.epochs_done = epoch + 1;
    }
    // Batches are dropped when short, so every epoch sees the same number of images.
    let per_epoch = (data.train.len() / cfg.batch_size * cfg.batch_size) as u64;
    summary.images_seen = summary.epochs_done as u64 * per_epoch;
    summary.images_per_sec = images_seen as f64 / train_time.max(1e-9);
    if tr.next_epoch >= cfg.epochs {
        let path = opts.out.join(BACKBONE);
        if root {
            save_backbone(&tr.encoder, &path)?;
        }
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

fn knn_monitor(
    encoder: &ResNet,
    device: &Device,
    data: &PretrainData,
    cfg: &PretrainConfig,
) -> Result<f64> {
    // The bank: a fixed, evenly spread subset of the training images (at most 4 per held-out
    // image, to bound the cost per epoch); the queries: the first `knn_images` held-out images.
    let q_n = cfg.knn_images.min(data.heldout.len());
    let bank_n = data.train.len().min(4 * q_n.max(250));
    let bank_idx: Vec<usize> = (0..bank_n).map(|i| i * data.train.len() / bank_n).collect();
    let bs = cfg.batch_size.max(64);
    let (bank, bank_labels) = knn::extract_features(
        encoder,
        source(&data.train),
        bank_idx,
        cfg.image_size,
        bs,
        device,
    )?;
    let (q, q_labels) = knn::extract_features(
        encoder,
        source(&data.heldout),
        (0..q_n).collect(),
        cfg.image_size,
        bs,
        device,
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
