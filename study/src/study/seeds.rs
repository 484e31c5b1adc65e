//! `host-trainer study --seeds N`: the whole plan once per seed, and the tables across seeds.
//!
//! Seed `s` (the preset's seed, then +1, +2, …) is an ordinary, resumable study in
//! `OUT/seed-<s>/` (its own data, pretrainings, episodes and records; with `--data-seed`, every
//! seed's data is drawn with that one seed, so the data are the same on every seed). The aggregate
//! `OUT/results.json` and `OUT/results.md` give, for every figure, the mean over seeds with the
//! 95% interval *across seeds* ([`mean_ci95_seeds`]: Student's t on the per-seed values) next to
//! the mean of the per-seed (per-episode or per-image) intervals. The paper's orderings are
//! judged across seeds on their paired per-seed margins ([`paired_claims`]): every method of a
//! seed shares that seed's synthetic data, initialisation and episodes, and the seeds' data
//! differ in difficulty (a whole row moves together from seed to seed), so the margin of one
//! method over another is compared with its own spread across seeds. A claim holds only if it
//! holds beyond that seed-to-seed variation, which is the noise that matters for "method A beats
//! method B". The unpaired view (seed means against the combined across-seed intervals of the two
//! figures, which count the shared data difficulty as noise) is kept beside it. Besides the
//! main tables: each pretraining's "did it learn?" figures over seeds, and the same-τ
//! ablation's Exemplar − MoCo gaps as paired per-seed differences.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::analyses::{SameTauGap, SameTauRow};
use super::preset::Preset;
use super::results::{
    self, alignment_claims, orderings, AlignmentCell, Claim, Figure, MethodRow, PretrainRecord,
    ShotCell, StudyResults, Verdict,
};
use super::{Backbone, Plan, RunOptions, RunSummary};
pub use runtime_core::metrics::mean_ci95;
use trainer::method::Method;

/// Two-sided 95% quantiles of Student's t, `t(0.975, df)` for df = 1..=30 (the standard table;
/// a test integrates the t density to check each one). Beyond 30 the normal 1.96 is within 4%.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Mean and 95% half-interval of a few per-seed values: `t(0.975, n−1) · s / √n` with the sample
/// standard deviation `s` (divisor n − 1); `None` for the interval with one seed (no spread to
/// estimate). Why not [`mean_ci95`] (normal quantile, population sd), the project's interval over
/// hundreds of episodes or images: with 3 seeds it is 0.37× this one, so orderings would "hold
/// beyond the seed-to-seed variation" that three seeds cannot show.
pub fn mean_ci95_seeds(x: &[f64]) -> Option<(f64, Option<f64>)> {
    if x.is_empty() {
        return None;
    }
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some((mean, None));
    }
    let var = x.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (n - 1) as f64;
    let t = T975.get(n - 2).copied().unwrap_or(1.96);
    Some((mean, Some(t * var.sqrt() / (n as f64).sqrt())))
}

/// A figure over seeds: the mean with its across-seed interval, and the mean within-seed interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedFigure {
    pub mean: f64,
    /// 95% half-interval across seeds ([`mean_ci95_seeds`]; `None` with one seed).
    pub ci95_seeds: Option<f64>,
    /// Mean over seeds of each seed's own 95% half-interval (episodes, images), when reported.
    pub ci95_within: Option<f64>,
    /// The per-seed values, in seed order.
    pub values: Vec<f64>,
}

/// The across-seed view of a figure that every seed reported (`None` if any seed lacks it).
pub fn over_seeds(figs: &[Option<Figure>]) -> Option<SeedFigure> {
    let figs: Vec<Figure> = figs.iter().copied().collect::<Option<_>>()?;
    let values: Vec<f64> = figs.iter().map(|f| f.value).collect();
    let (mean, ci95_seeds) = mean_ci95_seeds(&values)?;
    let within: Option<Vec<f64>> = figs.iter().map(|f| f.ci95).collect();
    let ci95_within = within.and_then(|w| mean_ci95(&w)).map(|(m, _)| m);
    Some(SeedFigure {
        mean,
        ci95_seeds,
        ci95_within,
        values,
    })
}

/// The across-seed view of a plain per-seed value (no within-seed interval), e.g. a paired
/// difference computed on each seed; `None` if any seed lacks it.
pub fn over_values(values: &[Option<f64>]) -> Option<SeedFigure> {
    let figs: Vec<Option<Figure>> = values
        .iter()
        .map(|v| v.map(|value| Figure { value, ci95: None }))
        .collect();
    over_seeds(&figs)
}

/// The seed means as plain figures with the across-seed interval (for the orderings).
fn as_figure(f: &Option<SeedFigure>) -> Option<Figure> {
    f.as_ref().map(|f| Figure {
        value: f.mean,
        ci95: f.ci95_seeds,
    })
}

