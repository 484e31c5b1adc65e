//! `eval fewshot`: Chen et al.'s few-shot protocol on a features model, with the heads fitted by
//! runtime-core's on-device code.
//!
//! Episodes come from runtime-core's shared [`EpisodeSampler`] (episode `e` of a `shot`-shot run
//! is a pure function of `(seed, shot, e)`), so the host's `eval fewshot` with the same seed sees
//! the same episodes. Each image that some episode uses is embedded once (parallel over images,
//! one arena per worker); then episodes are classified in parallel and gathered in order, so the
//! result does not depend on the thread count.
//!
//! The linear classifier of episode `e` is seeded with [`classifier_seed`]`(seed, shot, e)`; the
//! host protocol must use the same function to reproduce device numbers.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use host_trainer::data::{MiniImageNet, Split};
use rayon::prelude::*;
use runtime_core::heads::centroid::NearestCentroid;
use runtime_core::heads::linear::{LinearClassifier, SgdRecipe};
use runtime_core::metrics::episode_accuracy;
use runtime_core::protocol::fewshot::{episode_rng, Episode, EpisodeSampler, SampleError};
use runtime_core::Task;
use serde_json::json;

use crate::engine::{self, Runner};
use crate::progress;

/// Most classes per episode the heads are instantiated for.
pub const MAX_WAY: usize = 20;
/// Largest feature dimension the heads are instantiated for (ResNet-50 has 2048).
pub const MAX_DIM: usize = 4096;
/// Mixed into the user's seed so the classifier stream differs from the episode stream.
pub const CLASSIFIER_SEED_TAG: u64 = 0x11EA_C1A5_0000_0000;

/// Seed of the linear classifier of episode `e` of a `shot`-shot evaluation: the first output of
/// runtime-core's `episode_rng(seed ^ CLASSIFIER_SEED_TAG, shot, e)`. Depends only on these three
/// numbers, so any program (host, CLI, MCU) can reproduce it without replaying the sampler.
pub fn classifier_seed(seed: u64, shot: usize, e: u64) -> u64 {
    episode_rng(seed ^ CLASSIFIER_SEED_TAG, shot, e).next_u64()
}

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
        match self {
            Classifier::Linear => "linear",
            Classifier::Centroid => "centroid",
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

/// Accuracy of one shot setting, in %.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotResult {
    pub shot: usize,
    pub accuracy: f64,
    pub ci95: f64,
    pub episodes: u64,
}

/// Results plus how many images were embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct FewShotResult {
    pub results: Vec<ShotResult>,
    pub images_embedded: usize,
}

fn sample_error(e: SampleError, csv: &Path, spec: &FewShotSpec, shot: usize) -> anyhow::Error {
    let msg = match e {
        SampleError::TooFewClasses { classes, way } => {
            format!("the split has {classes} classes, {way}-way episodes need {way}")
        }
        SampleError::TooFewImages {
            class,
            images,
            needed,
        } => {
            format!(
                "class {class} has {images} images, {shot}-shot episodes with {} queries need {needed}",
                spec.query
            )
        }
        SampleError::Empty => "--way, --shot and --query must be at least 1".into(),
    };
    anyhow!("{}: {msg}", csv.display())
}

