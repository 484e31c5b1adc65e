//! ResNet-18/34/50 with torchvision's parameter names, train/eval batch norm with running
//! statistics (and grouped "shuffle-BN" statistics), and safetensors checkpoints that read
//! torchvision and MoCo weights.
//!
//! - [`config`]: [`ResNetConfig`], [`Arch`] — the shape of the network.
//! - [`ops`]: the one conv and the one training-mode BN every layer calls.
//! - [`resnet`]: [`ResNet`], its forward passes and named parameters.
//! - [`landmarks`]: [`landmarks::LandmarkModel`], the paper's §4.2 landmark regressor.
//! - [`checkpoint`]: save / load / open from file, [`LoadOptions`] presets.
pub mod checkpoint;
pub mod config;
pub mod landmarks;
pub mod landmarks_io;
pub mod ops;
pub mod resnet;

pub use checkpoint::{
    read_config, LoadOptions, LoadReport, ModelIoError, ShapeMismatch, TensorMismatch,
};
pub use config::{Arch, BlockKind, ResNetConfig, CONFIG_METADATA_KEY};
pub use resnet::{BlockSpec, BnMode, ConvSpec, InitOptions, ResNet};
