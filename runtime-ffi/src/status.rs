//! Status codes: what every entry point returns, and the sentence [`rt_error_message`] gives for
//! each. One code per thing the caller can fix differently; runtime-core's finer graph errors
//! (line numbers, which key) need a host to read them (`runtime-cli inspect FILE`).

use core::ffi::c_char;

use runtime_core::heads::HeadError;
use runtime_core::{ModelError, RunError};

/// Result of every `rt_` call that can fail. `RT_STATUS_OK` (0) is success; everything else
/// is an error and leaves the output buffers in an unspecified state (the handles keep their
/// previous state). `rt_error_message` turns a code into a sentence.
///
/// A 32-bit integer in C (`int32_t` with named constants; an enum on `int32_t` in C23 and C++),
/// never a plain C enum: a plain enum's size depends on `-fshort-enums`, which arm-none-eabi-gcc
/// enables by default (1-byte enums) and many firmware builds turn off, so the library and the
/// firmware could silently disagree. `repr(i32)` is 4 bytes on every target with every flag.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtStatus {
    /// Success.
    Ok = 0,
    /// A pointer argument is NULL.
    NullPointer = 1,
    /// A pointer is not aligned for its element type.
    Misaligned = 2,
    /// Two buffers that must be distinct overlap.
    Overlap = 3,
    /// A length is too large to describe a buffer in this address space.
    BadLength = 4,
    /// The model handle has not been loaded (or was released).
    NotLoaded = 5,
    /// `rt_model_load` or a head fit on a handle that is still in use.
    HandleInUse = 6,
    /// The model bytes are not a valid safetensors container.
    ModelContainer = 7,
    /// The safetensors file has no `rt.graph` metadata entry.
    ModelNoGraph = 8,
    /// The model's graph is invalid or unsupported.
    ModelGraph = 9,
    /// The arena is smaller than `rt_model_info.arena_bytes`.
    ArenaTooSmall = 10,
    /// The input length is not the model's `input_len`.
    InputLength = 11,
    /// The output length is not what the call produces.
    OutputLength = 12,
    /// `rt_run_i8` on an f32 model.
    WrongDtype = 13,
    /// Landmark decoding on a model whose task is not landmarks.
    WrongTask = 14,
    /// The head has not been fitted (or was released).
    HeadNotFitted = 15,
    /// The support set is empty, or feature and label counts disagree.
    HeadShape = 16,
    /// A support label is `>= n_way`, or a class has no support sample.
    HeadLabel = 17,
    /// Too many support samples, or an SGD batch of 0.
    HeadCapacity = 18,
    /// A runtime bug (an inconsistency runtime-core reports instead of panicking).
    Internal = 19,
}

/// Number of status codes (codes are `0..RT_STATUS_COUNT`).
pub const RT_STATUS_COUNT: i32 = 20;

