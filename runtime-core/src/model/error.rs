//! Typed errors for loading and running a model. They are `Copy` and carry the 1-based line of
//! the graph text (`FORMAT.md`) at fault, so a CLI can print "model.safetensors: graph line 7: …".
//! Their `Display` is a sentence a user can act on; `Debug` keeps the variant names.

use core::fmt;

use super::OpKind;
use crate::ops::KernelError;

/// Why a model file was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// A max or average pool output's scale/zero point differ from its input's (it must not
    /// requantise).
    PoolQuant,
    /// An int8 softmax output whose scale is not 1/256 or whose zero point is not −128.
    SoftmaxQuant,
    /// A conv/fc `ws=` weight scale that is not finite and positive, or that does not give the
    /// stored multiplier and shift (`quantize_multiplier(in_scale·ws[c]/out_scale)`).
    WeightScale,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            GraphError::MissingKey(k) => return write!(f, "missing required key `{k}=`"),
            GraphError::BadValue(k) => {
                return write!(
                    f,
                    "bad value for `{k}`: not a number, or not a list of the form FORMAT.md gives"
                )
            }
            GraphError::Version => {
                "unsupported format: the first graph line must be `rtgraph 1`; re-export the \
                 model with a host-trainer that matches this runtime"
            }
            GraphError::UnknownOp => {
                "unknown op or directive (known: tensor, input, output, conv, dwconv, fc, add, \
                 maxpool, mean, leaky, avgpool, softmax)"
            }
            GraphError::BadToken => {
                "unexpected token: tokens are `key=value` or the flag `relu` (once, on conv, \
                 dwconv, fc, add and avgpool only), at most 16 per line"
            }
            GraphError::UnknownKey => {
                "a `key=` this op does not take (FORMAT.md lists each op's keys)"
            }
            GraphError::DuplicateKey => "a key is given twice on this line",
            GraphError::Header => {
                "bad header: the graph must start with `rtgraph`, `dtype`, `task` lines in this \
                 order and have exactly one `input` (never produced by an op) and one `output`"
            }
            GraphError::TensorId => {
                "bad tensor id: tensors must be declared in order 0, 1, 2, ... (at most 4096) \
                 before they are used"
            }
            GraphError::NotYetComputed => {
                "the op reads a tensor that neither the input nor an earlier op produces; \
                 reorder the ops"
            }
            GraphError::ProducedTwice => {
                "the op writes a tensor that is already produced (or the input); give each op \
                 its own output tensor"
            }
            GraphError::NeverProduced => {
                "a declared tensor is never produced by an op (nor is it the input); remove it \
                 or add the op that computes it"
            }
            GraphError::MissingTensor => "a parameter tensor named on this line is not in the file",
            GraphError::Dtype => {
                "a parameter tensor has the wrong dtype: int8 graphs take I8 weights and I32 \
                 b/m/s, f32 graphs F32 weights and bias"
            }
            GraphError::Shape => {
                "a parameter or activation shape does not match what the connected ops imply \
                 (FORMAT.md gives each op's shapes)"
            }
            GraphError::ZeroDim => "a tensor dimension, kernel size or stride is zero",
            GraphError::TooLarge => {
                "a size exceeds the runtime's limits (FORMAT.md, Limits) or overflows"
            }
            GraphError::WeightRange => {
                "an int8 weight is -128: weights must be symmetric in [-127, 127]"
            }
            GraphError::BiasRange => {
                "an int32 bias is beyond +-2^30, which could overflow the i32 accumulator"
            }
            GraphError::MultiplierRange => {
                "negative requantisation multiplier (must be in [0, 2^31-1])"
            }
            GraphError::ShiftRange => {
                "requantisation shift outside [-31, 30] (add input shifts must also be <= 0)"
            }
            GraphError::ZeroPointRange => "zero point outside [-128, 127]",
            GraphError::ScaleRange => {
                "a scale, std, alpha or mean is not finite, or a scale or std is not positive"
            }
            GraphError::NonFinite => "an f32 parameter is NaN or infinite",
            GraphError::Window => {
                "padding is not smaller than the kernel, or the window does not fit the padded \
                 input"
            }
            GraphError::Output => {
                "the graph has no op, or its `output` tensor is not produced by an op"
            }
            GraphError::PoolQuant => {
                "max and average pool must keep their input's scale and zero point bit for bit \
                 (they do not requantise)"
            }
            GraphError::SoftmaxQuant => {
                "an int8 softmax output must have scale 1/256 and zero point -128 (TFLite's \
                 rule: the kernel writes the probability in 1/256 steps)"
            }
            GraphError::WeightScale => {
                "a weight scale (`ws=`) is not finite and positive, or does not give the stored \
                 multiplier m[c], s[c] = quantize_multiplier(in_scale * ws[c] / out_scale)"
            }
        };
        f.write_str(msg)
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Container => f.write_str(
                "malformed safetensors container (bad header length, header JSON, tensor dtypes \
                 or offsets, or truncated data): check the file is complete and is a model file",
            ),
            ModelError::MissingGraph => f.write_str(
                "no `rt.graph` entry in the safetensors metadata: not a runtime-core model \
                 (export it with host-trainer or write it with ModelBuilder)",
            ),
            ModelError::Graph { line: 0, kind } => write!(f, "graph: {kind}"),
            ModelError::Graph { line, kind } => write!(f, "graph line {line}: {kind}"),
        }
    }
}

