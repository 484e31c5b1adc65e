//! A model we did not write: MLPerf Tiny's image-classification ResNet-8
//! (`benchmark/training/image_classification/trained_models/pretrainedResnet_quant.tflite` in
//! github.com/mlcommons/tiny, written by TensorFlow's converter: CONV_2D with SAME padding, ADD,
//! AVERAGE_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX, int8 in and out) read by
//! `runtime_core::tflite` runs **bit for bit** as TensorFlow Lite Micro runs it (the
//! `tflite-micro` PyPI package through scripts/tflite_run.py): every intermediate activation
//! and the softmax output, on every input.
//!
//! The model stays out of the repository: the test reads it from the path in
//! `MLPERF_RESNET8_TFLITE` and prints a SKIP line when the variable is unset (or tflite-micro
//! cannot be imported). Set but unreadable is a failure.
use runtime_core::tflite::convert;
use runtime_core::{Model, OpKind};

use super::tflite_micro::{have_tflite_micro, random_inputs, run_script};

/// The environment variable naming MLPerf Tiny's ResNet-8 `.tflite`.
pub(crate) const ENV: &str = "MLPERF_RESNET8_TFLITE";

/// The model's bytes, or `None` (after a SKIP line) when the variable is unset.
pub(crate) fn mlperf_resnet8(what: &str) -> Option<Vec<u8>> {
    let Some(path) = std::env::var_os(ENV) else {
        println!("SKIP {what}: {ENV} is not set (the path of MLPerf Tiny's pretrainedResnet_quant.tflite)");
        return None;
    };
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{ENV}={}: {e}", path.to_string_lossy())))
}

/// int8 32×32×3 inputs (the model's input is the pixel − 128, scale 1): pseudo-random noise
/// over the whole range, then smooth images (gradients and stripes), whose outputs are less
/// saturated.
pub(crate) fn inputs(len: usize) -> Vec<Vec<i8>> {
    let mut out = random_inputs(0x51_7CC1_B727_220A, len, 12);
    for k in 0..6usize {
        out.push(
            (0..len)
                .map(|i| {
                    let (y, x, c) = (i / 96, (i / 3) % 32, i % 3);
                    let v = (y * (k + 1) * 3 + x * (7 - k) + c * 40 + k * 17) % 256;
                    (v as i32 - 128) as i8
                })
                .collect(),
        );
    }
    out
}

#[test]
fn mlperf_resnet8_runs_bit_for_bit_with_tflite_micro() {
    let Some(file) = mlperf_resnet8("MLPerf ResNet-8 vs TFLite Micro") else {
        return;
    };
    if !have_tflite_micro() {
        println!("SKIP MLPerf ResNet-8 vs TFLite Micro: python3 cannot import tflite_micro/numpy");
        return;
    }
    let c = convert(&file).unwrap_or_else(|e| panic!("MLPerf ResNet-8: {e}"));
    let m = Model::parse(&c.model).unwrap();
    let kinds: Vec<OpKind> = m.nodes().iter().map(|n| n.kind()).collect();
    for k in [
        OpKind::AvgPool,
        OpKind::Softmax,
        OpKind::Add,
        OpKind::Conv2d,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing: {kinds:?}");
    }
    assert_eq!(m.input_shape(), [32, 32, 3]);
    assert_eq!(m.output_len(), 10);
    let xs = inputs(m.input_len());

    let dir = tempfile::tempdir().unwrap();
    let (got, stdout) = run_script("tflite_run.py", &file, &xs, Some(dir.path()));

    let mut arena = vec![0u8; m.arena_bytes()];
    let mut want = Vec::new();
    let (mut compared, mut differ) = (0usize, Vec::new());
    for (k, x) in xs.iter().enumerate() {
        m.input_slot_i8(&mut arena).unwrap().copy_from_slice(x);
        let mut trace: Vec<(u16, Vec<i8>)> = Vec::new();
        let y = m
            .run_i8_traced(&mut arena, &mut |id, v| trace.push((id, v.to_vec())))
            .unwrap();
        want.extend_from_slice(y);
        // Every TFLite activation TFLM kept, against the runtime tensor it became.
        for (i, id) in c.tensor_ids.iter().enumerate() {
            let Some(id) = id else { continue };
            let Ok(tf) = std::fs::read(dir.path().join(format!("s{k}_i{i}.bin"))) else {
                continue;
            };
            let Some((_, v)) = trace.iter().find(|(t, _)| t == id) else {
                continue;
            };
            compared += 1;
            let n = v.iter().zip(&tf).filter(|(a, b)| **a != **b as i8).count();
            if n > 0 || tf.len() != v.len() {
                differ.push(format!(
                    "input {k} tensor {i} (t{id}): {n} of {} values",
                    v.len()
                ));
            }
        }
    }
    let mut distinct = want.clone();
    distinct.sort();
    distinct.dedup();
    println!(
        "MLPerf ResNet-8: {} ops, {} inputs, {} output values ({} distinct), {}/{} identical with \
         TFLite Micro; {compared} intermediate tensors compared ({})",
        m.nodes().len(),
        xs.len(),
        want.len(),
        distinct.len(),
        got.iter().zip(&want).filter(|(a, b)| a == b).count(),
        want.len(),
        stdout.trim()
    );
    assert!(differ.is_empty(), "tensors differ: {differ:#?}");
    // 17 activations per input: the input, 15 op outputs and the RESHAPE (the pool's values).
    assert_eq!(compared, 17 * xs.len(), "tensors compared");
    assert!(distinct.len() > 20, "a degenerate output: {distinct:?}");
    assert_eq!(got, want, "TFLite Micro output differs");
}
