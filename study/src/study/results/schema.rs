//! What the study's tables hold (`results.json`), and the typed views of the step records they
//! are built from (each record is the serde form of the step's own result type).
use serde::{Deserialize, Serialize};

use trainer::method::Method;

use super::*;
use crate::study::preset::Preset;
use crate::study::Backbone;

/// A figure with its 95% interval half-width (`None` when the protocol gives none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figure {
    pub value: f64,
    pub ci95: Option<f64>,
}

/// One shot setting: host f32 and runtime int8 accuracy (%).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShotCell {
    pub shot: usize,
    pub host: Option<Figure>,
    pub runtime_int8: Option<Figure>,
}

/// One method's figures (a row of Tables 4 and 5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodRow {
    pub method: Backbone,
    /// Base-class probe accuracy (%), host only (the runtime has no probe).
    pub base: Option<Figure>,
    pub fewshot: Vec<ShotCell>,
    /// MAFL IOD error (%), lower is better.
    pub iod_host: Option<Figure>,
    pub iod_runtime_int8: Option<Figure>,
}

/// One row of the augmentation ablation: few-shot accuracy per (method, shot), host f32.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationRow {
    pub label: String,
    pub aug: String,
    /// (method, shot, accuracy).
    pub cells: Vec<(Method, usize, Option<Figure>)>,
}

/// What one pretraining run learnt (from its record): did the loss fall well below chance?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainRecord {
    pub domain: String,
    pub method: Method,
    pub final_loss: f64,
    /// ln of the candidates each softmax compares (see `method::contrastive::chance_loss`).
    pub chance_loss: f64,
    /// `final_loss / chance_loss`.
    pub loss_ratio: f64,
    pub images_seen: u64,
    /// MoCo/Exemplar: the queue length K.
    pub queue: Option<usize>,
    /// N, the run's training images.
    pub train_images: usize,
    /// K/N: above 1/2 each instance's own older keys sit in its queue as negatives (the study
    /// keeps K ≤ N/2, `plan::queue_within_half`; runs recorded before that may not).
    pub queue_over_train: Option<f64>,
    pub knn_top1: Option<f64>,
    pub knn_chance: Option<f64>,
    /// kNN top-1 of the same network at initialisation (same bank and queries).
    pub knn_init_top1: Option<f64>,
    /// MoCo/Exemplar: the loss of one batch against the final queue re-encoded by the final key
    /// encoder (the staleness probe, `train::pretrain::QueueProbe::loss_fresh`): the final loss
    /// without the part owed to key age.
    pub probe_loss_fresh: Option<f64>,
    /// Whether the run visibly learnt: loss ≤ [`LEARNT_LOSS_RATIO`] × chance (the final loss and,
    /// when probed, the fresh-key loss against the probe's chance) and (when measured) kNN top-1
    /// ≥ [`LEARNT_KNN_FACTOR`] × chance and above the network's own kNN at initialisation by
    /// more than [`LEARNT_KNN_INIT_SE`] binomial standard errors. `false` is flagged in
    /// `results.md`.
    pub learnt: bool,
}

/// A pretraining step's record: the run's own summary.
pub use trainer::train::pretrain::PretrainSummary as PretrainRec;

/// A record's figure, `None` where it is not finite (JSON has no NaN: such a figure was written
/// as `null` and reads back as NaN).
pub(in crate::study) fn finite(x: f64) -> Option<f64> {
    Some(x).filter(|x| x.is_finite())
}

/// Few-shot accuracy (host f32) of one method on the novel classes at one alignment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlignmentCell {
    pub alignment: f64,
    pub method: Backbone,
    /// (shot, accuracy).
    pub fewshot: Vec<(usize, Option<Figure>)>,
}

