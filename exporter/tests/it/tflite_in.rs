//! `.tflite` in (`runtime_core::tflite`): every int8 model the exporter writes as `.tflite` reads
//! back into a runtime model that computes the same bytes as the original, on every output;
//! damaged bytes give an error, never a panic.
use std::path::Path;

use exporter::export::tflite;
use runtime_core::tflite::{is_tflite, to_model_bytes};
use runtime_core::Model;

use super::tflite_micro::{random_inputs, MODELS};

fn read(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Deterministic int8 inputs covering the whole range.
fn inputs(len: usize, n: usize) -> Vec<Vec<i8>> {
    random_inputs(0x9E37_79B9_7F4A_7C15, len, n)
}

fn run(m: &Model, x: &[i8]) -> Vec<i8> {
    let mut arena = vec![0u8; m.arena_bytes()];
    m.run_int8_raw(x, &mut arena).unwrap().to_vec()
}

#[test]
fn the_tflite_we_write_reads_back_bit_for_bit() {
    for rel in MODELS {
        let original = read(rel);
        let a = Model::parse(&original).unwrap();
        let file = tflite::to_tflite(&original).unwrap().bytes;
        assert!(is_tflite(&file), "{rel}: no TFL3 identifier");
        let converted = to_model_bytes(&file).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let b = Model::parse(&converted).unwrap();
        assert_eq!(a.input_desc(), b.input_desc(), "{rel}: input");
        assert_eq!(a.output_desc(), b.output_desc(), "{rel}: output");
        assert_eq!(a.task(), b.task(), "{rel}: task");
        assert_eq!(a.normalisation(), b.normalisation(), "{rel}: mean/std");
        assert_eq!(a.macs(), b.macs(), "{rel}: MACs");
        for x in inputs(a.input_len(), 6) {
            assert_eq!(run(&a, &x), run(&b, &x), "{rel}: outputs differ");
        }
    }
}

/// Bit flips, byte overwrites and truncations of a written `.tflite` (a few thousand, in the
/// fuzzers' style): each converts or is refused with an error; nothing panics. A file that
/// converts is a model the runtime's own loader accepted (the builder re-parses what it writes).
#[test]
fn damaged_tflite_is_an_error_never_a_panic() {
    let file = tflite::to_tflite(&read("fixtures/tiny/landmarks-int8.safetensors"))
        .unwrap()
        .bytes;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    let (mut refused, mut converted) = (0, 0);
    let mut check = |bytes: &[u8]| match to_model_bytes(bytes) {
        Ok(m) => {
            Model::parse(&m).expect("a converted model loads");
            converted += 1;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            refused += 1;
        }
    };
    for cut in (0..file.len())
        .step_by(97)
        .chain([0, 3, 4, 7, 8, file.len() - 1])
    {
        check(&file[..cut]);
    }
    for _ in 0..3000 {
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
    assert!(refused > 100, "{refused} refused, {converted} converted");
}

/// Errors name where they are: a cut header is malformed, and an op error names the operator's
/// index and its TFLite name.
#[test]
fn errors_name_the_operator() {
    let file = tflite::to_tflite(&read("fixtures/tiny/backbone-int8.safetensors"))
        .unwrap()
        .bytes;
    let e = to_model_bytes(&file[..16]).unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
    let text = runtime_core::tflite::TfliteError {
        op_index: Some(7),
        op_code: Some(4),
        tensor: None,
        kind: runtime_core::tflite::TfliteErrorKind::UnsupportedOp,
    }
    .to_string();
    assert!(
        text.starts_with("operator 7 (DEPTHWISE_CONV_2D = builtin 4): no kernel"),
        "{text}"
    );
}

/// `fixtures/tflite/landmark.tflite` (what runtime-ffi's `.tflite` test loads through the C API) is
/// exactly what `export --tflite` writes for `fixtures/mcu/landmark.safetensors`;
/// `TFLITE_REGEN=1 cargo test -p exporter --test it committed_tflite_fixture` rewrites it.
#[test]
fn committed_tflite_fixture_is_current() {
    let want = tflite::to_tflite(&read("fixtures/mcu/landmark.safetensors"))
        .unwrap()
        .bytes;
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tflite/landmark.tflite");
    if std::env::var_os("TFLITE_REGEN").is_some() {
        std::fs::write(&p, &want).unwrap();
    }
    let got = std::fs::read(&p).unwrap_or_default();
    assert!(
        got == want,
        "{} is not what export --tflite writes ({} B committed, {} B now); regenerate with \
         TFLITE_REGEN=1 cargo test -p exporter --test it committed_tflite_fixture",
        p.display(),
        got.len(),
        want.len()
    );
}
