//! Why `run_c_example.sh` can demand bit-identical numbers from the C example and
//! `runtime-cli infer --exact-size`: the two preprocess differently. The C API feeds pixels
//! through runtime-core's `Model::preprocess_rgb8` (`(p/255 − mean)/std`, the MCU's path);
//! runtime-cli through its host transform (`(p·(1/255) − mean)·(1/std)`, runtime-cli's
//! `preprocess`). These can differ by an f32 ulp, and so by one quantisation step when the value
//! lands on a rounding boundary. Here every pixel value of every channel goes through both for
//! the fixture models: if the quantised inputs agree for all 256 values, they agree for every
//! image, and the integer graph does the rest.

use std::path::Path;

use image::{Rgb, RgbImage};
use runtime_cli::engine::Runner;
use runtime_core::Model;
use runtime_ffi::*;

/// A 16×16 image whose pixels cover every value 0..=255 in each channel.
fn all_values() -> RgbImage {
    RgbImage::from_fn(16, 16, |x, y| {
        let i = (16 * y + x) as u8;
        Rgb([i, 255 - i, i.wrapping_mul(7)])
    })
}

#[test]
fn c_api_and_runtime_cli_quantise_every_pixel_value_alike() {
    let img = all_values();
    for rel in [
        "fixtures/tiny/landmarks-int8.safetensors",
        "fixtures/tiny/backbone-int8.safetensors",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        let bytes = std::fs::read(&path).unwrap();
        let model = Model::parse(&bytes).unwrap();

        // runtime-cli's `infer --exact-size` input, quantised by runtime-core.
        let mut runner = Runner::new(&model);
        let x = runner.exact_input(&img, &path).unwrap();
        let mut arena = vec![0u8; model.arena_bytes()];
        model.load_input_f32(&x, &mut arena).unwrap();
        let cli_q = model.input_slot_i8(&mut arena).unwrap().to_vec();
        let cli_out = runner.run_normalised(&x).unwrap().to_vec();

        // The C API's: rt_run_u8 preprocesses into the arena's input slot.
        let mut handle = RtModel::default();
        let mut out = vec![0f32; model.output_len()];
        let mut arena = vec![0u8; model.arena_bytes()];
        unsafe {
            assert_eq!(
                rt_model_load(&mut handle, bytes.as_ptr(), bytes.len()),
                RtStatus::Ok
            );
            let s = rt_run_u8(
                &handle,
                img.as_ptr(),
                img.len(),
                arena.as_mut_ptr(),
                arena.len(),
                out.as_mut_ptr(),
                out.len(),
            );
            assert_eq!(s, RtStatus::Ok);
            assert_eq!(rt_model_release(&mut handle), RtStatus::Ok);
        }
        // The quantised input rt_run_u8 computed (it is `preprocess_rgb8`; the graph may have
        // reused the input's arena range since, so compute it again to read it).
        model.preprocess_rgb8(&img, &mut arena).unwrap();
        let ffi_q = model.input_slot_i8(&mut arena).unwrap();

        let diff: Vec<_> = (0..cli_q.len()).filter(|&i| cli_q[i] != ffi_q[i]).collect();
        assert!(
            diff.is_empty(),
            "{rel}: quantised inputs differ at {diff:?}"
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&out), bits(&cli_out), "{rel}");
    }
}
