//! What the study's tables hold (`results.json`), and the typed views of the step records they
//! are built from (each record is the serde form of the step's own result type).
use serde::{Deserialize, Serialize};

use super::*;
use crate::study::preset::Preset;

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
    pub method: String,
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
    pub cells: Vec<(String, usize, Option<Figure>)>,
}

/// What one pretraining run learnt (from its record): did the loss fall well below chance?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainRecord {
    pub domain: String,
    pub method: String,
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

/// The fields the tables read from a pretraining step's record (its `PretrainSummary`).
#[derive(Debug, Clone, Deserialize)]
pub struct PretrainRec {
    pub final_loss: Option<f64>,
    pub chance_loss: Option<f64>,
    #[serde(default)]
    pub images_seen: u64,
    #[serde(default)]
    pub queue: Option<usize>,
    #[serde(default)]
    pub train_images: usize,
    pub knn_top1: Option<f64>,
    pub knn_chance: Option<f64>,
    #[serde(default)]
    pub knn_init_top1: Option<f64>,
    #[serde(default)]
    pub knn_queries: usize,
    #[serde(default)]
    pub queue_probe: Option<trainer::train::pretrain::QueueProbe>,
}

/// Few-shot accuracy (host f32) of one method on the novel classes at one alignment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlignmentCell {
    pub alignment: f64,
    pub method: String,
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

/// One shot setting of a few-shot record (host `eval fewshot` and runtime-cli's share the layout).
#[derive(Debug, Clone, Deserialize)]
pub struct ShotRec {
    pub shot: usize,
    pub accuracy: f64,
    pub ci95: Option<f64>,
}

/// A few-shot step's record, as the tables read it.
#[derive(Debug, Clone, Deserialize)]
pub struct FewShotRec {
    #[serde(default)]
    pub results: Vec<ShotRec>,
}

impl FewShotRec {
    pub(in crate::study) fn figure(&self, shot: usize) -> Option<Figure> {
        let s = self.results.iter().find(|r| r.shot == shot)?;
        Some(Figure {
            value: s.accuracy,
            ci95: s.ci95,
        })
    }
}

/// A base-class probe's record.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeRec {
    pub accuracy: Option<f64>,
    pub ci95: Option<f64>,
}

/// A landmark step's record (host, with the mean-face baseline; or runtime-cli's `eval mafl`).
#[derive(Debug, Clone, Deserialize)]
pub struct LandmarkRec {
    pub iod_error: Option<f64>,
    pub ci95: Option<f64>,
    /// The no-image baseline (host records only).
    pub mean_face_iod_error: Option<f64>,
    pub mean_face_ci95: Option<f64>,
}

impl LandmarkRec {
    pub(in crate::study) fn figure(&self) -> Option<Figure> {
        Some(Figure {
            value: self.iod_error?,
            ci95: self.ci95,
        })
    }

    /// The mean-face baseline (`None` for records written before it).
    pub(super) fn mean_face(&self) -> Option<Figure> {
        Some(Figure {
            value: self.mean_face_iod_error?,
            ci95: self.mean_face_ci95,
        })
    }
}
