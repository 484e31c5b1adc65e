//! The C API's entry points on hostile bytes and sizes, called as C firmware would: the input is
//! `[arena selector: u16 LE][image length delta: i16 LE][output length delta: i8][model bytes…]`.
//! `rt_model_load` on the model bytes; if it loads, `rt_model_get_info`, `rt_run_u8` and
//! `rt_run_i8` with an arena of `arena_bytes() ± selector` and image/output buffers off by the
//! deltas, `rt_landmarks` on whatever came out, a centroid and a linear head fitted on the
//! outputs and `rt_head_predict`, then release. Every call must return a status (never panic or
//! touch memory outside the buffers it was given; run under ASan by cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime_ffi::*;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let sel = u16::from_le_bytes([data[0], data[1]]);
    let img_delta = i16::from_le_bytes([data[2], data[3]]) as isize;
    let out_delta = data[4] as i8 as isize;
    let bytes = &data[5..];
    let mut model = RtModel::default();
    // SAFETY (all calls): every pointer is to a live Rust buffer of the length passed.
    unsafe {
        let st = rt_model_load(&mut model, bytes.as_ptr(), bytes.len());
        if st != RtStatus::Ok {
            let _ = rt_error_message(st as i32);
            rt_model_release(&mut model);
            return;
        }
        let mut info = core::mem::zeroed::<RtModelInfo>();
        assert_eq!(rt_model_get_info(&model, &mut info), RtStatus::Ok);
        if info.arena_bytes > 1 << 24 || info.input_len > 1 << 22 {
            rt_model_release(&mut model);
            return;
        }
        // Arena: exact, or off by up to ±255 bytes (too small must be refused).
        let arena_len = if sel & 0x100 == 0 {
            info.arena_bytes + (sel & 0xff) as usize
        } else {
            info.arena_bytes.saturating_sub((sel & 0xff) as usize)
        };
        let mut arena = vec![0u8; arena_len];
        let img_len = (info.input_len as isize + img_delta).max(0) as usize;
        let image: Vec<u8> = (0..img_len).map(|i| bytes.get(i % bytes.len().max(1)).copied().unwrap_or(0)).collect();
        let out_len = (info.output_len as isize + out_delta).max(0) as usize;
        let mut out = vec![0f32; out_len];
        let s1 = rt_run_u8(&model, image.as_ptr(), image.len(), arena.as_mut_ptr(), arena.len(), out.as_mut_ptr(), out.len());
        let _ = rt_error_message(s1 as i32);
        let s2 = rt_run_i8(&model, image.as_ptr() as *const i8, image.len(), arena.as_mut_ptr(), arena.len(), out.as_mut_ptr(), out.len());
        let _ = rt_error_message(s2 as i32);
        let mut points = [RtPoint::default(); 5];
        let n_points = (sel >> 9) as usize % 7;
        let _ = rt_landmarks(&model, out.as_ptr(), out.len(), points.as_mut_ptr(), n_points);
        // Few-shot heads on the outputs as features: n samples of `dim` values.
        let dim = info.output_len.max(1);
        let n = (out.len() / dim).max(1);
        let feats: Vec<f32> = (0..n * dim).map(|i| out.get(i).copied().unwrap_or(0.5)).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        let n_way = 1 + (sel as usize >> 12) % 4;
        let recipe = rt_sgd_recipe_default();
        for linear in [false, true] {
            let mut head = RtHead::default();
            let st = if linear {
                let mut r = recipe;
                r.epochs = 2;
                rt_head_fit_linear(&mut head, feats.as_ptr(), feats.len(), labels.as_ptr(), n, n_way, dim, &r, 7)
            } else {
                rt_head_fit_centroid(&mut head, feats.as_ptr(), feats.len(), labels.as_ptr(), n, n_way, dim)
            };
            let _ = rt_error_message(st as i32);
            let mut class = 0usize;
            let _ = rt_head_predict(&head, feats.as_ptr(), dim, &mut class);
            rt_head_release(&mut head);
        }
        assert_eq!(rt_model_release(&mut model), RtStatus::Ok);
    }
});