impl RtStatus {
    /// The message of this code: NUL-terminated, static. Kept next to the codes so that adding a
    /// code without a message does not compile.
    fn message(self) -> &'static core::ffi::CStr {
        match self {
            RtStatus::Ok => c"success",
            RtStatus::NullPointer => {
                c"a pointer argument is NULL: every pointer argument of the rt_ API is required; \
                  pass a valid buffer or handle"
            }
            RtStatus::Misaligned => {
                c"a pointer is not aligned for its element type (float buffers need 4-byte \
                  alignment): pass an array declared with that element type, not a cast byte \
                  pointer"
            }
            RtStatus::Overlap => {
                c"buffers overlap: the input, the arena, the output and the model bytes must be \
                  separate memory regions"
            }
            RtStatus::BadLength => {
                c"a length is larger than any buffer can be in this address space: pass the \
                  element count of the buffer, not garbage"
            }
            RtStatus::NotLoaded => {
                c"the model handle is not loaded: call rt_model_load and check it returns \
                  RT_STATUS_OK (zero-initialise handles so that this is detected)"
            }
            RtStatus::HandleInUse => {
                c"the handle already holds a model or head: call rt_model_release or \
                  rt_head_release before loading or fitting into it again"
            }
            RtStatus::ModelContainer => {
                c"the model bytes are not a valid safetensors file (bad header, offsets or \
                  dtypes, or truncated): check the whole file was flashed or read, with its exact \
                  length"
            }
            RtStatus::ModelNoGraph => {
                c"the safetensors file has no rt.graph entry: it is not a runtime-core model; \
                  export it with host-trainer (export) or ModelBuilder"
            }
            RtStatus::ModelGraph => {
                c"the model's graph is invalid or uses something this runtime does not support: \
                  run `runtime-cli inspect FILE` on a host to see the line and the reason, and \
                  re-export with a matching host-trainer"
            }
            RtStatus::ArenaTooSmall => {
                c"the arena is too small: give at least rt_model_info.arena_bytes bytes"
            }
            RtStatus::InputLength => {
                c"wrong input length: the image must hold exactly rt_model_info.input_len values \
                  (input_h * input_w * input_c, HWC order, already at the model's input size)"
            }
            RtStatus::OutputLength => {
                c"wrong output length: model outputs take rt_model_info.output_len floats, \
                  landmark decoding RT_LANDMARKS points, head scores at least n_way floats"
            }
            RtStatus::WrongDtype => {
                c"rt_run_i8 needs an int8 model: for f32 models feed RGB8 pixels with rt_run_u8"
            }
            RtStatus::WrongTask => {
                c"this model does not output landmarks (rt_model_info.task is RT_TASK_FEATURES): \
                  decode landmarks only from a landmark model's output"
            }
            RtStatus::HeadNotFitted => {
                c"the head is not fitted: call rt_head_fit_linear or rt_head_fit_centroid and \
                  check it returns RT_STATUS_OK (zero-initialise heads so that this is detected)"
            }
            RtStatus::HeadShape => {
                c"head shapes disagree: features_len must equal n_samples * dim with n_samples, \
                  n_way and dim all >= 1, and a query feature must have dim values"
            }
            RtStatus::HeadLabel => {
                c"bad support labels: every label must be < n_way and every class 0..n_way-1 \
                  needs at least one support sample"
            }
            RtStatus::HeadCapacity => {
                c"too many support samples for the linear head (at most 65535), or an SGD batch \
                  of 0: use fewer shots or a batch >= 1"
            }
            RtStatus::Internal => {
                c"internal runtime error: this is a runtime-core bug; please report it with the \
                  model file"
            }
        }
    }

    /// The code for an `i32`, if it is one (C may pass any integer).
    fn from_code(code: i32) -> Option<RtStatus> {
        use RtStatus::*;
        const ALL: [RtStatus; RT_STATUS_COUNT as usize] = [
            Ok,
            NullPointer,
            Misaligned,
            Overlap,
            BadLength,
            NotLoaded,
            HandleInUse,
            ModelContainer,
            ModelNoGraph,
            ModelGraph,
            ArenaTooSmall,
            InputLength,
            OutputLength,
            WrongDtype,
            WrongTask,
            HeadNotFitted,
            HeadShape,
            HeadLabel,
            HeadCapacity,
            Internal,
        ];
        ALL.get(usize::try_from(code).ok()?).copied()
    }
}

impl From<ModelError> for RtStatus {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Container => RtStatus::ModelContainer,
            ModelError::MissingGraph => RtStatus::ModelNoGraph,
            // `Graph` and any later variant: the file is a model this runtime refuses.
            _ => RtStatus::ModelGraph,
        }
    }
}

impl From<RunError> for RtStatus {
    fn from(e: RunError) -> Self {
        match e {
            RunError::ArenaTooSmall { .. } => RtStatus::ArenaTooSmall,
            RunError::InputLen { .. } => RtStatus::InputLength,
            RunError::OutputLen { .. } => RtStatus::OutputLength,
            RunError::WrongDtype => RtStatus::WrongDtype,
            _ => RtStatus::Internal,
        }
    }
}

impl From<HeadError> for RtStatus {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Shape => RtStatus::HeadShape,
            HeadError::Label => RtStatus::HeadLabel,
            HeadError::Capacity => RtStatus::HeadCapacity,
            _ => RtStatus::Internal,
        }
    }
}

/// The message for a status code: a static, NUL-terminated sentence saying what is wrong and
/// what to do. Never NULL; an integer that is no status code gets a message saying so. The
/// parameter is an `int32_t`, not `rt_status`, because C may pass any integer and an invalid
/// enum value would be undefined behaviour on the Rust side.
#[no_mangle]
pub extern "C" fn rt_error_message(code: i32) -> *const c_char {
    match RtStatus::from_code(code) {
        Some(s) => s.message().as_ptr(),
        None => c"unknown status code: not a value rt_ functions return (codes are 0 to \
              RT_STATUS_COUNT - 1)"
            .as_ptr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_every_message_is_a_sentence() {
        for code in 0..RT_STATUS_COUNT {
            let s = RtStatus::from_code(code).unwrap();
            assert_eq!(s as i32, code);
            let m = s.message().to_str().unwrap();
            if s != RtStatus::Ok {
                assert!(m.len() > 40 && m.contains(' '), "{s:?}: {m}");
                assert!(!m.contains("  ") && !m.contains('\n'), "{s:?}: {m:?}");
            }
        }
        assert_eq!(RtStatus::from_code(RT_STATUS_COUNT), None);
        assert_eq!(RtStatus::from_code(-1), None);
    }
}
