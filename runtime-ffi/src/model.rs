//! Models: load into a caller-owned handle, describe, run in a caller-given arena, decode
//! landmarks.
//!
//! The handle is a fixed-size struct the C side declares (`rt_model m = {0};`), so firmware can
//! place it in `.bss` like any other driver state. It holds runtime-core's [`Model`], which
//! borrows the model bytes (weights are never copied, so a model in flash stays in flash) and owns
//! a few small heap lists (tensor descriptions, ops, arena offsets) allocated once by
//! `Model::parse`.

use core::mem::{align_of, size_of};

use runtime_core::heads::landmarks::{self, N_LANDMARKS};
use runtime_core::{Dtype, Model, Task};

use crate::{byte_range, check_disjoint, check_ptr, slice_mut, slice_ref, status, RtStatus};

/// Size of `rt_model`'s opaque storage in 8-byte words: room for runtime-core's `Model` on 32-
/// and 64-bit targets (checked at compile time), with slack so that the C ABI does not change
/// whenever `Model` grows by a field.
pub const RT_MODEL_STORAGE_WORDS: usize = 96;

/// Number of landmarks a landmark model outputs (left eye, right eye, nose, left and right mouth
/// corners, in that order).
pub const RT_LANDMARKS: usize = 5;
const _: () = assert!(RT_LANDMARKS == N_LANDMARKS);

/// `magic` of a loaded handle ("RTM1"); anything else means not loaded.
const MODEL_MAGIC: u32 = 0x5254_4d31;

/// A model handle, in memory the caller owns. Zero-initialise it (`rt_model m = {0};`), load it
/// with `rt_model_load`, release it with `rt_model_release`. Do not copy a loaded handle (both
/// copies would own the same heap blocks): pass pointers to it.
#[repr(C)]
pub struct RtModel {
    /// Private: `"RTM1"` while loaded, 0 otherwise.
    magic: u32,
    /// Private: runtime-core's model.
    storage: [u64; RT_MODEL_STORAGE_WORDS],
}

/// A zeroed, not loaded handle (what `rt_model m = {0};` gives in C).
impl Default for RtModel {
    fn default() -> Self {
        RtModel {
            magic: 0,
            storage: [0; RT_MODEL_STORAGE_WORDS],
        }
    }
}

/// What lives in [`RtModel::storage`]: the parsed model and the bytes it borrows (kept for the
/// overlap checks). `'static` stands for "until `rt_model_release`", the C caller's contract.
/// For a `.tflite`, `model` borrows `_converted`, the runtime model file made from it on the heap;
/// fields drop in order, so the model goes before the bytes it borrows.
struct Loaded {
    bytes: &'static [u8],
    model: Model<'static>,
    /// Owned, never read: only kept alive (and freed after `model`).
    _converted: Option<alloc::boxed::Box<[u8]>>,
}

const _: () = assert!(size_of::<Loaded>() <= size_of::<[u64; RT_MODEL_STORAGE_WORDS]>());
const _: () = assert!(align_of::<Loaded>() <= align_of::<u64>());

/// Element type of a model's activations (and so of `rt_run_i8`'s input). `int32_t` in C, like
/// `rt_status` (see there why not a C enum).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtDtype {
    /// TFLite-style int8: feed `rt_run_u8` (RGB8) or `rt_run_i8` (quantised input).
    Int8 = 0,
    /// f32: feed `rt_run_u8`.
    F32 = 1,
}

/// What a model's output means. `int32_t` in C, like `rt_status`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtTask {
    /// A feature vector (embedding) for the few-shot heads.
    Features = 0,
    /// 10 values `x0, y0, ..., x4, y4` in [0, 1] of the input; `rt_landmarks` decodes them.
    Landmarks = 1,
}

/// Static facts about a loaded model (`rt_model_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtModelInfo {
    /// Bytes the arena given to `rt_run_*` must have (any alignment).
    pub arena_bytes: usize,
    /// Input height in pixels.
    pub input_h: usize,
    /// Input width in pixels.
    pub input_w: usize,
    /// Input channels (3 for RGB models).
    pub input_c: usize,
    /// Values of one input image, `input_h * input_w * input_c` (HWC order).
    pub input_len: usize,
    /// Activation dtype.
    pub dtype: RtDtype,
    /// Input quantisation of int8 models, for callers of `rt_run_i8` that quantise themselves:
    /// `q = clamp(round_half_away(x / input_scale) + input_zero_point, -128, 127)` for the
    /// normalised value `x = (pixel / 255 - mean[c]) / std[c]`. 1 and 0 for f32 models.
    pub input_scale: f32,
    /// See `input_scale`.
    pub input_zero_point: i32,
    /// Floats one run writes (the feature dimension, or 10 for landmark models).
    pub output_len: usize,
    /// What the output means.
    pub task: RtTask,
    /// Bytes of parameters the graph reads from the model bytes (they stay where they are).
    pub weight_bytes: usize,
    /// Multiply-accumulates of one run (conv and fully connected layers).
    pub macs: u64,
}