/// Why an inference call failed (wrong buffers or wrong entry point; never the model itself,
/// which was validated at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RunError {
    /// The arena is smaller than [`crate::Model::arena_bytes`].
    ArenaTooSmall { need: usize, got: usize },
    /// An input buffer of the wrong length.
    InputLen { expected: usize, got: usize },
    /// An output buffer of the wrong length.
    OutputLen { expected: usize, got: usize },
    /// An int8 entry point on an f32 model or vice versa.
    WrongDtype,
    /// A kernel refused its slices (a runtime bug: the loader checks every geometry).
    Kernel { op: OpKind, error: KernelError },
    /// Internal inconsistency (a planner or executor bug); reported instead of panicking.
    Internal,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::ArenaTooSmall { need, got } => write!(
                f,
                "arena of {got} bytes is too small: the model needs {need} (Model::arena_bytes)"
            ),
            RunError::InputLen { expected, got } => write!(
                f,
                "input of {got} values, but the model takes {expected} (its input h*w*c)"
            ),
            RunError::OutputLen { expected, got } => write!(
                f,
                "output buffer of {got} values, but the model gives {expected}"
            ),
            RunError::WrongDtype => f.write_str(
                "entry point does not match the model dtype: use the int8 entry points for int8 \
                 models, the f32 ones for f32 models, or `run` for either",
            ),
            RunError::Kernel { op, error } => write!(
                f,
                "the {} kernel failed ({error}); this is a runtime-core bug, please report it \
                 with the model file",
                op.name()
            ),
            RunError::Internal => f.write_str(
                "internal runtime error (arena plan or executor inconsistency); this is a \
                 runtime-core bug, please report it with the model file",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ModelError {}
#[cfg(feature = "std")]
impl std::error::Error for GraphError {}
#[cfg(feature = "std")]
impl std::error::Error for RunError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    /// Every message is a sentence of its own, never the variant's Debug name.
    fn sentence(shown: &str, debug: &str) {
        assert!(
            shown.len() >= 20 && shown.contains(' '),
            "{debug}: {shown:?}"
        );
        assert!(
            !shown.contains(debug),
            "{debug} shows its Debug name: {shown:?}"
        );
    }

    #[test]
    fn every_error_displays_an_actionable_sentence() {
        use GraphError as G;
        let graph = [
            G::Version,
            G::UnknownOp,
            G::BadToken,
            G::UnknownKey,
            G::DuplicateKey,
            G::MissingKey("stride"),
            G::BadValue("pad"),
            G::Header,
            G::TensorId,
            G::NotYetComputed,
            G::ProducedTwice,
            G::NeverProduced,
            G::MissingTensor,
            G::Dtype,
            G::Shape,
            G::ZeroDim,
            G::TooLarge,
            G::WeightRange,
            G::BiasRange,
            G::MultiplierRange,
            G::ShiftRange,
            G::ZeroPointRange,
            G::ScaleRange,
            G::NonFinite,
            G::Window,
            G::Output,
            G::PoolQuant,
            G::SoftmaxQuant,
            G::WeightScale,
        ];
        for g in graph {
            sentence(&g.to_string(), &format!("{g:?}"));
        }
        assert_eq!(
            G::ShiftRange.to_string(),
            "requantisation shift outside [-31, 30] (add input shifts must also be <= 0)"
        );
        assert!(G::MissingKey("stride").to_string().contains("`stride=`"));
        for m in [ModelError::Container, ModelError::MissingGraph] {
            sentence(&m.to_string(), &format!("{m:?}"));
        }
        let at = |line| ModelError::Graph {
            line,
            kind: G::Window,
        };
        assert!(at(7).to_string().starts_with("graph line 7: padding"));
        assert!(at(0).to_string().starts_with("graph: padding"));
        let run = [
            RunError::ArenaTooSmall { need: 10, got: 5 },
            RunError::InputLen {
                expected: 3,
                got: 4,
            },
            RunError::OutputLen {
                expected: 3,
                got: 4,
            },
            RunError::WrongDtype,
            RunError::Kernel {
                op: OpKind::Conv2d,
                error: KernelError,
            },
            RunError::Internal,
        ];
        for r in run {
            sentence(&r.to_string(), &format!("{r:?}"));
        }
        assert!(run[4].to_string().contains("conv kernel"));
        use crate::model::BuildError as B;
        for b in [B::Params, B::Shape, B::Name, B::Graph, B::Container] {
            sentence(&b.to_string(), &format!("{b:?}"));
        }
        assert!(B::Invalid(ModelError::Container)
            .to_string()
            .starts_with("built model is invalid: malformed safetensors container"));
    }
}
