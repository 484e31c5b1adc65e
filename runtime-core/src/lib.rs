//! runtime-core: a `no_std` int8 engine for quantised ResNet backbones exported by host-trainer.
//!
//! * [`model`]: the file format (safetensors + a line-oriented graph, see `FORMAT.md`), the
//!   validating loader [`Model::parse`], inference, and [`ModelBuilder`] to write models.
//! * [`plan`]: the arena planner; inference runs in a caller-provided `&mut [u8]`.
//! * [`ops`]: int8 kernels (TFLite rules, bit-exact) and their f32 twins.
//! * [`heads`]: few-shot (nearest centroid, on-device linear classifier) and landmark decoding.
//! * [`metrics`]: episode accuracy with 95% interval, inter-ocular-distance error.
//!
//! `alloc` is used only while loading (the safetensors header map, the op list, the plan).
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod heads;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod plan;
pub mod protocol;

pub use model::{
    write_safetensors, BuildError, Dtype, GraphError, LayerParams, Model, ModelBuilder, ModelError,
    OpKind, Quant, RawTensor, RunError, Task, TensorDesc, TensorId,
};
pub use ops::requant::quantize_multiplier;
