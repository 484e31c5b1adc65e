//! Parity item 2: the exported **f32** runtime graph equals the candle model in eval mode.
//!
//! For random ResNet-18/34/50 configurations (basic and bottleneck blocks, the small stem and the
//! ImageNet stem with its max pool, widths 1/16–1/8, inputs 16–32 px) with random, non-trivial
//! BN statistics and affine parameters, and random inputs, `max |runtime − candle| / max |candle|
//! ≤ 1e-4` over the feature vector. This proves BN folding, the OIHW→OHWI and NCHW→NHWC layouts,
//! padding, strides, max pooling (−∞ padding), residual adds and the MEAN pooling; the landmark
//! case adds the head's folded BN, LeakyReLU and the CHW→HWC permutation of the fc weights.
//! The remaining difference is f32 summation order (candle's im2col GEMM vs the runtime's
//! direct loops) and the fold's single rounding: ~1e-6 relative in practice.
mod parity_common;

use candle_core::{Device, Tensor};
use exporter::export::{export_backbone, export_landmarks, ExportOptions};
use parity_common::*;
use proptest::prelude::*;
use trainer::model::landmarks::LandmarkModel;
use trainer::model::BnMode;

const BOUND: f64 = 1e-4;

proptest! {
    // Every (arch, stem) configuration runs in every case; the rest is drawn.
    #![proptest_config(ProptestConfig { cases: 2, ..ProptestConfig::default() })]

    #[test]
    fn f32_backbone_equals_candle_eval(wide in any::<bool>(), size in 16usize..=32, seed in any::<u64>()) {
      for (a, small_stem) in (0usize..3).flat_map(|a| [(a, false), (a, true)]) {
        let width = if wide { 0.125 } else { 0.0625 };
        let net = resnet(arch(a), width, small_stem, seed);
        randomise_bn(&all_vars(&net), seed ^ 0xb0);
        let x = random_input(seed ^ 0x1, 3 * size * size);
        let want = to_vec(&net.forward_features(&Tensor::from_vec(x.clone(), (1, 3, size, size), &Device::Cpu).unwrap(), BnMode::Eval).unwrap());
        let e = export_backbone(&net, size, &[], &ExportOptions::f32()).unwrap();
        let got = run_runtime(&e.bytes, &x);
        let d = max_rel_diff(&got, &want);
        eprintln!("f32 backbone {:?} w{} small {} {}px: max rel diff {:.2e}", arch(a), width, small_stem, size, d);
        prop_assert!(d <= BOUND, "{:?} w{} small {} {}px: max rel diff {:e}", arch(a), width, small_stem, size, d);
      }
    }

    #[test]
    fn f32_landmarks_equal_candle_eval(size in 16usize..=32, seed in any::<u64>()) {
      for (a, small_stem) in (0usize..3).flat_map(|a| [(a, false), (a, true)]) {
        let net = resnet(arch(a), 0.0625, small_stem, seed);
        let m = LandmarkModel::new(net, size, seed ^ 7).unwrap();
        let mut vars = all_vars(&m.backbone);
        vars.extend(m.head.all_tensors().into_iter().filter_map(|(n, _)| m.head.var(&n).map(|v| (n, v.clone()))));
        randomise_bn(&vars, seed ^ 0xb1);
        let x = random_input(seed ^ 0x2, 3 * size * size);
        let want = to_vec(&m.forward(&Tensor::from_vec(x.clone(), (1, 3, size, size), &Device::Cpu).unwrap(), BnMode::Eval).unwrap());
        let e = export_landmarks(&m, &[], &ExportOptions::f32()).unwrap();
        prop_assert_eq!(e.summary.output_len, 10);
        let got = run_runtime(&e.bytes, &x);
        let d = max_rel_diff(&got, &want);
        eprintln!("f32 landmarks {:?} small {} {}px: max rel diff {:.2e}", arch(a), small_stem, size, d);
        prop_assert!(d <= BOUND, "{:?} small {} {}px: max rel diff {:e}", arch(a), small_stem, size, d);
      }
    }
}

/// The comparison itself can fail: a single wrong weight (one OHWI element negated) is caught.
#[test]
fn a_corrupted_export_is_detected() {
    let net = resnet(arch(0), 0.0625, true, 3);
    randomise_bn(&all_vars(&net), 4);
    let x = random_input(5, 3 * 16 * 16);
    let want = to_vec(
        &net.forward_features(
            &Tensor::from_vec(x.clone(), (1, 3, 16, 16), &Device::Cpu).unwrap(),
            BnMode::Eval,
        )
        .unwrap(),
    );
    let mut bytes = export_backbone(&net, 16, &[], &ExportOptions::f32())
        .unwrap()
        .bytes;
    assert!(max_rel_diff(&run_runtime(&bytes, &x), &want) <= BOUND);
    // Flip the sign bit of the first f32 of the data section's last weight.
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let at = 8 + header + 3; // top byte of the first stored f32
    bytes[at] ^= 0x80;
    assert!(max_rel_diff(&run_runtime(&bytes, &x), &want) > BOUND);
}
