//! Parity item 3: the **int8** runtime stays close to the candle f32 model on in-distribution
//! images.
//!
//! Setup: a tiny synthetic object set (`trainer::data::synth::objects`, 10 classes × 8
//! images, 32 px). Models are random ResNets whose BN running statistics are *estimated on the
//! data* (train-mode passes, as a trained network's are) with random affine γ/β, so activations
//! have realistic, data-dependent ranges. The exporter calibrates on N train-split images
//! (min/max, or percentile), and we compare on the test split — held-out images (and
//! classes) of the same distribution.
//!
//! Bounds and why (measured values: `cargo test -p parity-tests --test parity_int8 -- --nocapture`):
//! * features: mean cosine ≥ 0.99 (the bound) for ResNet-18 at the resolutions it is
//!   used at — small stem at 32 px, ImageNet stem at 64 px. Each int8 tensor adds rounding
//!   noise of ~step/√12 (step = range/255) and the per-channel weights ≤ ½ of max|w|/127;
//!   pooling over the final map averages part of it away. Measured 0.993–0.998.
//!   Deeper nets accumulate more requantisation points (ResNet-34: ~45, ResNet-50: ~70) and,
//!   with *random* weights, amplify the noise: measured ResNet-34 small stem 32 px 0.992–0.996
//!   (bound 0.98), ResNet-34 ImageNet stem 64 px 0.978–0.992 (bound 0.97), ResNet-50 small stem
//!   0.983–0.987 (bound 0.97). So the 0.99 target is proved for ResNet-18 only; the deeper
//!   nets must be re-checked once trained weights exist. (The ImageNet stem at 32 px ends on
//!   a 1×1 map, where nothing is averaged: measured 0.96–0.99; not a tested configuration.)
//! * landmarks: mean |int8 − f32| ≤ 0.025 in normalised coordinates (2.5 % of the input side,
//!   0.8 px at 32 px) for a head whose outputs lie in the unit range as a trained one's do
//!   (fc scaled so predictions are 0.5 ± ~0.1). The output step is (output range)/255 ≈ 0.001,
//!   the rest is backbone noise carried through the fc (measured 0.007 for ResNet-18, 0.010–0.017 for the deeper ResNet-34: 3–8 % of the
//!   prediction spread, the same relative noise as the features); 2.5 % is well below the landmark errors
//!   the evaluation measures (several % of the inter-ocular distance).
mod parity_common;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use exporter::export::calibrate::{calibration_inputs, preprocess};
use exporter::export::fold::{IMAGENET_MEAN, IMAGENET_STD};
use exporter::export::{
    export_backbone, export_file, export_landmarks, CalibMethod, ExportError, ExportOptions,
    ExportRequest,
};
use parity_common::*;
use proptest::prelude::*;
use trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use trainer::data::{MiniImageNet, Split};
use trainer::model::landmarks::LandmarkModel;
use trainer::model::{BnMode, ResNet};

const SIZE: usize = 32;
const CALIB: usize = 48;
const COSINE_BOUND: f64 = 0.99;
const COSINE_BOUND_DEEP: f64 = 0.97;
const LANDMARK_BOUND: f64 = 0.025;

/// The synthetic set, generated once per test binary (kept for the process lifetime).
fn dataset() -> &'static PathBuf {
    static D: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &D.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("objects");
        generate_objects(
            &ObjectsConfig {
                classes: 10,
                per_class: 8,
                size: SIZE as u32,
                seed: 11,
                alignment: 1.0,
            },
            &root,
        )
        .unwrap();
        (d, root)
    })
    .1
}

/// Held-out images (the test split: unseen classes), preprocessed.
fn held_out(size: usize) -> Vec<Vec<f32>> {
    let mi = MiniImageNet::open(dataset()).unwrap();
    let mut v = Vec::new();
    for s in [Split::Test] {
        let l = mi.split(s).unwrap();
        for i in 0..l.len() {
            v.push(preprocess(
                &l.load(i).unwrap().0,
                size,
                &IMAGENET_MEAN,
                &IMAGENET_STD,
            ));
        }
    }
    v
}

fn calib(size: usize) -> Vec<Vec<f32>> {
    calibration_inputs(dataset(), CALIB, size, 0, &IMAGENET_MEAN, &IMAGENET_STD).unwrap()
}

fn batch(xs: &[Vec<f32>]) -> Tensor {
    let s = ((xs[0].len() / 3) as f64).sqrt() as usize;
    Tensor::from_vec(xs.concat(), (xs.len(), 3, s, s), &Device::Cpu).unwrap()
}

/// Random γ/β, then running statistics estimated on the data: 30 train-mode passes (momentum
/// 0.1 → the initial 0/1 weigh 0.9³⁰ ≈ 4 %).
fn data_bn(
    forward: &dyn Fn(&Tensor),
    vars: &[(String, candle_core::Var)],
    seed: u64,
    data: &[Vec<f32>],
) {
    randomise_bn(vars, seed);
    let x = batch(data);
    for _ in 0..30 {
        forward(&x);
    }
}

fn features_cosines(net: &ResNet, bytes: &[u8], xs: &[Vec<f32>]) -> Vec<f64> {
    let want = net.forward_features(&batch(xs), BnMode::Eval).unwrap();
    xs.iter()
        .enumerate()
        .map(|(i, x)| cosine(&run_runtime(bytes, x), &to_vec(&want.get(i).unwrap())))
        .collect()
}

