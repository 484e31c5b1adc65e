//! The `.tflite` reader on hostile bytes: `runtime_core::tflite::convert` must return an error or
//! a model that the runtime's loader accepts and that runs to completion in an arena of
//! `arena_bytes()` (never a panic, an out-of-bounds access or an abort). Seeded with the
//! committed `.tflite` fixtures (fuzz/run.sh): ours, and TensorFlow's converter's with
//! DEPTHWISE_CONV_2D, PAD, QUANTIZE and DEQUANTIZE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::{tflite, Model};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = tflite::convert(data) else {
        return;
    };
    let m = Model::parse(&c.model).expect("a converted .tflite loads");
    if m.arena_bytes() > 1 << 24 {
        return; // valid but huge: converting is what is fuzzed, not 16 MiB memsets
    }
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out = vec![0f32; m.output_len()];
    m.run_int8(&vec![0i8; m.input_len()], &mut arena, &mut out)
        .expect("a converted .tflite runs in arena_bytes()");
});
