//! The live training state and one optimiser step (forward half, backward half), shared by the
//! epoch loop and the step benchmarks.
use super::*;
use crate::method::contrastive::{chance_loss, contrastive_loss};
use crate::method::ema::{copy_into, ema_update};
use crate::method::heads::Head;
use crate::method::queue::LabelQueue;
use crate::method::shuffle_bn::ShuffleBn;
use crate::method::supervised::{supervised_loss, top1_accuracy};
use crate::method::Method;
use crate::model::{BnMode, LoadOptions, ResNet};
use crate::train::checkpoint::{self, CheckpointMeta, CHECKPOINT_FORMAT};
use crate::train::comm::Comm;
use crate::train::finite::first_non_finite;
use crate::train::optim::{Sgd, SgdConfig};
use crate::train::replicas::{sum_grads, Replicas};
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A loss above this many times the step's chance loss (the loss of a model that learnt
/// nothing: ln of the candidates each softmax compares) counts as divergence. Cross-entropy of a
/// training model stays near or below chance; an overconfident wrong model can exceed it a few
/// times, not a thousand (at chance ln 10 = 2.3 that would be logit gaps of ~2 300). Floored at
/// 1 000 in absolute terms (`chance.max(1.0)`).
pub const DIVERGED_LOSS_FACTOR: f64 = 1000.0;

/// Training diverged at a step: what went wrong there, named.
#[derive(Debug)]
pub struct Diverged {
    pub epoch: usize,
    /// The step within the epoch.
    pub step: u64,
    /// Optimiser steps taken before this one.
    pub global_step: u64,
    pub what: String,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training diverged at epoch {}, step {} (global step {}): {}; the run stopped \
             there and the last good checkpoint ({LAST}, end of the previous epoch) is kept. \
             Try a lower --lr.",
            self.epoch, self.step, self.global_step, self.what
        )
    }
}

impl std::error::Error for Diverged {}

/// The momentum (key) side of MoCo/Exemplar.
pub(super) struct KeySide {
    pub(super) encoder: ResNet,
    pub(super) head: Head,
    pub(super) queue: LabelQueue,
}

/// The live training state.
pub(super) struct Trainer {
    pub(super) cfg: PretrainConfig,
    pub(super) method: Method,
    pub(super) device: Device,
    pub(super) encoder: ResNet,
    pub(super) head: Option<Head>,
    pub(super) key: Option<KeySide>,
    pub(super) sgd: Sgd,
    pub(super) next_epoch: usize,
    pub(super) global_step: u64,
    /// The step's batch split over `cfg.replicas` threads ([`Replicas`]).
    pub(super) replicas: Replicas,
}

pub(super) fn prefixed(prefix: &str, vars: Vec<(String, Var)>) -> Vec<(String, Var)> {
    vars.into_iter()
        .map(|(n, v)| (format!("{prefix}{n}"), v))
        .collect()
}

