//! host-trainer: the std half of the project.
//!
//! Data flows one way: `data` (readers + synthetic generators) → `augment` → `method` + `train`
//! (pretraining) → `eval` (transfer protocols) → `export` (fold BN, quantise, write the runtime
//! model). Each paper concept has one named place:
//!
//! | concept | module |
//! |---|---|
//! | mini-ImageNet / CelebA / MAFL readers, synthetic datasets | [`data`] |
//! | torchvision-exact augmentations, batch loader | [`augment`] |
//! | ResNet family with torchvision names | [`model`] |
//! | supervised CE, MoCo v1/v2, Exemplar v1/v2 (paper eq. 2) | [`method`] |
//! | SGD, schedules, checkpoints, the training loop | [`train`] |
//! | few-shot, landmark and linear-probe protocols | [`eval`] |
//! | BN folding, int8 calibration, safetensors export, ONNX out | [`export`] |
//! | PyTorch checkpoints in (torchvision, MoCo) | [`import`] |
//! | feature inversion (Figs. 2, 6), reconstruction distances, pretraining-data subsets (Table 2) | [`analysis`] |
//! | the paper's comparisons end to end (resumable plan, tables, figures) | [`study`] |

pub mod analysis;
pub mod augment;
/// The shared `data` crate (readers, generators, resize, random streams, atomic writes),
/// re-exported so `host_trainer::data::…` keeps naming the one place datasets live.
pub use data;
pub use data::{fsutil, rng};
pub mod device;
pub mod eval;
pub mod export;
pub mod fixtures;
pub mod import;
pub mod kernels;
pub mod method;
pub mod model;
pub mod plot;
pub mod study;
pub mod train;
