//! The `host-trainer` command line end to end, one binary: each sub-command as a user runs it.
mod bench_step_cli;
#[cfg(feature = "mpi")]
mod distributed;
mod distributed_nccl;
mod eval_cli;
mod export_cli;
mod faults;
mod import;
mod invert_cli;
mod pretrain_e2e;
mod synth_cli;
