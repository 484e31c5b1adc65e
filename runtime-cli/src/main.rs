//! runtime-cli entry point: parse, run, print `error: …` (one line, no backtrace) and exit 1 on
//! failure.
use clap::Parser;

fn main() {
    let cli = runtime_cli::cli::Cli::parse();
    if let Err(e) = runtime_cli::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