/// A landmark in pixels of the model input (x right, y down; pixel `i` covers `[i, i+1)`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RtPoint {
    pub x: f32,
    pub y: f32,
}

/// The loaded model behind a handle pointer, or why there is none.
///
/// # Safety
/// `m`, if non-NULL and aligned, must point to an `rt_model` (any bytes).
unsafe fn loaded<'m>(m: *const RtModel) -> Result<&'m Loaded, RtStatus> {
    check_ptr(m, 1)?;
    // SAFETY: non-NULL and aligned; every bit pattern is a valid `RtModel` (integers only).
    let m = unsafe { &*m };
    if m.magic != MODEL_MAGIC {
        return Err(RtStatus::NotLoaded);
    }
    // SAFETY: the magic is only set by `rt_model_load` after writing a `Loaded` there (size and
    // alignment checked at compile time), and cleared by `rt_model_release` before dropping it.
    Ok(unsafe { &*(m.storage.as_ptr() as *const Loaded) })
}

/// Parses and validates a model and stores it in `*model`.
///
/// `bytes` (a `.safetensors` file exported by host-trainer, e.g. in flash) must stay valid and
/// unchanged until `rt_model_release`: the weights are read from it on every run, never copied.
/// An int8 `.tflite` (recognised by its `TFL3` identifier) loads too: it is converted once into
/// the runtime's own model file on the heap (`runtime_core::tflite`, the weights copied, so it
/// takes about the file's size in RAM until `rt_model_release`), then validated like any model;
/// a malformed flatbuffer is `RT_STATUS_MODEL_CONTAINER`, an op or setting this runtime does not
/// run `RT_STATUS_MODEL_GRAPH`.
/// `*model` must be zero-initialised or released (else `RT_STATUS_HANDLE_IN_USE`); on failure it
/// stays not loaded.
///
/// Allocates (the only call besides `rt_head_fit_*` that does): the parsed graph's lists, a few
/// bytes per op, kept until `rt_model_release`; and, freed before returning, the safetensors
/// header map and the arena planner's scratch. Heap use grows with the number of ops and
/// parameter tensors, not with the weights: runtime-mcu's footprint report measures peaks of
/// 9 to 48 KB for its fixture models (MLPerf-Tiny ResNet-8: 21 KB), most of it freed on return.
///
/// # Safety
/// `bytes` must point to `bytes_len` readable bytes that outlive the handle; `model` must point
/// to an `rt_model` not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn rt_model_load(
    model: *mut RtModel,
    bytes: *const u8,
    bytes_len: usize,
) -> RtStatus {
    status(|| {
        check_ptr(model, 1)?;
        check_ptr(bytes, bytes_len)?;
        check_disjoint(&[byte_range(bytes, bytes_len), byte_range(model, 1)])?;
        // SAFETY: non-NULL, aligned, not overlapping `bytes`, and any bit pattern is a valid
        // `RtModel`.
        let handle = unsafe { &mut *model };
        if handle.magic == MODEL_MAGIC {
            return Err(RtStatus::HandleInUse);
        }
        handle.magic = 0;
        // SAFETY: the caller keeps the bytes alive and unchanged until release (documented).
        let bytes: &'static [u8] = unsafe { slice_ref(bytes, bytes_len)? };
        let converted = if runtime_core::tflite::is_tflite(bytes) {
            let file = runtime_core::tflite::to_model_bytes(bytes).map_err(tflite_status)?;
            Some(file.into_boxed_slice())
        } else {
            None
        };
        // SAFETY: a converted file lives in `Loaded::_converted`, a heap block that does not move
        // when the box does and is freed only after the model borrowing it (field order).
        let source: &'static [u8] = match &converted {
            Some(c) => unsafe { core::slice::from_raw_parts(c.as_ptr(), c.len()) },
            None => bytes,
        };
        let parsed = Model::parse(source)?;
        // SAFETY: the storage is large and aligned enough (compile-time checks above) and holds
        // no live `Loaded` (magic was not set), so nothing is overwritten without a drop.
        unsafe {
            core::ptr::write(
                handle.storage.as_mut_ptr() as *mut Loaded,
                Loaded {
                    bytes,
                    model: parsed,
                    _converted: converted,
                },
            )
        };
        handle.magic = MODEL_MAGIC;
        Ok(())
    })
}

