//! `eval mafl`: the IOD-normalised landmark error (%) of a landmark model on a MAFL list, with the
//! per-landmark breakdown.
//!
//! Data: a CelebA root read by host-trainer's reader (the real download or `host-trainer synth
//! faces`, whose exact float landmarks are preferred when present, see
//! [`CelebA::open_preferring_exact`]). Each image: MAFL crop → resize → model → points in the
//! cropped frame (see [`crate::landmarks`]) → error against the ground truth in that frame.
use std::path::Path;

use anyhow::{bail, Result};
use data::{mafl_crop, CelebA, Landmarks, LANDMARK_NAMES, NUM_LANDMARKS};
use rayon::prelude::*;
use runtime_core::metrics::IodError;
use runtime_core::Task;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{self, Runner};
use crate::landmarks::{points, predict_on_crop};
use crate::progress;

/// Which MAFL list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaflSplit {
    Train,
    Test,
}

/// The evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub struct MaflResult {
    /// Mean over images and landmarks of `‖pred − gt‖ / IOD`, in %.
    pub iod_error: f64,
    /// The same mean per landmark (CelebA column order).
    pub per_landmark: [f64; NUM_LANDMARKS],
    /// Images counted (those whose ground-truth eyes coincide are skipped: IOD undefined).
    pub images: u64,
    pub skipped: u64,
}

/// runtime-core's [`IodError`] (the one definition of the metric) plus the images it skipped.
#[derive(Default)]
struct Accum {
    total: IodError,
    skipped: u64,
}

impl Accum {
    fn add(&mut self, pred: &Landmarks, gt: &Landmarks) {
        if !self.total.add(&points(pred), &points(gt)) {
            self.skipped += 1;
        }
    }
}

/// Runs the evaluation.
pub fn evaluate(
    model_path: &Path,
    data: &Path,
    split: MaflSplit,
    show_progress: bool,
) -> Result<MaflResult> {
    let bytes = engine::read_model(model_path)?;
    let model = engine::parse_model(&bytes, model_path)?;
    engine::require_task(&model, model_path, Task::Landmarks, "eval mafl")?;
    let celeba = CelebA::open_preferring_exact(data)?;
    let list = match split {
        MaflSplit::Test => celeba.mafl_test(),
        MaflSplit::Train => celeba.mafl_train(),
    };
    list.check_files()?;
    let bar = progress::bar(list.len() as u64, "MAFL images", show_progress);
    // Parallel over images, one arena per worker; results come back in list order so the sums
    // (and the printed figure) do not depend on the thread count.
    let pairs: Vec<(Landmarks, Landmarks)> = (0..list.len())
        .into_par_iter()
        .map_init(
            || Runner::new(&model),
            |runner, i| {
                let (img, _, gt) = list.load(i)?;
                let Some(gt) = gt else {
                    bail!("{}: no landmarks for this image", list.items[i].0.display())
                };
                let (crop, gt) = mafl_crop(&img, &gt);
                let pred = predict_on_crop(runner, &crop)?;
                bar.inc(1);
                Ok((pred, gt))
            },
        )
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut acc = Accum::default();
    for (p, g) in &pairs {
        acc.add(p, g);
    }
    let (Some(iod_error), Some(per_landmark)) = (acc.total.value(), acc.total.per_landmark())
    else {
        bail!(
            "{}: no MAFL image with distinct ground-truth eyes to evaluate",
            data.display()
        );
    };
    Ok(MaflResult {
        iod_error,
        per_landmark,
        images: acc.total.images(),
        skipped: acc.skipped,
    })
}

/// `--json` form.
pub fn to_json(r: &MaflResult, model: &Path, split: MaflSplit) -> serde_json::Value {
    serde_json::to_value(MaflRecord::new(r, model, split)).expect("a MAFL record is JSON")
}

/// The `--json` form as a struct: what [`to_json`] writes and the study's step records hold.
/// Fields a record lacks read as their defaults (the study shows them as empty cells).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MaflRecord {
    pub command: String,
    pub model: String,
    pub split: String,
    /// `null` where the error is not a number (the study reads it as no figure).
    pub iod_error: Option<f64>,
    /// `{"lefteye": %, ...}`.
    pub per_landmark: serde_json::Map<String, serde_json::Value>,
    pub images: u64,
    pub skipped: u64,
}

impl MaflRecord {
    pub fn new(r: &MaflResult, model: &Path, split: MaflSplit) -> Self {
        MaflRecord {
            command: "eval mafl".into(),
            model: model.display().to_string(),
            split: match split {
                MaflSplit::Test => "test",
                MaflSplit::Train => "train",
            }
            .into(),
            iod_error: Some(r.iod_error),
            per_landmark: LANDMARK_NAMES
                .iter()
                .zip(r.per_landmark)
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect(),
            images: r.images,
            skipped: r.skipped,
        }
    }
}

/// Human form.
pub fn to_text(r: &MaflResult) -> String {
    let mut s = format!(
        "MAFL IOD error: {:.3}% over {} images",
        r.iod_error, r.images
    );
    if r.skipped > 0 {
        s += &format!(" ({} skipped: coincident ground-truth eyes)", r.skipped);
    }
    for (n, v) in LANDMARK_NAMES.iter().zip(r.per_landmark) {
        s += &format!("\n  {n:<11} {v:.3}%");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_landmark_mean_matches_the_total_and_a_hand_case() {
        // IOD = 10 (eyes at (0,0) and (10,0)). Errors: left eye off by 1 (10%), nose off by
        // (3,4) → 5 (50%), others exact.
        let gt: Landmarks = [[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [2.0, 8.0], [8.0, 8.0]];
        let mut pred = gt;
        pred[0][0] += 1.0;
        pred[2] = [8.0, 9.0];
        let mut a = Accum::default();
        a.add(&pred, &gt);
        // Coincident eyes: skipped by both the total and the breakdown.
        a.add(&pred, &[[1.0, 1.0]; 5]);
        assert_eq!(a.skipped, 1);
        assert_eq!(a.total.images(), 1);
        assert!((a.total.value().unwrap() - 12.0).abs() < 1e-9);
        let per = a.total.per_landmark().unwrap();
        assert!(
            (per[0] - 10.0).abs() < 1e-9 && (per[2] - 50.0).abs() < 1e-9 && per[1] == 0.0,
            "{per:?}"
        );
        assert!((per.iter().sum::<f64>() / 5.0 - a.total.value().unwrap()).abs() < 1e-9);
    }
}
