//! `.tflite` through the C API: `rt_model_load` takes an int8 TFLite flatbuffer as it takes the
//! runtime's own file, and the handle runs it exactly as the safetensors model it was written
//! from (`fixtures/tflite/landmark.tflite` is `export --tflite` of `fixtures/mcu/landmark.safetensors`,
//! kept current by exporter's `committed_tflite_fixture_is_current`); damaged flatbuffers are
//! refused with a model status, never a crash.

use std::path::Path;

use runtime_ffi::*;

fn read(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const TFLITE: &str = "fixtures/tflite/landmark.tflite";
const SAFETENSORS: &str = "fixtures/mcu/landmark.safetensors";

fn load(h: &mut RtModel, bytes: &[u8]) -> RtStatus {
    unsafe { rt_model_load(h, bytes.as_ptr(), bytes.len()) }
}

fn info(h: &RtModel) -> RtModelInfo {
    let mut info = std::mem::MaybeUninit::<RtModelInfo>::uninit();
    assert_eq!(
        unsafe { rt_model_get_info(h, info.as_mut_ptr()) },
        RtStatus::Ok
    );
    unsafe { info.assume_init() }
}

/// `rt_run_i8` on `x`: the dequantised output, as its bits.
fn run_i8(h: &RtModel, x: &[i8]) -> Vec<u32> {
    let i = info(h);
    let mut arena = vec![0u8; i.arena_bytes];
    let mut out = vec![0f32; i.output_len];
    let s = unsafe {
        rt_run_i8(
            h,
            x.as_ptr(),
            x.len(),
            arena.as_mut_ptr(),
            arena.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(s, RtStatus::Ok);
    out.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_tflite_runs_through_the_c_api_as_its_safetensors_twin() {
    let (tfl, st) = (read(TFLITE), read(SAFETENSORS));
    let (mut a, mut b) = (RtModel::default(), RtModel::default());
    assert_eq!(load(&mut a, &tfl), RtStatus::Ok);
    assert_eq!(load(&mut b, &st), RtStatus::Ok);
    let (ia, ib) = (info(&a), info(&b));
    assert_eq!(
        (ia.input_h, ia.input_w, ia.input_c, ia.output_len, ia.macs),
        (ib.input_h, ib.input_w, ib.input_c, ib.output_len, ib.macs)
    );
    assert_eq!(
        (ia.input_scale, ia.input_zero_point),
        (ib.input_scale, ib.input_zero_point)
    );
    assert_eq!((ia.dtype, ia.task), (RtDtype::Int8, ib.task));
    let mut s = 0x1234_5678_9ABC_DEF1u64;
    let mut distinct = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let x: Vec<i8> = (0..ia.input_len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as i8
            })
            .collect();
        let (ya, yb) = (run_i8(&a, &x), run_i8(&b, &x));
        assert_eq!(ya, yb, "the .tflite and its safetensors twin differ");
        distinct.extend(ya);
    }
    assert!(distinct.len() > 10, "a degenerate output");
    for h in [&mut a, &mut b] {
        assert_eq!(unsafe { rt_model_release(h) }, RtStatus::Ok);
    }
}

#[test]
fn damaged_tflite_is_refused_with_a_model_status() {
    let tfl = read(TFLITE);
    let mut h = RtModel::default();
    // Cut short: the flatbuffer's offsets point past the end.
    assert_eq!(
        load(&mut h, &tfl[..tfl.len() / 2]),
        RtStatus::ModelContainer
    );
    assert_eq!(load(&mut h, &tfl[..12]), RtStatus::ModelContainer);
    // Byte damage anywhere: a status, and a loaded handle only if the runtime accepted the model.
    let mut s = 7u64;
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut b = tfl.clone();
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let i = (s % b.len() as u64) as usize;
        b[i] ^= 1 << ((s >> 40) % 8);
        match load(&mut h, &b) {
            RtStatus::Ok => ok += 1,
            RtStatus::ModelContainer | RtStatus::ModelGraph => refused += 1,
            other => panic!("byte {i}: {other:?}"),
        }
        assert_eq!(unsafe { rt_model_release(&mut h) }, RtStatus::Ok);
    }
    assert!(refused > 10, "{refused} refused, {ok} loaded");
}
