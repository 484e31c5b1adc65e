//! Parity item 5: a counting global allocator shows zero heap allocations during inference
//! (int8 and f32, every entry point, preprocessing included). Loading may allocate.

use runtime_core::count_alloc::{count_allocations as count, CountingAlloc};

use runtime_core::model::zoo;
use runtime_core::{Dtype, Model};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn inference_performs_no_heap_allocation() {
    // The counter works: a Vec allocation is seen.
    assert_eq!(count(|| drop(std::hint::black_box(vec![1u8; 16]))), 1);
    for dtype in [Dtype::Int8, Dtype::F32] {
        let bytes = zoo::resnet8(dtype, 11).unwrap().to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut out = vec![0f32; m.output_len()];
        let rgb: Vec<u8> = (0..m.input_len()).map(|i| (i % 251) as u8).collect();
        let xq = vec![3i8; m.input_len()];
        let xf = vec![0.25f32; m.input_len()];
        let n = count(|| {
            m.preprocess_rgb8(&rgb, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
            m.load_input_f32(&xf, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
            match dtype {
                Dtype::Int8 => {
                    m.run_int8(&xq, &mut arena, &mut out).unwrap();
                    m.run_int8_raw(&xq, &mut arena).unwrap();
                }
                Dtype::F32 => m.run_f32(&xf, &mut arena, &mut out).unwrap(),
            }
        });
        assert_eq!(n, 0, "{dtype:?} inference allocated {n} times");
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

/// The classifier ops (average pools, softmax) do not allocate either, in both dtypes; nor does
/// a `.tflite` after its conversion at load (MLPerf Tiny's ResNet-8 when
/// `MLPERF_RESNET8_TFLITE` names it).
#[test]
fn avgpool_softmax_and_converted_tflite_perform_no_heap_allocation() {
    use runtime_core::{ModelBuilder, Quant, Task};
    let mut files = Vec::new();
    for dtype in [Dtype::Int8, Dtype::F32] {
        let mut b = ModelBuilder::new(dtype, Task::Features);
        let q = Quant {
            scale: 0.05,
            zp: -7,
        };
        let x = b.input([8, 8, 4], &[0.5; 4], &[0.25; 4], q).unwrap();
        let p = b.avgpool(x, [2, 2], [2, 2], [0; 4], false).unwrap();
        let p = b.avgpool(p, [3, 3], [2, 2], [1; 4], true).unwrap();
        let y = b.softmax(p, 1.0).unwrap();
        b.output(y).unwrap();
        files.push(b.to_bytes().unwrap());
    }
    if let Some(path) = std::env::var_os("MLPERF_RESNET8_TFLITE") {
        let t = std::fs::read(path).unwrap();
        files.push(runtime_core::tflite::to_model_bytes(&t).unwrap());
    }
    for bytes in &files {
        let m = Model::parse(bytes).unwrap();
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut out = vec![0f32; m.output_len()];
        let rgb: Vec<u8> = (0..m.input_len()).map(|i| (i * 13 % 251) as u8).collect();
        let n = count(|| {
            m.preprocess_rgb8(&rgb, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
        });
        assert_eq!(n, 0, "{:?} inference allocated {n} times", m.dtype());
        // One distribution per pixel.
        let pixels = m.output_desc().h * m.output_desc().w;
        let sum: f32 = out.iter().sum();
        assert!(
            (sum - pixels as f32).abs() < 0.05 * pixels as f32,
            "softmax outputs sum to {sum} over {pixels} pixels"
        );
    }
}