/// One method's figures over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedRow {
    pub method: Backbone,
    pub base: Option<SeedFigure>,
    /// (shot, host, runtime int8).
    pub fewshot: Vec<(usize, Option<SeedFigure>, Option<SeedFigure>)>,
    pub iod_host: Option<SeedFigure>,
    pub iod_runtime_int8: Option<SeedFigure>,
}

/// One (alignment, method) of the sweep over seeds: (shot, accuracy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedAlignment {
    pub alignment: f64,
    pub method: Backbone,
    pub fewshot: Vec<(usize, Option<SeedFigure>)>,
}

/// One pretraining (domain, method) over seeds: the per-seed "did it learn?" table's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedPretrain {
    pub domain: String,
    pub method: Method,
    /// The same on every seed (the preset fixes it).
    pub images_seen: u64,
    /// Final loss / chance.
    pub loss_ratio: Option<SeedFigure>,
    /// MoCo/Exemplar: the fresh-key loss (final queue re-encoded by the final key encoder) /
    /// chance.
    pub fresh_ratio: Option<SeedFigure>,
    pub knn_top1: Option<SeedFigure>,
    pub knn_init_top1: Option<SeedFigure>,
    pub knn_chance: Option<f64>,
    /// On how many seeds the run visibly learnt (`results::PretrainRecord::learnt`).
    pub learnt_seeds: usize,
}

/// One (method, τ) of the same-τ ablation over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSameTau {
    pub method: Method,
    pub tau: f64,
    /// The main study run (the method at its own τ).
    pub main_run: bool,
    pub loss_ratio: Option<SeedFigure>,
    /// (shot, few-shot accuracy %).
    pub fewshot: Vec<(usize, Option<SeedFigure>)>,
}

/// The Exemplar − MoCo gap (points, at the largest shot) over seeds, each figure the per-seed
/// difference (paired: both runs of a seed share its data, initialisation and episodes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSameTauGap {
    pub exemplar: Method,
    pub moco: Method,
    pub shot: usize,
    /// Each method at its own τ (the main table).
    pub paper_settings: Option<SeedFigure>,
    /// `(τ, Exemplar − MoCo at τ)`: the label mask's share at that temperature.
    pub at_tau: Vec<(f64, Option<SeedFigure>)>,
    /// `(τ, paper-settings gap − gap at τ)`: the temperature's share, seen from τ.
    pub tau_share: Vec<(f64, Option<SeedFigure>)>,
}

/// `OUT/results.json` of a multi-seed study.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedsResults {
    pub preset: Preset,
    pub seeds: Vec<u64>,
    /// Each seed's own study folder (its `results.json` has everything per seed).
    pub per_seed: Vec<PathBuf>,
    pub rows: Vec<SeedRow>,
    pub mean_face: Option<SeedFigure>,
    pub alignment: Vec<SeedAlignment>,
    /// Pretraining runs that did not visibly learn, as `seed <s>: <domain> <method>`.
    pub not_learnt: Vec<String>,
    /// The paper's orderings on the paired per-seed margins ([`paired_claims`]).
    pub orderings: Vec<Claim>,
    /// The alignment sweep's predictions, the same way.
    pub alignment_orderings: Vec<Claim>,
    /// The same orderings on the seed means with the combined across-seed interval of the two
    /// figures (unpaired: stricter whenever the seeds differ in difficulty).
    pub orderings_unpaired: Vec<Claim>,
    pub alignment_orderings_unpaired: Vec<Claim>,
    /// Each pretraining's "did it learn?" figures over seeds.
    pub pretraining: Vec<SeedPretrain>,
    /// The same-τ ablation (`--ablation same-tau`), empty when it did not run.
    pub same_tau: Vec<SeedSameTau>,
    pub same_tau_gaps: Vec<SeedSameTauGap>,
    /// "Exemplar > MoCo" at each τ and at the paper's settings, on the paired differences.
    pub same_tau_claims: Vec<Claim>,
    /// Summed wall time of all seeds' steps (s).
    pub wall_seconds: f64,
}

/// The seeds a `--seeds n` study runs.
pub fn seed_list(first: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|k| first + k).collect()
}

/// Folder of seed `s` inside the study folder.
pub fn seed_dir(out: &Path, s: u64) -> PathBuf {
    out.join(format!("seed-{s}"))
}