/// A `.tflite` that does not convert: malformed bytes are a malformed container, anything else
/// (an op, a setting or a float model this runtime does not run) a graph it refuses.
fn tflite_status(e: runtime_core::tflite::TfliteError) -> RtStatus {
    match e.kind {
        runtime_core::tflite::TfliteErrorKind::Malformed(_) => RtStatus::ModelContainer,
        _ => RtStatus::ModelGraph,
    }
}

/// Frees what `rt_model_load` allocated and marks the handle not loaded. Releasing a handle that
/// is not loaded (zeroed, already released, or whose load failed) does nothing and returns
/// `RT_STATUS_OK`, so error paths can release unconditionally. The model bytes may be freed
/// after this.
///
/// # Safety
/// `model` must point to an `rt_model` that no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn rt_model_release(model: *mut RtModel) -> RtStatus {
    status(|| {
        check_ptr(model, 1)?;
        // SAFETY: non-NULL, aligned, any bit pattern is valid.
        let handle = unsafe { &mut *model };
        if handle.magic != MODEL_MAGIC {
            return Ok(());
        }
        handle.magic = 0;
        // SAFETY: the magic said a `Loaded` lives there; it is cleared first, so it is dropped
        // exactly once.
        unsafe { core::ptr::drop_in_place(handle.storage.as_mut_ptr() as *mut Loaded) };
        Ok(())
    })
}

/// Describes a loaded model: arena size, input shape, dtype and quantisation, output length,
/// task. Does not allocate.
///
/// # Safety
/// `model` and `info` must be valid pointers (or NULL, which is reported).
#[no_mangle]
pub unsafe extern "C" fn rt_model_get_info(
    model: *const RtModel,
    info: *mut RtModelInfo,
) -> RtStatus {
    status(|| {
        // SAFETY: `loaded` checks the pointer; the handle contract is the caller's.
        let m = &unsafe { loaded(model)? }.model;
        check_ptr(info, 1)?;
        check_disjoint(&[byte_range(info, 1), byte_range(model, 1)])?;
        // SAFETY: checked for NULL, alignment and overlap; the caller gives a writable
        // `rt_model_info`.
        let info = unsafe { slice_mut(info, 1)? };
        let [input_h, input_w, input_c] = m.input_shape();
        let d = m.input_desc();
        info[0] = RtModelInfo {
            arena_bytes: m.arena_bytes(),
            input_h,
            input_w,
            input_c,
            input_len: m.input_len(),
            dtype: match m.dtype() {
                Dtype::Int8 => RtDtype::Int8,
                Dtype::F32 => RtDtype::F32,
            },
            input_scale: d.scale,
            input_zero_point: d.zp,
            output_len: m.output_len(),
            task: match m.task() {
                Task::Features => RtTask::Features,
                Task::Landmarks => RtTask::Landmarks,
            },
            weight_bytes: m.weight_bytes(),
            macs: m.macs(),
        };
        Ok(())
    })
}

/// Runs the model on an 8-bit image and writes its real-valued output (features, or landmark
/// values for `rt_landmarks`).
///
/// `image`: `input_len` bytes, HWC (RGB interleaved, row by row), already at the model's input
/// size; normalised with the model's own mean/std and quantised into the arena
/// (runtime-core's `Model::preprocess_rgb8`, the MCU's path). `arena`: at least `arena_bytes`
/// bytes of scratch, any alignment, contents need not be initialised; one arena per concurrent
/// run. `out`: exactly `output_len` floats. Works for int8 and f32 models. Does not allocate.
///
/// # Safety
/// Each pointer must point to the number of elements its length says; `arena` and `out` must not
/// be accessed by anyone else during the call (overlaps between the buffers are reported).
#[no_mangle]
pub unsafe extern "C" fn rt_run_u8(
    model: *const RtModel,
    image: *const u8,
    image_len: usize,
    arena: *mut u8,
    arena_len: usize,
    out: *mut f32,
    out_len: usize,
) -> RtStatus {
    status(|| {
        // SAFETY: the pointer contracts are the caller's; `run_buffers` checks what it can.
        let (m, image, arena, out) =
            unsafe { run_buffers(model, image, image_len, arena, arena_len, out, out_len)? };
        m.preprocess_rgb8(image, arena)?;
        m.run(arena, out)?;
        Ok(())
    })
}

