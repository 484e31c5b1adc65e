//! runtime-core on a Cortex-M4F (QEMU mps2-an386): landmarks and a few-shot episode on embedded
//! fixtures, plus a ResNet-8 inference for the footprint report, then landmarks and a few-shot
//! episode with the training pipeline's exported int8 models (`fixtures/tiny`). The program itself is
//! `app.rs`, shared with the host parity test; this file is the board: heap, arena, clock, log.
//!
//! Output protocol (defmt, decoded on the host by defmt-print): `RESULT tag idx [values]` lines
//! carry what the host test compares bit for bit (f32 as their u32 bit patterns);
//! `FOOTPRINT model.key value` lines carry the measurements `scripts/mcu.sh` reports; `DONE`
//! ends a good run. The program exits with semihosting code 0 only if everything ran.
#![no_std]
#![no_main]
// The hostile mode builds the board but not the parity program (`app`, `FIXTURES`, `Board`).
#![cfg_attr(any(feature = "hostile", feature = "kernel-check"), allow(dead_code))]

extern crate alloc;

use cortex_m_rt::entry;
use defmt_semihosting as _;

mod app;
mod fault;
mod heap;
#[cfg(feature = "hostile")]
mod hostile;
#[cfg(feature = "hostile")]
mod hostile_run;
mod icount;
#[cfg(feature = "kernel-check")]
mod kernel_check;
mod stack;

/// The one inference arena, shared by the models (loaded one at a time). Sized for the largest
/// plan embedded: ResNet-8's 48 KiB, else 8 KiB (the landmark model and the backbone plan 5 KiB,
/// the pipeline's two models 3 KiB; a study's ResNet-18 ×0.125 at 32 px through `MCU_PIPELINE_DIR`
/// 24 KiB);
/// `app::load` refuses a model whose plan does not fit. The embedded models are the board's
/// (`boards/<name>/models`, or `MCU_MODELS`), selected by build.rs as `cfg(mcu_model = "…")`.
const ARENA_BYTES: usize = if cfg!(any(mcu_model = "resnet8", mcu_model = "mlperf-resnet8")) {
    48 * 1024
} else if cfg!(mcu_pipeline_external) {
    32 * 1024
} else {
    8 * 1024
};

/// The fixture files, embedded in flash (`fixtures/README.md` says how they are made).
/// A model the build leaves out is not embedded: an empty slice, never read (`Board::PARTS`).
const FIXTURES: app::Fixtures<'static> = app::Fixtures {
    landmark: LANDMARK,
    backbone: BACKBONE,
    resnet8: RESNET8,
    images: IMAGES,
    tiny_landmark: TINY_LANDMARK,
    tiny_backbone: TINY_BACKBONE,
    tiny_inputs: TINY_INPUTS,
    tflite_landmark: TFLITE_LANDMARK,
    mlperf_resnet8: MLPERF_RESNET8,
    mlperf_inputs: MLPERF_INPUTS,
};
#[cfg(any(
    mcu_model = "landmark",
    mcu_model = "fewshot",
    mcu_model = "resnet8",
    mcu_model = "tflite-landmark"
))]
const IMAGES: &[u8] = include_bytes!("../../fixtures/mcu/images.bin");
#[cfg(not(any(
    mcu_model = "landmark",
    mcu_model = "fewshot",
    mcu_model = "resnet8",
    mcu_model = "tflite-landmark"
)))]
const IMAGES: &[u8] = &[];
#[cfg(mcu_model = "landmark")]
const LANDMARK: &[u8] = include_bytes!("../../fixtures/mcu/landmark.safetensors");
#[cfg(not(mcu_model = "landmark"))]
const LANDMARK: &[u8] = &[];
// Its `.tflite` twin (`export --tflite` of it), converted on the device.
#[cfg(mcu_model = "tflite-landmark")]
const TFLITE_LANDMARK: &[u8] = include_bytes!("../../fixtures/tflite/landmark.tflite");
#[cfg(not(mcu_model = "tflite-landmark"))]
const TFLITE_LANDMARK: &[u8] = &[];
#[cfg(mcu_model = "fewshot")]
const BACKBONE: &[u8] = include_bytes!("../../fixtures/mcu/backbone.safetensors");
#[cfg(not(mcu_model = "fewshot"))]
const BACKBONE: &[u8] = &[];
#[cfg(mcu_model = "resnet8")]
const RESNET8: &[u8] = include_bytes!("../../fixtures/mcu/resnet8.safetensors");
#[cfg(not(mcu_model = "resnet8"))]
const RESNET8: &[u8] = &[];
// The training pipeline's exports, as host-trainer's fixture command wrote them (not copied).
// (build.rs copies them into OUT_DIR: the fixtures' files, or MCU_PIPELINE_DIR's.)
#[cfg(mcu_model = "tiny-landmark")]
const TINY_LANDMARK: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pipeline-landmarks.safetensors"));
#[cfg(not(mcu_model = "tiny-landmark"))]
const TINY_LANDMARK: &[u8] = &[];
#[cfg(mcu_model = "tiny-fewshot")]
const TINY_BACKBONE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pipeline-backbone.safetensors"));
#[cfg(not(mcu_model = "tiny-fewshot"))]
const TINY_BACKBONE: &[u8] = &[];
#[cfg(any(mcu_model = "tiny-landmark", mcu_model = "tiny-fewshot"))]
const TINY_INPUTS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pipeline-inputs.bin"));
#[cfg(not(any(mcu_model = "tiny-landmark", mcu_model = "tiny-fewshot")))]
const TINY_INPUTS: &[u8] = &[];

