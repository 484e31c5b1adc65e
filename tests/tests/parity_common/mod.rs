//! Helpers shared by `parity_f32.rs` and `parity_int8.rs`: random non-trivial BN, running the
//! runtime on CHW inputs, and the comparison measures.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use runtime_core::heads::rng::SplitMix64;
use runtime_core::Model;
use trainer::model::{Arch, ResNet, ResNetConfig};

pub fn arch(i: usize) -> Arch {
    [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50][i % 3]
}

pub fn resnet(arch: Arch, width: f32, small_stem: bool, seed: u64) -> ResNet {
    ResNet::new(
        &ResNetConfig {
            arch,
            width,
            small_stem,
            num_classes: None,
        },
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

/// Sets every BN of `vars` (names ending `.weight/.bias/.running_mean/.running_var` of a BN) to
/// random values: |γ| ∈ [0.3, 1.5] with random sign, β ∈ ±0.3, mean ∈ ±0.5, var ∈ [0.3, 2].
/// Without this, folding would be tested only at γ=1, β=0, mean=0, var=1 — the identity.
pub fn randomise_bn(vars: &[(String, candle_core::Var)], seed: u64) {
    let mut r = SplitMix64::new(seed);
    let is_bn = |n: &str| n.contains(".bn") || n.starts_with("bn1") || n.contains("downsample.1");
    for (name, v) in vars {
        if !is_bn(name) || name.ends_with("num_batches_tracked") {
            continue;
        }
        let n = v.as_tensor().elem_count();
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                let u = r.unit_f32();
                if name.ends_with(".running_var") {
                    0.3 + 1.7 * u
                } else if name.ends_with(".running_mean") {
                    u - 0.5
                } else if name.ends_with(".bias") {
                    0.6 * u - 0.3
                } else {
                    let s = if r.unit_f32() < 0.3 { -1.0 } else { 1.0 };
                    s * (0.3 + 1.2 * u)
                }
            })
            .collect();
        v.set(&Tensor::from_vec(vals, v.as_tensor().dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// Every parameter and buffer of a ResNet.
pub fn all_vars(net: &ResNet) -> Vec<(String, candle_core::Var)> {
    let mut v = net.named_params();
    v.extend(net.named_buffers());
    v
}

/// CHW → HWC.
pub fn chw_to_hwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        c * h * w,
        "input does not match the model's {h}×{w}×{c}"
    );
    let mut out = vec![0f32; x.len()];
    for ch in 0..c {
        for p in 0..h * w {
            out[p * c + ch] = x[ch * h * w + p];
        }
    }
    out
}

/// Runs a model file (either dtype) on a normalised CHW input; returns the real-valued output.
pub fn run_runtime(bytes: &[u8], x_chw: &[f32]) -> Vec<f32> {
    let m = Model::parse(bytes).unwrap();
    let [h, w, c] = m.input_shape();
    let mut arena = vec![0u8; m.arena_bytes()];
    m.load_input_f32(&chw_to_hwc(x_chw, c, h, w), &mut arena)
        .unwrap();
    let mut out = vec![0f32; m.output_len()];
    m.run(&mut arena, &mut out).unwrap();
    out
}

/// Random normalised-looking CHW input in [−2, 2].
pub fn random_input(seed: u64, len: usize) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..len).map(|_| 4.0 * r.unit_f32() - 2.0).collect()
}

/// `max |a − b| / max |b|`: the error relative to the output's own scale. (Element-wise
/// relative error is meaningless for outputs that happen to be near 0.)
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
