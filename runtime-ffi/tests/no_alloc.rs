//! The header's allocation promise, checked with a counting global allocator: `rt_model_load` and
//! the head fits allocate; running a model, decoding landmarks and scoring with a head do not.
//! (The counting allocator counts the calling thread only, so the harness cannot disturb it.)

use std::path::Path;

use runtime_core::count_alloc::{count_allocations as count, CountingAlloc};
use runtime_ffi::*;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).unwrap()
}

#[test]
fn only_load_and_fit_allocate() {
    let lm_bytes = read("fixtures/tiny/landmarks-int8.safetensors");
    let bb_bytes = read("fixtures/tiny/backbone-int8.safetensors");
    let face = read("runtime-ffi/fixtures/face.rgb");
    let (mut lm, mut bb) = (RtModel::default(), RtModel::default());
    let loads = count(|| unsafe {
        assert_eq!(
            rt_model_load(&mut lm, lm_bytes.as_ptr(), lm_bytes.len()),
            RtStatus::Ok
        );
        assert_eq!(
            rt_model_load(&mut bb, bb_bytes.as_ptr(), bb_bytes.len()),
            RtStatus::Ok
        );
    });
    assert!(loads > 0, "the counter sees the load");

    let mut info = RtModelInfo {
        arena_bytes: 0,
        input_h: 0,
        input_w: 0,
        input_c: 0,
        input_len: 0,
        dtype: RtDtype::Int8,
        input_scale: 0.0,
        input_zero_point: 0,
        output_len: 0,
        task: RtTask::Features,
        weight_bytes: 0,
        macs: 0,
    };
    let mut arena = vec![0u8; 1 << 16];
    let mut lm_out = [0f32; 10];
    let mut feats = vec![0f32; 6 * 32];
    let mut pts = [RtPoint::default(); RT_LANDMARKS];
    // Six different images (for the heads below) and a quantised input, made before counting.
    let imgs: Vec<Vec<u8>> = (0..6u8)
        .map(|i| face.iter().map(|&p| p.wrapping_add(40 * i)).collect())
        .collect();
    let q: Vec<i8> = face.iter().map(|&p| (p / 2) as i8).collect();
    let inference = count(|| unsafe {
        assert_eq!(rt_model_get_info(&bb, &mut info), RtStatus::Ok);
        let (a, n_a) = (arena.as_mut_ptr(), arena.len());
        let s = rt_run_u8(
            &lm,
            face.as_ptr(),
            face.len(),
            a,
            n_a,
            lm_out.as_mut_ptr(),
            10,
        );
        assert_eq!(s, RtStatus::Ok);
        let s = rt_landmarks(&lm, lm_out.as_ptr(), 10, pts.as_mut_ptr(), RT_LANDMARKS);
        assert_eq!(s, RtStatus::Ok);
        for (img, f) in imgs.iter().zip(feats.chunks_exact_mut(32)) {
            let s = rt_run_u8(&bb, img.as_ptr(), img.len(), a, n_a, f.as_mut_ptr(), 32);
            assert_eq!(s, RtStatus::Ok);
        }
        let s = rt_run_i8(&bb, q.as_ptr(), q.len(), a, n_a, feats.as_mut_ptr(), 32);
        assert_eq!(s, RtStatus::Ok);
    });
    assert_eq!(inference, 0, "inference allocated");
    assert_eq!(info.output_len, 32);

    let labels = [0u8, 0, 1, 1, 2, 2];
    let (mut lin, mut cen) = (RtHead::default(), RtHead::default());
    let recipe = rt_sgd_recipe_default();
    let fits = count(|| unsafe {
        let (f, n) = (feats.as_ptr(), feats.len());
        let s = rt_head_fit_linear(&mut lin, f, n, labels.as_ptr(), 6, 3, 32, &recipe, 3);
        assert_eq!(s, RtStatus::Ok);
        let s = rt_head_fit_centroid(&mut cen, f, n, labels.as_ptr(), 6, 3, 32);
        assert_eq!(s, RtStatus::Ok);
    });
    assert!(fits > 0);

    let mut scores = [0f32; 3];
    let mut class = 0usize;
    let scoring = count(|| unsafe {
        for h in [&lin, &cen] {
            for f in feats.chunks_exact(32) {
                let s = rt_head_scores(h, f.as_ptr(), 32, scores.as_mut_ptr(), 3);
                assert_eq!(s, RtStatus::Ok);
                assert_eq!(rt_head_predict(h, f.as_ptr(), 32, &mut class), RtStatus::Ok);
            }
        }
    });
    assert_eq!(scoring, 0, "scoring allocated");

    unsafe {
        assert_eq!(rt_head_release(&mut lin), RtStatus::Ok);
        assert_eq!(rt_head_release(&mut cen), RtStatus::Ok);
        assert_eq!(rt_model_release(&mut lm), RtStatus::Ok);
        assert_eq!(rt_model_release(&mut bb), RtStatus::Ok);
    }
}
