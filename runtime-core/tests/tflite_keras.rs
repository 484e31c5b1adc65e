//! Models we did not write (#31): small Keras ResNet- and MobileNet-style nets converted by
//! TensorFlow's own TFLite converter (full-integer int8, random weights), run in TensorFlow Lite
//! Micro by `scripts/keras_tflite_fixtures.py`, whose inputs and TFLM outputs are committed in
//! `fixtures/tflite/keras_*`. runtime-core reads each `.tflite` and must give TFLM's bytes:
//! every int8 activation tensor of the first inputs (op by op), the logits and the output of
//! every input. The MobileNet-style net has TFLite's float interface (QUANTIZE after the float
//! input, DEQUANTIZE before the float output): its float outputs must be TFLM's bit for bit too.
//! No TensorFlow needed here.
use std::path::PathBuf;

use runtime_core::tflite::convert;
use runtime_core::{Model, OpKind};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tflite")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    let p = path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn i8s(b: &[u8]) -> Vec<i8> {
    b.iter().map(|&v| v as i8).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs one committed net and compares with TFLite Micro; returns (inputs, tensors compared).
fn check(name: &str, float_interface: bool, kinds: &[OpKind]) -> (usize, usize) {
    let file = read(&format!("{name}.tflite"));
    let c = convert(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(c.float_input, float_interface, "{name}: float input");
    assert_eq!(c.float_output, float_interface, "{name}: float output");
    let m = Model::parse(&c.model).unwrap();
    for k in kinds {
        assert!(
            m.nodes().iter().any(|n| n.kind() == *k),
            "{name}: no {k:?} in the converted graph"
        );
    }
    let logits_id = m
        .nodes()
        .iter()
        .find(|n| n.kind() == OpKind::Softmax)
        .map(|n| n.inputs()[0])
        .expect("a softmax");

    let raw_in = read(&format!("{name}.input.bin"));
    let esize = if float_interface { 4 } else { 1 };
    let n = raw_in.len() / (m.input_len() * esize);
    assert!(
        n >= 4 && raw_in.len() == n * m.input_len() * esize,
        "{name}: input file size"
    );
    let out_q = i8s(&read(&format!(
        "{name}.{}",
        if float_interface {
            "output_q.bin"
        } else {
            "output.bin"
        }
    )));
    let out_f = float_interface.then(|| f32s(&read(&format!("{name}.output.bin"))));
    let logits = i8s(&read(&format!("{name}.logits.bin")));
    let (ol, ll) = (m.output_len(), m.tensors()[logits_id as usize].len());
    assert_eq!(out_q.len(), n * ol, "{name}: output file size");
    assert_eq!(logits.len(), n * ll, "{name}: logits file size");

    // TFLM's int8 activations of the first inputs: `index length` lines, then the values.
    let index: Vec<(usize, usize)> = std::str::from_utf8(&read(&format!("{name}.tensors.txt")))
        .unwrap()
        .lines()
        .map(|l| {
            let (i, len) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), len.parse().unwrap())
        })
        .collect();
    let traced = i8s(&read(&format!("{name}.tensors.bin")));
    let per_input: usize = index.iter().map(|&(_, len)| len).sum();
    assert_eq!(traced.len() % per_input, 0, "{name}: tensors file size");
    let n_traced = traced.len() / per_input;

    let mut arena = vec![0u8; m.arena_bytes()];
    let mut compared = 0;
    for k in 0..n {
        let x = &raw_in[k * m.input_len() * esize..][..m.input_len() * esize];
        if float_interface {
            // TFLite's QUANTIZE, as the runtime's own float input path does it.
            m.load_input_f32(&f32s(x), &mut arena).unwrap();
        } else {
            m.input_slot_i8(&mut arena)
                .unwrap()
                .copy_from_slice(&i8s(x));
        }
        let mut seen: Vec<Option<Vec<i8>>> = vec![None; m.tensors().len()];
        let y = m
            .run_i8_traced(&mut arena, &mut |id, v| {
                seen[id as usize] = Some(v.to_vec())
            })
            .unwrap()
            .to_vec();
        assert_eq!(y, out_q[k * ol..][..ol], "{name}: input {k}: int8 output");
        let got_logits = seen[logits_id as usize].as_ref().unwrap();
        assert_eq!(
            got_logits[..],
            logits[k * ll..][..ll],
            "{name}: input {k}: logits"
        );
        if let Some(out_f) = &out_f {
            let mut yf = vec![0f32; ol];
            m.dequantize_output(&y, &mut yf).unwrap();
            let want = &out_f[k * ol..][..ol];
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&yf), bits(want), "{name}: input {k}: float output");
        }
        if k < n_traced {
            // Every runtime tensor must meet its TFLM twin at least once.
            let mut met = vec![false; m.tensors().len()];
            let mut at = k * per_input;
            for &(i, len) in &index {
                let want = &traced[at..at + len];
                at += len;
                // PAD outputs are folded into the op they feed: no runtime tensor.
                let Some(id) = c.tensor_ids[i] else { continue };
                let got = seen[id as usize].as_ref().unwrap();
                let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
                assert!(
                    got.len() == len && diff == 0,
                    "{name}: input {k}: TFLite tensor {i} (runtime tensor {id}): {diff} of {len} \
                     values differ from TFLite Micro"
                );
                met[id as usize] = true;
                compared += 1;
            }
            assert!(
                met.iter().all(|&b| b),
                "{name}: runtime tensors not compared: {:?}",
                met.iter()
                    .enumerate()
                    .filter(|(_, b)| !**b)
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            );
        }
    }
    (n, compared)
}

