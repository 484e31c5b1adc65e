//! One full MoCo-v2 training step (ResNet-18, small-image stem, 32 px, batch 64, CPU) through the
//! trainer's own step code (`train::pretrain::StepBench`): query and key forwards, EMA, loss,
//! backward, SGD, enqueue. With `STEP_BENCH_BASELINE=1` a second function times the same step
//! with candle's own CPU conv2d/batch-norm (the "before"), in the same run, so the two are
//! comparable (that one takes about 35 s per step on 2 cores).
//!
//! Run: `cargo bench -p trainer --bench pretrain_step` (about 2 minutes on 2 cores).
//! `STEP_BENCH_WIDTH` / `STEP_BENCH_BATCH` shrink the model for a quick look.
//! The same step timed against PyTorch: `scripts/bench_torch_step.py` (see its docstring).

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trainer::method::Method;
use trainer::model::{Arch, ResNetConfig};
use trainer::train::pretrain::{PretrainRequest, StepBench};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn request() -> PretrainRequest {
    let model = ResNetConfig {
        arch: Arch::Resnet18,
        width: env_or("STEP_BENCH_WIDTH", 1.0f32),
        small_stem: true,
        num_classes: None,
    };
    let method = Method::parse("moco", Some("v2")).expect("moco-v2 parses");
    let mut req =
        PretrainRequest::for_bench(method, model, 32, env_or("STEP_BENCH_BATCH", 64usize), 4096);
    req.replicas = Some(env_or("STEP_BENCH_REPLICAS", 1usize));
    req
}

fn bench(c: &mut Criterion) {
    trainer::device::configure_cpu_threads();
    let req = request();
    let mut g = c.benchmark_group("moco_v2_step_resnet18_32px");
    g.sample_size(10);
    g.throughput(Throughput::Elements(req.batch_size as u64));
    let baseline = std::env::var_os("STEP_BENCH_BASELINE").is_some();
    for (name, kernels) in [("kernels", true), ("candle_ops", false)] {
        if !kernels && !baseline {
            continue;
        }
        trainer::kernels::set_cpu_kernels(kernels);
        let mut step = StepBench::new(&req, 64, Device::Cpu).expect("bench setup");
        g.bench_function(name, |b| b.iter(|| step.step().expect("step")));
    }
    trainer::kernels::set_cpu_kernels(true);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
