//! The tables of the paper's analyses beyond Tables 4 and 5, collected from the step records:
//! feature inversion (Figures 2 and 6), pretraining data (Table 2) and k / τ (Table 10), each
//! with the paper's comparison computed against its 95% interval ([`super::results::claim`]).
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use trainer::method::Method;

use super::figures::mean_ci95;
use super::inversion::{self, ImageScores};
use super::plan::{counterpart, k_tau_cells, same_tau_cells};
use super::preset::{Ablation, Preset};
use super::results::{
    cell, finite, record, shot_figure, Claim, FewShotRec, Figure, LandmarkRec, PretrainRec,
};
use super::{ids, Backbone, Domain};
use crate::analysis::subset::Subset;

/// One method's reconstructions (means over the held-out images, 95% intervals over images).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InversionRow {
    pub method: Backbone,
    pub images: usize,
    pub ssim: Option<Figure>,
    pub ssim_worst_quarter: Option<Figure>,
    pub random_feature_distance: Option<Figure>,
    /// The inversion objective (relative feature error) before the first and after the last step.
    pub initial_loss: Option<f64>,
    pub final_loss: Option<Figure>,
}

/// One row of the Table-2 layout: a method pretrained on some data, on the study's tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataRow {
    /// "objects", a [`Subset`] name, or "faces".
    pub data: String,
    pub label: String,
    pub method: Method,
    /// Final pretraining loss / its chance loss (`None` where no record).
    pub loss_ratio: Option<f64>,
    pub fewshot: Vec<(usize, Option<Figure>)>,
    pub iod: Option<Figure>,
}

/// One (method, k, τ) cell of the Table-10 layout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KTauRow {
    pub method: Method,
    pub queue: usize,
    /// The queue the run had: `queue` lowered to at most half its training images
    /// (`execute::queue_within_half`); `None` before the run or for records made before the rule.
    pub queue_used: Option<usize>,
    pub tau: f64,
    pub epochs: usize,
    /// The main study run is this pretraining (its figures are reused).
    pub main_run: bool,
    pub final_loss: Option<f64>,
    pub chance_loss: Option<f64>,
    pub fewshot: Vec<(usize, Option<Figure>)>,
}

/// One (method, τ) pretraining of the same-τ ablation (the main runs included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SameTauRow {
    pub method: Method,
    pub tau: f64,
    /// The main study run (the method at its own default τ).
    pub main_run: bool,
    pub final_loss: Option<f64>,
    pub chance_loss: Option<f64>,
    pub fewshot: Vec<(usize, Option<Figure>)>,
}

/// The Exemplar − MoCo few-shot gap of one version (points, at the largest shot), at the paper's
/// settings (each at its own τ) and at each single τ. What the gap at the paper's settings has
/// beyond a same-τ gap is the temperature's share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SameTauGap {
    pub exemplar: Method,
    pub moco: Method,
    pub shot: usize,
    pub paper_settings: Option<f64>,
    /// `(τ, Exemplar − MoCo at τ)`.
    pub at_tau: Vec<(f64, Option<f64>)>,
}

/// Everything this module reports; empty parts did not run.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Analyses {
    pub inversion: Vec<InversionRow>,
    pub inversion_claims: Vec<Claim>,
    pub pretraining_data: Vec<DataRow>,
    pub pretraining_data_claims: Vec<Claim>,
    pub k_tau: Vec<KTauRow>,
    pub k_tau_claims: Vec<Claim>,
    pub same_tau: Vec<SameTauRow>,
    pub same_tau_gaps: Vec<SameTauGap>,
    pub same_tau_claims: Vec<Claim>,
}

fn figure(values: &[f64]) -> Option<Figure> {
    mean_ci95(values).map(|(value, ci)| Figure {
        value,
        ci95: Some(ci),
    })
}

/// A paired claim: per image, `better − worse` (or the reverse when lower is better), its mean
/// against the 95% interval of the paired differences.
fn paired_claim(text: String, paper: String, diffs: &[f64]) -> Claim {
    Claim::judged(text, paper, mean_ci95(diffs))
}

