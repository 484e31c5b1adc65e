//! Training: SGD with PyTorch semantics, per-epoch lr schedules, the pretraining loop with
//! resumable checkpoints, and the kNN monitor.
pub mod checkpoint;
pub mod comm;
pub mod data;
pub mod finite;
pub mod knn;
pub mod optim;
pub mod plot;
pub mod pretrain;
pub mod replicas;
pub mod schedule;
