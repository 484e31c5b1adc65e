//! One file per sub-command: argument parsing and printing only; the work is in the library.
pub mod export;
pub mod synth;
