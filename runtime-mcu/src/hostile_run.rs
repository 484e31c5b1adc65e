//! The firmware's hostile mode (feature `hostile`, issue #33 item 5): every embedded model, cut
//! and mutated by `hostile.rs` (the same cases the host test makes), goes through the C API as C
//! firmware would call it. Logged per model (`HOSTILE <model> …`, compared with the host by
//! `tests/tests/mcu_parity.rs`): cases, errors, ran, undocumented codes and the status
//! histogram of each call; then the heap and stack high-water marks over all cases and the RAM
//! bounds they must stay inside. A panic or a HardFault ends the run through `fault.rs` with a
//! report and a non-zero exit, which is what the host test looks for.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::hostile::{self, DEVICE_IMAGE_BYTES, DEVICE_OUT_FLOATS, MAX_GROWTH};
use crate::{heap, icount, stack};

/// The embedded models (MCU_MODELS selects them; the others are empty and skipped).
const MODELS: [(&str, &[u8]); 5] = [
    ("landmark", crate::LANDMARK),
    ("backbone", crate::BACKBONE),
    ("resnet8", crate::RESNET8),
    ("tiny-landmark", crate::TINY_LANDMARK),
    ("tiny-backbone", crate::TINY_BACKBONE),
];

/// The case buffer: the largest embedded model plus what a mutation may add. In RAM (.bss),
/// where C firmware would receive a model over a link before loading it.
const CASE_BYTES: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < MODELS.len() {
        if MODELS[i].1.len() > max {
            max = MODELS[i].1.len();
        }
        i += 1;
    }
    max + MAX_GROWTH
};

/// Index into [`MODELS`] of the model being run (`usize::MAX`: none yet), for [`report_case`].
static CURRENT_MODEL: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Logs the model and case being run, if any: called by the panic and HardFault handlers.
pub fn report_case() {
    if let Some((name, _)) = MODELS.get(CURRENT_MODEL.load(Ordering::Relaxed)) {
        let k = hostile::CURRENT_CASE.load(Ordering::Relaxed);
        defmt::error!("HOSTILE fault in {=str} case {=usize}", name, k);
    }
}

/// Runs every case of every embedded model; false if a case did not fit the case buffer or
/// a call returned an undocumented code (the caller exits non-zero).
pub fn run(arena: &mut [u8]) -> bool {
    static mut CASE: [u8; CASE_BYTES] = [0; CASE_BYTES];
    static mut IMAGE: [u8; DEVICE_IMAGE_BYTES] = [0; DEVICE_IMAGE_BYTES];
    static mut INPUT: [i8; DEVICE_IMAGE_BYTES] = [0; DEVICE_IMAGE_BYTES];
    static mut OUT: [f32; DEVICE_OUT_FLOATS] = [0.0; DEVICE_OUT_FLOATS];
    // SAFETY: the only references to these statics, taken once (main calls `run` once).
    let (case, image, input, out) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(CASE),
            &mut *core::ptr::addr_of_mut!(IMAGE),
            &mut *core::ptr::addr_of_mut!(INPUT),
            &mut *core::ptr::addr_of_mut!(OUT),
        )
    };
    hostile::fill_inputs(image, input);
    heap::HEAP.reset_peak();
    let t0 = icount::now();
    let mut good = true;
    for (i, (name, base)) in MODELS.into_iter().enumerate() {
        if base.is_empty() {
            continue;
        }
        CURRENT_MODEL.store(i, Ordering::Relaxed);
        let random = hostile::DEVICE_RANDOM_CASES;
        let Some(c) = hostile::run_model(name, base, random, case, arena, image, input, out) else {
            defmt::error!("HOSTILE {=str}: a case does not fit the case buffer", name);
            return false;
        };
        defmt::info!(
            "HOSTILE {=str} cases {=u32} errors {=u32} ran {=u32} undocumented {=u32}",
            name,
            c.cases,
            c.errors,
            c.ran,
            c.undocumented
        );
        for (call, h) in [
            ("load", &c.load),
            ("run_u8", &c.run_u8),
            ("run_i8", &c.run_i8),
            ("landmarks", &c.landmarks),
        ] {
            defmt::info!("HOSTILE {=str} {=str} {=[?]}", name, call, &h[..]);
        }
        good &= c.undocumented == 0;
    }
    CURRENT_MODEL.store(usize::MAX, Ordering::Relaxed);
    let (static_end, ram_top) = stack::bounds();
    defmt::info!("FOOTPRINT hostile.insns {=u64}", icount::now() - t0);
    defmt::info!(
        "FOOTPRINT hostile.heap_peak_bytes {=usize}",
        heap::HEAP.peak()
    );
    defmt::info!("FOOTPRINT hostile.case_buffer_bytes {=usize}", CASE_BYTES);
    defmt::info!("FOOTPRINT board.static_ram_end {=usize}", static_end);
    defmt::info!("FOOTPRINT board.ram_top {=usize}", ram_top);
    good
}
