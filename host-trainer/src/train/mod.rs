//! Training: SGD with PyTorch semantics and per-epoch lr schedules. (The training loop and
//! checkpoints are added by the training issue on top of these.)
pub mod optim;
pub mod schedule;
