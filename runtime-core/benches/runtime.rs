//! int8 vs f32, per kernel and whole model (MLPerf Tiny ResNet-8 at 32 px, ResNet-18 at 84 px,
//! base width 64), one thread. Prints arena and weight bytes of each model.
//! Run briefly: `cargo bench -p runtime-core --features std,zoo -- --warm-up-time 1 --measurement-time 3`
//! (without the `zoo` feature only the per-kernel benchmarks run; without `std` the host runs the
//! portable int8 loop, not the AVX-512 VNNI kernel). `Int8-reference` is the same model on the
//! reference kernels, the baseline measured in the same run.

use criterion::{criterion_group, criterion_main, Criterion};
#[cfg(feature = "zoo")]
use runtime_core::model::zoo;
use runtime_core::{Dtype, Model, ModelBuilder};
#[cfg(feature = "zoo")]
use std::hint::black_box;

fn build(b: ModelBuilder) -> Vec<u8> {
    b.to_bytes().expect("zoo models are valid")
}

#[cfg(feature = "zoo")]
fn model_pair(c: &mut Criterion, name: &str, make: impl Fn(Dtype) -> ModelBuilder) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    // Int8 runs the fast kernels ("Int8"), with the `threads` feature also on 2 threads
    // ("Int8-2threads"), and, as the same-run baseline, the reference ones ("Int8-reference").
    let mut runs = vec![(Dtype::Int8, false, 1)];
    if cfg!(feature = "threads") {
        runs.push((Dtype::Int8, false, 2));
    }
    runs.extend([(Dtype::Int8, true, 1), (Dtype::F32, false, 1)]);
    for (dtype, reference, threads) in runs {
        let bytes = build(make(dtype));
        let mut m = Model::parse(&bytes).unwrap();
        m.set_reference_kernels(reference);
        #[cfg(feature = "threads")]
        m.set_threads(threads);
        println!(
            "{name} {dtype:?}{}: arena {} B, weights {} B, prepared {} B, {} MACs, file {} B, kernels {:?}",
            if reference { " (reference kernels)" } else { "" },
            m.arena_bytes(),
            m.weight_bytes(),
            m.prepared_bytes(),
            m.macs(),
            bytes.len(),
            m.kernel_backends(),
        );
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut out = vec![0f32; m.output_len()];
        let rgb: Vec<u8> = (0..m.input_len()).map(|i| (i * 31 % 256) as u8).collect();
        let label = if reference {
            format!("{dtype:?}-reference")
        } else if threads > 1 {
            format!("{dtype:?}-{threads}threads")
        } else {
            format!("{dtype:?}")
        };
        g.bench_function(label, |bch| {
            bch.iter(|| {
                m.preprocess_rgb8(black_box(&rgb), &mut arena).unwrap();
                m.run(&mut arena, &mut out).unwrap();
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// Per-kernel timings: a one-op model per kernel, so the same executor path is measured.
fn kernels(c: &mut Criterion) {
    use runtime_core::{LayerParams, Quant, Task};
    let q = Quant {
        scale: 0.05,
        zp: -10,
    };
    let mk = |dtype: Dtype, op: &str| -> ModelBuilder {
        let mut b = ModelBuilder::new(dtype, Task::Features);
        let x = b.input([16, 16, 32], &[0.0; 32], &[1.0; 32], q).unwrap();
        let (wq, ws, bq): (Vec<i8>, Vec<f32>, Vec<i32>) = (
            (0..32 * 9 * 32).map(|i| (i % 200) as i8 - 100).collect(),
            vec![0.001; 32],
            vec![5; 32],
        );
        let wf: Vec<f32> = wq.iter().map(|&v| v as f32 * 0.001).collect();
        let bf = vec![0.01f32; 32];
        let p = match dtype {
            Dtype::Int8 => LayerParams::I8 {
                weights: &wq,
                w_scale: &ws,
                bias: &bq,
            },
            Dtype::F32 => LayerParams::F32 {
                weights: &wf,
                bias: &bf,
            },
        };
        let y = match op {
            "conv3x3" => b
                .conv("c", x, 32, [3, 3], [1, 1], [1; 4], true, p, q)
                .unwrap(),
            "add" => b.add(x, x, true, q).unwrap(),
            "maxpool3x3s2" => b.maxpool(x, [3, 3], [2, 2], [1; 4]).unwrap(),
            "mean" => b.mean(x, q).unwrap(),
            "leaky" => b.leaky_relu(x, 0.01, q).unwrap(),
            "fc" => {
                let m = b.mean(x, q).unwrap();
                let wfc: Vec<i8> = (0..32 * 32).map(|i| (i % 200) as i8 - 100).collect();
                let wff: Vec<f32> = wfc.iter().map(|&v| v as f32 * 0.001).collect();
                let p = match dtype {
                    Dtype::Int8 => LayerParams::I8 {
                        weights: &wfc,
                        w_scale: &ws,
                        bias: &bq,
                    },
                    Dtype::F32 => LayerParams::F32 {
                        weights: &wff,
                        bias: &bf,
                    },
                };
                b.fc("f", m, 32, false, p, q).unwrap()
            }
            _ => unreachable!(),
        };
        b.output(y).unwrap();
        b
    };
    for op in ["conv3x3", "add", "maxpool3x3s2", "mean", "leaky", "fc"] {
        let mut g = c.benchmark_group(format!("kernel/{op}"));
        for dtype in [Dtype::Int8, Dtype::F32] {
            let bytes = build(mk(dtype, op));
            let m = Model::parse(&bytes).unwrap();
            let mut arena = vec![0u8; m.arena_bytes()];
            let mut out = vec![0f32; m.output_len()];
            let x: Vec<f32> = (0..m.input_len())
                .map(|i| (i % 13) as f32 * 0.1 - 0.6)
                .collect();
            m.load_input_f32(&x, &mut arena).unwrap();
            g.bench_function(format!("{dtype:?}"), |bch| {
                bch.iter(|| m.run(&mut arena, &mut out).unwrap())
            });
        }
        g.finish();
    }
}

/// One int8 3×3 conv (32×32×32 → 32 channels, pad 1) on every int8 kernel this machine has:
/// the reference, the portable fast loop, and (x86-64 with `std`) AVX2 and AVX-512 VNNI.
fn conv_backends(c: &mut Criterion) {
    use runtime_core::ops::conv2d::{conv2d_i8, ConvI8};
    use runtime_core::ops::prepared::{conv2d_i8_prepared, PreparedI8};
    use runtime_core::ops::{I32Le, Window};
    let (h, ic, oc) = (32, 32, 32);
    let win = Window {
        in_h: h,
        in_w: h,
        in_c: ic,
        out_h: h,
        out_w: h,
        kh: 3,
        kw: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
    };
    let w: Vec<i8> = (0..oc * 9 * ic)
        .map(|i| (i * 37 % 255) as i8)
        .map(|v| v.max(-127))
        .collect();
    let le = |v: Vec<i32>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (b, m, s) = (
        le((0..oc as i32).map(|i| i * 100).collect()),
        le(vec![1 << 30; oc]),
        le(vec![-6; oc]),
    );
    let p = ConvI8 {
        win,
        out_c: oc,
        weights: &w,
        bias: I32Le::new(&b),
        mult: I32Le::new(&m),
        shift: I32Le::new(&s),
        in_zp: -128,
        out_zp: -128,
        act_min: -128,
        act_max: 127,
    };
    let x: Vec<i8> = (0..h * h * ic)
        .map(|i| (i * 13 % 256) as u8 as i8)
        .collect();
    let mut y = vec![0i8; h * h * oc];
    let mut g = c.benchmark_group("kernel/conv3x3_i8_32x32x32");
    g.bench_function("reference", |bch| {
        bch.iter(|| conv2d_i8(&p, &x, &mut y).unwrap())
    });
    let mut preps = vec![PreparedI8::new_portable(&p), PreparedI8::new(&p)];
    preps.extend(PreparedI8::new_avx2(&p));
    for prep in &preps {
        g.bench_function(prep.backend(&p), |bch| {
            bch.iter(|| conv2d_i8_prepared(&p, prep, &x, &mut y).unwrap())
        });
    }
    g.finish();
}

/// One int8 residual add of ResNet-8's first block (32×32×16 = 16 384 elements, scaled as the
/// exporter scales an add): the exact formula (`add_i8`: AVX-512 or AVX2 requantisations) and,
/// where this CPU runs them (AVX-512 VBMI), the lookup tables (`add_i8_lut`); each on one thread
/// and split in two over the helper team (with the `threads` feature).
fn add_backends(c: &mut Criterion) {
    use runtime_core::ops::add::{add_i8, add_i8_lut, AddI8};
    use runtime_core::ops::add_lut::AddLut;
    use runtime_core::ops::prepared::add_i8_split;
    use runtime_core::ops::requant::quantize_multiplier;
    let (sa, sb, so) = (0.031, 0.047, 0.052);
    let max = f64::max(sa, sb);
    let (a_mult, a_shift) = quantize_multiplier(sa / (2.0 * max));
    let (b_mult, b_shift) = quantize_multiplier(sb / (2.0 * max));
    let (out_mult, out_shift) = quantize_multiplier(2.0 * max / ((1u64 << 20) as f64 * so));
    let p = AddI8 {
        a_zp: -3,
        a_mult,
        a_shift,
        b_zp: 11,
        b_mult,
        b_shift,
        out_zp: -128,
        out_mult,
        out_shift,
        act_min: -128,
        act_max: 127,
    };
    let n = 32 * 32 * 16;
    let a: Vec<i8> = (0..n).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let b: Vec<i8> = (0..n).map(|i| (i * 29 % 256) as u8 as i8).collect();
    let mut y = vec![0i8; n];
    let lut = AddLut::new(&p).filter(|_| AddLut::runs_here());
    let mut g = c.benchmark_group("kernel/add_i8_32x32x16");
    g.bench_function("formula", |bch| {
        bch.iter(|| add_i8(&p, &a, &b, &mut y).unwrap())
    });
    g.bench_function("formula-2-tasks", |bch| {
        bch.iter(|| add_i8_split(&p, None, &a, &b, &mut y, 2).unwrap())
    });
    if let Some(t) = &lut {
        g.bench_function("tables", |bch| {
            bch.iter(|| add_i8_lut(&p, Some(t), &a, &b, &mut y).unwrap())
        });
        g.bench_function("tables-2-tasks", |bch| {
            bch.iter(|| add_i8_split(&p, Some(t), &a, &b, &mut y, 2).unwrap())
        });
    }
    g.finish();
}

#[cfg(feature = "zoo")]
fn models(c: &mut Criterion) {
    model_pair(c, "resnet8_32px", |d| zoo::resnet8(d, 1).unwrap());
    model_pair(c, "resnet18_84px_w64", |d| {
        zoo::resnet18(d, 84, 64, 1).unwrap()
    });
}

#[cfg(feature = "zoo")]
criterion_group!(benches, kernels, conv_backends, add_backends, models);
#[cfg(not(feature = "zoo"))]
criterion_group!(benches, kernels, conv_backends, add_backends);
criterion_main!(benches);
