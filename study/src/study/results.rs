//! The study's tables: collected from the step records, written as `results.json` (everything,
//! machine-readable) and `results.md` (the paper's Tables 4, 5 and 1, and the orderings).
//!
//! The "orderings" are computed: for each of the paper's claims "A beats B", the margin A−B (in
//! the direction the paper claims) is compared with the combined 95% interval
//! √(ci_A² + ci_B²) of the two figures.
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::preset::Preset;
use super::{ids, read_record, rows, Plan};

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

/// How a claim of the paper fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The margin exceeds the combined 95% interval.
    Holds,
    /// Right direction, but within the combined interval.
    HoldsWithinNoise,
    /// Exactly equal figures.
    Tie,
    /// Wrong direction, within the combined interval.
    ReversedWithinNoise,
    /// Wrong direction beyond the combined interval.
    Reversed,
    /// A figure is missing.
    Missing,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::HoldsWithinNoise => "holds, but within the noise",
            Verdict::Tie => "tie (equal figures)",
            Verdict::ReversedWithinNoise => "reversed, within the noise",
            Verdict::Reversed => "does not reproduce (reversed beyond the noise)",
            Verdict::Missing => "not measured",
        }
    }
}

/// One of the paper's orderings, checked on the measured numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Claim {
    /// e.g. "novel 1-shot: exemplar-v2 > supervised".
    pub claim: String,
    /// The paper's two figures, for reference.
    pub paper: String,
    /// Measured margin in the claimed direction (positive = as the paper says), in points.
    pub margin: Option<f64>,
    /// Combined 95% interval of the two figures.
    pub ci95: Option<f64>,
    pub verdict: Verdict,
}

/// Classify a margin (in the claimed direction) against a combined interval.
pub fn verdict(margin: f64, ci: f64) -> Verdict {
    if margin > ci {
        Verdict::Holds
    } else if margin > 0.0 {
        Verdict::HoldsWithinNoise
    } else if margin == 0.0 {
        Verdict::Tie
    } else if margin >= -ci {
        Verdict::ReversedWithinNoise
    } else {
        Verdict::Reversed
    }
}