fn inversion(p: &Preset, out: &Path) -> Result<(Vec<InversionRow>, Vec<Claim>)> {
    let scores = inversion::collect(p, out)?;
    let col = |s: &[ImageScores], f: fn(&ImageScores) -> f64| s.iter().map(f).collect::<Vec<_>>();
    let rows = scores
        .iter()
        .map(|(m, s)| InversionRow {
            method: *m,
            images: s.len(),
            ssim: figure(&col(s, |v| v.ssim)),
            ssim_worst_quarter: figure(&col(s, |v| v.ssim_worst_quarter)),
            random_feature_distance: figure(&col(s, |v| v.random_feature_distance)),
            initial_loss: mean_ci95(&col(s, |v| v.initial_loss)).map(|v| v.0),
            final_loss: figure(&col(s, |v| v.final_loss)),
        })
        .collect();
    let mut claims = Vec::new();
    let Some((_, sup)) = scores.iter().find(|(m, _)| *m == Backbone::SUPERVISED) else {
        return Ok((rows, claims));
    };
    for (m, s) in scores
        .iter()
        .filter(|(m, _)| *m != Backbone::SUPERVISED && *m != Backbone::Scratch)
    {
        let d = |f: fn(&ImageScores) -> f64, lower: bool| -> Vec<f64> {
            s.iter()
                .zip(sup)
                .map(|(a, b)| if lower { f(b) - f(a) } else { f(a) - f(b) })
                .collect()
        };
        claims.push(paired_claim(
            format!("inversion: {m} reconstructs closer than supervised (SSIM)"),
            "Figure 2, qualitative".into(),
            &d(|v| v.ssim, false),
        ));
        claims.push(paired_claim(
            format!("inversion: {m} loses fewer regions than supervised (worst-quarter SSIM)"),
            "Figure 2, qualitative".into(),
            &d(|v| v.ssim_worst_quarter, false),
        ));
        claims.push(paired_claim(
            format!("inversion: {m} closer than supervised (random-network distance, lower)"),
            "MoCo 5.59 vs supervised 6.43 (LPIPS, Figure 6)".into(),
            &d(|v| v.random_feature_distance, true),
        ));
    }
    Ok((rows, claims))
}

fn fewshot_cells(p: &Preset, out: &Path, id: &str) -> Result<Vec<(usize, Option<Figure>)>> {
    let r: Option<FewShotRec> = record(out, id)?;
    Ok(p.fewshot
        .shots
        .iter()
        .map(|&k| (k, r.as_ref().and_then(|v| shot_figure(&v.results, k))))
        .collect())
}

fn loss_ratio(out: &Path, id: &str) -> Result<Option<f64>> {
    let r: Option<PretrainRec> = record(out, id)?;
    Ok(r.and_then(|v| Some(finite(v.final_loss)? / finite(v.chance_loss)?)))
}

/// The paper's Table-2 figures (VOC07 detection AP with full / changed pretraining data):
/// (supervised full, supervised changed, MoCo-v2 full, MoCo-v2 changed).
fn paper_table2(data: &str) -> String {
    let (sf, sc, mf, mc) = match data {
        "images-subset" => (46.2, 42.4, 48.5, 45.5),
        "classes-subset" => (46.2, 42.0, 48.5, 45.6),
        "faces" => (46.2, 37.5, 48.5, 45.3), // CelebA
        _ => return "no counterpart (Table 2 transfers to detection, not landmarks)".into(),
    };
    format!(
        "VOC07 AP: supervised {sf} → {sc} ({:+.1}), MoCo-v2 {mf} → {mc} ({:+.1})",
        sc - sf,
        mc - mf
    )
}