/// Aggregates per-seed results (all of the same preset but the seed).
pub fn aggregate(per_seed: &[(u64, PathBuf, StudyResults)]) -> Result<SeedsResults> {
    let Some((_, _, first)) = per_seed.first() else {
        bail!("no seed to aggregate");
    };
    let rows_of = |i: usize| -> Vec<&MethodRow> { per_seed.iter().map(|s| &s.2.rows[i]).collect() };
    let mut rows = Vec::new();
    for (i, r0) in first.rows.iter().enumerate() {
        let rs = rows_of(i);
        if rs.iter().any(|r| r.method != r0.method) {
            bail!("seeds disagree on the method rows");
        }
        let fewshot = r0
            .fewshot
            .iter()
            .enumerate()
            .map(|(k, c0)| {
                let cells: Vec<&ShotCell> = rs.iter().map(|r| &r.fewshot[k]).collect();
                (
                    c0.shot,
                    over_seeds(&cells.iter().map(|c| c.host).collect::<Vec<_>>()),
                    over_seeds(&cells.iter().map(|c| c.runtime_int8).collect::<Vec<_>>()),
                )
            })
            .collect();
        let pick = |f: &dyn Fn(&MethodRow) -> Option<Figure>| {
            over_seeds(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        rows.push(SeedRow {
            method: r0.method,
            base: pick(&|r| r.base),
            fewshot,
            iod_host: pick(&|r| r.iod_host),
            iod_runtime_int8: pick(&|r| r.iod_runtime_int8),
        });
    }
    let mean_face = over_seeds(&per_seed.iter().map(|s| s.2.mean_face).collect::<Vec<_>>());
    let mut alignment = Vec::new();
    for (i, c0) in first.alignment.iter().enumerate() {
        let fewshot = c0
            .fewshot
            .iter()
            .enumerate()
            .map(|(k, (shot, _))| {
                let figs: Vec<Option<Figure>> = per_seed
                    .iter()
                    .map(|s| s.2.alignment[i].fewshot[k].1)
                    .collect();
                (*shot, over_seeds(&figs))
            })
            .collect();
        alignment.push(SeedAlignment {
            alignment: c0.alignment,
            method: c0.method,
            fewshot,
        });
    }
    let not_learnt = per_seed
        .iter()
        .flat_map(|(s, _, r)| {
            r.pretraining
                .iter()
                .filter(|t| !t.learnt)
                .map(move |t| format!("seed {s}: {} {}", t.domain, t.method))
        })
        .collect();
    // Orderings on the seed means with across-seed intervals.
    let mean_rows: Vec<MethodRow> = rows
        .iter()
        .map(|r| MethodRow {
            method: r.method,
            base: as_figure(&r.base),
            fewshot: r
                .fewshot
                .iter()
                .map(|(shot, h, q)| ShotCell {
                    shot: *shot,
                    host: as_figure(h),
                    runtime_int8: as_figure(q),
                })
                .collect(),
            iod_host: as_figure(&r.iod_host),
            iod_runtime_int8: as_figure(&r.iod_runtime_int8),
        })
        .collect();
    let shots = first.preset.fewshot.shots.clone();
    let orderings_unpaired = orderings(&mean_rows, as_figure(&mean_face), &[], &shots);
    let mean_cells: Vec<AlignmentCell> = alignment
        .iter()
        .map(|c| AlignmentCell {
            alignment: c.alignment,
            method: c.method,
            fewshot: c.fewshot.iter().map(|(k, f)| (*k, as_figure(f))).collect(),
        })
        .collect();
    let alignment_orderings_unpaired = alignment_claims(&mean_cells, &shots);
    let orderings = paired_claims(
        &per_seed
            .iter()
            .map(|s| &s.2.orderings[..])
            .collect::<Vec<_>>(),
    );
    let alignment_orderings = paired_claims(
        &per_seed
            .iter()
            .map(|s| &s.2.alignment_orderings[..])
            .collect::<Vec<_>>(),
    );
    let same_tau_gaps = same_tau_gaps_over_seeds(per_seed)?;
    Ok(SeedsResults {
        preset: first.preset.clone(),
        seeds: per_seed.iter().map(|s| s.0).collect(),
        per_seed: per_seed.iter().map(|s| s.1.clone()).collect(),
        rows,
        mean_face,
        alignment,
        not_learnt,
        orderings,
        alignment_orderings,
        orderings_unpaired,
        alignment_orderings_unpaired,
        pretraining: pretraining_over_seeds(per_seed),
        same_tau: same_tau_over_seeds(per_seed)?,
        same_tau_gaps: same_tau_gaps.0,
        same_tau_claims: same_tau_gaps.1,
        wall_seconds: per_seed.iter().map(|s| s.2.wall_seconds.total).sum(),
    })
}

/// The first seed's claims, each judged on its margins on every seed (matched by its text):
/// the mean margin against the across-seed interval of the margins ([`mean_ci95_seeds`]).
/// A seed without the claim's margin makes it [`Verdict::Missing`].
pub fn paired_claims(per_seed: &[&[Claim]]) -> Vec<Claim> {
    let Some(first) = per_seed.first() else {
        return vec![];
    };
    first
        .iter()
        .map(|c0| {
            let margins: Vec<Option<f64>> = per_seed
                .iter()
                .map(|cs| {
                    cs.iter()
                        .find(|c| c.claim == c0.claim)
                        .and_then(|c| c.margin)
                })
                .collect();
            let measured = over_values(&margins).and_then(|f| Some((f.mean, f.ci95_seeds?)));
            Claim::judged(c0.claim.clone(), c0.paper.clone(), measured)
        })
        .collect()
}

/// Each (domain, method) pretraining of the first seed, matched by name on the others.
fn pretraining_over_seeds(per_seed: &[(u64, PathBuf, StudyResults)]) -> Vec<SeedPretrain> {
    let first = &per_seed[0].2;
    first
        .pretraining
        .iter()
        .map(|p0| {
            let recs: Vec<Option<&PretrainRecord>> = per_seed
                .iter()
                .map(|s| {
                    s.2.pretraining
                        .iter()
                        .find(|r| r.domain == p0.domain && r.method == p0.method)
                })
                .collect();
            let col = |f: &dyn Fn(&PretrainRecord) -> Option<f64>| {
                over_values(&recs.iter().map(|r| r.and_then(f)).collect::<Vec<_>>())
            };
            SeedPretrain {
                domain: p0.domain.clone(),
                method: p0.method,
                images_seen: p0.images_seen,
                loss_ratio: col(&|r| Some(r.loss_ratio)),
                fresh_ratio: col(&|r| r.probe_loss_fresh.map(|f| f / r.chance_loss)),
                knn_top1: col(&|r| r.knn_top1),
                knn_init_top1: col(&|r| r.knn_init_top1),
                knn_chance: p0.knn_chance,
                learnt_seeds: recs.iter().filter(|r| r.is_some_and(|r| r.learnt)).count(),
            }
        })
        .collect()
}

/// The same-τ rows over seeds (every seed ran the same rows: the preset fixes them).
fn same_tau_over_seeds(per_seed: &[(u64, PathBuf, StudyResults)]) -> Result<Vec<SeedSameTau>> {
    let first = &per_seed[0].2.analyses.same_tau;
    let mut rows = Vec::new();
    for (i, r0) in first.iter().enumerate() {
        let rs: Vec<&SameTauRow> = per_seed
            .iter()
            .map(|s| s.2.analyses.same_tau.get(i))
            .collect::<Option<_>>()
            .filter(|rs: &Vec<&SameTauRow>| {
                rs.iter().all(|r| r.method == r0.method && r.tau == r0.tau)
            })
            .context("seeds disagree on the same-τ rows")?;
        let ratio = |r: &SameTauRow| Some(r.final_loss? / r.chance_loss?);
        rows.push(SeedSameTau {
            method: r0.method,
            tau: r0.tau,
            main_run: r0.main_run,
            loss_ratio: over_values(&rs.iter().map(|r| ratio(r)).collect::<Vec<_>>()),
            fewshot: r0
                .fewshot
                .iter()
                .enumerate()
                .map(|(k, c0)| {
                    let figs: Vec<Option<Figure>> = rs
                        .iter()
                        .map(|r| r.fewshot.get(k).and_then(|c| c.1))
                        .collect();
                    (c0.0, over_seeds(&figs))
                })
                .collect(),
        });
    }
    Ok(rows)
}

/// The same-τ gaps over seeds, as paired per-seed differences, and the claims judged on them.
fn same_tau_gaps_over_seeds(
    per_seed: &[(u64, PathBuf, StudyResults)],
) -> Result<(Vec<SeedSameTauGap>, Vec<Claim>)> {
    let (mut gaps, mut claims) = (Vec::new(), Vec::new());
    for (i, g0) in per_seed[0].2.analyses.same_tau_gaps.iter().enumerate() {
        let gs: Vec<&SameTauGap> = per_seed
            .iter()
            .map(|s| s.2.analyses.same_tau_gaps.get(i))
            .collect::<Option<_>>()
            .filter(|gs: &Vec<&SameTauGap>| {
                gs.iter().all(|g| {
                    g.exemplar == g0.exemplar
                        && g.moco == g0.moco
                        && g.at_tau
                            .iter()
                            .map(|a| a.0)
                            .eq(g0.at_tau.iter().map(|a| a.0))
                })
            })
            .context("seeds disagree on the same-τ gaps")?;
        let paper: Vec<Option<f64>> = gs.iter().map(|g| g.paper_settings).collect();
        let mut at_tau = Vec::new();
        let mut tau_share = Vec::new();
        for (k, &(t, _)) in g0.at_tau.iter().enumerate() {
            let at: Vec<Option<f64>> = gs.iter().map(|g| g.at_tau[k].1).collect();
            let share: Vec<Option<f64>> = paper
                .iter()
                .zip(&at)
                .map(|(p, a)| Some((*p)? - (*a)?))
                .collect();
            at_tau.push((t, over_values(&at)));
            tau_share.push((t, over_values(&share)));
        }
        let paper_settings = over_values(&paper);
        let judged = |text: String, f: &Option<SeedFigure>| {
            Claim::judged(
                text,
                "the label mask helps: Exemplar above MoCo".into(),
                f.as_ref().and_then(|f| Some((f.mean, f.ci95_seeds?))),
            )
        };
        claims.push(judged(
            format!(
                "paper's settings: {} > {} ({}-shot)",
                g0.exemplar, g0.moco, g0.shot
            ),
            &paper_settings,
        ));
        for (t, f) in &at_tau {
            claims.push(judged(
                format!("τ {t}: {} > {} ({}-shot)", g0.exemplar, g0.moco, g0.shot),
                f,
            ));
        }
        gaps.push(SeedSameTauGap {
            exemplar: g0.exemplar,
            moco: g0.moco,
            shot: g0.shot,
            paper_settings,
            at_tau,
            tau_share,
        });
    }
    Ok((gaps, claims))
}

fn cell(f: &Option<SeedFigure>) -> String {
    match f {
        Some(f) => {
            let across = f.ci95_seeds.map_or(String::new(), |c| format!(" ± {c:.2}"));
            match f.ci95_within {
                Some(w) => format!("{:.2}{across} (± {w:.2})", f.mean),
                None => format!("{:.2}{across}", f.mean),
            }
        }
        None => "-".into(),
    }
}

fn claims_md(s: &mut String, claims: &[Claim]) {
    paired_claims_md(s, claims, &[]);
}

/// Paired claims, each followed by the unpaired verdict of the same claim where there is one.
fn paired_claims_md(s: &mut String, paired: &[Claim], unpaired: &[Claim]) {
    for c in paired {
        if let (Some(m), Some(ci)) = (c.margin, c.ci95) {
            *s += &format!(
                "- {} (paper {}): {} — mean margin {m:+.2} vs across-seed interval {ci:.2}",
                c.claim,
                c.paper,
                c.verdict.text()
            );
            if let Some(u) = unpaired.iter().find(|u| u.claim == c.claim) {
                if let (Some(um), Some(uci)) = (u.margin, u.ci95) {
                    *s += &format!(
                        " (seed means, unpaired: {} — {um:+.2} vs {uci:.2})",
                        u.verdict.text()
                    );
                }
            }
            *s += "\n";
        }
    }
}

/// `OUT/results.md` of a multi-seed study.
pub fn markdown(r: &SeedsResults) -> String {
    let p = &r.preset;
    let seeds: Vec<String> = r.seeds.iter().map(u64::to_string).collect();
    let data = match p.data_seed {
        Some(d) => format!(
            "; every seed on the data of data seed {d}, so the spread is initialisation, \
             augmentation, batches and episodes alone"
        ),
        None => String::new(),
    };
    let mut s = format!(
        "# Study results over {} seeds (preset `{}`, seeds {}{data})\n\nEach cell: mean over seeds ± \
         95% interval across seeds (± mean of the per-seed interval over episodes or images). \
         Per-seed reports: `seed-<s>/results.md`.\n\n",
        r.seeds.len(),
        p.name,
        seeds.join(", ")
    );
    s += "## Table 4 layout: few-shot on the novel classes (objects)\n\n| method | base acc (host) |";
    for &k in &p.fewshot.shots {
        s += &format!(" {k}-shot host | {k}-shot int8 |");
    }
    s += "\n|---|---|";
    for _ in &p.fewshot.shots {
        s += "---|---|";
    }
    s += "\n";
    for row in &r.rows {
        s += &format!("| {} | {} |", row.method, cell(&row.base));
        for (_, h, q) in &row.fewshot {
            s += &format!(" {} | {} |", cell(h), cell(q));
        }
        s += "\n";
    }
    s += "\n## Table 5 layout: MAFL landmarks (IOD error %, lower is better)\n\n| method | host | int8 |\n|---|---|---|\n";
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {} |\n",
            row.method,
            cell(&row.iod_host),
            cell(&row.iod_runtime_int8)
        );
    }
    s += &format!(
        "| mean face (no image) | {} | (same) |\n",
        cell(&r.mean_face)
    );
    if !r.alignment.is_empty() {
        s += "\n## Task alignment (few-shot, host f32)\n\n";
        s += &results::alignment_table_head(&p.fewshot.shots);
        for c in &r.alignment {
            s += &format!("| {:.2} | {} |", c.alignment, c.method);
            for (_, f) in &c.fewshot {
                s += &format!(" {} |", cell(f));
            }
            s += "\n";
        }
        s += "\nPredicted by the paper's argument, judged across seeds on the paired per-seed \
              margins:\n\n";
        paired_claims_md(
            &mut s,
            &r.alignment_orderings,
            &r.alignment_orderings_unpaired,
        );
    }
    s += "\n## The paper's orderings, judged across seeds\n\nEach claim's margin on every seed \
          (the methods of a seed share its data, initialisation and episodes), its mean against \
          the across-seed interval of those margins (Student's t); in parentheses the same claim \
          on the seed means against the two figures' combined across-seed intervals, which count \
          the seeds' differences in data difficulty as noise.\n\n";
    paired_claims_md(&mut s, &r.orderings, &r.orderings_unpaired);
    let held = r
        .orderings
        .iter()
        .filter(|c| c.verdict == Verdict::Holds)
        .count();
    s += &format!(
        "\n{held} of {} orderings hold beyond the seed-to-seed variation.\n",
        r.orderings
            .iter()
            .filter(|c| c.verdict != Verdict::Missing)
            .count()
    );
    s += &pretraining_md(r);
    s += &same_tau_md(r);
    if r.not_learnt.is_empty() {
        s += "\nEvery pretraining run visibly learnt (see each seed's report).\n";
    } else {
        s += &format!(
            "\n**Flag:** did not visibly learn: {}.\n",
            r.not_learnt.join("; ")
        );
    }
    s += &format!(
        "\nWall time: {:.1} min over all seeds.\n",
        r.wall_seconds / 60.0
    );
    s
}

