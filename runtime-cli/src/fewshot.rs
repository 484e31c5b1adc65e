//! `eval fewshot`: Chen et al.'s few-shot protocol on a features model, with the heads fitted by
//! runtime-core's on-device code.
//!
//! Episodes are drawn by runtime-core's [`plan_episodes`], the planner host-trainer's `eval
//! fewshot` calls too, with the shared
//! [`EpisodeSampler`](runtime_core::protocol::fewshot::EpisodeSampler) (episode `e` of a
//! `shot`-shot run is a pure function of `(seed, shot, e)`), so the host with the same seed sees
//! the same episodes. Each image that some episode uses is embedded once (parallel over images,
//! one arena per worker); then episodes are classified in parallel and gathered in order, so the
//! result does not depend on the thread count.
//!
//! The linear classifier of episode `e` is seeded with [`classifier_seed`]`(seed, shot, e)`; the
//! host protocol must use the same function to reproduce device numbers.
use std::path::Path;

use crate::episodes::run_episodes;
use anyhow::{anyhow, bail, Result};
use data::{MiniImageNet, Split};
use rayon::prelude::*;
use runtime_core::metrics::episode_accuracy;
use runtime_core::protocol::fewshot::{class_images, plan_episodes, FewShotHead};
use runtime_core::Task;
use serde::{Deserialize, Serialize};

use crate::engine::{self, Runner};
use crate::progress;

pub use runtime_core::protocol::fewshot::{classifier_seed, MAX_EPISODE_WAY};

/// Few-shot head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Classifier {
    /// `Linear(dim → way)` fitted by SGD (the paper's protocol).
    Linear,
    /// Cosine nearest centroid.
    Centroid,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        self.head().name()
    }

    /// The shared head this flag selects.
    pub fn head(self) -> FewShotHead {
        match self {
            Classifier::Linear => FewShotHead::Linear,
            Classifier::Centroid => FewShotHead::Centroid,
        }
    }
}

/// Which mini-ImageNet CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    Test,
}

