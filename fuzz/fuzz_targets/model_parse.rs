//! The model loader on hostile bytes: `Model::parse` must return an error or a model that runs
//! to completion in an arena of `arena_bytes()` (never a panic, an out-of-bounds access or an
//! abort). Seeded with the committed fixture models (fuzz/run.sh), which libFuzzer mutates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_core::{Dtype, Model};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Model::parse(data) else {
        return;
    };
    // Every accessor a caller uses, then one inference on a zero input.
    let _ = (m.task(), m.input_shape(), m.output_len(), m.weight_bytes(), m.macs());
    if m.arena_bytes() > 1 << 24 {
        return; // a valid but huge model: loading is what is fuzzed, not 16 MiB memsets
    }
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out = vec![0f32; m.output_len()];
    match m.dtype() {
        Dtype::Int8 => m
            .run_int8(&vec![0i8; m.input_len()], &mut arena, &mut out)
            .expect("an accepted int8 model runs in arena_bytes()"),
        Dtype::F32 => m
            .run_f32(&vec![0f32; m.input_len()], &mut arena, &mut out)
            .expect("an accepted f32 model runs in arena_bytes()"),
    }
});