fn pretraining_data(p: &Preset, out: &Path) -> Result<(Vec<DataRow>, Vec<Claim>)> {
    let f = p.data_ablation.fraction;
    let objects = Domain::Objects.name();
    let faces = Domain::Faces.name();
    let mut rows = Vec::new();
    for m in &p.data_ablation.methods {
        rows.push(DataRow {
            data: objects.into(),
            label: "objects (all)".into(),
            method: *m,
            loss_ratio: loss_ratio(out, &ids::pretrain(objects, m))?,
            fewshot: fewshot_cells(p, out, &ids::fewshot(m))?,
            iod: record::<LandmarkRec>(out, &ids::data_landmarks(objects, m))?
                .and_then(|v| v.figure()),
        });
        for s in Subset::ALL {
            rows.push(DataRow {
                data: s.name().into(),
                label: format!("objects, {}", s.label(f)),
                method: *m,
                loss_ratio: loss_ratio(out, &ids::data_pretrain(s.name(), m))?,
                fewshot: fewshot_cells(p, out, &ids::data_fewshot(s.name(), m))?,
                iod: record::<LandmarkRec>(out, &ids::data_landmarks(s.name(), m))?
                    .and_then(|v| v.figure()),
            });
        }
        rows.push(DataRow {
            data: faces.into(),
            label: "faces (identities)".into(),
            method: *m,
            loss_ratio: loss_ratio(out, &ids::pretrain(faces, m))?,
            fewshot: fewshot_cells(p, out, &ids::data_fewshot(faces, m))?,
            iod: record::<LandmarkRec>(out, &ids::landmarks(m))?.and_then(|v| v.figure()),
        });
    }
    // How much each method loses when its pretraining data changes: on few-shot (the largest
    // shot) against its objects row, on landmarks against its faces row (each task's own
    // domain is the reference). The paper: contrastive pretraining loses less.
    let mut claims = Vec::new();
    let find = |data: &str, m: Method| rows.iter().find(|r| r.data == data && r.method == m);
    let shot = p.fewshot.shots.iter().copied().max().unwrap_or(1);
    let acc = |r: Option<&DataRow>| {
        r.and_then(|r| r.fewshot.iter().find(|c| c.0 == shot).and_then(|c| c.1))
    };
    let drop = |full: Option<Figure>, changed: Option<Figure>, lower_better: bool| {
        let (a, b) = (full?, changed?);
        // The loss: how much worse the changed data makes the figure.
        let d = if lower_better {
            b.value - a.value
        } else {
            a.value - b.value
        };
        Some((d, a.ci95.unwrap_or(0.0).hypot(b.ci95.unwrap_or(0.0))))
    };
    let changed: Vec<(&str, String)> = Subset::ALL
        .iter()
        .map(|s| (s.name(), s.label(f)))
        .chain([(faces, "faces instead of objects".to_string())])
        .chain([(objects, "objects instead of faces".to_string())])
        .collect();
    for other in p
        .data_ablation
        .methods
        .iter()
        .copied()
        .filter(|m| *m != Method::Supervised)
    {
        if !p.data_ablation.methods.contains(&Method::Supervised) {
            break;
        }
        for (data, label) in &changed {
            // (task, loss of supervised, loss of `other`)
            let (task, ls, lo) = if *data == objects {
                let iod = |m: Method| find(faces, m).and_then(|r| r.iod);
                let iod_changed = |m: Method| find(objects, m).and_then(|r| r.iod);
                (
                    "landmark IOD error".to_string(),
                    drop(
                        iod(Method::Supervised),
                        iod_changed(Method::Supervised),
                        true,
                    ),
                    drop(iod(other), iod_changed(other), true),
                )
            } else {
                (
                    format!("{shot}-shot"),
                    drop(
                        acc(find(objects, Method::Supervised)),
                        acc(find(data, Method::Supervised)),
                        false,
                    ),
                    drop(acc(find(objects, other)), acc(find(data, other)), false),
                )
            };
            let text = format!("pretraining on {label}: {other} loses less {task} than supervised");
            let paper = paper_table2(data);
            claims.push(match (ls, lo) {
                (Some((ds, cs)), Some((d_o, co))) => Claim::judged(
                    format!("{text} (loss: supervised {ds:+.2}, {other} {d_o:+.2})"),
                    paper,
                    Some((ds - d_o, cs.hypot(co))),
                ),
                _ => Claim::judged(text, paper, None),
            });
        }
    }
    Ok((rows, claims))
}

