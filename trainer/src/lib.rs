//! trainer: pretraining on the host, the std half below the transfer evaluation, the exporter and
//! the study.
//!
//! Data flows one way: `data` (readers + synthetic generators) → `augment` → `method` + `train`
//! (pretraining). The transfer protocols (`transfer-eval`), the exporter (`exporter`: fold BN,
//! quantise, ONNX, checkpoint import) and the experiment system (`study`) sit above this crate;
//! nothing here knows them. Each paper concept has one named place:
//!
//! | concept | module |
//! |---|---|
//! | mini-ImageNet / CelebA / MAFL readers, synthetic datasets | [`data`] |
//! | torchvision-exact augmentations, batch loader | [`augment`] |
//! | ResNet family with torchvision names | [`model`] |
//! | supervised CE, MoCo v1/v2, Exemplar v1/v2 (paper eq. 2) | [`method`] |
//! | SGD, schedules, checkpoints, the training loop | [`train`] |
//! | CPU (and CUDA) kernels behind the model's ops (crate `train-kernels`) | [`kernels`] |

pub mod augment;
/// The shared `data` crate (readers, generators, resize, random streams, atomic writes),
/// re-exported so `trainer::data::…` keeps naming the one place datasets live.
pub use data;
pub use data::{fsutil, rng};
pub mod device;
/// The kernels behind the model's ops (their own crate, `train-kernels`), re-exported so
/// `trainer::kernels::…` names them.
pub use train_kernels as kernels;
pub mod method;
pub mod model;
pub mod plot;
pub mod train;
