//! runtime-core: a `no_std` int8 engine for quantised ResNet backbones exported by host-trainer.
//!
//! * [`model`]: the file format (safetensors + a line-oriented graph, see `FORMAT.md`), the
//!   validating loader [`Model::parse`], inference, and [`ModelBuilder`] to write models.
//! * [`plan`]: the arena planner; inference runs in a caller-provided `&mut [u8]`.
//! * [`ops`]: int8 kernels (TFLite rules, bit-exact) and their f32 twins.
//! * [`heads`]: few-shot (nearest centroid, on-device linear classifier) and landmark decoding.
//! * [`metrics`]: episode accuracy with 95% interval, inter-ocular-distance error.
//!
//! # Allocation
//!
//! The crate is `no_std` and needs a global allocator (`alloc`). What allocates, and when:
//! * [`Model::parse`]: the safetensors header (a map of tensor names, shapes and offsets, and
//!   the graph text), freed when `parse` returns; the model's tensor, op and arena-offset lists
//!   (a few bytes per op), kept for the model's life; scratch for the arena planner. Tensor data
//!   is borrowed from the file bytes, never copied; the fast int8 kernels' load-time
//!   preparation ([`ops::prepared`]) keeps 16 B per output channel of each int8 conv/fc (folded
//!   bias and requantisation constants) and, with `std` on an x86-64 CPU with AVX-512 VNNI, the
//!   weights repacked for that kernel ([`Model::prepared_bytes`] reports the total).
//! * [`ModelBuilder`] and [`write_safetensors`]: the graph text, the parameter copies and the
//!   output file (host-side tools and tests).
//! * The few-shot protocol ([`protocol::fewshot`]: episode sampling, and
//!   [`protocol::fewshot::episode_accuracy_pct`] with the heap-backed heads
//!   [`heads::linear::LinearHead`] and [`heads::centroid::CentroidHead`]).
//! * With the `zoo` feature, `model::zoo`'s random weights.
//!
//! Inference does not allocate: every `Model::run*` / `preprocess*` call works in the
//! caller's arena (`&mut [u8]` of [`Model::arena_bytes`]) and output buffer, the kernels in
//! [`ops`] take slices, and the fixed-capacity heads ([`heads::linear::LinearClassifier`],
//! [`heads::centroid::NearestCentroid`]), [`heads::landmarks`] and [`metrics`] keep their state
//! in fixed arrays. A firmware can therefore load once and then run without touching the heap.
//!
//! # Features
//! * `std`: `std::error::Error` impls, the std-only episode runner, and the AVX-512 VNNI int8
//!   kernel on x86-64 (chosen at run time by CPU detection; without `std` the portable loop runs).
//! * `threads` (implies `std`): [`Model::set_threads`], the x86-64 convs split over a team of
//!   spinning helper threads ([`team`]); the same bytes for every thread count.
//!
//! # Kernels
//! int8 conv/fc run on [`ops::prepared`] (zero point folded into the bias at load, im2col of a
//! few pixels, a register-blocked inner loop per target: AVX-512 VNNI, Cortex-M4 SXTB16/SMLAD,
//! or portable); [`ops::conv2d::conv2d_i8`] and [`ops::fully_connected::fully_connected_i8`]
//! are the reference they are tested against bit for bit.
//! * `defmt`: `defmt::Format` on every public type.
//! * `zoo`: `model::zoo`, random-weight reference models (ResNet-8, ResNet-18).
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "alloc-count")]
pub mod count_alloc;
pub mod heads;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod plan;
pub mod protocol;
#[cfg(feature = "threads")]
pub mod team;
pub mod tflite;

pub use model::{
    layer_multiplier, write_safetensors, BuildError, Dtype, GraphError, LayerParams, Model,
    ModelBuilder, ModelError, Node, Op, OpKind, Quant, RawTensor, RunError, Task, TensorDesc,
    TensorId,
};
pub use ops::requant::quantize_multiplier;
