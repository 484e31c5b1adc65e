//! Evaluation protocols shared by the programs that run them (host-trainer and runtime-cli;
//! runtime-mcu runs one fixed episode), so one seed means the same episodes everywhere.
pub mod fewshot;

pub use fewshot::{
    class_images, classifier_seed, episode_accuracy_pct, plan_episodes, Episode, EpisodeError,
    EpisodePlan, EpisodeSampler, FewShotHead, PlanError, SampleError,
};
