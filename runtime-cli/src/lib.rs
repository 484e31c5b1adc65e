//! runtime-cli: evaluate, run, inspect and benchmark models exported by `host-trainer export`,
//! on a host, with the same int8 engine (runtime-core) the microcontroller runs.
//!
//! | command | module |
//! |---|---|
//! | `eval mafl` | [`mafl`] (landmark error, with [`landmarks`]) |
//! | `eval fewshot` | [`fewshot`] |
//! | `infer` | [`infer`] |
//! | `inspect` | [`inspect`] |
//! | `bench` | [`bench`] |
//!
//! Model loading and the per-thread runner are in [`engine`]; the parallel few-shot episode
//! runner, shared with host-trainer, in [`episodes`]; image → model input (the host's
//! eval transform) in [`preprocess`]. Every error is one line naming the file at fault.

pub mod bench;
pub mod cli;
pub mod engine;
pub mod episodes;
pub mod fewshot;
pub mod infer;
pub mod inspect;
pub mod landmarks;
pub mod mafl;
pub mod nan;
pub mod preprocess;
pub mod progress;