impl SplitArg {
    pub fn split(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

/// The few-shot protocol's flags, shared by `runtime-cli eval fewshot` and `host-trainer eval
/// fewshot` (flattened into each with `#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone)]
pub struct FewShotArgs {
    /// Which split's classes the episodes draw from.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    pub way: usize,
    /// Shot settings (shots per class), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub shot: Vec<usize>,
    #[arg(long, default_value_t = 600)]
    pub episodes: u64,
    /// Query images per class.
    #[arg(long, default_value_t = 15)]
    pub query: usize,
    #[arg(long, value_enum, default_value = "linear")]
    pub classifier: Classifier,
    /// Episode seed: the same seed gives the same episodes in host-trainer and runtime-cli.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl FewShotArgs {
    /// What the flags ask to evaluate.
    pub fn spec(&self) -> FewShotSpec {
        FewShotSpec {
            split: self.split,
            way: self.way,
            shots: self.shot.clone(),
            episodes: self.episodes,
            query: self.query,
            classifier: self.classifier,
            seed: self.seed,
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct FewShotSpec {
    pub split: SplitArg,
    pub way: usize,
    pub shots: Vec<usize>,
    pub episodes: u64,
    pub query: usize,
    pub classifier: Classifier,
    pub seed: u64,
}

/// Accuracy of one shot setting, in %: an entry of `results` in the JSON of both `eval fewshot`s
/// (runtime-cli's and host-trainer's) and of the study's few-shot step records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotResult {
    pub shot: usize,
    #[serde(deserialize_with = "crate::nan::null_as_nan")]
    pub accuracy: f64,
    #[serde(deserialize_with = "crate::nan::null_as_nan")]
    pub ci95: f64,
    pub episodes: u64,
}

/// Results plus how many images were embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct FewShotResult {
    pub results: Vec<ShotResult>,
    pub images_embedded: usize,
}

/// Runs the protocol.
pub fn evaluate(
    model_path: &Path,
    data: &Path,
    spec: &FewShotSpec,
    show_progress: bool,
) -> Result<FewShotResult> {
    if spec.way > MAX_EPISODE_WAY {
        bail!(
            "--way {}: an episode holds at most {MAX_EPISODE_WAY} classes",
            spec.way
        );
    }
    if spec.shots.is_empty() || spec.episodes == 0 {
        bail!("need at least one --shot value and one episode");
    }
    let bytes = engine::read_model(model_path)?;
    let model = engine::parse_model(&bytes, model_path)?;
    engine::require_task(&model, model_path, Task::Features, "eval fewshot")?;
    let dim = model.output_len();
    let csv = data.join(spec.split.split().file_name());
    let list = MiniImageNet::open(data)?.split(spec.split.split())?;
    list.check_files()?;
    let class_images = class_images(list.items.iter().map(|(_, c)| *c), list.num_classes());
    // Draw every episode first: the union of their images is what must be embedded.
    let plan = plan_episodes(
        &class_images,
        spec.way,
        &spec.shots,
        spec.query,
        spec.episodes,
        spec.seed,
    )
    .map_err(|e| anyhow!("{}: {e}", csv.display()))?;
    let todo = &plan.images;

    let bar = progress::bar(todo.len() as u64, "embedding images", show_progress);
    let embedded: Vec<Vec<f32>> = todo
        .par_iter()
        .map_init(
            || Runner::new(&model),
            |runner, &i| {
                let img = engine::load_image(&list.items[i].0)?;
                let f = runner.features(&img)?;
                bar.inc(1);
                Ok(f)
            },
        )
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut features: Vec<Option<Vec<f32>>> = vec![None; list.len()];
    for (i, f) in todo.iter().zip(embedded) {
        features[*i] = Some(f);
    }

    // Episodes are scored by the shared runner ([`run_episodes`]), exactly as host-trainer
    // scores its candle features.
    let total: u64 = spec.episodes * spec.shots.len() as u64;
    let bar = progress::bar(total, "episodes", show_progress);
    let mut results = Vec::new();
    for (&shot, eps) in spec.shots.iter().zip(&plan.episodes) {
        let accs = run_episodes(
            eps,
            |i| features.get(i).and_then(|f| f.as_deref()),
            dim,
            spec.classifier.head(),
            spec.seed,
            shot,
            &|| bar.inc(1),
        )
        .map_err(|e| anyhow!("{}: {e}", model_path.display()))?;
        let (accuracy, ci95) = episode_accuracy(&accs).ok_or_else(|| anyhow!("no episodes"))?;
        results.push(ShotResult {
            shot,
            accuracy,
            ci95,
            episodes: spec.episodes,
        });
    }
    bar.finish_and_clear();
    Ok(FewShotResult {
        results,
        images_embedded: todo.len(),
    })
}

/// `--json` form.
pub fn to_json(r: &FewShotResult, model: &Path, spec: &FewShotSpec) -> serde_json::Value {
    serde_json::to_value(FewShotRecord::new(r, model, spec)).expect("a few-shot record is JSON")
}

/// The `--json` form as a struct: what [`to_json`] writes and the study's step records hold.
/// Fields a record lacks read as their defaults (the study shows them as empty cells).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FewShotRecord {
    pub command: String,
    pub model: String,
    pub split: String,
    pub results: Vec<ShotResult>,
    pub way: usize,
    pub query: usize,
    pub classifier: String,
    pub seed: u64,
    pub images_embedded: usize,
}

impl FewShotRecord {
    pub fn new(r: &FewShotResult, model: &Path, spec: &FewShotSpec) -> Self {
        FewShotRecord {
            command: "eval fewshot".into(),
            model: model.display().to_string(),
            split: spec
                .split
                .split()
                .file_name()
                .trim_end_matches(".csv")
                .into(),
            results: r.results.clone(),
            way: spec.way,
            query: spec.query,
            classifier: spec.classifier.name().into(),
            seed: spec.seed,
            images_embedded: r.images_embedded,
        }
    }
}

/// Human form.
pub fn to_text(r: &FewShotResult, spec: &FewShotSpec) -> String {
    let mut s = format!(
        "{}-way few-shot, {} queries per class, {} classifier, seed {} ({} images embedded)",
        spec.way,
        spec.query,
        spec.classifier.name(),
        spec.seed,
        r.images_embedded
    );
    for x in &r.results {
        s += &format!(
            "\n  {}-shot: {:.2}% ± {:.2}% ({} episodes)",
            x.shot, x.accuracy, x.ci95, x.episodes
        );
    }
    s
}
