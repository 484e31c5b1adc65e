//! Test helpers: a tiny model that exercises every op, in either dtype.
#![allow(dead_code)]

use runtime_core::heads::rng::SplitMix64;
use runtime_core::{Dtype, LayerParams, ModelBuilder, Quant, Task};

pub const QR: Quant = Quant {
    scale: 0.05,
    zp: -128,
};
pub const QL: Quant = Quant { scale: 0.04, zp: 3 };

#[allow(clippy::type_complexity)]
fn params(
    rng: &mut SplitMix64,
    dtype: Dtype,
    n: usize,
    oc: usize,
) -> (Vec<i8>, Vec<f32>, Vec<i32>, Vec<f32>, Vec<f32>) {
    let wq: Vec<i8> = (0..n)
        .map(|_| (rng.below(255) as i32 - 127) as i8)
        .collect();
    let ws: Vec<f32> = (0..oc).map(|_| 0.002 + 0.01 * rng.unit_f32()).collect();
    let bq: Vec<i32> = (0..oc).map(|_| rng.below(2001) as i32 - 1000).collect();
    let per = n / oc;
    let wf: Vec<f32> = wq
        .iter()
        .enumerate()
        .map(|(i, &q)| q as f32 * ws[i / per])
        .collect();
    let bf: Vec<f32> = bq.iter().map(|&b| b as f32 * 0.001).collect();
    let _ = dtype;
    (wq, ws, bq, wf, bf)
}

/// 6×6×3 → conv3×3 relu → maxpool → conv3×3 → add(conv1x1 shortcut) relu → leaky → mean → fc 10.
/// Covers every op, residual lifetimes, asymmetric padding.
pub fn tiny(dtype: Dtype, seed: u64) -> ModelBuilder {
    tiny_from(ModelBuilder::new(dtype, Task::Landmarks), dtype, seed)
}

/// [`tiny`] with the per-channel weight scales stored (`ws=`).
#[allow(dead_code)]
pub fn tiny_with_weight_scales(dtype: Dtype, seed: u64) -> ModelBuilder {
    tiny_from(
        ModelBuilder::new(dtype, Task::Landmarks).with_weight_scales(),
        dtype,
        seed,
    )
}

fn tiny_from(mut b: ModelBuilder, dtype: Dtype, seed: u64) -> ModelBuilder {
    let mut rng = SplitMix64::new(seed);
    let x = b
        .input(
            [6, 7, 3],
            &[0.5, 0.4, 0.3],
            &[0.25, 0.2, 0.3],
            Quant {
                scale: 0.03,
                zp: -2,
            },
        )
        .unwrap();
    let mut conv = |b: &mut ModelBuilder,
                    name: &str,
                    x,
                    oc: usize,
                    k: usize,
                    stride: usize,
                    pad: [usize; 4],
                    relu: bool,
                    q: Quant| {
        let ic = b.desc(x).unwrap().c;
        let (wq, ws, bq, wf, bf) = params(&mut rng, dtype, oc * k * k * ic, oc);
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
        b.conv(name, x, oc, [k, k], [stride, stride], pad, relu, p, q)
            .unwrap()
    };
    let h = conv(&mut b, "c1", x, 4, 3, 1, [1, 0, 1, 2], true, QR);
    let p = b.maxpool(h, [2, 2], [2, 2], [1, 1, 0, 0]).unwrap();
    let h2 = conv(&mut b, "c2", p, 5, 3, 1, [1; 4], false, QL);
    let sc = conv(&mut b, "sc", p, 5, 1, 1, [0; 4], false, QL);
    let a = b.add(h2, sc, true, QR).unwrap();
    let l = b
        .leaky_relu(
            a,
            0.1,
            Quant {
                scale: 0.05,
                zp: -100,
            },
        )
        .unwrap();
    let m = b.mean(l, QL).unwrap();
    let (wq, ws, bq, wf, bf) = params(&mut rng, dtype, 10 * 5, 10);
    let pf = match dtype {
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
    let y = b
        .fc("fc", m, 10, false, pf, Quant { scale: 0.02, zp: 0 })
        .unwrap();
    b.output(y).unwrap();
    b
}

/// 6×7×3 → conv3×3 relu → avgpool 3×3/2 pad 1 relu → avgpool 2×2 → fc 10 → softmax: the ops a
/// classifier ends with (average pools with and without padding, the int8 softmax).
pub fn tiny_classifier(dtype: Dtype, seed: u64) -> ModelBuilder {
    let mut rng = SplitMix64::new(seed);
    let mut b = ModelBuilder::new(dtype, Task::Features);
    let x = b
        .input(
            [6, 7, 3],
            &[0.5; 3],
            &[0.25; 3],
            Quant {
                scale: 0.03,
                zp: -2,
            },
        )
        .unwrap();
    let layer = |rng: &mut SplitMix64, n: usize, oc: usize| params(rng, dtype, n, oc);
    let (wq, ws, bq, wf, bf) = layer(&mut rng, 4 * 9 * 3, 4);
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
    let h = b
        .conv("c1", x, 4, [3, 3], [1, 1], [1; 4], true, p, QR)
        .unwrap();
    let a = b.avgpool(h, [3, 3], [2, 2], [1, 1, 1, 1], true).unwrap();
    let a = b.avgpool(a, [2, 2], [2, 2], [0; 4], false).unwrap();
    let n = b.desc(a).unwrap().len();
    let (wq, ws, bq, wf, bf) = layer(&mut rng, 10 * n, 10);
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
    let f = b
        .fc("fc", a, 10, false, p, Quant { scale: 0.1, zp: 5 })
        .unwrap();
    let y = b.softmax(f, 1.0).unwrap();
    b.output(y).unwrap();
    b
}