fn k_tau(p: &Preset, out: &Path) -> Result<(Vec<KTauRow>, Vec<Claim>)> {
    let mut rows = Vec::new();
    for m in &p.k_tau.methods {
        for (q, t, main) in k_tau_cells(p, *m) {
            let (pre, fs) = if main {
                (ids::pretrain(Domain::Objects.name(), m), ids::fewshot(m))
            } else {
                (ids::k_tau_pretrain(m, q, t), ids::k_tau_fewshot(m, q, t))
            };
            let rec: Option<PretrainRec> = record(out, &pre)?;
            rows.push(KTauRow {
                method: *m,
                queue: q,
                queue_used: rec.as_ref().and_then(|r| r.queue),
                tau: t,
                epochs: p.k_tau.epochs,
                main_run: main,
                final_loss: rec.as_ref().and_then(|r| finite(r.final_loss)),
                chance_loss: rec.as_ref().and_then(|r| finite(r.chance_loss)),
                fewshot: fewshot_cells(p, out, &fs)?,
            });
        }
    }
    // Table 10's comparison: Exemplar above MoCo at the same k and τ.
    let mut claims = Vec::new();
    let shot = p.fewshot.shots.iter().copied().max().unwrap_or(1);
    for e in &rows {
        let Method::Exemplar(v) = e.method else {
            continue;
        };
        let moco = Method::Moco(v);
        let Some(mo) = rows
            .iter()
            .find(|r| r.method == moco && r.queue == e.queue && r.tau == e.tau)
        else {
            continue;
        };
        let fig = |r: &KTauRow| r.fewshot.iter().find(|c| c.0 == shot).and_then(|c| c.1);
        claims.push(super::results::claim(
            format!(
                "k {}, τ {}: {} > {moco} ({shot}-shot)",
                e.queue, e.tau, e.method
            ),
            "ImageNet linear 64.6 vs 60.9 (v1, k 1M, τ 0.07)".into(),
            fig(e),
            fig(mo),
            false,
        ));
    }
    Ok((rows, claims))
}

fn same_tau(p: &Preset, out: &Path) -> Result<(Vec<SameTauRow>, Vec<SameTauGap>, Vec<Claim>)> {
    let extra = same_tau_cells(p);
    let mut rows = Vec::new();
    for &m in &p.methods {
        let Some(own) = m.defaults().tau else {
            continue;
        };
        let other: Vec<f64> = extra.iter().filter(|c| c.0 == m).map(|c| c.1).collect();
        if other.is_empty() {
            continue;
        }
        for (t, main) in std::iter::once((own, true)).chain(other.into_iter().map(|t| (t, false))) {
            let (pre, fs) = if main {
                (ids::pretrain(Domain::Objects.name(), m), ids::fewshot(m))
            } else {
                (ids::same_tau_pretrain(m, t), ids::same_tau_fewshot(m, t))
            };
            let rec: Option<PretrainRec> = record(out, &pre)?;
            rows.push(SameTauRow {
                method: m,
                tau: t,
                main_run: main,
                final_loss: rec.as_ref().and_then(|r| finite(r.final_loss)),
                chance_loss: rec.as_ref().and_then(|r| finite(r.chance_loss)),
                fewshot: fewshot_cells(p, out, &fs)?,
            });
        }
    }
    let shot = p.fewshot.shots.iter().copied().max().unwrap_or(1);
    let fig = |m: Method, t: f64, main: Option<bool>| {
        rows.iter()
            .find(|r| r.method == m && r.tau == t && main.is_none_or(|b| r.main_run == b))
            .and_then(|r| r.fewshot.iter().find(|c| c.0 == shot).and_then(|c| c.1))
    };
    let (mut gaps, mut claims) = (Vec::new(), Vec::new());
    for r in rows.iter().filter(|r| r.main_run) {
        let Method::Exemplar(_) = r.method else {
            continue;
        };
        let Some(moco) = counterpart(r.method) else {
            continue;
        };
        let Some(moco_tau) = moco.defaults().tau else {
            continue;
        };
        let diff = |a: Option<Figure>, b: Option<Figure>| Some(a?.value - b?.value);
        let mut taus = vec![r.tau, moco_tau];
        taus.dedup();
        gaps.push(SameTauGap {
            exemplar: r.method,
            moco,
            shot,
            paper_settings: diff(
                fig(r.method, r.tau, Some(true)),
                fig(moco, moco_tau, Some(true)),
            ),
            at_tau: taus
                .iter()
                .map(|&t| (t, diff(fig(r.method, t, None), fig(moco, t, None))))
                .collect(),
        });
        for &t in &taus {
            claims.push(super::results::claim(
                format!("τ {t}: {} > {moco} ({shot}-shot)", r.method),
                "the label mask alone helps: Exemplar above MoCo at one τ".into(),
                fig(r.method, t, None),
                fig(moco, t, None),
                false,
            ));
        }
    }
    Ok((rows, gaps, claims))
}