proptest! {
    // Every configuration runs in every case; the rest is drawn.
    #![proptest_config(ProptestConfig { cases: 1, ..ProptestConfig::default() })]

    #[test]
    fn int8_features_close_to_candle(pct in any::<bool>(), seed in any::<u64>()) {
      for cfg in 0usize..5 {
        // (arch, small stem, input px, bound): see the module docs.
        let (a, small_stem, size, bound) = [(0, true, 32, COSINE_BOUND), (1, true, 32, 0.98), (0, false, 64, COSINE_BOUND), (1, false, 64, COSINE_BOUND_DEEP), (2, true, 32, COSINE_BOUND_DEEP)][cfg];
        let net = resnet(arch(a), 0.125, small_stem, seed);
        let cal = calib(size);
        data_bn(&|x| { net.forward_features(x, BnMode::TRAIN).unwrap(); }, &all_vars(&net), seed, &cal);
        let opts = ExportOptions::int8_with(if pct { CalibMethod::Percentile(99.999) } else { CalibMethod::MinMax });
        let e = export_backbone(&net, size, &cal, &opts).unwrap();
        let cos = features_cosines(&net, &e.bytes, &held_out(size));
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let min = cos.iter().cloned().fold(1.0, f64::min);
        eprintln!("int8 features {:?} small_stem {} {}px percentile {}: mean cosine {:.5} (min {:.5}) over {} held-out images",
                  arch(a), small_stem, size, pct, mean, min, cos.len());
        prop_assert!(mean >= bound, "mean cosine {} < {}", mean, bound);
      }
    }

    #[test]
    fn int8_landmarks_close_to_candle(seed in any::<u64>()) {
      for a in 0usize..2 {
        let m = LandmarkModel::new(resnet(arch(a), 0.125, true, seed), SIZE, seed ^ 3).unwrap();
        let mut vars = all_vars(&m.backbone);
        vars.extend(m.head.all_tensors().into_iter().filter_map(|(n, _)| m.head.var(&n).map(|v| (n, v.clone()))));
        let cal = calib(SIZE);
        data_bn(&|x| { m.forward(x, BnMode::TRAIN).unwrap(); }, &vars, seed, &cal);
        // Outputs in the unit range, as a trained head's: 0.5 + (0.1 × the random projection).
        let fw = m.head.var("head.fc.weight").unwrap();
        fw.set(&(fw.as_tensor() * 0.1).unwrap()).unwrap();
        let fb = m.head.var("head.fc.bias").unwrap();
        fb.set(&(fb.as_tensor().zeros_like().unwrap() + 0.5).unwrap()).unwrap();
        // Min/max: this checks the int8 arithmetic against candle; the default percentile clip
        // suits trained heads (see export::DEFAULT_PERCENTILE) but widens this random head's
        // error (ResNet-34: 0.022–0.030 over 25 seeds, above the bound).
        let e = export_landmarks(&m, &cal, &ExportOptions::int8_minmax()).unwrap();
        let xs = held_out(SIZE);
        let want = m.forward(&batch(&xs), BnMode::Eval).unwrap();
        let mut sum = 0f64;
        let mut n = 0usize;
        for (i, x) in xs.iter().enumerate() {
            let got = run_runtime(&e.bytes, x);
            for (g, w) in got.iter().zip(to_vec(&want.get(i).unwrap())) {
                sum += (*g as f64 - w as f64).abs();
                n += 1;
            }
        }
        let mad = sum / n as f64;
        eprintln!("int8 landmarks {:?}: mean |int8 - f32| = {:.5} (normalised coords)", arch(a), mad);
        prop_assert!(mad <= LANDMARK_BOUND, "mean abs diff {}", mad);
      }
    }
}

/// The measure can fail: calibrated on images scaled by 0.02, the ranges are far too narrow,
/// activations saturate, and the mean cosine falls below the bound.
#[test]
fn badly_calibrated_export_is_detected() {
    let net = resnet(arch(0), 0.125, true, 1);
    let cal = calib(SIZE);
    data_bn(
        &|x| {
            net.forward_features(x, BnMode::TRAIN).unwrap();
        },
        &all_vars(&net),
        1,
        &cal,
    );
    let tiny: Vec<Vec<f32>> = cal
        .iter()
        .map(|x| x.iter().map(|v| v * 0.02).collect())
        .collect();
    let e = export_backbone(&net, SIZE, &tiny, &ExportOptions::int8()).unwrap();
    let cos = features_cosines(&net, &e.bytes, &held_out(SIZE));
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    assert!(mean < COSINE_BOUND, "{mean}");
}

#[test]
fn export_file_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("net.safetensors");
    resnet(arch(0), 0.0625, true, 0)
        .save_safetensors(&model)
        .unwrap();
    let req = ExportRequest {
        model: model.clone(),
        calib_data: Some(dataset().clone()),
        calib_images: 1000,
        image_size: Some(SIZE),
        seed: 0,
        opts: ExportOptions::int8(),
    };
    // More calibration images than the train split has (6 classes × 8): an error naming the set.
    let e = export_file(&req).unwrap_err().to_string();
    assert!(e.contains("1000") && e.contains("only 48"), "{e}");
    // Not a ResNet: a safetensors file without the config.
    let plain = d.path().join("plain.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(
            "x".to_string(),
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]),
        &plain,
    )
    .unwrap();
    let e = export_file(&ExportRequest {
        model: plain,
        ..req.clone()
    })
    .unwrap_err();
    assert!(
        matches!(e, ExportError::Model(_)) && e.to_string().contains("plain.safetensors"),
        "{e}"
    );
    // int8 without data.
    let e = export_file(&ExportRequest {
        calib_data: None,
        ..req.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--calib-data"), "{e}");
    // The happy path, twice: identical bytes.
    let ok = ExportRequest {
        calib_images: 8,
        ..req
    };
    assert_eq!(
        export_file(&ok).unwrap().bytes,
        export_file(&ok).unwrap().bytes
    );
}
