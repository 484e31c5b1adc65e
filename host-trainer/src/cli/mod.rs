//! One file per sub-command: argument parsing and printing only; the work is in the library.
pub mod bench_step;
pub mod eval;
pub mod export;
pub mod fixtures;
pub mod import;
pub mod invert;
pub mod pretrain;
pub mod study;
pub mod synth;