/// Per-step and total wall time, summed over the records (so across restarts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WallTime {
    pub steps: Vec<(String, f64)>,
    pub total: f64,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyResults {
    pub preset: Preset,
    pub seed: u64,
    pub rows: Vec<MethodRow>,
    /// Each pretraining run's loss against chance, images seen and kNN monitor.
    pub pretraining: Vec<PretrainRecord>,
    /// The alignment sweep: few-shot per (alignment, method); alignment 1 is the main objects.
    pub alignment: Vec<AlignmentCell>,
    /// [`alignment_claims`] on it.
    pub alignment_orderings: Vec<Claim>,
    /// Table 5's no-image baseline: the IOD error (%) of predicting the MAFL training faces' mean
    /// landmarks for every test face (recorded by each landmark step; the first one found).
    pub mean_face: Option<Figure>,
    pub ablation: Vec<AblationRow>,
    pub orderings: Vec<Claim>,
    /// Feature inversion, Table 2 and Table 10 (what the preset runs).
    pub analyses: crate::study::analyses::Analyses,
    pub wall_seconds: WallTime,
}

/// A runtime few-shot step's record (`runtime-cli eval fewshot --json`).
pub use runtime_cli::fewshot::FewShotRecord as RuntimeFewShotRec;
/// One shot setting of a few-shot record (host `eval fewshot` and runtime-cli's share it).
pub use runtime_cli::fewshot::ShotResult as ShotRec;
/// A runtime landmark step's record (`runtime-cli eval mafl --json`).
pub use runtime_cli::mafl::MaflRecord as MaflRec;
/// A host few-shot step's record (`host-trainer eval fewshot --json`).
pub use transfer_eval::fewshot::FewShotRecord as FewShotRec;

/// The figure of `shot` among a few-shot record's `results`.
pub(in crate::study) fn shot_figure(results: &[ShotRec], shot: usize) -> Option<Figure> {
    let s = results.iter().find(|r| r.shot == shot)?;
    Some(Figure {
        value: s.accuracy,
        ci95: finite(s.ci95),
    })
}

/// A base-class probe step's record: `eval base`'s JSON and the binomial 95% interval of its
/// top-1 accuracy over the test images (in points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRec {
    #[serde(flatten)]
    pub probe: transfer_eval::probe::ProbeRecord,
    #[serde(default)]
    pub ci95: Option<f64>,
}

impl ProbeRec {
    pub(in crate::study) fn figure(&self) -> Option<Figure> {
        Some(Figure {
            value: self.probe.accuracy?,
            ci95: self.ci95,
        })
    }
}

/// A host landmark step's record: `eval landmarks`' JSON, the interval from the per-image
/// errors, and the mean-face baseline over the same test faces (its `mean_face_iod_error` is the
/// per-image mean, which replaces the library's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandmarkRec {
    #[serde(flatten)]
    pub eval: transfer_eval::landmarks::LandmarkRecord,
    /// The mean of the per-image IOD errors (%).
    #[serde(default)]
    pub iod_error_per_image_mean: Option<f64>,
    /// 95% interval half-width of the test IOD error, from the per-image errors.
    #[serde(default)]
    pub ci95: Option<f64>,
    /// The same interval for the mean-face baseline (absent in records written before it).
    #[serde(default)]
    pub mean_face_ci95: Option<f64>,
}

impl LandmarkRec {
    pub(in crate::study) fn figure(&self) -> Option<Figure> {
        Some(Figure {
            value: self.eval.iod_error?,
            ci95: self.ci95,
        })
    }

    /// The mean-face baseline (`None` for records written before it).
    pub(super) fn mean_face(&self) -> Option<Figure> {
        Some(Figure {
            value: self.eval.mean_face_iod_error?,
            ci95: self.mean_face_ci95,
        })
    }
}

/// The figure of a runtime landmark record (runtime-cli gives no interval).
pub(in crate::study) fn mafl_figure(r: &MaflRec) -> Option<Figure> {
    Some(Figure {
        value: r.iod_error?,
        ci95: None,
    })
}