impl Trainer {
    /// A fresh run of `cfg`; with `comm`, this process's part of a run whose `cfg.replicas`
    /// replicas are spread over the processes of `comm`.
    pub(super) fn new(
        cfg: PretrainConfig,
        device: Device,
        comm: Option<Arc<dyn Comm>>,
    ) -> Result<Trainer> {
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
        let replicas = match comm {
            None => Replicas::new(cfg.replicas)?,
            Some(c) => Replicas::distributed(cfg.replicas, c, device.is_cpu())?,
        };
        // Across processes (one GPU each) only this process's own replicas share its device.
        if replicas.local() > 1 && !device.is_cpu() {
            bail!(
                "--replicas {} splits a step over CPU threads; on {device:?} use --replicas 1",
                replicas.local()
            );
        }
        // Supervised: one BN group per replica; MoCo/Exemplar: whole shuffle-BN groups each.
        let groups = if method.is_contrastive() {
            cfg.bn_groups
        } else {
            replicas.len()
        };
        replicas.check_split(cfg.batch_size, groups)?;
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
            replicas,
        })
    }

    /// Every tensor that evolves during training, by checkpoint name.
    pub(super) fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut t = self.live_tensors();
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

    /// The checkpoint file's bytes. Refuses a state with a non-finite tensor (naming it): the
    /// step checks stop a diverging run before this, and a checkpoint that cannot be resumed
    /// must never replace a good one.
    pub(super) fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let tensors = self.state_tensors()?;
        if let Some(bad) = first_non_finite(tensors.iter().map(|(n, t)| (n.as_str(), t)))? {
            bail!("not writing {LAST}: the training state's {bad}");
        }
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            config: self.cfg.clone(),
            next_epoch: self.next_epoch,
            global_step: self.global_step,
        };
        checkpoint::to_bytes(&tensors, &meta)
    }

    /// Restore from `dir/last.safetensors`; the config there wins, except `epochs`, which a
    /// resumed run may extend.
    pub(super) fn resume(
        dir: &Path,
        epochs: Option<usize>,
        device: Device,
        comm: Option<Arc<dyn Comm>>,
    ) -> Result<Trainer> {
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
        cfg.validate()
            .with_context(|| format!("{}: the saved run's config", path.display()))?;
        let mut tr = Trainer::new(cfg, device.clone(), comm)
            .with_context(|| format!("{}: the saved run's config", path.display()))?;
        tr.load_state(&tensors, &path)?;
        tr.next_epoch = meta.next_epoch;
        tr.global_step = meta.global_step;
        Ok(tr)
    }

    /// Replace every evolving tensor with `tensors` (checkpoint names, as
    /// [`Trainer::state_tensors`] writes them; `path` names their file in errors): the query
    /// and key sides exactly (every parameter and buffer), the queue, and the optimiser's
    /// momentum buffers (absent ones start afresh, as before a parameter's first step).
    pub(super) fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<()> {
        let bytes_of = |prefix: &str| -> Result<Vec<u8>> {
            let sub: Vec<(String, Tensor)> = checkpoint::with_prefix(tensors, prefix)
                .into_iter()
                .collect();
            Ok(safetensors::serialize(sub, None)?)
        };
        self.encoder
            .load_safetensors_bytes(&bytes_of("encoder_q.")?, path, &LoadOptions::exact())
            .with_context(|| format!("{}: query encoder", path.display()))?;
        if let Some(h) = &self.head {
            h.load(&checkpoint::with_prefix(tensors, "head_q."))
                .with_context(|| format!("{}: query head", path.display()))?;
        }
        if let Some(k) = &mut self.key {
            k.encoder
                .load_safetensors_bytes(&bytes_of("encoder_k.")?, path, &LoadOptions::exact())
                .with_context(|| format!("{}: key encoder", path.display()))?;
            k.head
                .load(&checkpoint::with_prefix(tensors, "head_k."))
                .with_context(|| format!("{}: key head", path.display()))?;
            k.queue = LabelQueue::from_tensors(tensors, &self.device)
                .with_context(|| format!("{}: queue", path.display()))?;
        }
        self.sgd
            .load_state_tensors(&checkpoint::with_prefix(tensors, "optim."))
            .with_context(|| format!("{}: optimiser state", path.display()))?;
        Ok(())
    }

    /// One optimiser step on a batch: (loss, train top-1 in [0, 1], chance loss of the step).
    ///
    /// Refuses to go on once training has diverged ([`Diverged`]): a loss that is not finite or
    /// above [`DIVERGED_LOSS_FACTOR`] × the chance loss, a gradient or (after the update) a
    /// parameter or BN statistic with a non-finite value. The error names the epoch, the step
    /// and the first bad tensor; the run stops before anything is written, so the last good
    /// checkpoint (`last.safetensors` of the previous epoch) stays as it was. Cost: one
    /// reduction over the gradients and one over the parameters ([`first_non_finite`]).
    pub(super) fn step(
        &mut self,
        batch: &crate::augment::loader::Batch,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<(f64, f64, f64)> {
        let shuffle = KeyShuffle::Step {
            seed: self.cfg.seed,
            epoch: epoch as u64,
            step: step_in_epoch,
        };
        let out = self.compute(batch, None, shuffle, &PhaseClock::off())?;
        let global_step = self.global_step;
        let at = |what: String| Diverged {
            epoch,
            step: step_in_epoch,
            global_step,
            what,
        };
        let loss_bad = if !out.value.is_finite() {
            Some(format!("the loss is {}", out.value))
        } else if out.value > DIVERGED_LOSS_FACTOR * out.chance.max(1.0) {
            Some(format!(
                "the loss is {:.4e}, above {DIVERGED_LOSS_FACTOR} x the chance loss {:.4}",
                out.value, out.chance
            ))
        } else {
            None
        };
        let grads: Vec<(&str, Tensor)> = self
            .sgd
            .params()
            .iter()
            .filter_map(|(n, v)| {
                out.grads
                    .get(v.as_tensor())
                    .map(|g| (n.as_str(), g.clone()))
            })
            .collect();
        let grad_bad = first_non_finite(grads.iter().map(|(n, g)| (*n, g)))?;
        drop(grads);
        if loss_bad.is_some() || grad_bad.is_some() {
            // Name the first bad parameter too when there is one (the cause, more often than
            // not): only on the failure path, so it costs nothing while training is healthy.
            let state = self.live_tensors();
            let param_bad = first_non_finite(state.iter().map(|(n, t)| (n.as_str(), t)))?;
            let what: Vec<String> = [
                loss_bad,
                grad_bad.map(|b| format!("the gradient of {b}")),
                param_bad.map(|b| format!("parameter {b}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            return Err(at(what.join("; ")).into());
        }
        let (value, acc, chance) = (out.value, out.acc, out.chance);
        self.apply(out)?;
        let state = self.live_tensors();
        if let Some(bad) = first_non_finite(state.iter().map(|(n, t)| (n.as_str(), t)))? {
            return Err(at(format!("after the update, parameter {bad}")).into());
        }
        Ok((value, acc, chance))
    }

    /// The query side's parameters and BN statistics, by checkpoint name: what one step changes
    /// directly (the key side follows it by EMA, the queue is built from normalised keys).
    /// Trainable parameters first, then BN statistics: the forward pass updates the statistics
    /// from the parameters, so when both are bad the first bad parameter is the cause.
    fn live_tensors(&self) -> Vec<(String, Tensor)> {
        let mut t: Vec<(String, Tensor)> = self
            .encoder
            .named_params()
            .into_iter()
            .map(|(n, v)| (format!("encoder_q.{n}"), v.as_detached_tensor()))
            .collect();
        if let Some(h) = &self.head {
            t.extend(
                h.named_vars()
                    .into_iter()
                    .map(|(n, v)| (format!("head_q.{n}"), v.as_detached_tensor())),
            );
        }
        t.extend(
            self.encoder
                .named_buffers()
                .into_iter()
                .map(|(n, v)| (format!("encoder_q.{n}"), v.as_detached_tensor())),
        );
        t
    }

    /// The BN mode of replica `r` when the whole batch has `groups` BN groups.
    fn bn_mode(&self, groups: usize, r: usize) -> BnMode {
        bn_mode(self.replicas.len(), groups, r)
    }

    /// Everything of a step before the update: for MoCo/Exemplar the EMA update of the key side
    /// and the keys (shuffle-BN across the replicas), then on every replica its share's query
    /// forward, loss and backward. `views[v]` optionally holds view `v` already on the device
    /// (`bench-step --data-on-device`). `shuffle` is the key batch's shuffle-BN permutation
    /// (unused by supervised). `clock` marks the phases `bench-step` reports.
    pub(super) fn compute(
        &mut self,
        batch: &crate::augment::loader::Batch,
        views: Option<&[Tensor]>,
        shuffle: KeyShuffle<'_>,
        clock: &PhaseClock,
    ) -> Result<StepOutput> {
        let device = self.device.clone();
        let view = |v: usize| -> Result<Tensor> {
            Ok(match views {
                Some(t) => t.get(v).context("pre-uploaded view missing")?.clone(),
                None => batch.view_tensor(v, &device)?,
            })
        };
        let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        let n = self.replicas.len();
        let per = labels.len() / n;
        let share_labels = |r: usize| &labels[r * per..(r + 1) * per];
        // The loss of each replica is the mean over its share; scaled by 1/N, the replicas'
        // gradients sum to the gradient of the mean over the batch.
        let scale = |loss: Tensor| -> Result<Tensor> {
            Ok(if n == 1 {
                loss
            } else {
                loss.affine(1.0 / n as f64, 0.0)?
            })
        };
        let xq = view(0)?;
        let (parts, chance): (Vec<ReplicaOutput>, f64) = match self.method {
            Method::Supervised => {
                let encoder = &self.encoder;
                let parts = self.replicas.run(|r| {
                    let xq = self.replicas.share(&xq, r)?;
                    // One BN group per replica (as DDP without SyncBN); one group for N = 1.
                    let logits = encoder.forward(&xq, self.bn_mode(n, r))?;
                    let loss = scale(supervised_loss(&logits, share_labels(r))?)?;
                    let acc = top1_accuracy(&logits, share_labels(r))?;
                    let classes = logits.dim(1)?;
                    Ok((ReplicaOutput::new(loss, acc, r, clock)?, classes))
                })?;
                let chance = (parts[0].1 as f64).ln();
                (parts.into_iter().map(|(p, _)| p).collect(), chance)
            }
            Method::Moco(_) | Method::Exemplar(_) => {
                let groups = self.cfg.bn_groups;
                let m = self.cfg.ema_momentum;
                let head = self.head.as_ref().context("contrastive head missing")?;
                let key = self.key.as_ref().context("key encoder missing")?;
                ema_update(&key.encoder.named_params(), &self.encoder.named_params(), m)?;
                ema_update(&key.head.named_vars(), &head.named_vars(), m)?;
                let xk = view(1)?;
                let k = key_embeddings(
                    &key.encoder,
                    &key.head,
                    &xk,
                    groups,
                    shuffle,
                    &self.replicas,
                )?;
                let exemplar = matches!(self.method, Method::Exemplar(_));
                let chance = chance_loss(key.queue.labels(), exemplar.then_some(&labels[..]));
                let (encoder, queue, tau) = (&self.encoder, &key.queue, self.cfg.tau);
                let parts = self.replicas.run(|r| {
                    let xq = self.replicas.share(&xq, r)?;
                    let q =
                        head.forward(&encoder.forward_features(&xq, self.bn_mode(groups, r))?)?;
                    let k = self.replicas.share(&k, r)?;
                    let out =
                        contrastive_loss(&q, &k, queue, exemplar.then(|| share_labels(r)), tau)?;
                    let mut part = ReplicaOutput::new(
                        scale(out.loss.clone())?,
                        out.instance_accuracy()?,
                        r,
                        clock,
                    )?;
                    part.keys = Some(out.keys);
                    Ok(part)
                })?;
                (parts, chance)
            }
        };
        if n > 1 {
            apply_replica_bn_stats(&self.encoder, &self.replicas, &device)?;
        }
        // The backward ran inside each replica; what follows is the combination, over the
        // replicas of every process.
        clock.mark(Phase::Backward);
        let params = self.sgd.params();
        let local_shares = parts
            .iter()
            .map(|p| p.to_named(params, &device))
            .collect::<Result<Vec<_>>>()?;
        // The sums go into the first local replica's store (candle makes stores only by backward).
        let base = parts.into_iter().next().context("no replica output")?.grads;
        let shares = self.replicas.gather(local_shares, &device)?;
        let shares = shares
            .into_iter()
            .enumerate()
            .map(|(r, named)| ReplicaShare::from_named(named, params.len(), r))
            .collect::<Result<Vec<_>>>()?;
        let value = shares.iter().map(|p| p.value).sum();
        let acc = shares.iter().map(|p| p.acc).sum::<f64>() / n as f64;
        let grads = sum_grads(
            base,
            &shares.iter().map(|p| p.grads.clone()).collect::<Vec<_>>(),
            params,
        )?;
        let keys = shares
            .iter()
            .map(|p| p.keys.clone())
            .collect::<Option<Vec<_>>>();
        let keys = match keys {
            Some(k) if k.len() == 1 => k.into_iter().next(),
            Some(k) if !k.is_empty() => Some(Tensor::cat(&k, 0)?),
            _ => None,
        };
        Ok(StepOutput {
            value,
            acc,
            chance,
            grads,
            keys,
            labels,
        })
    }

    /// The update after [`Trainer::compute`]: SGD on the query side, then (MoCo/Exemplar) the
    /// batch's keys and labels enter the queue, after the loss used the old queue. The callers
    /// ([`Trainer::step`], the step bench) refuse a non-finite loss before calling it.
    pub(super) fn apply(&mut self, out: StepOutput) -> Result<()> {
        self.sgd.step(&out.grads)?;
        if let (Some(keys), Some(key)) = (out.keys, self.key.as_mut()) {
            key.queue.enqueue(&keys, Some(&out.labels))?;
        }
        self.global_step += 1;
        Ok(())
    }
}

/// The BN mode of replica `r` of `replicas` when the whole batch has `groups` BN groups: the
/// immediate-update `Train` for a single replica, else `groups / replicas` groups per replica
/// with the statistics held for [`ResNet::apply_replica_bn_stats`].
fn bn_mode(replicas: usize, groups: usize, r: usize) -> BnMode {
    if replicas == 1 {
        BnMode::Train { groups }
    } else {
        BnMode::TrainReplica {
            groups: groups / replicas,
            replica: r,
        }
    }
}

/// Which permutation shuffles a step's key batch across the BN groups (MoCo's `idx_shuffle`).
#[derive(Debug, Clone, Copy)]
pub(super) enum KeyShuffle<'a> {
    /// Training's own: [`ShuffleBn::for_step`] of `(seed, epoch, step)`, and no shuffle with a
    /// single BN group (where it could change nothing but the order of float sums).
    Step { seed: u64, epoch: u64, step: u64 },
    /// A permutation given by the caller (`shuffled[i] = x[perm[i]]`), applied whatever the
    /// number of groups: the PyTorch parity test replays the reference's own.
    Given(&'a [u32]),
}

/// The keys of a batch's key view, as step 3 of MoCo computes them: the batch shuffled across
/// the `groups` BN groups by the step's permutation ([`KeyShuffle`]), encoded
/// (each replica its share of whole groups, as MoCo's DDP code splits the shuffled batch over
/// GPUs), projected and un-shuffled; detached (the key side never gets gradients). One place, so
/// that the queue probe re-encodes keys exactly as training encoded them.
pub(super) fn key_embeddings(
    encoder: &ResNet,
    head: &Head,
    xk: &Tensor,
    groups: usize,
    shuffle: KeyShuffle<'_>,
    replicas: &Replicas,
) -> Result<Tensor> {
    let n = replicas.len();
    let shuffle = match shuffle {
        KeyShuffle::Step { seed, epoch, step } if groups > 1 => {
            Some(ShuffleBn::for_step(seed, epoch, step, xk.dim(0)?, groups)?)
        }
        KeyShuffle::Step { .. } => None,
        KeyShuffle::Given(perm) => Some(ShuffleBn::from_perm(perm.to_vec(), groups)?),
    };
    let xs = match &shuffle {
        Some(sh) => sh.shuffle(xk)?,
        None => xk.clone(),
    };
    let parts = replicas.run(|r| {
        let x = replicas.share(&xs, r)?;
        Ok(head.forward(&encoder.forward_features(&x, bn_mode(n, groups, r))?)?)
    })?;
    if n > 1 {
        apply_replica_bn_stats(encoder, replicas, xk.device())?;
    }
    let local = parts.into_iter().map(|k| vec![("keys".to_string(), k)]);
    let mut parts = replicas
        .gather(local.collect(), xk.device())?
        .into_iter()
        .enumerate()
        .map(|(r, mut m)| {
            m.remove("keys")
                .with_context(|| format!("replica {r} sent no keys"))
        })
        .collect::<Result<Vec<_>>>()?;
    let e = if parts.len() == 1 {
        parts.pop().context("no replica keys")?
    } else {
        Tensor::cat(&parts, 0)?
    };
    let k = match &shuffle {
        Some(sh) => sh.unshuffle(&e)?,
        None => e,
    };
    Ok(k.detach())
}

/// The BN statistics every replica's forward held, of every process, combined in replica order
/// into `encoder`'s running statistics.
fn apply_replica_bn_stats(encoder: &ResNet, replicas: &Replicas, device: &Device) -> Result<()> {
    let held = replicas.gather_bn_stats(encoder.take_replica_bn_stats()?, device)?;
    Ok(encoder.apply_replica_bn_stats(held, replicas.len())?)
}

/// One replica's part of a step as it travels between processes: loss (scaled by 1/N),
/// accuracy, gradients in the optimiser's parameter order, and (MoCo/Exemplar) its keys.
struct ReplicaShare {
    value: f64,
    acc: f64,
    grads: Vec<Option<Tensor>>,
    keys: Option<Tensor>,
}

impl ReplicaShare {
    fn from_named(mut m: BTreeMap<String, Tensor>, params: usize, r: usize) -> Result<Self> {
        let mut scalar = |k: &str| -> Result<f64> {
            let t = m
                .remove(k)
                .with_context(|| format!("replica {r} sent no {k}"))?;
            Ok(t.to_scalar::<f64>()?)
        };
        let (value, acc) = (scalar("value")?, scalar("acc")?);
        let grads = (0..params)
            .map(|i| m.remove(&format!("grad.{i}")))
            .collect();
        Ok(ReplicaShare {
            value,
            acc,
            grads,
            keys: m.remove("keys"),
        })
    }
}

/// One replica's share of a step: its loss (already scaled by 1/N), accuracy, gradients and,
/// for MoCo/Exemplar, its normalised keys.
struct ReplicaOutput {
    value: f64,
    acc: f64,
    grads: GradStore,
    keys: Option<Tensor>,
}

impl ReplicaOutput {
    /// As named tensors (`value`, `acc`, `keys`, `grad.<i>` for the optimiser's parameter `i`):
    /// [`ReplicaShare`] on the way through [`Replicas::gather`].
    fn to_named(&self, params: &[(String, Var)], device: &Device) -> Result<Vec<(String, Tensor)>> {
        let mut v = vec![
            ("value".to_string(), Tensor::new(self.value, device)?),
            ("acc".to_string(), Tensor::new(self.acc, device)?),
        ];
        for (i, (_, var)) in params.iter().enumerate() {
            if let Some(g) = self.grads.get(var.as_tensor()) {
                v.push((format!("grad.{i}"), g.clone()));
            }
        }
        if let Some(k) = &self.keys {
            v.push(("keys".to_string(), k.clone()));
        }
        Ok(v)
    }

    /// Reads the loss and runs its backward, on replica `r`'s own thread.
    fn new(loss: Tensor, acc: f32, r: usize, clock: &PhaseClock) -> Result<ReplicaOutput> {
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if r == 0 {
            clock.mark(Phase::Forward);
        }
        let grads = loss.backward()?;
        Ok(ReplicaOutput {
            value,
            acc: f64::from(acc),
            grads,
            keys: None,
        })
    }
}

/// The phases of a step that `bench-step` times: [`Phase::Forward`] ends when the first
/// replica has its loss (key side, EMA, query forward: all of the forward for one replica),
/// [`Phase::Backward`] when every replica has run its backward. A clock that is off records
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Forward,
    Backward,
}

/// Marks phase ends, optionally synchronising a device first (CUDA runs asynchronously).
pub(super) struct PhaseClock {
    marks: std::sync::Mutex<Vec<(Phase, std::time::Instant)>>,
    device: Option<Device>,
    on: bool,
}

impl PhaseClock {
    pub(super) fn off() -> PhaseClock {
        PhaseClock {
            marks: Default::default(),
            device: None,
            on: false,
        }
    }

    pub(super) fn on(device: &Device) -> PhaseClock {
        PhaseClock {
            marks: Default::default(),
            device: Some(device.clone()),
            on: true,
        }
    }

    fn mark(&self, phase: Phase) {
        if !self.on {
            return;
        }
        if let Some(d) = &self.device {
            // A failed synchronise shows up in the step's own result; timing is best effort.
            let _ = d.synchronize();
        }
        if let Ok(mut m) = self.marks.lock() {
            m.push((phase, std::time::Instant::now()));
        }
    }

    pub(super) fn at(&self, phase: Phase) -> Option<std::time::Instant> {
        let m = self.marks.lock().ok()?;
        m.iter().find(|(p, _)| *p == phase).map(|(_, t)| *t)
    }
}

/// What [`Trainer::compute`] hands to [`Trainer::apply`].
pub(super) struct StepOutput {
    /// The loss of the step (the mean over the batch).
    pub(super) value: f64,
    /// Train top-1 in [0, 1].
    pub(super) acc: f64,
    /// The loss of a model that learnt nothing on this batch ([`chance_loss`]).
    pub(super) chance: f64,
    /// The gradients of the query side, summed over the replicas.
    pub(super) grads: GradStore,
    pub(super) keys: Option<Tensor>,
    pub(super) labels: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ResNetConfig};
    use crate::train::pretrain::bench::random_batch;

    /// A parameter turned NaN stops the step, naming the epoch, the step and the tensor; and a
    /// state with a non-finite tensor is never serialised as a checkpoint.
    #[test]
    fn a_non_finite_parameter_stops_the_step_and_is_named() {
        let model = ResNetConfig {
            arch: Arch::Resnet18,
            width: 0.125,
            small_stem: true,
            num_classes: None,
        };
        let method: Method = "supervised".parse().unwrap();
        let mut req = PretrainRequest::for_bench(method, model, 16, 16, 32);
        req.replicas = Some(1);
        let cfg = req.resolve(10).unwrap();
        let batch = random_batch(&cfg, 10);
        let mut tr = Trainer::new(cfg, Device::Cpu, None).unwrap();
        tr.step(&batch, 0, 0).unwrap();
        tr.checkpoint_bytes().unwrap();
        let w = tr.encoder.var("conv1.weight").unwrap().clone();
        let nan = Tensor::full(f32::NAN, w.dims(), &Device::Cpu).unwrap();
        w.set(&nan).unwrap();
        let before = tr.global_step;
        let e = tr.step(&batch, 2, 5).unwrap_err();
        let msg = format!("{e:#}");
        assert!(e.downcast_ref::<Diverged>().is_some(), "{msg}");
        assert!(
            msg.contains("epoch 2, step 5") && msg.contains("`encoder_q.conv1.weight`"),
            "{msg}"
        );
        assert_eq!(tr.global_step, before, "the failed step must not count");
        let e = format!("{:#}", tr.checkpoint_bytes().unwrap_err());
        assert!(
            e.contains("encoder_q.conv1.weight") && e.contains(LAST),
            "{e}"
        );
    }

    /// One step's gradients on 1 and on 2 replicas, same weights and batch: the replicas add the
    /// same terms in another grouping, so each gradient agrees to float rounding relative to its
    /// largest entry (measured: at most 1.0e-5, typically 5e-6), and the loss and the enqueued
    /// keys agree too. A missing 1/N scale or a lost replica would be off by 50 % or more.
    #[test]
    fn two_replicas_give_one_replicas_step() {
        for method in ["moco-v2", "exemplar-v2", "supervised"] {
            let method: Method = method.parse().unwrap();
            let model = ResNetConfig {
                arch: Arch::Resnet18,
                width: 0.125,
                small_stem: true,
                num_classes: None,
            };
            let mut req = PretrainRequest::for_bench(method, model, 16, 16, 32);
            req.bn_groups = Some(4);
            let batch = random_batch(&req.resolve(10).unwrap(), 10);
            let outs: Vec<(StepOutput, Vec<(String, Var)>)> = [1usize, 2]
                .iter()
                .map(|&n| {
                    req.replicas = Some(n);
                    let mut tr = Trainer::new(req.resolve(10).unwrap(), Device::Cpu, None).unwrap();
                    let shuffle = KeyShuffle::Step {
                        seed: 0,
                        epoch: 0,
                        step: 0,
                    };
                    let out = tr
                        .compute(&batch, None, shuffle, &PhaseClock::off())
                        .unwrap();
                    (out, tr.sgd.params().to_vec())
                })
                .collect();
            let ((a, pa), (b, pb)) = (&outs[0], &outs[1]);
            // Supervised normalises per replica (as DDP), so only the contrastive steps are the
            // same computation; supervised is checked for running and finite.
            if !method.is_contrastive() {
                assert!(b.value.is_finite());
                continue;
            }
            assert!(
                (a.value - b.value).abs() <= 1e-5 * a.value.abs(),
                "{method}: loss"
            );
            let (ka, kb) = (a.keys.as_ref().unwrap(), b.keys.as_ref().unwrap());
            let dk = (ka - kb)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>();
            assert!(dk.unwrap() <= 1e-5, "{method}: keys");
            for ((name, va), (_, vb)) in pa.iter().zip(pb) {
                let ga = a.grads.get(va.as_tensor()).unwrap();
                let gb = b.grads.get(vb.as_tensor()).unwrap();
                let scale = ga
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(
                    diff <= 1e-4 * scale.max(1e-12),
                    "{method}: gradient of {name} differs by {diff} (largest entry {scale})"
                );
            }
        }
    }
}
