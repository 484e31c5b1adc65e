//! The paper's claims, judged: a margin against the combined 95% interval ([`verdict`],
//! [`claim`]), the "did it learn?" criterion, and the orderings of Tables 4 and 5.
use serde::Serialize;
use trainer::method::{Method, Version};

use super::*;
use crate::study::Backbone::{self, Scratch};

/// The three rows the paper's orderings compare (and [`Scratch`], the random-init baseline).
const SUPERVISED: Backbone = Backbone::SUPERVISED;
const MOCO_V2: Backbone = Backbone::MOCO_V2;
const EXEMPLAR_V2: Backbone = Backbone::EXEMPLAR_V2;

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

impl Claim {
    /// The claim `text` judged on its measured `(margin, interval)` ([`verdict`]), or
    /// [`Verdict::Missing`] when a figure is missing.
    pub fn judged(text: String, paper: String, measured: Option<(f64, f64)>) -> Claim {
        Claim {
            claim: text,
            paper,
            margin: measured.map(|m| m.0),
            ci95: measured.map(|m| m.1),
            verdict: measured.map_or(Verdict::Missing, |(m, ci)| verdict(m, ci)),
        }
    }
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
    let measured = better.zip(worse).map(|(a, b)| {
        let margin = if lower_is_better {
            b.value - a.value
        } else {
            a.value - b.value
        };
        let ci = (a.ci95.unwrap_or(0.0).powi(2) + b.ci95.unwrap_or(0.0).powi(2)).sqrt();
        (margin, ci)
    });
    Claim::judged(text, paper, measured)
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

/// The predictions of the paper's argument (§3–4) for the alignment sweep, checked like the
/// other orderings: supervised ahead when the novel task is aligned with the base labels,
/// the instance-discriminative methods ahead when it is not, Exemplar ≥ MoCo throughout.
pub fn alignment_claims(cells: &[AlignmentCell], shots: &[usize]) -> Vec<Claim> {
    let fig = |m: Backbone, a: f64, k: usize| {
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
        for c in [MOCO_V2, EXEMPLAR_V2] {
            out.push(claim(
                format!("alignment {hi}, {k}-shot: {SUPERVISED} > {c}"),
                "predicted".into(),
                fig(SUPERVISED, hi, k),
                fig(c, hi, k),
                false,
            ));
            if lo < hi {
                out.push(claim(
                    format!("alignment {lo}, {k}-shot: {c} > {SUPERVISED}"),
                    "predicted".into(),
                    fig(c, lo, k),
                    fig(SUPERVISED, lo, k),
                    false,
                ));
            }
        }
        for &a in &alignments {
            out.push(claim(
                format!("alignment {a}, {k}-shot: {EXEMPLAR_V2} ≥ {MOCO_V2}"),
                "predicted".into(),
                fig(EXEMPLAR_V2, a, k),
                fig(MOCO_V2, a, k),
                false,
            ));
        }
    }
    out.retain(|c| c.verdict != Verdict::Missing);
    out
}

/// The paper's figures (Tables 4 and 5, ResNet-18 / mini-ImageNet / MAFL), for the "paper"
/// column of the orderings: base, 1-shot, 5-shot, landmark error.
pub(super) fn paper_figures(row: Backbone) -> Option<[f64; 4]> {
    match row {
        SUPERVISED => Some([83.6, 54.60, 74.50, 6.39]),
        MOCO_V2 => Some([75.3, 52.14, 73.30, 5.89]),
        EXEMPLAR_V2 => Some([79.9, 55.33, 77.18, 5.89]),
        Scratch => Some([f64::NAN, f64::NAN, f64::NAN, 24.6]),
        Backbone::Pretrained(_) => None,
    }
}

pub(super) fn paper_pair(a: Backbone, b: Backbone, k: usize) -> String {
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
    let row = |m: Backbone| rows.iter().find(|r| r.method == m);
    let mut out = Vec::new();
    // Table 4, base classes: supervised > exemplar-v2 > moco-v2.
    for (a, b) in [
        (SUPERVISED, MOCO_V2),
        (EXEMPLAR_V2, MOCO_V2),
        (SUPERVISED, EXEMPLAR_V2),
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
            (EXEMPLAR_V2, SUPERVISED),
            (SUPERVISED, MOCO_V2),
            (EXEMPLAR_V2, MOCO_V2),
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
        (MOCO_V2, SUPERVISED),
        (EXEMPLAR_V2, SUPERVISED),
        (SUPERVISED, Scratch),
        (MOCO_V2, Scratch),
        (EXEMPLAR_V2, Scratch),
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
                let gain = |m: Method| -> Option<Figure> {
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
                    format!("augmentation gain ({k}-shot): {MOCO_V2} > {SUPERVISED}"),
                    "ImageNet acc. +61.1 vs +6.4".into(),
                    gain(Method::Moco(Version::V2)),
                    gain(Method::Supervised),
                    false,
                ));
            }
        }
    }
    out
}
