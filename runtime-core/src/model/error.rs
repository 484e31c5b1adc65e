//! Typed errors for loading and running a model. They are `Copy` and carry the 1-based line of
//! the graph text (`FORMAT.md`) at fault, so a CLI can print "model.safetensors: graph line 7: …".

use core::fmt;

/// Why a model file was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModelError {
    /// The safetensors container itself is malformed (header, offsets, dtypes, lengths).
    Container,
    /// The `rt.graph` metadata entry is missing.
    MissingGraph,
    /// The graph text is wrong at `line` (1-based).
    Graph { line: u32, kind: GraphError },
}

/// What is wrong with a graph line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GraphError {
    /// The first line is not `rtgraph <n>` with a supported `n`.
    Version,
    /// A directive/op name the runtime does not know.
    UnknownOp,
    /// A line with more tokens than any op takes, or a bare flag other than `relu`.
    BadToken,
    /// A `key=` that the op does not take.
    UnknownKey,
    /// A key given twice.
    DuplicateKey,
    /// A required key is absent.
    MissingKey(&'static str),
    /// A value that is not a number / list of the expected form.
    BadValue(&'static str),
    /// A header directive (`dtype`, `task`, `input`, `output`) missing, repeated or misplaced.
    Header,
    /// Tensor id not declared in order, out of range, declared twice, or too many.
    TensorId,
    /// An op reads a tensor that no earlier op (nor the input) produced.
    NotYetComputed,
    /// A tensor is produced twice, or the input is overwritten.
    ProducedTwice,
    /// A declared tensor that is never produced (nor the input).
    NeverProduced,
    /// A named parameter tensor is absent from the file.
    MissingTensor,
    /// A parameter tensor has the wrong dtype for this model (`i8`/`f32`) or role.
    Dtype,
    /// A parameter or activation shape does not match what the connected ops imply.
    Shape,
    /// A dimension is zero.
    ZeroDim,
    /// A size exceeds the runtime's limits or overflows.
    TooLarge,
    /// An int8 weight is −128 (weights are symmetric in [−127, 127]).
    WeightRange,
    /// A bias beyond ±2³⁰ (the i32 accumulator bound).
    BiasRange,
    /// A requantisation multiplier < 0 (must be in [0, 2³¹−1]).
    MultiplierRange,
    /// A shift outside [−31, 30] (or > 0 where the op requires a multiplier ≤ 1).
    ShiftRange,
    /// A zero point outside [−128, 127].
    ZeroPointRange,
    /// A scale, std, alpha or mean that is not finite (or a scale/std ≤ 0).
    ScaleRange,
    /// An f32 parameter that is NaN or infinite.
    NonFinite,
    /// Padding ≥ kernel size, or a window larger than the padded input.
    Window,
    /// The graph has no op, or its output is not computed.
    Output,
    /// The max pool output's scale/zero point differ from its input's (it must not requantise).
    PoolQuant,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::MissingKey(k) => write!(f, "missing key `{k}`"),
            GraphError::BadValue(k) => write!(f, "bad value for `{k}`"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Container => f.write_str("malformed safetensors container"),
            ModelError::MissingGraph => {
                f.write_str("no `rt.graph` entry in the safetensors metadata")
            }
            ModelError::Graph { line, kind } => write!(f, "graph line {line}: {kind}"),
        }
    }
}

/// Why an inference call failed (wrong buffers or wrong entry point; never the model itself,
/// which was validated at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RunError {
    /// The arena is smaller than [`crate::Model::arena_bytes`].
    ArenaTooSmall { need: usize, got: usize },
    /// An input buffer of the wrong length.
    InputLen { expected: usize, got: usize },
    /// An output buffer of the wrong length.
    OutputLen { expected: usize, got: usize },
    /// An int8 entry point on an f32 model or vice versa.
    WrongDtype,
    /// Internal inconsistency (a planner or kernel bug); reported instead of panicking.
    Internal,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::ArenaTooSmall { need, got } => {
                write!(f, "arena of {got} bytes, model needs {need}")
            }
            RunError::InputLen { expected, got } => {
                write!(f, "input of {got} values, model takes {expected}")
            }
            RunError::OutputLen { expected, got } => {
                write!(f, "output of {got} values, model gives {expected}")
            }
            RunError::WrongDtype => f.write_str("entry point does not match the model dtype"),
            RunError::Internal => f.write_str("internal runtime error"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ModelError {}
#[cfg(feature = "std")]
impl std::error::Error for RunError {}
