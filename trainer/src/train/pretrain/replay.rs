//! One training step from a given state, on a given batch, with a given shuffle-BN permutation,
//! through exactly the trainer's own step ([`Trainer::compute`] then [`Trainer::apply`]), with
//! what happened in between read out: what the PyTorch step-parity test
//! (`trainer/tests/it/step_parity.rs`) replays a reference run's steps with. Nothing here
//! computes anything the trainer does not; it only sets inputs and copies results.
use super::trainer::{KeyShuffle, PhaseClock, Trainer};
use super::*;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A trainer driven step by step from the outside.
pub struct StepReplay {
    trainer: Trainer,
}

/// What one [`StepReplay::step`] produced.
pub struct ReplayedStep {
    /// The loss (mean over the batch).
    pub loss: f64,
    /// The gradient of every query-side parameter (weight decay not included), by checkpoint
    /// name (`encoder_q.…`, `head_q.…`), in the optimiser's order.
    pub grads: Vec<(String, Tensor)>,
    /// MoCo/Exemplar: the keys the step enqueued ([B, dim], L2-normalised, batch order).
    pub keys: Option<Tensor>,
}

impl StepReplay {
    /// A trainer for `req` (its data is not read; supervised runs classify `num_classes`),
    /// initialised as training would be; [`StepReplay::load_state`] replaces that.
    pub fn new(req: &PretrainRequest, num_classes: usize, device: Device) -> Result<StepReplay> {
        let cfg = req.resolve(num_classes)?;
        Ok(StepReplay {
            trainer: Trainer::new(cfg, device, None)?,
        })
    }

    /// Set every evolving tensor from `tensors` under checkpoint names (`encoder_q.…`,
    /// `head_q.…`, `encoder_k.…`, `head_k.…`, `queue`, `queue_labels`, `queue_ptr`, optional
    /// `optim.….momentum_buffer`), exactly as resuming from a checkpoint does; `origin` names
    /// where they came from in errors.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        self.trainer.load_state(tensors, origin)
    }

    /// Every evolving tensor by checkpoint name, as a checkpoint would hold it, copied (the
    /// trainer updates its tensors in place).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.trainer
            .state_tensors()?
            .into_iter()
            .map(|(n, t)| Ok((n, t.copy()?)))
            .collect()
    }

    /// One training step on `batch`; afterwards [`StepReplay::state`] holds the query side
    /// after SGD, the key side after its EMA update and key forward, the queue after the
    /// enqueue. MoCo/Exemplar shuffle the key batch with `perm`
    /// (`shuffled[i] = x[perm[i]]`; required for them, ignored by supervised).
    pub fn step(
        &mut self,
        batch: &crate::augment::loader::Batch,
        perm: Option<&[u32]>,
    ) -> Result<ReplayedStep> {
        let shuffle = match (self.trainer.method.is_contrastive(), perm) {
            (true, Some(p)) => KeyShuffle::Given(p),
            (true, None) => bail!("step replay: MoCo/Exemplar need the key batch's permutation"),
            (false, _) => KeyShuffle::Given(&[]),
        };
        let out = self
            .trainer
            .compute(batch, None, shuffle, &PhaseClock::off())?;
        let grads = self
            .trainer
            .sgd
            .params()
            .iter()
            .map(|(name, var)| {
                let g = out
                    .grads
                    .get(var.as_tensor())
                    .with_context(|| format!("step replay: no gradient for {name}"))?;
                Ok((name.clone(), g.copy()?))
            })
            .collect::<Result<Vec<_>>>()?;
        let replayed = ReplayedStep {
            loss: out.value,
            grads,
            keys: out.keys.as_ref().map(Tensor::copy).transpose()?,
        };
        self.trainer.apply(out)?;
        Ok(replayed)
    }
}