/// The "did it learn?" figures over seeds.
fn pretraining_md(r: &SeedsResults) -> String {
    if r.pretraining.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Did each pretraining learn? (over seeds)\n\nThe per-seed criterion (each seed's \
         report): loss and fresh-key loss ≤ 0.6 × chance, kNN top-1 ≥ 2 × chance and above the \
         network at initialisation. Ratios are loss / chance.\n\n| data | method | images seen | \
         loss / chance | fresh-key loss / chance | kNN top-1 % | kNN at init % | kNN chance % | \
         learnt on |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let n = r.seeds.len();
    for p in &r.pretraining {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {n} seeds |\n",
            p.domain,
            p.method,
            p.images_seen,
            cell(&p.loss_ratio),
            cell(&p.fresh_ratio),
            cell(&p.knn_top1),
            cell(&p.knn_init_top1),
            p.knn_chance.map_or("-".into(), |c| format!("{c:.2}")),
            p.learnt_seeds
        );
    }
    s
}

/// The same-τ ablation over seeds.
fn same_tau_md(r: &SeedsResults) -> String {
    let Some(first) = r.same_tau.first() else {
        return String::new();
    };
    let mut s = String::from(
        "\n## Exemplar against MoCo at one temperature (over seeds)\n\nEach contrastive method \
         at its own τ (the main runs) and at the other's, same epochs, queue and seed. Few-shot \
         on the novel objects (%).\n\n| method | τ | loss / chance |",
    );
    for (k, _) in &first.fewshot {
        s += &format!(" {k}-shot |");
    }
    s += "\n|---|---|---|";
    s += &"---|".repeat(first.fewshot.len());
    s += "\n";
    for row in &r.same_tau {
        s += &format!(
            "| {}{} | {} | {} |",
            row.method,
            if row.main_run { " (main)" } else { "" },
            row.tau,
            cell(&row.loss_ratio)
        );
        for (_, f) in &row.fewshot {
            s += &format!(" {} |", cell(f));
        }
        s += "\n";
    }
    for g in &r.same_tau_gaps {
        s += &format!(
            "\n{} − {} ({}-shot, points, mean ± 95% interval of the per-seed differences): {} at \
             the paper's settings",
            g.exemplar,
            g.moco,
            g.shot,
            cell(&g.paper_settings)
        );
        for (t, f) in &g.at_tau {
            s += &format!("; {} at τ {t}", cell(f));
        }
        let shares: Vec<String> = g
            .tau_share
            .iter()
            .map(|(t, f)| format!("{} from τ {t}", cell(f)))
            .collect();
        s += &format!(
            ". The temperature's share (paper's-settings gap − same-τ gap): {}.\n",
            shares.join("; ")
        );
    }
    if !r.same_tau_claims.is_empty() {
        s += "\n";
        claims_md(&mut s, &r.same_tau_claims);
    }
    s
}

