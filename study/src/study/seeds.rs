//! `host-trainer study --seeds N`: the whole plan once per seed, and the tables across seeds.
//!
//! Seed `s` (the preset's seed, then +1, +2, …) is an ordinary, resumable study in
//! `OUT/seed-<s>/` (its own data, pretrainings, episodes and records). The aggregate
//! `OUT/results.json` and `OUT/results.md` give, for every figure, the mean over seeds with the
//! 95% interval *across seeds* ([`mean_ci95`] of the per-seed values, the project's one interval:
//! with 3 seeds a normal approximation, wider in truth) next to the mean of the per-seed
//! (per-episode or per-image) intervals. The paper's orderings are judged on the seed means
//! against the across-seed intervals: a claim holds only if it holds beyond the seed-to-seed
//! variation, which is the noise that matters for "method A beats method B".
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::preset::Preset;
use super::results::{
    self, alignment_claims, orderings, AlignmentCell, Claim, Figure, MethodRow, ShotCell,
    StudyResults, Verdict,
};
use super::{Backbone, Plan, RunOptions, RunSummary};
pub use runtime_core::metrics::mean_ci95;

/// A figure over seeds: the mean with its across-seed interval, and the mean within-seed interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedFigure {
    pub mean: f64,
    /// 95% half-interval across seeds.
    pub ci95_seeds: f64,
    /// Mean over seeds of each seed's own 95% half-interval (episodes, images), when reported.
    pub ci95_within: Option<f64>,
    /// The per-seed values, in seed order.
    pub values: Vec<f64>,
}

/// The across-seed view of a figure that every seed reported (`None` if any seed lacks it).
pub fn over_seeds(figs: &[Option<Figure>]) -> Option<SeedFigure> {
    let figs: Vec<Figure> = figs.iter().copied().collect::<Option<_>>()?;
    let values: Vec<f64> = figs.iter().map(|f| f.value).collect();
    let (mean, ci95_seeds) = mean_ci95(&values)?;
    let within: Option<Vec<f64>> = figs.iter().map(|f| f.ci95).collect();
    let ci95_within = within.and_then(|w| mean_ci95(&w)).map(|(m, _)| m);
    Some(SeedFigure {
        mean,
        ci95_seeds,
        ci95_within,
        values,
    })
}

/// The seed means as plain figures with the across-seed interval (for the orderings).
fn as_figure(f: &Option<SeedFigure>) -> Option<Figure> {
    f.as_ref().map(|f| Figure {
        value: f.mean,
        ci95: Some(f.ci95_seeds),
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
    pub orderings: Vec<Claim>,
    pub alignment_orderings: Vec<Claim>,
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
    let orderings = orderings(&mean_rows, as_figure(&mean_face), &[], &shots);
    let mean_cells: Vec<AlignmentCell> = alignment
        .iter()
        .map(|c| AlignmentCell {
            alignment: c.alignment,
            method: c.method,
            fewshot: c.fewshot.iter().map(|(k, f)| (*k, as_figure(f))).collect(),
        })
        .collect();
    let alignment_orderings = alignment_claims(&mean_cells, &shots);
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
        wall_seconds: per_seed.iter().map(|s| s.2.wall_seconds.total).sum(),
    })
}

fn cell(f: &Option<SeedFigure>) -> String {
    match f {
        Some(f) => match f.ci95_within {
            Some(w) => format!("{:.2} ± {:.2} (± {w:.2})", f.mean, f.ci95_seeds),
            None => format!("{:.2} ± {:.2}", f.mean, f.ci95_seeds),
        },
        None => "-".into(),
    }
}

fn claims_md(s: &mut String, claims: &[Claim]) {
    for c in claims {
        if let (Some(m), Some(ci)) = (c.margin, c.ci95) {
            *s += &format!(
                "- {} (paper {}): {} — margin {m:+.2} vs across-seed interval {ci:.2}\n",
                c.claim,
                c.paper,
                c.verdict.text()
            );
        }
    }
}

/// `OUT/results.md` of a multi-seed study.
pub fn markdown(r: &SeedsResults) -> String {
    let p = &r.preset;
    let seeds: Vec<String> = r.seeds.iter().map(u64::to_string).collect();
    let mut s = format!(
        "# Study results over {} seeds (preset `{}`, seeds {})\n\nEach cell: mean over seeds ± \
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
        s += "\nPredicted by the paper's argument, judged across seeds:\n\n";
        claims_md(&mut s, &r.alignment_orderings);
    }
    s += "\n## The paper's orderings, judged across seeds\n\n";
    claims_md(&mut s, &r.orderings);
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
        // Values 50, 52, 54: mean 52, population sd √(8/3), interval 1.96·√(8/3)/√3.
        let g = over_seeds(&[f(50.0, 1.0), f(52.0, 2.0), f(54.0, 3.0)]).unwrap();
        assert!((g.mean - 52.0).abs() < 1e-12);
        assert!((g.ci95_seeds - 1.96 * (8f64 / 3.0).sqrt() / 3f64.sqrt()).abs() < 1e-12);
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
}
