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
use crate::train::optim::{Sgd, SgdConfig};
use crate::train::replicas::{sum_grads, Replicas};
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::path::Path;

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
    pub(super) fn new(cfg: PretrainConfig, device: Device) -> Result<Trainer> {
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
        let replicas = Replicas::new(cfg.replicas)?;
        if replicas.len() > 1 && !device.is_cpu() {
            bail!(
                "--replicas {} splits a step over CPU threads; on {device:?} use --replicas 1",
                replicas.len()
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

    pub(super) fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
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
    pub(super) fn resume(dir: &Path, epochs: Option<usize>, device: Device) -> Result<Trainer> {
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
        let mut tr = Trainer::new(cfg, device)?;
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
            h.load(&checkpoint::with_prefix(tensors, "head_q."))?;
        }
        if let Some(k) = &mut self.key {
            k.encoder
                .load_safetensors_bytes(&bytes_of("encoder_k.")?, path, &LoadOptions::exact())
                .with_context(|| format!("{}: key encoder", path.display()))?;
            k.head.load(&checkpoint::with_prefix(tensors, "head_k."))?;
            k.queue = LabelQueue::from_tensors(tensors, &self.device)?;
        }
        self.sgd
            .load_state_tensors(&checkpoint::with_prefix(tensors, "optim."))?;
        Ok(())
    }

    /// One optimiser step on a batch: (loss, train top-1 in [0, 1], chance loss of the step).
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
        if !out.value.is_finite() {
            bail!(
                "the loss became {} at epoch {epoch}, step {step_in_epoch}: training stopped; \
                 the last good checkpoint ({LAST}, end of the previous epoch) is kept. Try a lower --lr.",
                out.value
            );
        }
        let (value, acc, chance) = (out.value, out.acc, out.chance);
        self.apply(out)?;
        Ok((value, acc, chance))
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
        let (parts, chance, keys) = match self.method {
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
                (parts.into_iter().map(|(p, _)| p).collect(), chance, None)
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
                let keys = parts
                    .iter()
                    .map(|p| p.keys.clone().context("replica keys missing"))
                    .collect::<Result<Vec<_>>>()?;
                let keys = if keys.len() == 1 {
                    keys.into_iter().next()
                } else {
                    Some(Tensor::cat(&keys, 0)?)
                };
                (parts, chance, keys)
            }
        };
        if n > 1 {
            self.encoder.apply_replica_bn_stats(n)?;
        }
        // The backward ran inside each replica; what follows is the combination.
        clock.mark(Phase::Backward);
        let value = parts.iter().map(|p| p.value).sum();
        let acc = parts.iter().map(|p| p.acc).sum::<f64>() / n as f64;
        let grads = sum_grads(
            parts.into_iter().map(|p| p.grads).collect(),
            self.sgd.params(),
        )?;
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
    let mut parts = replicas.run(|r| {
        let x = replicas.share(&xs, r)?;
        Ok(head.forward(&encoder.forward_features(&x, bn_mode(n, groups, r))?)?)
    })?;
    if n > 1 {
        encoder.apply_replica_bn_stats(n)?;
    }
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

/// One replica's share of a step: its loss (already scaled by 1/N), accuracy, gradients and,
/// for MoCo/Exemplar, its normalised keys.
struct ReplicaOutput {
    value: f64,
    acc: f64,
    grads: GradStore,
    keys: Option<Tensor>,
}

impl ReplicaOutput {
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
                    let mut tr = Trainer::new(req.resolve(10).unwrap(), Device::Cpu).unwrap();
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
