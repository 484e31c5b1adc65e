//! The queue-staleness probe: is a MoCo/Exemplar training loss low because the model tells
//! instances apart, or because the positive is the only key from the *current* key encoder?
//!
//! At the end of an epoch the queue holds the keys of that epoch's last K/B batches, each encoded
//! by the key encoder of its own step. Everything random in a batch is keyed by (seed, epoch,
//! image, view) and the shuffle-BN permutation by (seed, epoch, step), so the probe can rebuild
//! exactly those key views and re-encode them with the key encoder as it is *now*: a queue of the
//! same images, the same augmentations and the same BN groups, differing only in the encoder's
//! age. It then scores one probe batch (the epoch's first batch, whose key left the queue long
//! ago) against both queues with the training loss:
//!
//! - `loss_stale`: against the queue as training left it (what the training loss sees);
//! - `loss_fresh`: against the re-encoded queue (what the loss would be without stale keys).
//!
//! `loss_fresh − loss_stale` is the part of the training loss owed to key age. With a key encoder
//! that never moves (m = 1) the two queues are equal bit for bit, which the tests check.
//!
//! The probe works on copies of both encoders (training-mode BN updates running statistics), so
//! a run with the probe trains, checkpoints and resumes exactly as one without it.
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::trainer::{key_embeddings, KeyShuffle, Trainer};
use crate::augment::loader::{load_batch, Batch, ImageSource};
use crate::augment::AugmentConfig;
use crate::method::contrastive::{chance_loss, contrastive_loss, l2_normalize};
use crate::method::queue::LabelQueue;
use crate::method::Method;
use crate::model::{BnMode, ResNet};

/// What the probe measured at the end of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueProbe {
    /// Probe-batch loss against the queue as training left it.
    pub loss_stale: f64,
    /// The same queries and positives against the same key views re-encoded now.
    pub loss_fresh: f64,
    /// Instance top-1 (%) of the probe batch against each queue.
    pub top1_stale: f64,
    pub top1_fresh: f64,
    /// The chance loss of the probe batch (equal for both queues: same labels).
    pub chance: f64,
}

impl Trainer {
    /// Run the probe after the last step of `epoch`, whose image order was `order` and whose
    /// batches were `views`-augmented. `None` for supervised runs and when the epoch has too few
    /// steps for the queue to hold only its own keys plus a probe batch outside it
    /// (steps ≤ K/B).
    pub(super) fn probe_queue(
        &self,
        source: &Arc<dyn ImageSource>,
        views: &[AugmentConfig],
        epoch: usize,
        order: &[usize],
    ) -> Result<Option<QueueProbe>> {
        let (Some(key), Some(head_q)) = (self.key.as_ref(), self.head.as_ref()) else {
            return Ok(None);
        };
        let b = self.cfg.batch_size;
        let k_len = key.queue.len();
        let steps = order.len() / b;
        if !k_len.is_multiple_of(b) || steps <= k_len / b {
            return Ok(None);
        }
        let (seed, e) = (self.cfg.seed, epoch as u64);
        let groups = self.cfg.bn_groups;
        let copy = |enc: &ResNet| -> Result<ResNet> {
            let c = ResNet::new(enc.config(), 0, &self.device)?;
            c.copy_from(enc)?;
            Ok(c)
        };
        let (enc_q, enc_k) = (copy(&self.encoder)?, copy(&key.encoder)?);
        let labels_of =
            |batch: &Batch| -> Vec<i64> { batch.labels.iter().map(|&l| l as i64).collect() };
        let batch_at = |s: usize| {
            load_batch(&**source, &order[s * b..(s + 1) * b], views, seed, e)
                .with_context(|| format!("queue probe: rebuilding batch {s} of epoch {epoch}"))
        };

        // The queue's batches, oldest first, re-encoded by today's key encoder.
        let mut fresh = LabelQueue::new(k_len, key.queue.dim(), seed, &self.device)?;
        for s in steps - k_len / b..steps {
            let batch = batch_at(s)?;
            let xk = batch.view_tensor(1, &self.device)?;
            let keys = key_embeddings(
                &enc_k,
                &key.head,
                &xk,
                groups,
                KeyShuffle::Step {
                    seed,
                    epoch: e,
                    step: s as u64,
                },
                &self.replicas,
            )?;
            fresh.enqueue(&l2_normalize(&keys)?, Some(&labels_of(&batch)))?;
        }

        let probe = batch_at(0)?;
        let xq = probe.view_tensor(0, &self.device)?;
        let xk = probe.view_tensor(1, &self.device)?;
        let q = head_q
            .forward(&enc_q.forward_features(&xq, BnMode::Train { groups })?)?
            .detach();
        let shuffle = KeyShuffle::Step {
            seed,
            epoch: e,
            step: 0,
        };
        let k = key_embeddings(&enc_k, &key.head, &xk, groups, shuffle, &self.replicas)?;
        let labels = labels_of(&probe);
        let ys = matches!(self.method, Method::Exemplar(_)).then_some(labels.as_slice());
        let score = |queue: &LabelQueue| -> Result<(f64, f64)> {
            let out = contrastive_loss(&q, &k, queue, ys, self.cfg.tau)?;
            let loss = out
                .loss
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?;
            Ok((f64::from(loss), 100.0 * f64::from(out.instance_accuracy()?)))
        };
        let (loss_stale, top1_stale) = score(&key.queue)?;
        let (loss_fresh, top1_fresh) = score(&fresh)?;
        Ok(Some(QueueProbe {
            loss_stale,
            loss_fresh,
            top1_stale,
            top1_fresh,
            chance: chance_loss(key.queue.labels(), ys),
        }))
    }
}