/// `better` beats `worse`: higher wins unless `lower_is_better`.
pub fn claim(
    text: String,
    paper: String,
    better: Option<Figure>,
    worse: Option<Figure>,
    lower_is_better: bool,
) -> Claim {
    match (better, worse) {
        (Some(a), Some(b)) => {
            let margin = if lower_is_better {
                b.value - a.value
            } else {
                a.value - b.value
            };
            let ci = (a.ci95.unwrap_or(0.0).powi(2) + b.ci95.unwrap_or(0.0).powi(2)).sqrt();
            Claim {
                claim: text,
                paper,
                margin: Some(margin),
                ci95: Some(ci),
                verdict: verdict(margin, ci),
            }
        }
        _ => Claim {
            claim: text,
            paper,
            margin: None,
            ci95: None,
            verdict: Verdict::Missing,
        },
    }
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

/// A pretraining "visibly learnt" when its final loss is at most this fraction of chance.
pub const LEARNT_LOSS_RATIO: f64 = 0.6;
/// ... and its kNN top-1 is at least this many times chance.
pub const LEARNT_KNN_FACTOR: f64 = 2.0;
/// ... and above the kNN top-1 of its own random initialisation by more than this many binomial
/// standard errors √(p(1−p)/n) of the initial accuracy p over the n queries. Random
/// convolutional features already classify far above guessing (the `scratch` rows), so beating
/// guessing alone does not show that pretraining learnt anything.
pub const LEARNT_KNN_INIT_SE: f64 = 2.0;

/// Whether kNN top-1 `knn` (%) beats the initial network's `init` (%) over `queries` held-out
/// images by more than [`LEARNT_KNN_INIT_SE`] standard errors.
pub fn beats_init_knn(knn: f64, init: f64, queries: usize) -> bool {
    let p = (init / 100.0).clamp(0.0, 1.0);
    let se = 100.0 * (p * (1.0 - p) / queries.max(1) as f64).sqrt();
    knn > init + LEARNT_KNN_INIT_SE * se
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

fn pretrain_record(domain: &str, method: &str, v: &PretrainRec) -> Option<PretrainRecord> {
    let (final_loss, chance_loss) = (v.final_loss?, v.chance_loss?);
    let loss_ratio = final_loss / chance_loss;
    let knn_ok = match (v.knn_top1, v.knn_chance) {
        (Some(k), Some(c)) => k >= LEARNT_KNN_FACTOR * c,
        _ => true,
    };
    let fresh_ok = v
        .queue_probe
        .is_none_or(|p| p.loss_fresh <= LEARNT_LOSS_RATIO * p.chance);
    let beats_init = match (v.knn_top1, v.knn_init_top1) {
        (Some(k), Some(i)) => beats_init_knn(k, i, v.knn_queries),
        _ => true,
    };
    Some(PretrainRecord {
        domain: domain.into(),
        method: method.into(),
        final_loss,
        chance_loss,
        loss_ratio,
        images_seen: v.images_seen,
        queue: v.queue,
        train_images: v.train_images,
        queue_over_train: v
            .queue
            .filter(|_| v.train_images > 0)
            .map(|k| k as f64 / v.train_images as f64),
        knn_top1: v.knn_top1,
        knn_chance: v.knn_chance,
        knn_init_top1: v.knn_init_top1,
        probe_loss_fresh: v.queue_probe.map(|p| p.loss_fresh),
        learnt: loss_ratio <= LEARNT_LOSS_RATIO && fresh_ok && knn_ok && beats_init,
    })
}

/// Few-shot accuracy (host f32) of one method on the novel classes at one alignment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlignmentCell {
    pub alignment: f64,
    pub method: String,
    /// (shot, accuracy).
    pub fewshot: Vec<(usize, Option<Figure>)>,
}

/// The predictions of the paper's argument (§3–4) for the alignment sweep, checked like the
/// other orderings: supervised ahead when the novel task is aligned with the base labels,
/// the instance-discriminative methods ahead when it is not, Exemplar ≥ MoCo throughout.
pub fn alignment_claims(cells: &[AlignmentCell], shots: &[usize]) -> Vec<Claim> {
    let fig = |m: &str, a: f64, k: usize| {
        cells
            .iter()
            .find(|c| c.method == m && (c.alignment - a).abs() < 1e-9)
            .and_then(|c| c.fewshot.iter().find(|f| f.0 == k))
            .and_then(|f| f.1)
    };
    let mut alignments: Vec<f64> = cells.iter().map(|c| c.alignment).collect();
    alignments.sort_by(|a, b| b.total_cmp(a));
    alignments.dedup();
    let (Some(&hi), Some(&lo)) = (alignments.first(), alignments.last()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &k in shots {
        for c in ["moco-v2", "exemplar-v2"] {
            out.push(claim(
                format!("alignment {hi}, {k}-shot: supervised > {c}"),
                "predicted".into(),
                fig("supervised", hi, k),
                fig(c, hi, k),
                false,
            ));
            if lo < hi {
                out.push(claim(
                    format!("alignment {lo}, {k}-shot: {c} > supervised"),
                    "predicted".into(),
                    fig(c, lo, k),
                    fig("supervised", lo, k),
                    false,
                ));
            }
        }
        for &a in &alignments {
            out.push(claim(
                format!("alignment {a}, {k}-shot: exemplar-v2 ≥ moco-v2"),
                "predicted".into(),
                fig("exemplar-v2", a, k),
                fig("moco-v2", a, k),
                false,
            ));
        }
    }
    out.retain(|c| c.verdict != Verdict::Missing);
    out
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
    pub analyses: super::analyses::Analyses,
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
    pub(super) fn figure(&self, shot: usize) -> Option<Figure> {
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
    pub(super) fn figure(&self) -> Option<Figure> {
        Some(Figure {
            value: self.iod_error?,
            ci95: self.ci95,
        })
    }

    /// The mean-face baseline (`None` for records written before it).
    fn mean_face(&self) -> Option<Figure> {
        Some(Figure {
            value: self.mean_face_iod_error?,
            ci95: self.mean_face_ci95,
        })
    }
}

/// The record of step `id` read as `T` (`None` if the step has not run). Fields a record lacks
/// give empty cells; a field of the wrong type is an error naming the record's file.
pub(super) fn record<T: DeserializeOwned>(out: &Path, id: &str) -> Result<Option<T>> {
    let Some(r) = read_record(out, id)? else {
        return Ok(None);
    };
    serde_json::from_value(r.result).map(Some).with_context(|| {
        format!(
            "{}: a field the tables read has the wrong type (written by another version?)",
            super::record_path(out, id).display()
        )
    })
}

/// Build the tables from the records under `out` (missing steps give empty cells).
pub fn collect(plan: &Plan, out: &Path) -> Result<StudyResults> {
    let p = &plan.preset;
    let mut table = Vec::new();
    for m in rows(p) {
        let fs: Option<FewShotRec> = record(out, &ids::fewshot(&m))?;
        let rt: Option<FewShotRec> = record(out, &ids::runtime_fewshot(&m))?;
        let fewshot = p
            .fewshot
            .shots
            .iter()
            .map(|&k| ShotCell {
                shot: k,
                host: fs.as_ref().and_then(|v| v.figure(k)),
                runtime_int8: rt.as_ref().and_then(|v| v.figure(k)),
            })
            .collect();
        let base = record::<ProbeRec>(out, &ids::base(&m))?.and_then(|v| {
            Some(Figure {
                value: v.accuracy?,
                ci95: v.ci95,
            })
        });
        let iod_host = record::<LandmarkRec>(out, &ids::landmarks(&m))?.and_then(|v| v.figure());
        let iod_runtime_int8 =
            record::<LandmarkRec>(out, &ids::runtime_mafl(&m))?.and_then(|v| v.figure());
        table.push(MethodRow {
            method: m,
            base,
            fewshot,
            iod_host,
            iod_runtime_int8,
        });
    }
    let mut ablation = Vec::new();
    if p.runs(super::preset::Ablation::Augment) {
        for (k, (label, aug)) in p.ablation.levels.iter().enumerate() {
            let mut cells = Vec::new();
            for m in &p.ablation.methods {
                let v: Option<FewShotRec> = record(out, &ids::ablation_fewshot(m, k))?;
                for &s in &p.fewshot.shots {
                    cells.push((m.clone(), s, v.as_ref().and_then(|v| v.figure(s))));
                }
            }
            ablation.push(AblationRow {
                label: label.clone(),
                aug: aug.clone(),
                cells,
            });
        }
    }
    let mut steps = Vec::new();
    for s in &plan.steps {
        if let Some(r) = read_record(out, &s.id)? {
            steps.push((s.id.clone(), r.seconds));
        }
    }
    let total = steps.iter().map(|(_, t)| t).sum();
    let mut mean_face = None;
    for m in rows(p) {
        if let Some(v) = record::<LandmarkRec>(out, &ids::landmarks(&m))? {
            mean_face = v.mean_face();
            if mean_face.is_some() {
                break;
            }
        }
    }
    let mut pretraining = Vec::new();
    for domain in ["objects", "faces"] {
        for m in &p.methods {
            if let Some(v) = record::<PretrainRec>(out, &super::ids::pretrain(domain, m))? {
                pretraining.extend(pretrain_record(domain, m, &v));
            }
        }
    }
    let mut alignment = Vec::new();
    if !p.alignments.is_empty()
        && plan
            .steps
            .iter()
            .any(|s| s.id == super::ids::FIGURE_ALIGNMENT)
    {
        let cells = |a: f64, id: &dyn Fn(&str) -> String| -> Result<Vec<AlignmentCell>> {
            let mut v = Vec::new();
            for m in rows(p) {
                let r: Option<FewShotRec> = record(out, &id(&m))?;
                let fewshot = p
                    .fewshot
                    .shots
                    .iter()
                    .map(|&k| (k, r.as_ref().and_then(|v| v.figure(k))))
                    .collect();
                v.push(AlignmentCell {
                    alignment: a,
                    method: m,
                    fewshot,
                });
            }
            Ok(v)
        };
        alignment.extend(cells(1.0, &|m| ids::fewshot(m))?);
        for &a in &p.alignments {
            alignment.extend(cells(a, &|m| super::ids::aligned_fewshot(m, a))?);
        }
    }
    let alignment_orderings = alignment_claims(&alignment, &p.fewshot.shots);
    let orderings = orderings(&table, mean_face, &ablation, &p.fewshot.shots);
    Ok(StudyResults {
        preset: p.clone(),
        seed: p.seed,
        rows: table,
        pretraining,
        alignment,
        alignment_orderings,
        mean_face,
        ablation,
        orderings,
        analyses: super::analyses::collect(p, out)?,
        wall_seconds: WallTime { steps, total },
    })
}

/// The paper's figures (Tables 4 and 5, ResNet-18 / mini-ImageNet / MAFL), for the "paper"
/// column of the orderings: base, 1-shot, 5-shot, landmark error.
fn paper_figures(method: &str) -> Option<[f64; 4]> {
    match method {
        "supervised" => Some([83.6, 54.60, 74.50, 6.39]),
        "moco-v2" => Some([75.3, 52.14, 73.30, 5.89]),
        "exemplar-v2" => Some([79.9, 55.33, 77.18, 5.89]),
        "scratch" => Some([f64::NAN, f64::NAN, f64::NAN, 24.6]),
        _ => None,
    }
}

fn paper_pair(a: &str, b: &str, k: usize) -> String {
    match (paper_figures(a), paper_figures(b)) {
        (Some(x), Some(y)) => format!("{} vs {}", x[k], y[k]),
        _ => "-".into(),
    }
}

/// The paper's orderings checked on `rows` (and the ablation's "contrastive gains more from
/// augmentation" claim).
/// `mean_face` is Table 5's no-image baseline: every method is also checked against it, since
/// a landmark error that does not beat it means the fine-tuning learned nothing from the images.
pub fn orderings(
    rows: &[MethodRow],
    mean_face: Option<Figure>,
    ablation: &[AblationRow],
    shots: &[usize],
) -> Vec<Claim> {
    let row = |m: &str| rows.iter().find(|r| r.method == m);
    let mut out = Vec::new();
    // Table 4, base classes: supervised > exemplar-v2 > moco-v2.
    for (a, b) in [
        ("supervised", "moco-v2"),
        ("exemplar-v2", "moco-v2"),
        ("supervised", "exemplar-v2"),
    ] {
        if let (Some(x), Some(y)) = (row(a), row(b)) {
            out.push(claim(
                format!("base classes: {a} > {b}"),
                paper_pair(a, b, 0),
                x.base,
                y.base,
                false,
            ));
        }
    }
    // Table 4, novel classes: exemplar-v2 > supervised > moco-v2.
    for &k in shots {
        let col = match k {
            1 => 1,
            5 => 2,
            _ => usize::MAX,
        };
        for (a, b) in [
            ("exemplar-v2", "supervised"),
            ("supervised", "moco-v2"),
            ("exemplar-v2", "moco-v2"),
        ] {
            if let (Some(x), Some(y)) = (row(a), row(b)) {
                let f = |r: &MethodRow| r.fewshot.iter().find(|c| c.shot == k).and_then(|c| c.host);
                let paper = if col == usize::MAX {
                    "-".into()
                } else {
                    paper_pair(a, b, col)
                };
                out.push(claim(
                    format!("novel {k}-shot: {a} > {b}"),
                    paper,
                    f(x),
                    f(y),
                    false,
                ));
            }
        }
    }
    // Table 5 (error, lower is better): moco-v2 and exemplar-v2 beat supervised; all beat scratch.
    for (a, b) in [
        ("moco-v2", "supervised"),
        ("exemplar-v2", "supervised"),
        ("supervised", "scratch"),
        ("moco-v2", "scratch"),
        ("exemplar-v2", "scratch"),
    ] {
        if let (Some(x), Some(y)) = (row(a), row(b)) {
            out.push(claim(
                format!("landmark error: {a} < {b}"),
                paper_pair(a, b, 3),
                x.iod_host,
                y.iod_host,
                true,
            ));
        }
    }
    // Not a claim of the paper but its premise: every method beats the mean face.
    for r in rows {
        out.push(claim(
            format!(
                "landmark error: {} < mean face (beats the mean face)",
                r.method
            ),
            "-".into(),
            r.iod_host,
            mean_face,
            true,
        ));
    }
    // Table 1: the contrastive model gains more from the added augmentations than the supervised
    // one (gain = last row − first row).
    if let (Some(first), Some(last)) = (ablation.first(), ablation.last()) {
        if ablation.len() >= 2 {
            for &k in shots {
                let gain = |m: &str| -> Option<Figure> {
                    let get = |r: &AblationRow| {
                        r.cells
                            .iter()
                            .find(|c| c.0 == m && c.1 == k)
                            .and_then(|c| c.2)
                    };
                    let (a, b) = (get(last)?, get(first)?);
                    let ci = (a.ci95.unwrap_or(0.0).powi(2) + b.ci95.unwrap_or(0.0).powi(2)).sqrt();
                    Some(Figure {
                        value: a.value - b.value,
                        ci95: Some(ci),
                    })
                };
                out.push(claim(
                    format!("augmentation gain ({k}-shot): moco-v2 > supervised"),
                    "ImageNet acc. +61.1 vs +6.4".into(),
                    gain("moco-v2"),
                    gain("supervised"),
                    false,
                ));
            }
        }
    }
    out
}

pub(super) fn cell(f: Option<Figure>) -> String {
    match f {
        Some(Figure {
            value,
            ci95: Some(c),
        }) => format!("{value:.2} ± {c:.2}"),
        Some(Figure { value, ci95: None }) => format!("{value:.2}"),
        None => "-".into(),
    }
}

/// Header and rule of the alignment table (`| alignment | method | k-shot |…`), shared with the
/// multi-seed report.
pub fn alignment_table_head(shots: &[usize]) -> String {
    let mut s = String::from("| alignment | method |");
    for k in shots {
        s += &format!(" {k}-shot |");
    }
    s += "\n|---|---|";
    s += &"---|".repeat(shots.len());
    s + "\n"
}

/// `results.md`.
pub fn markdown(r: &StudyResults) -> String {
    let p = &r.preset;
    let mut s = String::new();
    s += &format!("# Study results (preset `{}`, seed {})\n\n", p.name, r.seed);
    s += &format!(
        "ResNet-18 at width {}, {} px, {} pretraining epochs on objects and {} on faces, batch {}; \
         {} episodes of {}-way few-shot with {} queries per class; {} landmark epochs. \
         Intervals are 95%: few-shot over episodes, base accuracy binomial over the test images, \
         landmark error over the test faces. Host = candle f32; int8 = the exported model on runtime-core.\n\n",
        p.pretrain.width,
        p.pretrain.image_size,
        p.pretrain.epochs_objects,
        p.pretrain.epochs_faces,
        p.pretrain.batch,
        p.fewshot.episodes,
        p.fewshot.way,
        p.fewshot.query,
        p.landmark_epochs
    );
    s += "## Table 4 layout: few-shot recognition on the novel classes (objects)\n\n| method | base acc (host) |";
    for c in r.rows.first().map(|x| x.fewshot.as_slice()).unwrap_or(&[]) {
        s += &format!(" {0}-shot host | {0}-shot int8 |", c.shot);
    }
    s += "\n|---|---|";
    for _ in r.rows.first().map(|x| x.fewshot.as_slice()).unwrap_or(&[]) {
        s += "---|---|";
    }
    s += "\n";
    for row in &r.rows {
        s += &format!("| {} | {} |", row.method, cell(row.base));
        for c in &row.fewshot {
            s += &format!(" {} | {} |", cell(c.host), cell(c.runtime_int8));
        }
        s += "\n";
    }
    s += "\n## Table 5 layout: facial landmarks on MAFL (IOD error %, lower is better)\n\n";
    s += "| method | IOD error host | IOD error int8 |\n|---|---|---|\n";
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {} |\n",
            row.method,
            cell(row.iod_host),
            cell(row.iod_runtime_int8)
        );
    }
    s += &format!(
        "| mean face (no image) | {} | (same) |\n",
        cell(r.mean_face)
    );
    if !r.ablation.is_empty() {
        s += &format!(
            "\n## Table 1 layout: pretraining augmentations (few-shot on the novel objects, host, {} epochs)\n\n| augmentation |",
            p.ablation.epochs
        );
        let heads: Vec<(String, usize)> = r.ablation[0]
            .cells
            .iter()
            .map(|c| (c.0.clone(), c.1))
            .collect();
        for (m, k) in &heads {
            s += &format!(" {m} {k}-shot |");
        }
        s += "\n|---|";
        for _ in &heads {
            s += "---|";
        }
        s += "\n";
        for row in &r.ablation {
            s += &format!("| {} (`{}`) |", row.label, row.aug);
            for c in &row.cells {
                s += &format!(" {} |", cell(c.2));
            }
            s += "\n";
        }
    }
    if !r.pretraining.is_empty() {
        s += &format!(
            "\n## Did each pretraining learn?\n\nA run visibly learnt when its final loss is at most {LEARNT_LOSS_RATIO} × chance (ln of the candidates its softmax compares) and its kNN top-1 on held-out base images is at least {LEARNT_KNN_FACTOR} × chance and above the kNN of its own network at initialisation by more than {LEARNT_KNN_INIT_SE} binomial standard errors (random convolutional features are far above guessing). For MoCo and Exemplar the fresh-key loss (one batch against the final queue re-encoded by the final key encoder: the loss without the part owed to key age) must meet the same ratio. K/N is the queue length over the training images (kept ≤ 1/2, so that an instance's own older keys are not its negatives).\n\n| data | method | images seen | K/N | final loss | fresh-key loss | chance loss | ratio | kNN top-1 % (chance) | kNN at init % | learnt |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        );
        for t in &r.pretraining {
            let knn = match (t.knn_top1, t.knn_chance) {
                (Some(k), Some(c)) => format!("{k:.2} ({c:.2})"),
                (Some(k), None) => format!("{k:.2}"),
                _ => "-".into(),
            };
            let init = t
                .knn_init_top1
                .map_or_else(|| "-".to_string(), |k| format!("{k:.2}"));
            let fresh = t
                .probe_loss_fresh
                .map_or_else(|| "-".to_string(), |l| format!("{l:.3}"));
            let k_over_n = match (t.queue, t.queue_over_train) {
                (Some(k), Some(r)) => format!("{k}/{} = {r:.2}", t.train_images),
                _ => "-".into(),
            };
            s += &format!(
                "| {} | {} | {} | {k_over_n} | {:.3} | {fresh} | {:.3} | {:.2} | {knn} | {init} | {} |\n",
                t.domain,
                t.method,
                t.images_seen,
                t.final_loss,
                t.chance_loss,
                t.loss_ratio,
                if t.learnt { "yes" } else { "**NO**" }
            );
        }
        let not: Vec<String> = r
            .pretraining
            .iter()
            .filter(|t| !t.learnt)
            .map(|t| format!("{} {}", t.domain, t.method))
            .collect();
        if !not.is_empty() {
            s += &format!(
                "\n**Flag:** {} did not visibly learn; comparisons involving them measure who learnt anything, not the methods.\n",
                not.join(", ")
            );
        }
    }
    if !r.alignment.is_empty() {
        s += "\n## Task alignment: few-shot on novel classes defined like the base classes (1) or by what varies within them (0)\n\n";
        s += "Host f32 accuracy (%). Alignment 1 is the main objects; at 0 the novel labels are the scene (backdrop, hue, clutter family) that base labels treat as nuisance. Same backbones, same episodes' protocol; only the novel classes change. See `alignment.png`.\n\n";
        s += &alignment_table_head(&p.fewshot.shots);
        for c in &r.alignment {
            s += &format!("| {:.2} | {} |", c.alignment, c.method);
            for (_, f) in &c.fewshot {
                s += &format!(" {} |", cell(*f));
            }
            s += "\n";
        }
        if !r.alignment_orderings.is_empty() {
            s += "\nThe paper's argument predicts (not measured in the paper; a controlled test of its mechanism here):\n\n";
            for c in &r.alignment_orderings {
                if let (Some(m), Some(ci)) = (c.margin, c.ci95) {
                    s += &format!(
                        "- {}: {} — margin {m:+.2} vs interval {ci:.2}\n",
                        c.claim,
                        c.verdict.text()
                    );
                }
            }
        }
    }
    s += "\n## The paper's orderings on these numbers\n\n";
    s += "Margin = measured difference in the paper's direction (points); it is compared with the combined 95% interval of the two figures.\n\n";
    for c in &r.orderings {
        match (c.margin, c.ci95) {
            (Some(m), Some(ci)) => {
                s += &format!(
                    "- {} (paper {}): {} — margin {m:+.2} vs interval {ci:.2}\n",
                    c.claim,
                    c.paper,
                    c.verdict.text()
                )
            }
            _ => s += &format!("- {} (paper {}): {}\n", c.claim, c.paper, c.verdict.text()),
        }
    }
    let held = r
        .orderings
        .iter()
        .filter(|c| c.verdict == Verdict::Holds)
        .count();
    let rev = r
        .orderings
        .iter()
        .filter(|c| c.verdict == Verdict::Reversed)
        .count();
    let measured = r
        .orderings
        .iter()
        .filter(|c| c.verdict != Verdict::Missing)
        .count();
    s += &format!(
        "\n{held} of {measured} measured orderings hold beyond the noise, {rev} are reversed beyond it, the rest are within the noise.\n"
    );
    s += &super::analyses::markdown(&r.analyses, p);
    s += &format!(
        "\n## Wall time\n\nTotal {:.1} min over {} finished steps (summed across restarts).\n\n",
        r.wall_seconds.total / 60.0,
        r.wall_seconds.steps.len()
    );
    s += "| step | seconds |\n|---|---|\n";
    for (id, t) in &r.wall_seconds.steps {
        s += &format!("| {id} | {t:.1} |\n");
    }
    s
}

/// Write `results.json` and `results.md` into `out`.
pub fn write(r: &StudyResults, out: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(r)? + "\n";
    let pj = out.join("results.json");
    trainer::fsutil::write_atomic(&pj, json.as_bytes())
        .with_context(|| format!("writing {}", pj.display()))?;
    let pm = out.join("results.md");
    trainer::fsutil::write_atomic(&pm, markdown(r).as_bytes())
        .with_context(|| format!("writing {}", pm.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64, c: f64) -> Option<Figure> {
        Some(Figure {
            value: v,
            ci95: Some(c),
        })
    }

    fn row(m: &str, base: f64, one: f64, five: f64, iod: f64) -> MethodRow {
        MethodRow {
            method: m.into(),
            base: f(base, 1.0),
            fewshot: vec![
                ShotCell {
                    shot: 1,
                    host: f(one, 0.8),
                    runtime_int8: f(one - 0.1, 0.8),
                },
                ShotCell {
                    shot: 5,
                    host: f(five, 0.6),
                    runtime_int8: None,
                },
            ],
            iod_host: f(iod, 0.3),
            iod_runtime_int8: None,
        }
    }

    #[test]
    fn verdicts_compare_margin_with_interval() {
        assert_eq!(verdict(2.0, 1.0), Verdict::Holds);
        assert_eq!(verdict(0.5, 1.0), Verdict::HoldsWithinNoise);
        assert_eq!(verdict(-0.5, 1.0), Verdict::ReversedWithinNoise);
        assert_eq!(verdict(-1.5, 1.0), Verdict::Reversed);
        assert_eq!(verdict(0.0, 0.0), Verdict::Tie);
    }

    #[test]
    fn claims_combine_intervals_and_respect_direction() {
        // Higher is better: 50 ± 3 vs 46 ± 4 → margin 4, interval 5 → within the noise.
        let c = claim(
            "a > b".into(),
            "-".into(),
            f(50.0, 3.0),
            f(46.0, 4.0),
            false,
        );
        assert_eq!(c.margin, Some(4.0));
        assert!((c.ci95.unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(c.verdict, Verdict::HoldsWithinNoise);
        // Lower is better: 5 vs 9 with tiny intervals → holds.
        let c = claim("a < b".into(), "-".into(), f(5.0, 0.1), f(9.0, 0.1), true);
        assert_eq!(c.margin, Some(4.0));
        assert_eq!(c.verdict, Verdict::Holds);
        let c = claim("x".into(), "-".into(), None, f(1.0, 0.1), true);
        assert_eq!(c.verdict, Verdict::Missing);
    }

    #[test]
    fn orderings_on_hand_made_numbers() {
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("moco-v2", 70.0, 49.5, 65.0, 6.0),
            row("exemplar-v2", 75.0, 55.0, 60.0, 6.1),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
        ];
        let o = orderings(&rows, None, &[], &[1, 5]);
        let get = |t: &str| {
            o.iter()
                .find(|c| c.claim == t)
                .unwrap_or_else(|| panic!("{t} missing"))
        };
        // base: 80 − 70 = 10 vs √2 → holds.
        assert_eq!(
            get("base classes: supervised > moco-v2").verdict,
            Verdict::Holds
        );
        // novel 1-shot: supervised 50 vs moco 49.5, interval √(0.64+0.64) ≈ 1.13 → within noise.
        assert_eq!(
            get("novel 1-shot: supervised > moco-v2").verdict,
            Verdict::HoldsWithinNoise
        );
        // novel 5-shot: exemplar 60 vs supervised 70 → reversed beyond √0.72.
        assert_eq!(
            get("novel 5-shot: exemplar-v2 > supervised").verdict,
            Verdict::Reversed
        );
        // landmarks (lower is better): moco 6.0 vs supervised 8.0 → holds; margin +2.
        let c = get("landmark error: moco-v2 < supervised");
        assert_eq!(c.verdict, Verdict::Holds);
        assert!((c.margin.unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(c.paper, "5.89 vs 6.39");
        // 3 base + 2 × 3 novel + 5 landmark claims + 4 "beats the mean face" (not measured
        // here: no baseline given), no ablation.
        assert_eq!(o.len(), 3 + 6 + 5 + 4);
        assert_eq!(
            get("landmark error: scratch < mean face (beats the mean face)").verdict,
            Verdict::Missing
        );
    }

    /// Each method against the no-image baseline (lower is better): supervised 8.0 ± 0.3 vs
    /// 10.0 ± 0.4 → margin 2, interval 0.5 → holds; scratch 20.0 vs 10.0 → margin −10, reversed;
    /// a method without a landmark figure is "not measured".
    #[test]
    fn methods_are_checked_against_the_mean_face() {
        let mut none = row("moco-v2", 70.0, 49.5, 65.0, 0.0);
        none.iod_host = None;
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
            none,
        ];
        let o = orderings(&rows, f(10.0, 0.4), &[], &[1]);
        let get = |m: &str| {
            o.iter()
                .find(|c| {
                    c.claim == format!("landmark error: {m} < mean face (beats the mean face)")
                })
                .unwrap_or_else(|| panic!("{m} missing"))
        };
        let s = get("supervised");
        assert!((s.margin.unwrap() - 2.0).abs() < 1e-12);
        assert!((s.ci95.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(s.verdict, Verdict::Holds);
        assert_eq!(s.paper, "-");
        let sc = get("scratch");
        assert!((sc.margin.unwrap() + 10.0).abs() < 1e-12);
        assert_eq!(sc.verdict, Verdict::Reversed);
        assert_eq!(get("moco-v2").verdict, Verdict::Missing);
    }

    #[test]
    fn a_mistyped_record_field_is_an_error_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let plan = super::super::Plan::new(super::super::preset::tiny()).unwrap();
        let id = ids::fewshot("moco-v2");
        super::super::records::write_record(
            dir.path(),
            &super::super::StepRecord {
                id: id.clone(),
                title: "t".into(),
                seconds: 1.0,
                result: serde_json::json!({"results": [{"shot": 1, "accuracy": "high"}]}),
            },
        )
        .unwrap();
        let e = format!("{:#}", collect(&plan, dir.path()).unwrap_err());
        assert!(
            e.contains(&format!("{id}.json")) && e.contains("wrong type"),
            "{e}"
        );
        // A record lacking the fields gives an empty cell instead.
        super::super::records::write_record(
            dir.path(),
            &super::super::StepRecord {
                id,
                title: "t".into(),
                seconds: 1.0,
                result: serde_json::json!({}),
            },
        )
        .unwrap();
        let r = collect(&plan, dir.path()).unwrap();
        assert!(r.rows[1].fewshot.iter().all(|c| c.host.is_none()));
    }

    #[test]
    fn mean_face_figure_reads_the_landmark_record() {
        let v = serde_json::json!({"iod_error": 30.0, "ci95": 2.0,
            "mean_face_iod_error": 40.5, "mean_face_ci95": 1.5});
        assert_eq!(
            serde_json::from_value::<LandmarkRec>(v)
                .unwrap()
                .mean_face(),
            Some(Figure {
                value: 40.5,
                ci95: Some(1.5)
            })
        );
        // A record from before the baseline existed.
        assert_eq!(
            serde_json::from_value::<LandmarkRec>(serde_json::json!({"iod_error": 30.0}))
                .unwrap()
                .mean_face(),
            None
        );
    }

    #[test]
    fn ablation_gain_claim() {
        let mk = |label: &str, s1: f64, m1: f64| AblationRow {
            label: label.into(),
            aug: "x".into(),
            cells: vec![
                ("supervised".into(), 1, f(s1, 0.5)),
                ("moco-v2".into(), 1, f(m1, 0.5)),
            ],
        };
        let ab = vec![mk("+ flip", 40.0, 30.0), mk("+ more", 42.0, 45.0)];
        let o = orderings(&[], None, &ab, &[1]);
        assert_eq!(o.len(), 1);
        // gains: moco 15, supervised 2 → margin 13, interval √(4 × 0.25) = 1.
        assert!((o[0].margin.unwrap() - 13.0).abs() < 1e-12);
        assert!((o[0].ci95.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(o[0].verdict, Verdict::Holds);
    }

    #[test]
    fn a_run_must_beat_its_own_initial_knn() {
        // init 10 % over 100 queries: SE = √(0.1·0.9/100) = 3 points, so the bar is 16 %.
        assert!(!beats_init_knn(16.0, 10.0, 100));
        assert!(beats_init_knn(16.01, 10.0, 100));
        let rec = |knn: f64| {
            let v = serde_json::json!({"final_loss": 3.0, "chance_loss": 6.0, "images_seen": 10,
                "knn_top1": knn, "knn_chance": 1.0, "knn_init_top1": 10.0, "knn_queries": 100});
            pretrain_record("objects", "moco-v2", &serde_json::from_value(v).unwrap()).unwrap()
        };
        // Loss 0.5 × chance and kNN 15 × chance, yet no better than the random network: flagged.
        assert!(!rec(15.0).learnt);
        assert!(rec(17.0).learnt);
        assert_eq!(rec(17.0).knn_init_top1, Some(10.0));
    }

    #[test]
    fn a_contrastive_run_must_also_meet_the_ratio_against_fresh_keys() {
        let rec = |fresh: f64| {
            let v = serde_json::json!({"final_loss": 3.0, "chance_loss": 6.0, "images_seen": 10,
                "queue_probe": {"loss_stale": 3.0, "loss_fresh": fresh, "top1_stale": 50.0,
                "top1_fresh": 10.0, "chance": 7.0}});
            pretrain_record("objects", "moco-v2", &serde_json::from_value(v).unwrap()).unwrap()
        };
        // Final loss 0.5 × chance; the fresh-key loss is judged against the probe's own chance 7.
        assert!(rec(4.2).learnt, "4.2 = 0.6 × 7");
        assert!(
            !rec(4.21).learnt,
            "a low loss owed to key age is not learning"
        );
        assert_eq!(rec(4.2).probe_loss_fresh, Some(4.2));
    }

    #[test]
    fn markdown_has_the_paper_layouts() {
        let rows = vec![
            row("supervised", 80.0, 50.0, 70.0, 8.0),
            row("scratch", 30.0, 30.0, 40.0, 20.0),
        ];
        let r = StudyResults {
            preset: super::super::preset::tiny(),
            seed: 0,
            orderings: orderings(&rows, f(10.0, 0.4), &[], &[1, 5]),
            rows,
            alignment: vec![],
            alignment_orderings: vec![],
            analyses: Default::default(),
            pretraining: vec![
                pretrain_record(
                    "objects",
                    "moco-v2",
                    &serde_json::from_value(
                        serde_json::json!({"final_loss": 3.0, "chance_loss": 6.0,
                        "images_seen": 1000, "knn_top1": 30.0, "knn_chance": 10.0}),
                    )
                    .unwrap(),
                )
                .unwrap(),
                pretrain_record(
                    "objects",
                    "exemplar-v2",
                    &serde_json::from_value(
                        serde_json::json!({"final_loss": 4.0, "chance_loss": 6.0,
                        "images_seen": 1000, "knn_top1": 30.0, "knn_chance": 10.0}),
                    )
                    .unwrap(),
                )
                .unwrap(),
            ],
            mean_face: f(10.0, 0.4),
            ablation: vec![],
            wall_seconds: WallTime {
                steps: vec![("a".into(), 60.0), ("b".into(), 30.0)],
                total: 90.0,
            },
        };
        // 3/6 = 0.5 ≤ 0.6 learnt; 4/6 = 0.67 did not.
        assert!(r.pretraining[0].learnt && !r.pretraining[1].learnt);
        let md = markdown(&r);
        assert!(
            md.contains(
                "| objects | moco-v2 | 1000 | - | 3.000 | - | 6.000 | 0.50 | 30.00 (10.00) | - | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains("**Flag:** objects exemplar-v2 did not visibly learn"),
            "{md}"
        );
        assert!(md.contains("| method | base acc (host) | 1-shot host | 1-shot int8 | 5-shot host | 5-shot int8 |"), "{md}");
        assert!(
            md.contains(
                "| supervised | 80.00 ± 1.00 | 50.00 ± 0.80 | 49.90 ± 0.80 | 70.00 ± 0.60 | - |"
            ),
            "{md}"
        );
        assert!(md.contains("| scratch | 20.00 ± 0.30 | - |"), "{md}");
        assert!(
            md.contains("landmark error: supervised < scratch (paper 6.39 vs 24.6): holds"),
            "{md}"
        );
        assert!(md.contains("Total 1.5 min over 2 finished steps"), "{md}");
        assert!(
            md.contains("| mean face (no image) | 10.00 ± 0.40 | (same) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "landmark error: supervised < mean face (beats the mean face) (paper -): holds"
            ),
            "{md}"
        );
        assert!(!md.contains("Table 1 layout"));
    }
}
