//! candle's `Tensor::conv2d` vs `kernels::conv2d`, forward and forward+backward, on the conv
//! shapes of a small-stem ResNet-18 at 32 px (batch 128 unless `CONV_BENCH_BATCH` says
//! otherwise), in the same run so the ratio is meaningful.
//!
//! Run: `cargo bench -p train-kernels --bench conv -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `fwdbwd/l1` to time one shape).
//!
//! The `kernel/…` groups time each kernel alone on raw slices, the direct kernels
//! (`train_kernels::direct`) against the im2col + GEMM path in the same process, on the full-width
//! shapes above and on the width-×0.125 shapes the study trains (`SMALL_SHAPES`, batch 32 = one
//! replica's share of a 64-image step unless `CONV_BENCH_SMALL_BATCH` says otherwise), single
//! threaded when run with `RAYON_NUM_THREADS=1` (as each replica runs).

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

/// The study's ResNet-18 ×0.125 (small stem, 32 px): channels 8/16/32/64 at 32/16/8/4 px.
pub const SMALL_SHAPES: &[ConvShape] = &[
    ("s_stem_3to8_32px", 3, 8, 32, 3, 1, 1, 1),
    ("s_l1_8_32px", 8, 8, 32, 3, 1, 1, 4),
    ("s_l2_down3x3_8to16", 8, 16, 32, 3, 2, 1, 1),
    ("s_l2_down1x1_8to16", 8, 16, 32, 1, 2, 0, 1),
    ("s_l2_16_16px", 16, 16, 16, 3, 1, 1, 3),
    ("s_l3_down3x3_16to32", 16, 32, 16, 3, 2, 1, 1),
    ("s_l3_down1x1_16to32", 16, 32, 16, 1, 2, 0, 1),
    ("s_l3_32_8px", 32, 32, 8, 3, 1, 1, 3),
    ("s_l4_down3x3_32to64", 32, 64, 8, 3, 2, 1, 1),
    ("s_l4_down1x1_32to64", 32, 64, 8, 1, 2, 0, 1),
    ("s_l4_64_4px", 64, 64, 4, 3, 1, 1, 3),
];

fn small_batch() -> usize {
    std::env::var("CONV_BENCH_SMALL_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

fn vec_randn(len: usize, seed: u64) -> Vec<f32> {
    // A cheap deterministic pattern in [-1, 1): the kernels' speed does not depend on values.
    (0..len)
        .map(|i| {
            let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            h as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Each kernel alone, direct vs im2col + GEMM.
fn bench_kernels(c: &mut Criterion) {
    use kernels::conv::{self as cv, Geom};
    use kernels::direct::{self as d, Isa};
    let isa = Isa::detect();
    let sets = [(SHAPES, batch()), (SMALL_SHAPES, small_batch())];
    for (shapes, n) in sets {
        for &(name, ci, co, hw, k, s, p, _) in shapes {
            let g = Geom::new((n, ci, hw, hw), (co, ci, k, k), s, p).unwrap();
            let x = vec_randn(n * ci * hw * hw, 1);
            let w = vec_randn(co * g.k(), 2);
            let dy = vec_randn(n * co * g.p(), 3);
            let mut grp = c.benchmark_group(format!("kernel/{name}"));
            grp.sample_size(10);
            grp.bench_function("fwd/direct", |b| {
                b.iter(|| black_box(d::forward(isa, &g, &x, &w)))
            });
            grp.bench_function("fwd/gemm", |b| {
                b.iter(|| black_box(cv::gemm_forward(&g, &x, &w)))
            });
            if d::input_grad_supported(&g) {
                grp.bench_function("dx/direct", |b| {
                    b.iter(|| black_box(d::input_grad(isa, &g, &dy, &w)))
                });
            }
            grp.bench_function("dx/gemm", |b| {
                b.iter(|| black_box(cv::gemm_input_grad(&g, &dy, &w)))
            });
            grp.bench_function("dw/direct", |b| {
                b.iter(|| black_box(d::weight_grad(isa, &g, &x, &dy)))
            });
            grp.bench_function("dw/gemm", |b| {
                b.iter(|| black_box(cv::gemm_weight_grad(&g, &x, &dy)))
            });
            grp.finish();
        }
    }
}

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

criterion_group!(benches, bench_kernels, bench);
criterion_main!(benches);
