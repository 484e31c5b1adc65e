//! One training step on a fixed random batch through the trainer's own code: what the criterion
//! bench `pretrain_step` and `host-trainer bench-step` time.
use super::trainer::Trainer;
use super::*;
use anyhow::{ensure, Result};
use candle_core::Device;
use serde::Serialize;
use std::time::Instant;

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
