//! `results.md`: the paper's layouts (Tables 4, 5 and 1, the orderings) as markdown, and the
//! writer of `results.json` beside it.
use std::path::Path;

use anyhow::{Context, Result};
use trainer::method::Method;

use super::*;

pub(in crate::study) fn cell(f: Option<Figure>) -> String {
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
    s += &format!("# Study results (preset `{}`, seed {}", p.name, r.seed);
    if let Some(d) = p.data_seed {
        s += &format!(", data seed {d}");
    }
    s += ")\n\n";
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
        let heads: Vec<(Method, usize)> = r.ablation[0].cells.iter().map(|c| (c.0, c.1)).collect();
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
            "\n## Did each pretraining learn?\n\nA run visibly learnt when its final loss is at most {LEARNT_LOSS_RATIO} × chance (ln of the candidates its softmax compares) and its kNN top-1 on held-out base images is at least {LEARNT_KNN_FACTOR} × chance and above the kNN of its own network at initialisation by more than {LEARNT_KNN_INIT_SE} binomial standard errors (random convolutional features are far above guessing). For MoCo and Exemplar the fresh-key loss (one batch against the final queue re-encoded by the final key encoder: the loss without the part owed to key age) must meet the same ratio. K/N is the queue length over the training images (kept ≤ 1/2, so that an instance's own older keys are not its negatives). *Demo* is the canonical MoCo CIFAR-10 demo's loss / chance after as many images (its last epoch's mean, like *ratio*; ResNet-18 at full width on CIFAR-10, K 4096: where a correct MoCo stands at this budget, not a target; `trajectory.png` draws both curves).\n\n| data | method | images seen | K/N | final loss | fresh-key loss | chance loss | ratio | demo | kNN top-1 % (chance) | kNN at init % | learnt |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
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
            // The demo's epoch mean at the middle of this run's last epoch (as `final_loss`).
            // An epoch is N images, less the last partial batch: half of one is close enough.
            let demo = match t.queue {
                Some(_) => crate::study::trajectory::demo_ratio_at(
                    t.images_seen as f64 - t.train_images as f64 / 2.0,
                )
                .map_or_else(|| "-".to_string(), |r| format!("{r:.2}")),
                None => "-".into(),
            };
            s += &format!(
                "| {} | {} | {} | {k_over_n} | {:.3} | {fresh} | {:.3} | {:.2} | {demo} | {knn} | {init} | {} |\n",
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
    s += &crate::study::analyses::markdown(&r.analyses, p);
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
