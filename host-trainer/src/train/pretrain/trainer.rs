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
use anyhow::{bail, Context, Result};
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

    /// One optimiser step on a batch: (loss, train top-1 in [0, 1], chance loss of the step).
    pub(super) fn step(
        &mut self,
        batch: &crate::augment::loader::Batch,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<(f64, f64, f64)> {
        let fwd = self.forward(batch, epoch, step_in_epoch)?;
        if !fwd.value.is_finite() {
            bail!(
                "the loss became {} at epoch {epoch}, step {step_in_epoch}: training stopped; \
                 the last good checkpoint ({LAST}, end of the previous epoch) is kept. Try a lower --lr.",
                fwd.value
            );
        }
        let (value, acc, chance) = (fwd.value, fwd.acc, fwd.chance);
        self.apply(fwd)?;
        Ok((value, acc, chance))
    }

    /// The forward half of a step: the loss (with its graph), and for MoCo/Exemplar the EMA
    /// update of the key side and the keys to enqueue.
    pub(super) fn forward(
        &mut self,
        batch: &crate::augment::loader::Batch,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<StepForward> {
        self.forward_views(batch, None, epoch, step_in_epoch)
    }

    /// [`Trainer::forward`] with the batch's views optionally already on the device (`views[v]`
    /// is view `v` as [`crate::augment::loader::Batch::view_tensor`] makes it): what
    /// `bench-step --data-on-device` times, like the PyTorch reference whose inputs live on the
    /// GPU.
    pub(super) fn forward_views(
        &mut self,
        batch: &crate::augment::loader::Batch,
        views: Option<&[Tensor]>,
        epoch: usize,
        step_in_epoch: u64,
    ) -> Result<StepForward> {
        let device = self.device.clone();
        let view = |v: usize| -> Result<Tensor> {
            Ok(match views {
                Some(t) => t.get(v).context("pre-uploaded view missing")?.clone(),
                None => batch.view_tensor(v, &device)?,
            })
        };
        let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
        let xq = view(0)?;
        let (loss, acc, chance, keys) = match self.method {
            Method::Supervised => {
                let logits = self.encoder.forward(&xq, BnMode::TRAIN)?;
                let loss = supervised_loss(&logits, &labels)?;
                let acc = top1_accuracy(&logits, &labels)?;
                let chance = (logits.dim(1)? as f64).ln();
                (loss, acc, chance, None)
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
                let xk = view(1)?;
                let k = key_embeddings(
                    &key.encoder,
                    &key.head,
                    &xk,
                    groups,
                    (self.cfg.seed, epoch as u64, step_in_epoch),
                )?;
                let exemplar_labels =
                    matches!(self.method, Method::Exemplar(_)).then_some(labels.as_slice());
                let chance = chance_loss(key.queue.labels(), exemplar_labels);
                let out = contrastive_loss(&q, &k, &key.queue, exemplar_labels, self.cfg.tau)?;
                let acc = out.instance_accuracy()?;
                (out.loss, acc, chance, Some(out.keys))
            }
        };
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        Ok(StepForward {
            loss,
            value,
            acc: f64::from(acc),
            chance,
            keys,
            labels,
        })
    }

    /// The backward half: gradients, the SGD update of the query side, then (MoCo/Exemplar) the
    /// batch's keys and labels enter the queue, after the loss used the old queue.
    pub(super) fn apply(&mut self, fwd: StepForward) -> Result<()> {
        let grads = fwd.loss.backward()?;
        self.apply_grads(fwd, &grads)
    }

    /// [`Trainer::apply`] after the backward: the SGD update, then the enqueue.
    pub(super) fn apply_grads(
        &mut self,
        fwd: StepForward,
        grads: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        self.sgd.step(grads)?;
        if let (Some(keys), Some(key)) = (fwd.keys, self.key.as_mut()) {
            key.queue.enqueue(&keys, Some(&fwd.labels))?;
        }
        self.global_step += 1;
        Ok(())
    }
}

/// The keys of a batch's key view, as step 3 of MoCo computes them: the batch shuffled across
/// the `groups` BN groups by the permutation of training step `(seed, epoch, step)`, encoded,
/// projected and un-shuffled; detached (the key side never gets gradients). One place, so that
/// the queue probe re-encodes keys exactly as training encoded them.
pub(super) fn key_embeddings(
    encoder: &ResNet,
    head: &Head,
    xk: &Tensor,
    groups: usize,
    (seed, epoch, step): (u64, u64, u64),
) -> Result<Tensor> {
    let mode = BnMode::Train { groups };
    let k = if groups > 1 {
        let sh = ShuffleBn::for_step(seed, epoch, step, xk.dim(0)?, groups)?;
        let e = head.forward(&encoder.forward_features(&sh.shuffle(xk)?, mode)?)?;
        sh.unshuffle(&e)?
    } else {
        head.forward(&encoder.forward_features(xk, mode)?)?
    };
    Ok(k.detach())
}

/// What the forward half of a step hands to the backward half.
pub(super) struct StepForward {
    pub(super) loss: Tensor,
    pub(super) value: f64,
    /// Train top-1 in [0, 1].
    pub(super) acc: f64,
    /// The loss of a model that learnt nothing on this batch ([`chance_loss`]).
    pub(super) chance: f64,
    pub(super) keys: Option<Tensor>,
    pub(super) labels: Vec<i64>,
}