/// Runs the protocol.
pub fn evaluate(
    model_path: &Path,
    data: &Path,
    spec: &FewShotSpec,
    show_progress: bool,
) -> Result<FewShotResult> {
    if spec.way > MAX_WAY {
        bail!(
            "--way {}: the heads hold at most {MAX_WAY} classes",
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
    if dim > MAX_DIM {
        bail!(
            "{}: {dim} features, the heads hold at most {MAX_DIM}",
            model_path.display()
        );
    }
    let csv = data.join(spec.split.split().file_name());
    let list = MiniImageNet::open(data)?.split(spec.split.split())?;
    list.check_files()?;
    let mut class_images = vec![Vec::new(); list.num_classes()];
    for (i, (_, label)) in list.items.iter().enumerate() {
        class_images[*label].push(i);
    }

    // Draw every episode first: the union of their images is what must be embedded.
    let mut episodes: Vec<Vec<Episode>> = Vec::with_capacity(spec.shots.len());
    let mut needed = vec![false; list.len()];
    for &shot in &spec.shots {
        let sampler = EpisodeSampler {
            way: spec.way,
            shot,
            query: spec.query,
            seed: spec.seed,
        };
        let sizes: Vec<usize> = class_images.iter().map(Vec::len).collect();
        sampler
            .check(&sizes)
            .map_err(|e| sample_error(e, &csv, spec, shot))?;
        let eps = (0..spec.episodes)
            .into_par_iter()
            .map(|e| {
                sampler
                    .episode(e, &class_images)
                    .map_err(|err| sample_error(err, &csv, spec, shot))
            })
            .collect::<Result<Vec<_>>>()?;
        for ep in &eps {
            for &(_, i) in ep.support.iter().chain(&ep.query) {
                needed[i] = true;
            }
        }
        episodes.push(eps);
    }
    let todo: Vec<usize> = (0..list.len()).filter(|&i| needed[i]).collect();

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

    // The heads keep their state in fixed arrays on the stack (as on the MCU); give the
    // workers room for the largest instantiation.
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(64 << 20)
        .build()
        .context("cannot start worker threads")?;
    let total: u64 = spec.episodes * spec.shots.len() as u64;
    let bar = progress::bar(total, "episodes", show_progress);
    let mut results = Vec::new();
    for (&shot, eps) in spec.shots.iter().zip(&episodes) {
        let accs: Vec<f64> = pool.install(|| {
            eps.par_iter()
                .enumerate()
                .map(|(e, ep)| {
                    let a = episode_accuracy_pct(
                        ep,
                        &features,
                        dim,
                        spec.classifier,
                        classifier_seed(spec.seed, shot, e as u64),
                    );
                    bar.inc(1);
                    a
                })
                .collect::<Result<_>>()
        })?;
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

/// Accuracy (%) of one episode. Dispatches to a head capacity that fits `dim`, so small models
/// do not pay for the largest arrays.
pub fn episode_accuracy_pct(
    ep: &Episode,
    features: &[Option<Vec<f32>>],
    dim: usize,
    classifier: Classifier,
    seed: u64,
) -> Result<f64> {
    match dim {
        0..=64 => episode_with::<64>(ep, features, dim, classifier, seed),
        65..=512 => episode_with::<512>(ep, features, dim, classifier, seed),
        513..=MAX_DIM => episode_with::<MAX_DIM>(ep, features, dim, classifier, seed),
        _ => bail!("{dim} features, the heads hold at most {MAX_DIM}"),
    }
}

fn episode_with<const D: usize>(
    ep: &Episode,
    features: &[Option<Vec<f32>>],
    dim: usize,
    classifier: Classifier,
    seed: u64,
) -> Result<f64> {
    let feat = |i: usize| {
        features
            .get(i)
            .and_then(|f| f.as_deref())
            .ok_or_else(|| anyhow!("internal: image {i} was not embedded"))
    };
    let way = ep.classes.len();
    let mut xs = Vec::with_capacity(ep.support.len() * dim);
    let mut labels = Vec::with_capacity(ep.support.len());
    for &(label, i) in &ep.support {
        xs.extend_from_slice(feat(i)?);
        labels.push(u8::try_from(label).map_err(|_| anyhow!("episode label {label} too large"))?);
    }
    let head_err = |e| anyhow!("few-shot head refused the support set: {e:?}");
    let mut correct = 0usize;
    match classifier {
        Classifier::Linear => {
            let h = LinearClassifier::<MAX_WAY, D>::fit(
                &xs,
                &labels,
                way,
                dim,
                &SgdRecipe::default(),
                seed,
            )
            .map_err(head_err)?;
            for &(label, i) in &ep.query {
                correct += (h.predict(feat(i)?).map_err(head_err)? == label) as usize;
            }
        }
        Classifier::Centroid => {
            let h = NearestCentroid::<MAX_WAY, D>::fit(&xs, &labels, way, dim).map_err(head_err)?;
            for &(label, i) in &ep.query {
                correct += (h.predict(feat(i)?).map_err(head_err)? == label) as usize;
            }
        }
    }
    Ok(100.0 * correct as f64 / ep.query.len() as f64)
}

/// `--json` form.
pub fn to_json(r: &FewShotResult, model: &Path, spec: &FewShotSpec) -> serde_json::Value {
    let results: Vec<_> = r
        .results
        .iter()
        .map(|s| json!({"shot": s.shot, "accuracy": s.accuracy, "ci95": s.ci95, "episodes": s.episodes}))
        .collect();
    json!({
        "command": "eval fewshot",
        "model": model.display().to_string(),
        "split": spec.split.split().file_name().trim_end_matches(".csv"),
        "results": results,
        "way": spec.way,
        "query": spec.query,
        "classifier": spec.classifier.name(),
        "seed": spec.seed,
        "images_embedded": r.images_embedded,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_seed_depends_on_all_three_numbers_only() {
        let s = classifier_seed(7, 5, 3);
        assert_eq!(s, classifier_seed(7, 5, 3));
        assert_ne!(s, classifier_seed(8, 5, 3));
        assert_ne!(s, classifier_seed(7, 1, 3));
        assert_ne!(s, classifier_seed(7, 5, 4));
        // Not the episode stream itself (that one picks the classes).
        assert_ne!(s, episode_rng(7, 5, 3).next_u64());
    }

    #[test]
    fn centroid_episode_on_separable_features_is_perfect_and_a_swap_is_not() {
        // 2-way, features: class 0 along x, class 1 along y. Image i: 0..4 class 0, 4..8 class 1.
        let features: Vec<Option<Vec<f32>>> = (0..8)
            .map(|i| {
                Some(if i < 4 {
                    vec![1.0 + i as f32, 0.1]
                } else {
                    vec![0.1, 2.0 + i as f32]
                })
            })
            .collect();
        let ep = Episode {
            classes: vec![0, 1],
            support: vec![(0, 0), (1, 4)],
            query: vec![(0, 1), (0, 2), (1, 5), (1, 6)],
        };
        assert_eq!(
            episode_accuracy_pct(&ep, &features, 2, Classifier::Centroid, 0).unwrap(),
            100.0
        );
        assert_eq!(
            episode_accuracy_pct(&ep, &features, 2, Classifier::Linear, 1).unwrap(),
            100.0
        );
        // Queries labelled with the wrong class: 0%; one of four wrong: 75%.
        let wrong = Episode {
            query: vec![(1, 1), (1, 2), (0, 5), (0, 6)],
            ..ep.clone()
        };
        assert_eq!(
            episode_accuracy_pct(&wrong, &features, 2, Classifier::Centroid, 0).unwrap(),
            0.0
        );
        let one = Episode {
            query: vec![(0, 1), (0, 2), (1, 5), (0, 6)],
            ..ep
        };
        assert_eq!(
            episode_accuracy_pct(&one, &features, 2, Classifier::Centroid, 0).unwrap(),
            75.0
        );
    }
}