/// Collects every analysis the preset runs.
pub fn collect(p: &Preset, out: &Path) -> Result<Analyses> {
    let mut a = Analyses::default();
    if p.invert.images > 0 {
        (a.inversion, a.inversion_claims) = inversion(p, out)?;
    }
    if p.runs(Ablation::Data) {
        (a.pretraining_data, a.pretraining_data_claims) = pretraining_data(p, out)?;
    }
    if p.runs(Ablation::KTau) {
        (a.k_tau, a.k_tau_claims) = k_tau(p, out)?;
    }
    if p.runs(Ablation::SameTau) {
        (a.same_tau, a.same_tau_gaps, a.same_tau_claims) = same_tau(p, out)?;
    }
    Ok(a)
}

fn claims_md(claims: &[Claim]) -> String {
    let mut s = String::new();
    for c in claims {
        match (c.margin, c.ci95) {
            (Some(m), Some(ci)) => {
                s += &format!(
                    "- {} (paper: {}): {} — margin {m:+.3} vs interval {ci:.3}\n",
                    c.claim,
                    c.paper,
                    c.verdict.text()
                )
            }
            _ => s += &format!("- {} (paper: {}): {}\n", c.claim, c.paper, c.verdict.text()),
        }
    }
    s
}

fn cell3(f: Option<Figure>) -> String {
    match f {
        Some(Figure {
            value,
            ci95: Some(c),
        }) => format!("{value:.3} ± {c:.3}"),
        Some(f) => format!("{:.3}", f.value),
        None => "-".into(),
    }
}

/// The Markdown sections (empty when nothing ran).
pub fn markdown(a: &Analyses, p: &Preset) -> String {
    let mut s = String::new();
    if !a.inversion.is_empty() {
        s += "\n## Feature inversion (paper Figures 2 and 6)\n\n";
        s += &format!(
            "Each objects backbone's layer4 map of the same held-out novel-class images is inverted \
             with the deep image prior ({} Adam steps at lr 0.001 from the same generator and noise \
             per image; `inversion.png`, rows: methods, columns: images). Closeness to the image: \
             SSIM (mean, and the mean of the worst 25% of its local map: low when a region is lost) \
             and an LPIPS-style distance under a fixed random ResNet-18 that no method trained \
             (`inversion_distance.png`, per image against supervised). The paper used LPIPS with an \
             ImageNet-trained SqueezeNet, which cannot be downloaded here. Intervals are 95% over \
             images.\n\n",
            p.invert.iterations
        );
        s += "| method | images | SSIM | worst-quarter SSIM | random-network distance | feature loss: start → end |\n|---|---|---|---|---|---|\n";
        for r in &a.inversion {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} → {} |\n",
                r.method,
                r.images,
                cell3(r.ssim),
                cell3(r.ssim_worst_quarter),
                cell3(r.random_feature_distance),
                r.initial_loss.map_or("-".into(), |v| format!("{v:.3}")),
                cell3(r.final_loss)
            );
        }
        if !a.inversion_claims.is_empty() {
            s += "\nPaired per image (margin in the paper's direction):\n\n";
            s += &claims_md(&a.inversion_claims);
        }
    }
    if !a.pretraining_data.is_empty() {
        s += "\n## Table 2 layout: pretraining data\n\n";
        s +=
            "Each method pretrained on other data, transferred to the same tasks (few-shot on the \
              novel objects, %; landmark IOD error on MAFL, %, lower is better). The subsets run \
              as many steps as the full data (the paper's rule). Loss / chance: the pretraining's \
              final loss over its chance loss.\n\n";
        s += "| pretraining data | method | loss / chance |";
        let shots: Vec<usize> = a.pretraining_data[0].fewshot.iter().map(|c| c.0).collect();
        for k in &shots {
            s += &format!(" {k}-shot |");
        }
        s += " IOD error |\n|---|---|---|";
        s += &"---|".repeat(shots.len() + 1);
        s += "\n";
        for r in &a.pretraining_data {
            s += &format!(
                "| {} | {} | {} |",
                r.label,
                r.method,
                r.loss_ratio.map_or("-".into(), |v| format!("{v:.2}"))
            );
            for c in &r.fewshot {
                s += &format!(" {} |", cell(c.1));
            }
            s += &format!(" {} |\n", cell(r.iod));
        }
        s += "\nHow much each method loses when the pretraining data changes (the paper: contrastive \
              pretraining is relatively unaffected by its data, supervised depends on its labels' \
              semantics; margin = supervised's loss − the other method's, in points):\n\n";
        s += &claims_md(&a.pretraining_data_claims);
    }
    if !a.k_tau.is_empty() {
        s += "\n## Table 10 layout: queue size k and temperature τ\n\n";
        s +=
            "Few-shot on the novel objects (%) after pretraining on the objects; `main` marks the \
              main study run reused for its cell; a k shown as `a → b` was lowered to b, half the \
              training images.\n\n";
        s += "| method | k | τ | epochs | loss / chance |";
        let shots: Vec<usize> = a.k_tau[0].fewshot.iter().map(|c| c.0).collect();
        for k in &shots {
            s += &format!(" {k}-shot |");
        }
        s += "\n|---|---|---|---|---|";
        s += &"---|".repeat(shots.len());
        s += "\n";
        for r in &a.k_tau {
            let ratio = r.final_loss.zip(r.chance_loss).map(|(l, c)| l / c);
            s += &format!(
                "| {}{} | {} | {} | {} | {} |",
                r.method,
                if r.main_run { " (main)" } else { "" },
                match r.queue_used {
                    Some(u) if u != r.queue => format!("{} → {u}", r.queue),
                    _ => r.queue.to_string(),
                },
                r.tau,
                r.epochs,
                ratio.map_or("-".into(), |v| format!("{v:.2}"))
            );
            for c in &r.fewshot {
                s += &format!(" {} |", cell(c.1));
            }
            s += "\n";
        }
        if !a.k_tau_claims.is_empty() {
            s += "\n";
            s += &claims_md(&a.k_tau_claims);
        }
    }
    if !a.same_tau.is_empty() {
        s += &same_tau_md(a);
    }
    s
}

