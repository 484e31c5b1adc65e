//! The `host-trainer` command line. Each sub-command lives in its own file under `cli/`.
use clap::{Parser, Subcommand};

mod cli;

/// Pretrain ResNet backbones (supervised, MoCo v1/v2, Exemplar v1/v2), evaluate their transfer
/// (few-shot recognition, facial landmarks), and export int8 models for the runtime.
#[derive(Parser, Debug)]
#[command(name = "host-trainer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate the embedded default datasets (synthetic objects / faces) in the real formats.
    #[command(subcommand)]
    Synth(cli::synth::SynthCommand),
    /// Pretrain a backbone: supervised, MoCo v1/v2 or Exemplar v1/v2 (resumable).
    Pretrain(cli::pretrain::PretrainArgs),
    /// Fold BN, calibrate and quantise a backbone or landmark model into a runtime model file.
    Export(cli::export::ExportArgs),
    /// Evaluate transfer: few-shot recognition, base-class accuracy, linear probe.
    #[command(subcommand)]
    Eval(cli::eval::EvalCommand),
    /// The paper's comparisons end to end (resumable): tables, figures, host and runtime.
    Study(cli::study::StudyArgs),
    /// Time full training steps (forward/backward split) on random data; `--baseline` compares
    /// with candle's own CPU ops.
    BenchStep(cli::bench_step::BenchStepArgs),
    /// Feature inversion (paper Figure 2): reconstruct images from a backbone's features with
    /// the deep image prior; scores and a grid figure.
    Invert(cli::invert::InvertArgs),
    /// Import a PyTorch ResNet checkpoint (torchvision, MoCo, any prefix) as a backbone file.
    Import(cli::import::ImportArgs),
    /// Regenerate the committed test fixtures (`--out fixtures/tiny`) byte for byte.
    Fixtures(cli::fixtures::FixturesArgs),
}

/// Makes a write past the file size limit (`ulimit -f`) fail with `EFBIG` instead of killing the
/// process with `SIGXFSZ`: killed, a run dies silently (no message, no file named) between two
/// checkpoints; with the error, the write that failed reports its file and the cause like a full
/// disk does (`ENOSPC`), and the atomic writes leave the previous checkpoint whole.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal to "ignore" before any thread starts; no
    // handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn main() {
    ignore_file_size_signal();
    trainer::device::configure_cpu_threads();
    trainer::device::configure_allocator();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A resumed run keeps its epochs unless --epochs is given explicitly.
    if let (Command::Pretrain(a), Some(("pretrain", m))) = (&mut cli.command, matches.subcommand())
    {
        a.epochs_set = m.value_source("epochs") == Some(clap::parser::ValueSource::CommandLine);
    }
    let result = match cli.command {
        Command::Synth(c) => cli::synth::run(c),
        Command::Pretrain(a) => cli::pretrain::run(a),
        Command::Study(a) => cli::study::run(a),
        Command::BenchStep(a) => cli::bench_step::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Eval(c) => cli::eval::run(c),
        Command::Fixtures(a) => cli::fixtures::run(a),
        Command::Import(a) => cli::import::run(a),
        Command::Invert(a) => cli::invert::run(a),
    };
    if let Err(e) = result {
        // `{:#}` prints the whole context chain on one line ("reading X: line 3: ..."): a clear
        // error for the user, never a panic or a backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions (unique names, valid defaults) only in debug builds, at parse
    /// time: this makes a malformed command line a test failure instead of a user's panic.
    #[test]
    fn command_line_definition_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
