//! `host-trainer bench-step`: time full pretraining steps (forward and backward separately) on a
//! random batch, through the trainer's own step code. Its JSON line (`img_per_sec`) is what
//! `scripts/bench_torch_step.py --candle-cmd` reads to print the candle/PyTorch ratio.
use anyhow::Result;
use clap::Args;
use serde::Serialize;

use trainer::method::Method;
use trainer::model::{Arch, ResNetConfig};
use trainer::train::pretrain::{PretrainRequest, StepBench, StepTiming};

/// Time training steps of one method on random data (no data loading, no checkpoints).
#[derive(Args, Debug)]
pub struct BenchStepArgs {
    /// supervised | moco | exemplar
    #[arg(long, default_value = "moco")]
    pub method: String,
    /// v1 | v2 (MoCo and Exemplar; default v2)
    #[arg(long)]
    pub version: Option<String>,
    /// resnet18 | resnet34 | resnet50
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Width multiplier of the ResNet's channels.
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Use the ImageNet stem instead of the small-image stem.
    #[arg(long)]
    pub imagenet_stem: bool,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Queue length K (MoCo/Exemplar); 4096 like scripts/bench_torch_step.py.
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first (allocator and caches warm up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// cpu | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Shuffle-BN groups (default: the method's). `scripts/bench_torch_step.py` has none: pass 1
    /// to time the same step.
    #[arg(long)]
    pub bn_groups: Option<usize>,
    /// Split the step over N threads (as `pretrain --replicas`; default: one per available core
    /// on the CPU, 1 on CUDA). 1 is the single-replica step, its kernels split over the threads.
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// Upload the random batch to the device once, before the timed steps (the PyTorch
    /// reference's inputs already live on the GPU); by default every step uploads it, as
    /// training does.
    #[arg(long)]
    pub data_on_device: bool,
    /// Also time the same steps with candle's own ops (the "before"), in this process, and
    /// print the speed-up: candle's CPU conv2d/batch-norm on the CPU; on CUDA candle's CUDA ops
    /// instead of cuDNN conv backward, cuDNN batch-norm and the fused SGD/EMA kernels.
    #[arg(long)]
    pub baseline: bool,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Median forward/backward seconds of the timed steps, and the throughput they give.
#[derive(Debug, Serialize)]
pub struct StepReport {
    pub ops: &'static str,
    pub steps: usize,
    pub forward_s: f64,
    pub backward_s: f64,
    /// SGD update and enqueue (before the split it was counted in `backward_s`).
    pub optimizer_s: f64,
    pub step_s: f64,
    pub img_per_sec: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn time_steps(bench: &mut StepBench, a: &BenchStepArgs, ops: &'static str) -> Result<StepReport> {
    let bar = indicatif::ProgressBar::new((a.warmup + a.steps) as u64);
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(ops);
    for _ in 0..a.warmup {
        bench.step()?;
        bar.inc(1);
    }
    let mut t: Vec<StepTiming> = Vec::with_capacity(a.steps);
    for _ in 0..a.steps {
        t.push(bench.step()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let step_s = median(t.iter().map(StepTiming::total_s).collect());
    Ok(StepReport {
        ops,
        steps: a.steps,
        forward_s: median(t.iter().map(|x| x.forward_s).collect()),
        backward_s: median(t.iter().map(|x| x.backward_s).collect()),
        optimizer_s: median(t.iter().map(|x| x.optimizer_s).collect()),
        step_s,
        img_per_sec: bench.batch_size() as f64 / step_s,
    })
}

/// This crate's kernels on (`true`) or candle's own ops (`false`) for `device`'s kind.
fn set_kernels(device: &candle_core::Device, on: bool) {
    if device.is_cpu() {
        trainer::kernels::set_cpu_kernels(on);
    } else {
        #[cfg(feature = "cuda")]
        trainer::kernels::cuda::set_gpu_kernels(on);
    }
}

pub fn run(a: BenchStepArgs) -> Result<()> {
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let device = trainer::device::parse_device(&a.device)?;
    let method = Method::parse(&a.method, a.version.as_deref())?;
    let arch: Arch = a
        .arch
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--arch: {e}"))?;
    let model = ResNetConfig {
        arch,
        width: a.width,
        small_stem: !a.imagenet_stem,
        num_classes: None,
    };
    let mut req = PretrainRequest::for_bench(method, model, a.image_size, a.batch_size, a.queue);
    if let Some(g) = a.bn_groups {
        req.bn_groups = Some(g);
    }
    req.replicas = Some(a.replicas.unwrap_or(if device.is_cpu() {
        trainer::train::replicas::Replicas::default_count()
    } else {
        1
    }));
    let threads = rayon::current_num_threads();
    let new_bench = || -> Result<StepBench> {
        let mut b = StepBench::new(&req, 64, device.clone())?;
        if a.data_on_device {
            b.upload_once()?;
        }
        Ok(b)
    };
    // On CUDA the first run uses this crate's GPU kernels when they are compiled in (`cudnn`:
    // cuDNN conv and batch-norm; `cuda`: the fused SGD/EMA updates).
    let fast = if device.is_cpu() {
        "kernels"
    } else if cfg!(feature = "cudnn") {
        "cudnn"
    } else if cfg!(feature = "cuda") {
        "fused"
    } else {
        "candle"
    };
    let mut reports = Vec::new();
    set_kernels(&device, true);
    reports.push(time_steps(&mut new_bench()?, &a, fast)?);
    if a.baseline && fast != "candle" {
        set_kernels(&device, false);
        let r = new_bench().and_then(|mut b| time_steps(&mut b, &a, "candle"));
        set_kernels(&device, true);
        reports.push(r?);
    }
    let speedup = (reports.len() == 2).then(|| reports[0].img_per_sec / reports[1].img_per_sec);
    if a.json {
        let v = serde_json::json!({
            "method": method.to_string(), "arch": a.arch, "width": a.width,
            "image_size": a.image_size, "batch_size": a.batch_size, "queue": a.queue,
            "device": a.device, "threads": threads, "bn_groups": req.bn_groups,
            "replicas": req.replicas,
            "data_on_device": a.data_on_device,
            "img_per_sec": reports[0].img_per_sec,
            "forward_s": reports[0].forward_s, "backward_s": reports[0].backward_s,
            "optimizer_s": reports[0].optimizer_s,
            "runs": reports, "speedup_vs_candle_ops": speedup,
        });
        println!("{v}");
    } else {
        println!(
            "{method} {} width {} {}px batch {} on {} ({threads} threads, {} replicas):",
            a.arch,
            a.width,
            a.image_size,
            a.batch_size,
            a.device,
            req.replicas.unwrap_or(1)
        );
        for r in &reports {
            println!(
                "  {:8} step {:.3} s (forward {:.3} s, backward {:.3} s, optimiser {:.3} s)  {:.1} img/s",
                r.ops, r.step_s, r.forward_s, r.backward_s, r.optimizer_s, r.img_per_sec
            );
        }
        if let Some(s) = speedup {
            println!("  speed-up of the kernels over candle's ops: {s:.2}x");
        }
    }
    Ok(())
}
