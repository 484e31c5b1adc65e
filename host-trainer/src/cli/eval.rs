//! `host-trainer eval fewshot|base|linear`: argument parsing and printing; the work is in
//! `transfer_eval`.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use transfer_eval::fewshot::FewShotArgs;
use transfer_eval::{fewshot, probe};

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Few-shot recognition (Chen et al.): frozen backbone, episodes from the shared sampler.
    Fewshot(FewShotCmd),
    /// Base-class accuracy (paper Table 4): probe on the held-out images of the pretraining classes.
    Base(ProbeArgs),
    /// Linear probe (MoCo lincls, scaled down): fit on the train split, test on the held-out images.
    Linear(ProbeArgs),
    /// Facial landmarks (paper §4.2): fine-tune a head (and the backbone) on MAFL, IOD error on its test list.
    Landmarks(LandmarkArgs),
}

/// `eval landmarks` options.
#[derive(Args, Debug)]
pub struct LandmarkArgs {
    /// Backbone file, or `scratch` for a random-init baseline (see --arch, --width).
    #[arg(long)]
    pub backbone: String,
    /// CelebA root with MAFL/training.txt and MAFL/testing.txt.
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture of a `scratch` backbone.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Width multiplier of a `scratch` backbone.
    #[arg(long, default_value_t = 0.25)]
    pub width: f32,
    /// Model input side (the MAFL square crop is resized to it).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Learning rate (default: the paper's 0.02 at batch 128, scaled to --batch).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Train the head only, backbone frozen in eval mode (the paper fine-tunes all layers).
    #[arg(long)]
    pub frozen: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for landmarks.safetensors (the trained model, for `host-trainer export`) and landmarks.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print only the JSON result.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Options every eval command shares.
#[derive(Args, Debug)]
pub struct Common {
    /// Backbone file (`host-trainer pretrain` output or any ResNet safetensors with its config).
    #[arg(long)]
    pub backbone: PathBuf,
    /// Dataset root.
    #[arg(long)]
    pub data: PathBuf,
    /// Model input side in pixels (the backbone file does not record one).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Write the JSON result into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print only the JSON result.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct FewShotCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub fewshot: FewShotArgs,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The seed of the pretraining run (it chose the held-out images).
    #[arg(long, default_value_t = 0)]
    pub pretrain_seed: u64,
    /// Probe epochs (default: 100 for base, 10 for linear).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate at batch 256 (on L2-normalised features).
    #[arg(long)]
    pub lr: Option<f64>,
}

fn emit(c: &Common, file: &str, json: &serde_json::Value, text: String) -> Result<()> {
    if let Some(dir) = &c.out {
        transfer_eval::write_result(dir, file, json)?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(json)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

fn probe_config(kind: probe::ProbeKind, a: &ProbeArgs) -> probe::ProbeConfig {
    let mut recipe = match kind {
        probe::ProbeKind::Base => probe::ProbeRecipe::base(),
        probe::ProbeKind::Linear => probe::ProbeRecipe::lincls(),
    };
    recipe.epochs = a.epochs.unwrap_or(recipe.epochs);
    recipe.lr = a.lr.unwrap_or(recipe.lr);
    probe::ProbeConfig {
        kind,
        backbone: a.common.backbone.clone(),
        data: a.common.data.clone(),
        pretrain_seed: a.pretrain_seed,
        image_size: a.common.image_size,
        batch: a.common.batch,
        recipe,
    }
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Fewshot(a) => {
            let device = trainer::device::parse_device(&a.common.device)?;
            let spec = a.fewshot.spec();
            let cfg = fewshot::FewShotConfig {
                backbone: a.common.backbone.clone(),
                data: a.common.data.clone(),
                split: spec.split.split(),
                way: spec.way,
                shots: spec.shots,
                episodes: spec.episodes,
                query: spec.query,
                classifier: spec.classifier.head(),
                seed: spec.seed,
                image_size: a.common.image_size,
                batch: a.common.batch,
            };
            let r = fewshot::evaluate(&cfg, &device)?;
            emit(
                &a.common,
                "fewshot.json",
                &fewshot::to_json(&cfg, &r),
                fewshot::to_text(&cfg, &r),
            )
        }
        EvalCommand::Base(a) => run_probe(probe::ProbeKind::Base, &a, "base.json"),
        EvalCommand::Linear(a) => run_probe(probe::ProbeKind::Linear, &a, "linear.json"),
        EvalCommand::Landmarks(a) => run_landmarks(&a),
    }
}

fn run_landmarks(a: &LandmarkArgs) -> Result<()> {
    use transfer_eval::landmarks::{self, BackboneSource, LandmarkConfig};
    let device = trainer::device::parse_device(&a.device)?;
    let backbone = if a.backbone == "scratch" {
        let arch = a
            .arch
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--arch: {e}"))?;
        BackboneSource::Scratch {
            arch,
            width: a.width,
        }
    } else {
        BackboneSource::File(PathBuf::from(&a.backbone))
    };
    let cfg = LandmarkConfig {
        backbone,
        data: a.data.clone(),
        image_size: a.image_size,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        frozen: a.frozen,
        seed: a.seed,
    };
    let (model, report) = landmarks::evaluate(&cfg, &device)?;
    let json = landmarks::to_json(&cfg, &report);
    if let Some(dir) = &a.out {
        model.save(&dir.join("landmarks.safetensors"))?;
        transfer_eval::write_result(dir, "landmarks.json", &json)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", landmarks::to_text(&report));
    }
    Ok(())
}

fn run_probe(kind: probe::ProbeKind, a: &ProbeArgs, file: &str) -> Result<()> {
    let device = trainer::device::parse_device(&a.common.device)?;
    let cfg = probe_config(kind, a);
    let r = probe::evaluate(&cfg, &device)?;
    emit(
        &a.common,
        file,
        &probe::to_json(&cfg, &r),
        probe::to_text(&cfg, &r),
    )
}