/// Runs an int8 model on an already quantised input (`input_len` values, HWC; quantise with
/// `rt_model_info`'s `input_scale` / `input_zero_point`) and writes the dequantised output.
/// `RT_STATUS_WRONG_DTYPE` for f32 models. Arena and output as for `rt_run_u8`. Does not
/// allocate.
///
/// # Safety
/// As for `rt_run_u8`.
#[no_mangle]
pub unsafe extern "C" fn rt_run_i8(
    model: *const RtModel,
    input: *const i8,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    out: *mut f32,
    out_len: usize,
) -> RtStatus {
    status(|| {
        // SAFETY: as in `rt_run_u8`.
        let (m, input, arena, out) =
            unsafe { run_buffers(model, input, input_len, arena, arena_len, out, out_len)? };
        m.run_int8(input, arena, out)?;
        Ok(())
    })
}

/// The checks and borrows both `rt_run_*` share: a loaded model, valid non-overlapping buffers
/// (none of them inside the model bytes or the handle), and an output of the model's length
/// (checked before any work is done).
///
/// # Safety
/// As for `rt_run_u8`.
#[allow(clippy::type_complexity)]
unsafe fn run_buffers<'a, T>(
    model: *const RtModel,
    input: *const T,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    out: *mut f32,
    out_len: usize,
) -> Result<(&'a Model<'static>, &'a [T], &'a mut [u8], &'a mut [f32]), RtStatus> {
    // SAFETY: `loaded` checks the pointer; the handle contract is the caller's.
    let l = unsafe { loaded(model)? };
    check_ptr(input, input_len)?;
    check_ptr(arena, arena_len)?;
    check_ptr(out, out_len)?;
    check_disjoint(&[
        byte_range(input, input_len),
        byte_range(arena, arena_len),
        byte_range(out, out_len),
        byte_range(l.bytes.as_ptr(), l.bytes.len()),
        byte_range(model, 1),
    ])?;
    if out_len != l.model.output_len() {
        return Err(RtStatus::OutputLength);
    }
    // SAFETY: checked above (NULL, alignment, length, pairwise disjoint); validity is the
    // caller's contract.
    unsafe {
        Ok((
            &l.model,
            slice_ref(input, input_len)?,
            slice_mut(arena, arena_len)?,
            slice_mut(out, out_len)?,
        ))
    }
}

/// Decodes a landmark model's output (`output_len` = 10 floats from `rt_run_*`) into
/// `RT_LANDMARKS` points in pixels of the model input (`x * input_w`, `y * input_h`; to map them
/// onto a frame that was resized to the input, scale by `frame_w / input_w` and
/// `frame_h / input_h`). Order: left eye, right eye, nose, left mouth corner, right mouth corner.
/// `RT_STATUS_WRONG_TASK` for features models. Does not allocate.
///
/// # Safety
/// `out` must point to `out_len` floats and `points` to `n_points` writable `rt_point`s.
#[no_mangle]
pub unsafe extern "C" fn rt_landmarks(
    model: *const RtModel,
    out: *const f32,
    out_len: usize,
    points: *mut RtPoint,
    n_points: usize,
) -> RtStatus {
    status(|| {
        // SAFETY: `loaded` checks the pointer; the handle contract is the caller's.
        let m = &unsafe { loaded(model)? }.model;
        check_ptr(out, out_len)?;
        check_ptr(points, n_points)?;
        check_disjoint(&[byte_range(out, out_len), byte_range(points, n_points)])?;
        if m.task() != Task::Landmarks {
            return Err(RtStatus::WrongTask);
        }
        if out_len != m.output_len() || n_points != RT_LANDMARKS {
            return Err(RtStatus::OutputLength);
        }
        // SAFETY: checked above; validity is the caller's contract.
        let (out, points) = unsafe { (slice_ref(out, out_len)?, slice_mut(points, n_points)?) };
        let [h, w, _] = m.input_shape();
        let decoded = landmarks::decode(out, w, h).ok_or(RtStatus::OutputLength)?;
        for (p, d) in points.iter_mut().zip(decoded) {
            *p = RtPoint { x: d.x, y: d.y };
        }
        Ok(())
    })
}
