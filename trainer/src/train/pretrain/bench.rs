//! One training step on a fixed random batch through the trainer's own code: what the criterion
//! bench `pretrain_step` and `host-trainer bench-step` time.
use super::trainer::{KeyShuffle, Phase, PhaseClock, Trainer};
use super::*;
use anyhow::{ensure, Result};
use candle_core::Device;
use serde::Serialize;
use std::time::Instant;

/// A batch of random views (uniform in [-2, 2)) and labels below `num_classes`, from the
/// config's seed: the same batch for the same config.
pub(super) fn random_batch(
    cfg: &PretrainConfig,
    num_classes: usize,
) -> crate::augment::loader::Batch {
    use rand::Rng;
    let views = if cfg.method.is_contrastive() { 2 } else { 1 };
    let (b, s) = (cfg.batch_size, cfg.image_size);
    let mut rng = crate::rng::stream(cfg.seed, &[0x5354_4550]);
    crate::augment::loader::Batch {
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
    }
}

/// One training step on a fixed random batch, through exactly the code `pretrain` runs (no data
/// loading, no checkpoints): what the criterion bench `pretrain_step` and `host-trainer
/// bench-step` time.
pub struct StepBench {
    trainer: Trainer,
    batch: crate::augment::loader::Batch,
    /// The batch's views already on the device ([`StepBench::upload_once`]), or `None`: each step
    /// uploads them, as training does.
    views: Option<Vec<candle_core::Tensor>>,
    steps: u64,
}

/// Seconds spent in one [`StepBench::step`], split into the phases PyTorch's reference times.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepTiming {
    /// Query (and key) forward passes, EMA update, loss.
    pub forward_s: f64,
    /// The backward pass (autograd).
    pub backward_s: f64,
    /// SGD update and enqueue.
    pub optimizer_s: f64,
}

impl StepTiming {
    pub fn total_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
}

impl StepBench {
    /// `req.data` is not read; supervised runs get a classifier over `num_classes` classes and
    /// the batch random labels below it.
    pub fn new(req: &PretrainRequest, num_classes: usize, device: Device) -> Result<StepBench> {
        let cfg = req.resolve(num_classes)?;
        let batch = random_batch(&cfg, num_classes);
        Ok(StepBench {
            trainer: Trainer::new(cfg, device, None)?,
            batch,
            views: None,
            steps: 0,
        })
    }

    /// Put the batch's views on the device once; later steps reuse them (no host→device copy in
    /// the timed steps, as in `scripts/bench_torch_step.py`).
    pub fn upload_once(&mut self) -> Result<()> {
        let dev = self.trainer.device.clone();
        let views = (0..self.batch.views.len())
            .map(|v| self.batch.view_tensor(v, &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.views = Some(views);
        Ok(())
    }

    pub fn batch_size(&self) -> usize {
        self.batch.len()
    }

    /// One full step; on CUDA the device is synchronised at each phase end, so the times are the
    /// GPU's, not the launch queue's. With several replicas the phases overlap: `forward_s` ends
    /// when replica 0 has its loss, `backward_s` when every replica has its gradients.
    pub fn step(&mut self) -> Result<StepTiming> {
        let dev = self.trainer.device.clone();
        dev.synchronize()?;
        let clock = PhaseClock::on(&dev);
        let t0 = Instant::now();
        let shuffle = KeyShuffle::Step {
            seed: self.trainer.cfg.seed,
            epoch: 0,
            step: self.steps,
        };
        let out = self
            .trainer
            .compute(&self.batch, self.views.as_deref(), shuffle, &clock)?;
        ensure!(
            out.value.is_finite(),
            "bench step: the loss became {}",
            out.value
        );
        self.trainer.apply(out)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        let t1 = clock.at(Phase::Forward).unwrap_or(t0);
        let t2 = clock.at(Phase::Backward).unwrap_or(t1);
        self.steps += 1;
        Ok(StepTiming {
            forward_s: (t1 - t0).as_secs_f64(),
            backward_s: (t2 - t1).as_secs_f64(),
            optimizer_s: (t3 - t2).as_secs_f64(),
        })
    }

    /// How many replicas the step is split over.
    pub fn replicas(&self) -> usize {
        self.trainer.replicas.len()
    }
}