/// Runs `preset` for `n` seeds (each resumable in its own folder), then writes the aggregate
/// `results.json` and `results.md` into `opts.out`.
pub fn run(preset: &Preset, n: usize, opts: &RunOptions) -> Result<(RunSummary, SeedsResults)> {
    if n == 0 {
        bail!("--seeds must be at least 1");
    }
    let mut per_seed = Vec::new();
    let mut total = RunSummary::default();
    for s in seed_list(preset.seed, n) {
        let mut p = preset.clone();
        p.seed = s;
        let plan = Plan::new(p)?;
        let dir = seed_dir(&opts.out, s);
        eprintln!("== seed {s} ({}) ==", dir.display());
        let sub = RunOptions {
            out: dir.clone(),
            device: opts.device.clone(),
            progress: opts.progress,
            stop_after: opts.stop_after,
            jobs: opts.jobs,
            only: opts.only.clone(),
        };
        let done = super::run(&plan, &sub)?;
        total.executed.extend(done.executed);
        total.skipped.extend(done.skipped);
        total.seconds += done.seconds;
        let res = results::collect(&plan, &dir)?;
        per_seed.push((s, dir, res));
    }
    let agg = aggregate(&per_seed)?;
    let json = serde_json::to_string_pretty(&agg)?;
    for (name, bytes) in [
        ("results.json", json.as_bytes()),
        ("results.md", markdown(&agg).as_bytes()),
    ] {
        let path = opts.out.join(name);
        trainer::fsutil::write_atomic(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((total, agg))
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

    #[test]
    fn over_seeds_by_hand() {
        // Values 50, 52, 54: mean 52, sample sd 2, interval t(0.975, 2) · 2 / √3 = 4.303 · 2 / √3.
        let g = over_seeds(&[f(50.0, 1.0), f(52.0, 2.0), f(54.0, 3.0)]).unwrap();
        assert!((g.mean - 52.0).abs() < 1e-12);
        assert!((g.ci95_seeds.unwrap() - 4.303 * 2.0 / 3f64.sqrt()).abs() < 1e-12);
        // One seed: a mean, no interval across seeds.
        assert_eq!(mean_ci95_seeds(&[3.0]), Some((3.0, None)));
        assert_eq!(mean_ci95_seeds(&[]), None);
        assert_eq!(g.ci95_within, Some(2.0));
        assert_eq!(g.values, vec![50.0, 52.0, 54.0]);
        // A seed without the figure: no aggregate (never a mean over fewer seeds).
        assert!(over_seeds(&[f(50.0, 1.0), None]).is_none());
        // No per-seed interval: none within.
        let g = over_seeds(&[
            Some(Figure {
                value: 1.0,
                ci95: None,
            }),
            f(3.0, 1.0),
        ])
        .unwrap();
        assert_eq!(g.ci95_within, None);
        assert_eq!(seed_list(7, 3), vec![7, 8, 9]);
    }

    /// `Γ(k/2)` for a positive integer k, from Γ(1/2) = √π, Γ(1) = 1 and Γ(x+1) = xΓ(x).
    fn gamma_half(k: u32) -> f64 {
        let (mut x, mut g) = if k.is_multiple_of(2) {
            (1.0, 1.0)
        } else {
            (0.5, std::f64::consts::PI.sqrt())
        };
        while x < k as f64 / 2.0 - 0.25 {
            g *= x;
            x += 1.0;
        }
        g
    }

    #[test]
    fn t_table_is_the_975_quantile_of_students_t() {
        // P(|T| ≤ q) for T ~ t(df), by Simpson's rule on the density: 0.95 for every tabled q
        // (the table has 3 decimals, so within 2e-4).
        for (i, &q) in T975.iter().enumerate() {
            let df = (i + 1) as f64;
            let c = gamma_half(i as u32 + 2)
                / ((df * std::f64::consts::PI).sqrt() * gamma_half(i as u32 + 1));
            let pdf = |t: f64| c * (1.0 + t * t / df).powf(-(df + 1.0) / 2.0);
            let n = 20_000;
            let h = q / n as f64;
            let mut sum = pdf(0.0) + pdf(q);
            for j in 1..n {
                sum += pdf(j as f64 * h) * if j % 2 == 1 { 4.0 } else { 2.0 };
            }
            let p = 2.0 * sum * h / 3.0;
            assert!((p - 0.95).abs() < 2e-4, "df {df}: P(|T| ≤ {q}) = {p}");
        }
    }

    /// A seed's results with one pretraining record and a same-τ ablation whose Exemplar-v2 −
    /// MoCo-v2 5-shot gaps are `paper` (each at its own τ) and `at` (at τ 0.1, 0.2).
    fn seed_results(loss: f64, learnt_knn: f64, paper: f64, at: [f64; 2]) -> StudyResults {
        use crate::study::analyses::Analyses;
        use trainer::method::Version;
        let rec = results::pretrain_record(
            "objects",
            "moco-v2".parse().unwrap(),
            &serde_json::from_value(serde_json::json!({"method": "moco-v2",
                "final_loss": loss, "chance_loss": 7.0, "images_seen": 1000,
                "knn_top1": learnt_knn, "knn_chance": 1.0, "knn_init_top1": 2.0}))
            .unwrap(),
        )
        .unwrap();
        let (e, m) = (Method::Exemplar(Version::V2), Method::Moco(Version::V2));
        let same_tau = [
            (e, 0.1, true, 60.0 + paper),
            (e, 0.2, false, 50.0),
            (m, 0.2, true, 60.0),
            (m, 0.1, false, 50.0),
        ]
        .into_iter()
        .map(|(method, tau, main_run, acc)| SameTauRow {
            method,
            tau,
            main_run,
            final_loss: Some(loss),
            chance_loss: Some(7.0),
            fewshot: vec![(5, f(acc, 1.0))],
        })
        .collect();
        StudyResults {
            preset: super::super::preset::tiny(),
            seed: 0,
            rows: vec![],
            pretraining: vec![rec],
            alignment: vec![],
            alignment_orderings: vec![],
            mean_face: None,
            ablation: vec![],
            orderings: vec![Claim::judged(
                "novel 5-shot: a > b".into(),
                "-".into(),
                Some((paper, 1.0)),
            )],
            analyses: Analyses {
                same_tau,
                same_tau_gaps: vec![SameTauGap {
                    exemplar: e,
                    moco: m,
                    shot: 5,
                    paper_settings: Some(paper),
                    at_tau: vec![(0.1, Some(at[0])), (0.2, Some(at[1]))],
                }],
                ..Default::default()
            },
            wall_seconds: results::WallTime {
                steps: vec![],
                total: 60.0,
            },
        }
    }

    #[test]
    fn pretraining_and_same_tau_over_seeds_by_hand() {
        let per_seed: Vec<(u64, PathBuf, StudyResults)> = [
            (0, seed_results(3.5, 30.0, 8.0, [3.0, 1.0])),
            (1, seed_results(4.9, 30.0, 10.0, [5.0, 2.0])),
            (2, seed_results(4.2, 1.0, 12.0, [7.0, 3.0])),
        ]
        .into_iter()
        .map(|(s, r)| (s, PathBuf::from(format!("seed-{s}")), r))
        .collect();
        let agg = aggregate(&per_seed).unwrap();
        let p = &agg.pretraining[0];
        assert_eq!((p.domain.as_str(), p.images_seen), ("objects", 1000));
        // Loss ratios 0.5, 0.7, 0.6: mean 0.6, sample sd 0.1.
        let lr = p.loss_ratio.as_ref().unwrap();
        assert!((lr.mean - 0.6).abs() < 1e-12);
        assert!((lr.ci95_seeds.unwrap() - 4.303 * 0.1 / 3f64.sqrt()).abs() < 1e-9);
        // Seed 0 learnt (0.5 × chance, kNN 30 ≫ 2); seed 1 is above 0.6; seed 2's kNN is at chance.
        assert_eq!(p.learnt_seeds, 1);
        // Paired gaps: 8, 10, 12 at the paper's settings (mean 10, sd 2); 3, 5, 7 at τ 0.1; the
        // temperature's share from τ 0.1 is 5 on every seed (no spread).
        let g = &agg.same_tau_gaps[0];
        let ps = g.paper_settings.as_ref().unwrap();
        assert!((ps.mean - 10.0).abs() < 1e-12);
        assert!((ps.ci95_seeds.unwrap() - 4.303 * 2.0 / 3f64.sqrt()).abs() < 1e-9);
        let share = g.tau_share[0].1.as_ref().unwrap();
        assert_eq!(
            (g.tau_share[0].0, share.mean, share.ci95_seeds),
            (0.1, 5.0, Some(0.0))
        );
        // At τ 0.2: 1, 2, 3 (mean 2, interval 4.303/√3 = 2.48): within the noise.
        let v: Vec<_> = agg.same_tau_claims.iter().map(|c| c.verdict).collect();
        assert_eq!(
            v,
            vec![Verdict::Holds, Verdict::Holds, Verdict::HoldsWithinNoise]
        );
        // Same-τ rows: Exemplar at its own τ 0.1 averages 60 + 10.
        let row = &agg.same_tau[0];
        assert!(row.main_run && (row.fewshot[0].1.as_ref().unwrap().mean - 70.0).abs() < 1e-12);
        let md = markdown(&agg);
        assert!(
            md.contains("| objects | moco-v2 | 1000 | 0.60 ± 0.25 |"),
            "{md}"
        );
        assert!(md.contains("1 of 3 seeds"), "{md}");
        assert!(
            md.contains("10.00 ± 4.97 at the paper's settings; 5.00 ± 4.97 at τ 0.1"),
            "{md}"
        );
        assert!(md.contains("τ 0.2: exemplar-v2 > moco-v2 (5-shot)"), "{md}");
        // Each seed's ordering margin (8, 10, 12), paired across seeds: 10 ± 4.97, holds.
        let o = &agg.orderings[0];
        assert_eq!(
            (o.claim.as_str(), o.verdict),
            ("novel 5-shot: a > b", Verdict::Holds)
        );
        assert!((o.margin.unwrap() - 10.0).abs() < 1e-12);
        assert!((o.ci95.unwrap() - 4.303 * 2.0 / 3f64.sqrt()).abs() < 1e-9);
        assert!(md.contains("- novel 5-shot: a > b (paper -): holds — mean margin +10.00 vs across-seed interval 4.97"), "{md}");
        // A seed without the claim: not measured (never judged on fewer seeds).
        let c = |m: f64| Claim::judged("x".into(), "-".into(), Some((m, 0.1)));
        let (one, other) = (
            [c(1.0)],
            [Claim::judged("y".into(), "-".into(), Some((1.0, 0.1)))],
        );
        assert_eq!(paired_claims(&[&one, &other])[0].verdict, Verdict::Missing);
    }
}