fn same_tau_md(a: &Analyses) -> String {
    let mut s = String::from("\n## Exemplar against MoCo at one temperature\n\n");
    s += "The main table runs each method at its own default τ (the paper's settings), so its \
          Exemplar − MoCo gap mixes the label mask with the temperature. Here each method is also \
          pretrained at the other's τ, with the main runs' epochs, queue and seed. Few-shot on the \
          novel objects (%); `main` marks the main study run.\n\n";
    s += "| method | τ | loss / chance |";
    let shots: Vec<usize> = a.same_tau[0].fewshot.iter().map(|c| c.0).collect();
    for k in &shots {
        s += &format!(" {k}-shot |");
    }
    s += "\n|---|---|---|";
    s += &"---|".repeat(shots.len());
    s += "\n";
    for r in &a.same_tau {
        let ratio = r.final_loss.zip(r.chance_loss).map(|(l, c)| l / c);
        s += &format!(
            "| {}{} | {} | {} |",
            r.method,
            if r.main_run { " (main)" } else { "" },
            r.tau,
            ratio.map_or("-".into(), |v| format!("{v:.2}"))
        );
        for c in &r.fewshot {
            s += &format!(" {} |", cell(c.1));
        }
        s += "\n";
    }
    let pts = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:+.2}"));
    for g in &a.same_tau_gaps {
        s += &format!(
            "\n{} − {} ({}-shot, points): {} at the paper's settings",
            g.exemplar,
            g.moco,
            g.shot,
            pts(g.paper_settings)
        );
        for (t, d) in &g.at_tau {
            s += &format!("; {} at τ {t}", pts(*d));
        }
        s += ". What the first figure has beyond a same-τ one is the temperature's share of the gap.\n";
    }
    if !a.same_tau_claims.is_empty() {
        s += "\n";
        s += &claims_md(&a.same_tau_claims);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::results::Verdict;
    use super::*;

    /// Writes a host few-shot record for step `id` with `accuracy` at every shot of `p`.
    fn fewshot_record(p: &Preset, out: &Path, id: &str, accuracy: f64) {
        let rec = FewShotRec {
            command: "eval fewshot".into(),
            backbone: "b".into(),
            backbone_fnv64: "0".into(),
            data: "d".into(),
            split: "test".into(),
            way: 5,
            query: 15,
            episodes: 600,
            classifier: "logistic".into(),
            seed: 0,
            image_size: 32,
            images_embedded: 1,
            results: p
                .fewshot
                .shots
                .iter()
                .map(|&shot| super::super::results::ShotRec {
                    shot,
                    accuracy,
                    ci95: 1.0,
                    episodes: 600,
                })
                .collect(),
        };
        let step = crate::study::records::StepRecord {
            id: id.into(),
            title: id.into(),
            seconds: 0.0,
            result: serde_json::to_value(rec).unwrap(),
        };
        crate::study::records::write_record(out, &step).unwrap();
    }

    #[test]
    fn same_tau_splits_the_gap_into_mask_and_temperature() {
        let mut p = crate::study::preset::tiny();
        p.ablations = vec![Ablation::SameTau];
        let (mo, ex) = (
            Method::Moco(trainer::method::Version::V2),
            Method::Exemplar(trainer::method::Version::V2),
        );
        let (t_mo, t_ex) = (mo.defaults().tau.unwrap(), ex.defaults().tau.unwrap());
        assert_eq!(same_tau_cells(&p), vec![(mo, t_ex), (ex, t_mo)]);
        let d = tempfile::tempdir().unwrap();
        // Paper settings: Exemplar (own τ) 60, MoCo (own τ) 50 → gap 10; at Exemplar's τ MoCo
        // reaches 57 (gap 3), at MoCo's τ Exemplar falls to 52 (gap 2).
        fewshot_record(&p, d.path(), &ids::fewshot(ex), 60.0);
        fewshot_record(&p, d.path(), &ids::fewshot(mo), 50.0);
        fewshot_record(&p, d.path(), &ids::same_tau_fewshot(mo, t_ex), 57.0);
        fewshot_record(&p, d.path(), &ids::same_tau_fewshot(ex, t_mo), 52.0);
        let (rows, gaps, claims) = same_tau(&p, d.path()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows.iter().filter(|r| r.main_run).count(), 2);
        assert_eq!(gaps.len(), 1);
        let g = &gaps[0];
        assert_eq!((g.exemplar, g.moco), (ex, mo));
        assert_eq!(g.paper_settings, Some(10.0));
        assert_eq!(g.at_tau, vec![(t_ex, Some(3.0)), (t_mo, Some(2.0))]);
        // Each same-τ claim: margin 3 (resp. 2) against √2 ≈ 1.41 → holds.
        assert_eq!(claims.len(), 2);
        assert!(claims.iter().all(|c| c.verdict == Verdict::Holds));
        assert_eq!(claims[0].margin, Some(3.0));
        // The report shows the decomposition.
        let a = Analyses {
            same_tau: rows,
            same_tau_gaps: gaps,
            same_tau_claims: claims,
            ..Default::default()
        };
        let md = markdown(&a, &p);
        assert!(
            md.contains("+10.00 at the paper's settings; +3.00 at τ 0.1; +2.00 at τ 0.2"),
            "{md}"
        );
    }

    #[test]
    fn paired_claims_use_the_per_image_differences() {
        // Differences 1, 2, 3: mean 2, interval 1.96·√(2/3)/√3.
        let c = paired_claim("x".into(), "y".into(), &[1.0, 2.0, 3.0]);
        assert_eq!(c.margin, Some(2.0));
        assert!((c.ci95.unwrap() - 1.96 * 2f64.sqrt() / 3.0).abs() < 1e-12);
        assert_eq!(c.verdict, Verdict::Holds);
        let c = paired_claim("x".into(), "y".into(), &[-1.0, 0.5]);
        assert_eq!(c.verdict, Verdict::ReversedWithinNoise);
        assert_eq!(
            paired_claim("x".into(), "y".into(), &[]).verdict,
            Verdict::Missing
        );
    }
}
