//! Batch-norm's reductions at the study's shapes (ResNet-18 ×0.125, 32 px, one replica's 32
//! images in 4 shuffle-BN groups): the forward's statistics and the ReLU tail's backward
//! (statistics, `(Σg, Σg·x̂)`, then dx), portable kernels against the AVX2 ones.
//!
//! `cargo bench -p train-kernels --bench bn` (`RAYON_NUM_THREADS=1` to time one replica's core).

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use train_kernels::batchnorm::{channel_stats, relu_backward};
use train_kernels::direct::Isa;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

fn bench(c: &mut Criterion) {
    let (n, groups) = (32, 4);
    let mut isas = vec![("portable", Isa::Portable)];
    if Isa::detect() != Isa::Portable {
        isas.push(("avx2", Isa::detect()));
    }
    for (name, ch, side) in [
        ("8ch_32px", 8, 32),
        ("16ch_16px", 16, 16),
        ("32ch_8px", 32, 8),
        ("64ch_4px", 64, 4),
    ] {
        let dims = (n, ch, side * side);
        let x = data(n * ch * side * side, 1);
        let dy = data(x.len(), 2);
        let (gamma, beta) = (data(ch, 3), data(ch, 4));
        let mut g = c.benchmark_group(format!("bn/{name}"));
        for &(label, isa) in &isas {
            g.bench_function(format!("stats/{label}"), |b| {
                b.iter(|| channel_stats(isa, &x, dims, groups))
            });
            g.bench_function(format!("relu_bwd/{label}"), |b| {
                b.iter(|| relu_backward(isa, &x, &dy, &gamma, &beta, 1e-5, groups, dims))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
