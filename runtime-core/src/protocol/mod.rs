//! Evaluation protocols shared by every program that runs them (host-trainer, runtime-cli,
//! runtime-mcu), so one seed means the same episodes everywhere.
pub mod fewshot;

pub use fewshot::{
    class_images, classifier_seed, episode_accuracy_pct, plan_episodes, Episode, EpisodeError,
    EpisodePlan, EpisodeSampler, FewShotHead, PlanError, SampleError,
};