// MLPerf Tiny's ResNet-8, converted on the host, and its inputs (build.rs copies them from
// `MCU_MLPERF_DIR`; the model is not in the repository).
#[cfg(mcu_model = "mlperf-resnet8")]
const MLPERF_RESNET8: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mlperf-resnet8.safetensors"));
#[cfg(not(mcu_model = "mlperf-resnet8"))]
const MLPERF_RESNET8: &[u8] = &[];
#[cfg(mcu_model = "mlperf-resnet8")]
const MLPERF_INPUTS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mlperf-inputs.bin"));
#[cfg(not(mcu_model = "mlperf-resnet8"))]
const MLPERF_INPUTS: &[u8] = &[];

struct Board;

impl app::Platform for Board {
    /// The parts whose model this build embeds (all of them on qemu-an386).
    const PARTS: app::Parts = app::Parts {
        landmark: cfg!(mcu_model = "landmark"),
        fewshot: cfg!(mcu_model = "fewshot"),
        resnet8: cfg!(mcu_model = "resnet8"),
        tiny_landmark: cfg!(mcu_model = "tiny-landmark"),
        tiny_fewshot: cfg!(mcu_model = "tiny-fewshot"),
        tflite_landmark: cfg!(mcu_model = "tflite-landmark"),
        mlperf_resnet8: cfg!(mcu_model = "mlperf-resnet8"),
    };
    fn now(&mut self) -> u64 {
        icount::now()
    }
    fn reset_heap_peak(&mut self) {
        heap::HEAP.reset_peak();
    }
    fn heap_peak(&mut self) -> u64 {
        heap::HEAP.peak() as u64
    }
    fn result(&mut self, prefix: &str, tag: &str, idx: usize, values: &[u32]) {
        defmt::info!(
            "RESULT {=str}{=str} {=usize} {=[?]}",
            prefix,
            tag,
            idx,
            values
        );
    }
    fn result_f32(&mut self, prefix: &str, tag: &str, idx: usize, values: &[f32]) {
        let mut buf = [0u32; 16];
        // Chunks keep the buffer small; the host joins nothing: it prints the same chunks.
        for (k, chunk) in values.chunks(buf.len()).enumerate() {
            for (b, x) in buf.iter_mut().zip(chunk) {
                *b = x.to_bits();
            }
            defmt::info!(
                "RESULT {=str}{=str} {=usize}.{=usize} {=[?]}",
                prefix,
                tag,
                idx,
                k,
                &buf[..chunk.len()]
            );
        }
    }
    fn footprint(&mut self, model: &str, key: &str, value: u64) {
        defmt::info!("FOOTPRINT {=str}.{=str} {=u64}", model, key, value);
    }
}

#[entry]
fn main() -> ! {
    stack::paint();
    heap::init();
    let Some(cp) = cortex_m::Peripherals::take() else {
        defmt::error!("core peripherals already taken");
        fault::exit_fail()
    };
    icount::start(cp.SYST);
    let per_tick_milli = icount::calibrate();
    defmt::info!(
        "FOOTPRINT icount.insns_per_tick_x1000 {=u64}",
        per_tick_milli
    );
    // Off by more than 0.1 %: not running under `-icount shift=0` on mps2-an386, so every
    // instruction count would be wrong. Refuse rather than report nonsense.
    if per_tick_milli.abs_diff(icount::INSNS_PER_TICK * 1000) > icount::INSNS_PER_TICK {
        defmt::error!("SysTick does not count instructions (run under qemu -icount shift=0)");
        fault::exit_fail()
    }

    static mut ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES];
    // SAFETY: the only reference to ARENA, taken once in a function that never returns.
    let arena: &mut [u8] = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    // The hostile mode (feature `hostile`) replaces the program: mutated models through the
    // C API (hostile_run.rs).
    #[cfg(feature = "hostile")]
    if !hostile_run::run(arena) {
        defmt::error!("FAILED hostile run");
        fault::exit_fail()
    }
    // The kernel-check mode (feature `kernel-check`) replaces it too: random convolutions, the
    // DSP kernel against the reference (kernel_check.rs).
    #[cfg(feature = "kernel-check")]
    {
        let _ = &arena;
        let t0 = icount::now();
        let s = kernel_check::run(|case| defmt::error!("KERNEL MISMATCH case {=u32}", case));
        defmt::info!(
            "KERNELS cases {=u32} dsp {=u32} mismatches {=u32} add_cases {=u32} add_mismatches {=u32} checksum {=u32} insns {=u64}",
            s.cases,
            s.dsp,
            s.mismatches,
            s.add_cases,
            s.add_mismatches,
            s.checksum,
            icount::now() - t0
        );
        if s.mismatches + s.add_mismatches > 0 {
            fault::exit_fail()
        }
    }
    #[cfg(not(any(feature = "hostile", feature = "kernel-check")))]
    if let Err(e) = app::run(&mut Board, FIXTURES, arena) {
        defmt::error!("FAILED {}", defmt::Debug2Format(&e));
        fault::exit_fail()
    }

    defmt::info!(
        "FOOTPRINT board.heap_capacity_bytes {=usize}",
        heap::HEAP_BYTES
    );
    defmt::info!("FOOTPRINT board.arena_capacity_bytes {=usize}", ARENA_BYTES);
    defmt::info!("FOOTPRINT board.peak_stack_bytes {=usize}", stack::peak());
    defmt::info!(
        "FOOTPRINT board.stack_capacity_bytes {=usize}",
        stack::capacity()
    );
    defmt::info!("DONE");
    // Hostile mode: the last thing is a deliberate fault, to show the HardFault handler reports.
    #[cfg(feature = "hostile")]
    fault::self_test();
    #[cfg(not(feature = "hostile"))]
    fault::exit_ok()
}
