//! `eval fewshot`: Chen et al.'s (2019) few-shot protocol on frozen host features (paper §4.1).
//!
//! Episodes are drawn by runtime-core's [`plan_episodes`] (its shared
//! [`EpisodeSampler`](runtime_core::protocol::fewshot::EpisodeSampler)) and scored by the shared host
//! runner [`run_episodes`] (runtime-core's episode scorer on rayon; the linear head of episode `e` seeded by `classifier_seed(seed, shot, e)`),
//! the very code runtime-cli runs on int8 features: with the same `--seed`, host and device see
//! the same episodes and fit the same classifiers, so their numbers differ only by the features.
//! Each image some episode uses is embedded once, in eval mode.
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use runtime_cli::episodes::run_episodes;
use runtime_core::metrics::episode_accuracy;
use runtime_core::protocol::fewshot::{class_images, plan_episodes, FewShotHead, MAX_EPISODE_WAY};

use super::features;
use trainer::data::{MiniImageNet, Split};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct FewShotConfig {
    pub backbone: PathBuf,
    pub data: PathBuf,
    pub split: Split,
    pub way: usize,
    pub shots: Vec<usize>,
    pub episodes: u64,
    pub query: usize,
    pub classifier: FewShotHead,
    pub seed: u64,
    /// Model input side (the backbone file does not record one).
    pub image_size: usize,
    /// Images per forward pass while embedding.
    pub batch: usize,
}

/// Accuracy of one shot setting, in %: the same type runtime-cli reports, so host and runtime
/// results are one schema; and the protocol's command-line flags, the same in both CLIs.
pub use runtime_cli::fewshot::{FewShotArgs, ShotResult};

/// All shot settings, with the backbone hash and how many images were embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct FewShotReport {
    pub results: Vec<ShotResult>,
    pub per_episode: Vec<Vec<f64>>,
    pub images_embedded: usize,
    pub backbone_fnv64: String,
}

/// Runs the protocol.
pub fn evaluate(cfg: &FewShotConfig, device: &Device) -> Result<FewShotReport> {
    if cfg.way > MAX_EPISODE_WAY {
        bail!(
            "--way {}: an episode holds at most {MAX_EPISODE_WAY} classes",
            cfg.way
        );
    }
    if cfg.shots.is_empty() || cfg.episodes == 0 {
        bail!("need at least one --shot value and one episode");
    }
    // Check the split before the (slower) backbone load: bad data fails fast.
    let csv = cfg.data.join(cfg.split.file_name());
    let list = MiniImageNet::open(&cfg.data)?.split(cfg.split)?;
    let class_images = class_images(list.items.iter().map(|(_, c)| *c), list.num_classes());
    let plan = plan_episodes(
        &class_images,
        cfg.way,
        &cfg.shots,
        cfg.query,
        cfg.episodes,
        cfg.seed,
    )
    .map_err(|e| anyhow!("{}: {e}", csv.display()))?;
    list.check_files()?;
    let (net, hash) = super::open_backbone(&cfg.backbone, device)?;
    let dim = net.config().feature_dim();
    let todo = &plan.images;
    let feats = features::extract(
        &net,
        trainer::train::data::source(&list),
        todo,
        cfg.image_size,
        cfg.batch,
        device,
    )?;
    let mut row_of = vec![usize::MAX; list.len()];
    for (r, &i) in feats.indices.iter().enumerate() {
        row_of[i] = r;
    }
    let feature = |i: usize| {
        row_of
            .get(i)
            .filter(|&&r| r != usize::MAX)
            .map(|&r| feats.row(r))
    };
    let mut results = Vec::new();
    let mut per_episode = Vec::new();
    for (&shot, eps) in cfg.shots.iter().zip(&plan.episodes) {
        let accs = run_episodes(eps, feature, dim, cfg.classifier, cfg.seed, shot, &|| {})?;
        let (accuracy, ci95) = episode_accuracy(&accs).ok_or_else(|| anyhow!("no episodes"))?;
        results.push(ShotResult {
            shot,
            accuracy,
            ci95,
            episodes: cfg.episodes,
        });
        per_episode.push(accs);
    }
    Ok(FewShotReport {
        results,
        per_episode,
        images_embedded: todo.len(),
        backbone_fnv64: hash,
    })
}

/// The JSON result; field names match runtime-cli's `eval fewshot` (`results[].shot/accuracy/
/// ci95/episodes`, `way`, `query`, `classifier`, `seed`, `split`) so a script can compare.
pub fn to_json(cfg: &FewShotConfig, r: &FewShotReport) -> serde_json::Value {
    serde_json::to_value(FewShotRecord::new(cfg, r)).expect("a few-shot record is JSON")
}

/// The JSON result as a struct: what [`to_json`] writes and the study's few-shot step records hold.
/// Fields a record lacks read as their defaults (the study shows them as empty cells).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(default)]
pub struct FewShotRecord {
    pub command: String,
    pub backbone: String,
    pub backbone_fnv64: String,
    pub data: String,
    pub split: String,
    pub way: usize,
    pub query: usize,
    pub episodes: u64,
    pub classifier: String,
    pub seed: u64,
    pub image_size: usize,
    pub images_embedded: usize,
    pub results: Vec<ShotResult>,
}

impl FewShotRecord {
    pub fn new(cfg: &FewShotConfig, r: &FewShotReport) -> Self {
        FewShotRecord {
            command: "eval fewshot".into(),
            backbone: cfg.backbone.display().to_string(),
            backbone_fnv64: r.backbone_fnv64.clone(),
            data: cfg.data.display().to_string(),
            split: cfg.split.file_name().trim_end_matches(".csv").into(),
            way: cfg.way,
            query: cfg.query,
            episodes: cfg.episodes,
            classifier: cfg.classifier.name().into(),
            seed: cfg.seed,
            image_size: cfg.image_size,
            images_embedded: r.images_embedded,
            results: r.results.clone(),
        }
    }
}

/// The small table printed without `--json`.
pub fn to_text(cfg: &FewShotConfig, r: &FewShotReport) -> String {
    let mut s = format!(
        "{}-way few-shot on {} ({} queries/class, {} classifier, seed {}, {} images embedded)\n  shot  accuracy %   ±95%   episodes",
        cfg.way,
        cfg.split.file_name().trim_end_matches(".csv"),
        cfg.query,
        cfg.classifier.name(),
        cfg.seed,
        r.images_embedded
    );
    for x in &r.results {
        s += &format!(
            "\n  {:>4}  {:>10.2}  {:>6.2}  {:>8}",
            x.shot, x.accuracy, x.ci95, x.episodes
        );
    }
    s
}
