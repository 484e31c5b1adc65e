//! Command-line interface: argument definitions and dispatch. Every command prints a human
//! summary, or with `--json` one JSON object on stdout.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::fewshot::FewShotArgs;
use crate::mafl::MaflSplit;
use crate::{bench, fewshot, infer, inspect, mafl};

/// Evaluate, run, inspect and benchmark int8 (or f32) models exported by `host-trainer export`.
#[derive(Parser, Debug)]
#[command(name = "runtime-cli", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Transfer evaluations (the paper's protocols) on the runtime engine.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Run a model on images: landmarks, or features and arg-max class.
    Infer(InferCmd),
    /// Graph, per-layer shapes and MACs, weight and arena bytes, quantisation summary.
    Inspect(InspectCmd),
    /// Single-thread latency percentiles and throughput on this machine.
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// IOD-normalised landmark error (%) on a MAFL list.
    Mafl(MaflCmd),
    /// N-way K-shot accuracy ± 95% interval on mini-ImageNet-format data.
    Fewshot(FewshotCmd),
}

#[derive(Args, Debug)]
pub struct MaflCmd {
    /// Landmark model (.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// CelebA root (with MAFL/), real or synthetic.
    #[arg(long)]
    pub data: PathBuf,
    /// Which MAFL list.
    #[arg(long, value_enum, default_value = "test")]
    pub split: MaflSplit,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FewshotCmd {
    /// Features model (.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// mini-ImageNet root (train/val/test.csv and images/).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub fewshot: FewShotArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InferCmd {
    /// Model (.safetensors, or an int8 .tflite).
    #[arg(long)]
    pub model: PathBuf,
    /// Draw the landmarks onto this PNG (landmark models, one image).
    #[arg(long)]
    pub draw: Option<PathBuf>,
    /// Use the pixels as they are: the image must be the model's input size (no crop/resize).
    #[arg(long)]
    pub exact_size: bool,
    /// Print the raw int8 output tensor (int8 models; the whole image as the input, resized
    /// unless --exact-size, no landmark crop), e.g. to compare with another runtime bit for bit.
    #[arg(long, conflicts_with = "draw")]
    pub raw: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Feed these files instead of images: each holds the input tensor's int8 bytes in the
    /// model's own layout (NHWC, quantised; as `--raw` prints outputs), so that any engine can
    /// be compared with this one bit for bit on the same tensor. Implies --raw.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["draw", "exact_size"])]
    pub input_raw: Vec<PathBuf>,
    /// PNG or JPEG images.
    #[arg(required_unless_present = "input_raw", conflicts_with = "input_raw")]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InspectCmd {
    /// Model (.safetensors, or an int8 .tflite).
    pub model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchCmd {
    /// Model (.safetensors, or an int8 .tflite).
    #[arg(long)]
    pub model: PathBuf,
    /// Timed runs.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Untimed runs first (caches, page faults, CPU clock).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Run int8 conv/fc on runtime-core's reference kernels instead of the fast ones (the
    /// baseline the fast path is measured against; same results).
    #[arg(long)]
    pub reference_kernels: bool,
    /// Threads each int8 conv may split its output over (runtime-core's `Model::set_threads`:
    /// the x86-64 and aarch64 SIMD kernels and the portable loop, convs of at least 2 × 8 K
    /// MACs; same results).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Time the int8 model on this file's input tensor (int8 bytes in the model's NHWC layout)
    /// instead of a pseudo-random image: copy in and run, as another engine is timed.
    #[arg(long)]
    pub input_raw: Option<PathBuf>,
    /// Also time every op: `--runs` more inferences whose ops are timed one by one (int8
    /// models; the `--input-raw` tensor, else a pseudo-random one), their medians listed.
    #[arg(long)]
    pub per_op: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn emit(json: bool, value: serde_json::Value, text: String) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    }
    .context("cannot write to stdout")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval(EvalCommand::Mafl(c)) => {
            let r = mafl::evaluate(&c.model, &c.data, c.split, true)?;
            emit(
                c.json,
                mafl::to_json(&r, &c.model, c.split),
                mafl::to_text(&r),
            )
        }
        Command::Eval(EvalCommand::Fewshot(c)) => {
            let spec = c.fewshot.spec();
            let r = fewshot::evaluate(&c.model, &c.data, &spec, true)?;
            emit(
                c.json,
                fewshot::to_json(&r, &c.model, &spec),
                fewshot::to_text(&r, &spec),
            )
        }
        Command::Infer(c) => {
            let input_raw = !c.input_raw.is_empty();
            let a = infer::InferArgs {
                model: c.model,
                images: if input_raw { c.input_raw } else { c.images },
                draw: c.draw,
                exact_size: c.exact_size,
                raw: c.raw || input_raw,
                input_raw,
            };
            let (task, preds) = infer::run(&a)?;
            emit(
                c.json,
                infer::to_json(&a, task, &preds),
                infer::to_text(&a, &preds),
            )
        }
        Command::Inspect(c) => {
            let r = inspect::inspect(&c.model)?;
            emit(
                c.json,
                inspect::to_json(&r, &c.model),
                inspect::to_text(&r, &c.model),
            )
        }
        Command::Bench(c) => {
            let r = bench::bench(
                &c.model,
                c.runs,
                c.warmup,
                c.reference_kernels,
                c.threads as usize,
                c.input_raw.as_deref(),
                c.per_op,
            )?;
            emit(
                c.json,
                bench::to_json(&r, &c.model),
                bench::to_text(&r, &c.model),
            )
        }
    }
}
