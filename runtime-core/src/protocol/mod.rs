//! Evaluation protocols shared by every program that runs them (host-trainer, runtime-cli,
//! runtime-mcu), so one seed means the same episodes everywhere.
pub mod fewshot;

pub use fewshot::{
    classifier_seed, episode_accuracy_pct, Episode, EpisodeError, EpisodeSampler, FewShotHead,
    SampleError,
};
