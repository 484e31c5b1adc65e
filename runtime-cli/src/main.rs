//! runtime-cli: evaluate, run, inspect and benchmark exported models on a host.
use clap::Parser;

/// Evaluate, run, inspect and benchmark int8 models exported by `host-trainer export`.
#[derive(Parser, Debug)]
#[command(name = "runtime-cli", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