#[test]
fn keras_resnet_runs_bit_for_bit_with_tflite_micro() {
    let (n, t) = check(
        "keras_resnet",
        false,
        &[
            OpKind::Conv2d,
            OpKind::Add,
            OpKind::MaxPool,
            OpKind::Mean,
            OpKind::Softmax,
        ],
    );
    println!("keras_resnet: {n} inputs, {t} intermediate tensors identical to TFLite Micro");
}

#[test]
fn keras_mobilenet_with_float_interface_runs_bit_for_bit_with_tflite_micro() {
    let (n, t) = check(
        "keras_mobilenet",
        true,
        &[
            OpKind::Conv2d,
            OpKind::DepthwiseConv2d,
            OpKind::Mean,
            OpKind::Softmax,
        ],
    );
    println!("keras_mobilenet: {n} inputs, {t} intermediate tensors identical to TFLite Micro");
}

/// The converter's files damaged (bit flips, byte overwrites, truncations, in the fuzzers'
/// style): each converts into a model that loads and runs, or is refused with an error that
/// names the operator by index and TFLite name when it is about one; never a panic. Covers the
/// DEPTHWISE_CONV_2D, QUANTIZE and DEQUANTIZE paths (the MobileNet-style file has all three).
#[test]
fn damaged_converter_files_are_errors_never_panics() {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    let mut named = std::collections::BTreeMap::<String, usize>::new();
    let (mut refused, mut converted) = (0, 0);
    for name in ["keras_mobilenet", "keras_resnet"] {
        let file = read(&format!("{name}.tflite"));
        let mut check = |bytes: &[u8]| match convert(bytes) {
            Ok(c) => {
                let m = Model::parse(&c.model).expect("a converted model loads");
                let mut arena = vec![0u8; m.arena_bytes()];
                m.run_int8_raw(&vec![0i8; m.input_len()], &mut arena)
                    .expect("a converted model runs");
                converted += 1;
            }
            Err(e) => {
                let text = e.to_string();
                if let Some(i) = e.op_index {
                    let op = runtime_core::tflite::op_name(e.op_code.unwrap());
                    assert!(
                        text.starts_with(&format!("operator {i} ({op} = builtin")),
                        "{text}"
                    );
                    *named.entry(op.to_string()).or_default() += 1;
                }
                if let Some(t) = e.tensor {
                    assert!(text.contains(&format!("tensor {t}: ")), "{text}");
                }
                refused += 1;
            }
        };
        for cut in (0..file.len()).step_by(61) {
            check(&file[..cut]);
        }
        for _ in 0..2500 {
            let mut b = file.clone();
            for _ in 0..1 + next(3) {
                let i = next(b.len());
                match next(4) {
                    0 => b[i] ^= 1 << next(8),
                    1 => b[i] = 0xFF,
                    2 => b[i] = 0x80,
                    _ => b[i] = 0,
                }
            }
            check(&b);
        }
    }
    println!("{refused} refused, {converted} converted; errors naming an operator: {named:?}");
    assert!(refused > 500, "{refused} refused");
    assert!(named.contains_key("DEPTHWISE_CONV_2D"), "{named:?}");
}

/// A file libFuzzer found (fuzz target `tflite_convert`, 2026-12-07): a weight tensor whose
/// shape's element count overflows `usize`. The reader multiplied the dimensions unchecked (a
/// panic with overflow checks, a wrapped count without); it must be an error naming the tensor.
#[test]
fn a_shape_whose_element_count_overflows_is_an_error() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tflite/fuzz-shape-overflow.tflite");
    let bytes = std::fs::read(&path).unwrap();
    let Err(e) = runtime_core::tflite::convert(&bytes) else {
        panic!("the overflowing shape must be refused");
    };
    let msg = format!("{e}");
    assert!(msg.contains("tensor"), "{msg}");
}

/// A second libFuzzer find (`tflite_convert`, 2026-12-07, after the fix above): an input tensor
/// claiming about 1.5 G channels. The reader allocated the per-channel mean and std (6 GB)
/// before the builder's channel check could refuse the input; it must refuse first, naming the
/// input tensor and its channel count.
#[test]
fn an_input_with_too_many_channels_is_refused_before_allocating() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tflite/fuzz-input-channels.tflite");
    let bytes = std::fs::read(&path).unwrap();
    let Err(e) = runtime_core::tflite::convert(&bytes) else {
        panic!("an input of that many channels must be refused");
    };
    let msg = format!("{e}");
    assert!(
        msg.contains("input with") && msg.contains("channels (at most"),
        "{msg}"
    );
}
