//! candle's `Tensor::conv2d` vs `kernels::conv2d`, forward and forward+backward, on the conv
//! shapes of a small-stem ResNet-18 at 32 px (batch 128 unless `CONV_BENCH_BATCH` says
//! otherwise), in the same run so the ratio is meaningful.
//!
//! Run: `cargo bench -p train-kernels --bench conv -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `fwdbwd/l1` to time one shape).

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use train_kernels as kernels;

/// (name, c_in, c_out, input size, kernel, stride, padding, uses per ResNet-18 forward)
pub type ConvShape = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);
/// A conv implementation under test.
type ConvFn<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Tensor;

pub const SHAPES: &[ConvShape] = &[
    ("stem_3to64_32px", 3, 64, 32, 3, 1, 1, 1),
    ("l1_64_32px", 64, 64, 32, 3, 1, 1, 4),
    ("l2_down3x3_64to128", 64, 128, 32, 3, 2, 1, 1),
    ("l2_down1x1_64to128", 64, 128, 32, 1, 2, 0, 1),
    ("l2_128_16px", 128, 128, 16, 3, 1, 1, 3),
    ("l3_down3x3_128to256", 128, 256, 16, 3, 2, 1, 1),
    ("l3_down1x1_128to256", 128, 256, 16, 1, 2, 0, 1),
    ("l3_256_8px", 256, 256, 8, 3, 1, 1, 3),
    ("l4_down3x3_256to512", 256, 512, 8, 3, 2, 1, 1),
    ("l4_down1x1_256to512", 256, 512, 8, 1, 2, 0, 1),
    ("l4_512_4px", 512, 512, 4, 3, 1, 1, 3),
];

fn batch() -> usize {
    std::env::var("CONV_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let n = batch();
    for &(name, ci, co, hw, k, s, p, _) in SHAPES {
        let x = randn(&[n, ci, hw, hw]);
        let w = (randn(&[co, ci, k, k]) * 0.05).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let y = x.conv2d(&w, p, s, 1, 1).unwrap();
        let r = randn(y.dims());
        let candle = |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, 1).unwrap();
        let fast = |x: &Tensor, w: &Tensor| kernels::conv2d(x, w, s, p).unwrap();
        let impls: [(&str, ConvFn); 2] = [("candle", &candle), ("fast", &fast)];

        let mut g = c.benchmark_group(format!("fwd/{name}"));
        g.sample_size(10);
        for (label, f) in impls {
            g.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| black_box(f(&x, &w)))
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("fwdbwd/{name}"));
        g.sample_size(10);
        for (label, f) in impls {
            g.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| {
                    let loss = (f(xv.as_tensor(), wv.as_tensor()) * &r)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    black_box(loss.backward().unwrap())
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
