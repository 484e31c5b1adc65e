//! The tables collected from the step records under the study folder.
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use trainer::method::Method;

use super::*;
use crate::study::{ids, read_record, rows, Backbone, Plan};

pub(in crate::study) fn pretrain_record(
    domain: &str,
    method: Method,
    v: &PretrainRec,
) -> Option<PretrainRecord> {
    let (final_loss, chance_loss) = (finite(v.final_loss)?, finite(v.chance_loss)?);
    let knn_chance = finite(v.knn_chance);
    let loss_ratio = final_loss / chance_loss;
    let knn_ok = match (v.knn_top1, knn_chance) {
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
        method,
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
        knn_chance,
        knn_init_top1: v.knn_init_top1,
        probe_loss_fresh: v.queue_probe.map(|p| p.loss_fresh),
        learnt: loss_ratio <= LEARNT_LOSS_RATIO && fresh_ok && knn_ok && beats_init,
    })
}

/// The record of step `id` read as `T` (`None` if the step has not run). Fields a record lacks
/// give empty cells; a field of the wrong type is an error naming the record's file.
pub(in crate::study) fn record<T: DeserializeOwned>(out: &Path, id: &str) -> Result<Option<T>> {
    let Some(r) = read_record(out, id)? else {
        return Ok(None);
    };
    serde_json::from_value(r.result).map(Some).with_context(|| {
        format!(
            "{}: a field the tables read has the wrong type (written by another version?)",
            crate::study::record_path(out, id).display()
        )
    })
}

/// Build the tables from the records under `out` (missing steps give empty cells).
pub fn collect(plan: &Plan, out: &Path) -> Result<StudyResults> {
    let p = &plan.preset;
    let mut table = Vec::new();
    for m in rows(p) {
        let fs: Option<FewShotRec> = record(out, &ids::fewshot(m))?;
        let rt: Option<RuntimeFewShotRec> = record(out, &ids::runtime_fewshot(m))?;
        let fewshot = p
            .fewshot
            .shots
            .iter()
            .map(|&k| ShotCell {
                shot: k,
                host: fs.as_ref().and_then(|v| shot_figure(&v.results, k)),
                runtime_int8: rt.as_ref().and_then(|v| shot_figure(&v.results, k)),
            })
            .collect();
        let base = record::<ProbeRec>(out, &ids::base(m))?.and_then(|v| v.figure());
        let iod_host = record::<LandmarkRec>(out, &ids::landmarks(m))?.and_then(|v| v.figure());
        let iod_runtime_int8 =
            record::<MaflRec>(out, &ids::runtime_mafl(m))?.and_then(|v| mafl_figure(&v));
        table.push(MethodRow {
            method: m,
            base,
            fewshot,
            iod_host,
            iod_runtime_int8,
        });
    }
    let mut ablation = Vec::new();
    if p.runs(crate::study::preset::Ablation::Augment) {
        for (k, (label, aug)) in p.ablation.levels.iter().enumerate() {
            let mut cells = Vec::new();
            for m in &p.ablation.methods {
                let v: Option<FewShotRec> = record(out, &ids::ablation_fewshot(m, k))?;
                for &s in &p.fewshot.shots {
                    cells.push((*m, s, v.as_ref().and_then(|v| shot_figure(&v.results, s))));
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
        if let Some(v) = record::<LandmarkRec>(out, &ids::landmarks(m))? {
            mean_face = v.mean_face();
            if mean_face.is_some() {
                break;
            }
        }
    }
    let mut pretraining = Vec::new();
    for domain in ["objects", "faces"] {
        for m in &p.methods {
            if let Some(v) = record::<PretrainRec>(out, &crate::study::ids::pretrain(domain, m))? {
                pretraining.extend(pretrain_record(domain, *m, &v));
            }
        }
    }
    let mut alignment = Vec::new();
    if !p.alignments.is_empty()
        && plan
            .steps
            .iter()
            .any(|s| s.id == crate::study::ids::FIGURE_ALIGNMENT)
    {
        let cells = |a: f64, id: &dyn Fn(Backbone) -> String| -> Result<Vec<AlignmentCell>> {
            let mut v = Vec::new();
            for m in rows(p) {
                let r: Option<FewShotRec> = record(out, &id(m))?;
                let fewshot = p
                    .fewshot
                    .shots
                    .iter()
                    .map(|&k| (k, r.as_ref().and_then(|v| shot_figure(&v.results, k))))
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
            alignment.extend(cells(a, &|m| crate::study::ids::aligned_fewshot(m, a))?);
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
        analyses: crate::study::analyses::collect(p, out)?,
        wall_seconds: WallTime { steps, total },
    })
}
