//! The study (`host-trainer study`): the paper's comparisons, end to end, as one resumable plan.
//!
//! synth → pretrain (each method, plus a random-init `scratch` row, on objects and faces) →
//! host evaluation (few-shot, base-class probe, landmarks) → int8 export → runtime evaluation
//! (runtime-cli's evaluations called as a library: the same episodes and JSON as
//! `runtime-cli eval … --json`) → optional Table-1 augmentation ablation → the alignment sweep →
//! figures → `results.json` + `results.md`. Modules: [`preset`] (sizes), [`plan`] (the steps),
//! [`execute`] (one step), [`records`] (step records), [`results`] (tables), [`figures`],
//! [`seeds`] (`--seeds N`).
//!
//! Resumability: every step writes one record `OUT/steps/<id>.json` (its result and its wall
//! time) atomically when it finishes; a step whose record exists is skipped, so an interrupted
//! study redoes only the unfinished step, and an interrupted pretraining resumes from its
//! `last.safetensors`. The final tables are always rebuilt from the records
//! ([`results::collect`]), so wall times add up across restarts.
pub mod figures;
pub mod preset;
pub mod results;
pub mod seeds;

mod execute;
mod plan;
mod records;

use execute::execute;
pub use plan::*;
use records::{check_study_file, write_record};
pub use records::{read_record, record_path, StepRecord};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;

/// The random-init baseline row (paper Table 5 "Scratch").
pub const SCRATCH: &str = "scratch";
/// Folder of the step records.
pub const STEPS_DIR: &str = "steps";
/// The preset a study folder was started with (a restart must use the same one).
pub const STUDY_FILE: &str = "study.json";

/// How to run a plan (not part of the study's identity).
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// Progress bars of the long steps (the one-line-per-step progress is always printed).
    pub progress: bool,
    /// Stop each pretraining after this many epochs of this invocation: the step stays
    /// unfinished (no record), the study stops with an error, and the next run resumes it.
    pub stop_after: Option<usize>,
}

/// What one invocation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub executed: Vec<String>,
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// Run every unfinished step of `plan`, then write `results.json` and `results.md`.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    check_study_file(plan, &opts.out)?;
    let n = plan.steps.len();
    let mut summary = RunSummary::default();
    for (i, step) in plan.steps.iter().enumerate() {
        if let Some(rec) = read_record(&opts.out, &step.id)? {
            eprintln!(
                "[{}/{n}] {} … done earlier ({:.0} s)",
                i + 1,
                step.title,
                rec.seconds
            );
            summary.skipped.push(step.id.clone());
            continue;
        }
        eprintln!("[{}/{n}] {} …", i + 1, step.title);
        let t = Instant::now();
        let result = execute(plan, step, opts)
            .with_context(|| format!("step {} ({})", step.id, step.title))?;
        let seconds = t.elapsed().as_secs_f64();
        write_record(
            &opts.out,
            &StepRecord {
                id: step.id.clone(),
                title: step.title.clone(),
                seconds,
                result,
            },
        )?;
        eprintln!("[{}/{n}] {} … {seconds:.0} s", i + 1, step.title);
        summary.executed.push(step.id.clone());
    }
    let res = results::collect(plan, &opts.out)?;
    results::write(&res, &opts.out)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::path::Path;

    #[test]
    fn plan_has_every_stage_once_and_unique_ids() {
        let plan = Plan::new(preset::tiny()).unwrap();
        let mut ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        let n = ids.len();
        // 2 synth + 4 rows × (objects: 5 steps + faces: 4 steps) + 2 figures, and the alignment
        // sweep (tiny: one alignment): its synth, 4 rows' few-shot, its figure.
        assert_eq!(n, 2 + 4 * 9 + 2 + (1 + 4 + 1));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "step ids must be unique");
        let mut p = preset::tiny();
        p.run_ablation = true;
        let with = Plan::new(p.clone()).unwrap();
        assert_eq!(
            with.steps.len(),
            n + 2 * p.ablation.levels.len() * p.ablation.methods.len()
        );
    }

    #[test]
    fn real_folders_are_not_generated() {
        let p = preset::preset("paper", Some("/x/mini".into()), Some("/x/celeba".into())).unwrap();
        let plan = Plan::new(p.clone()).unwrap();
        assert!(plan
            .steps
            .iter()
            .all(|s| !matches!(s.action, Action::Synth(_))));
        assert_eq!(
            data_dir(&p, Path::new("/o"), Domain::Faces),
            PathBuf::from("/x/celeba")
        );
        assert_eq!(
            data_dir(&preset::tiny(), Path::new("/o"), Domain::Faces),
            PathBuf::from("/o/data/faces")
        );
    }

    #[test]
    fn finished_steps_are_skipped() {
        // Every step already has a record: run() executes nothing (it would fail here: no data,
        // no runtime-cli) and only rebuilds the tables.
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        for s in &plan.steps {
            let rec = StepRecord {
                id: s.id.clone(),
                title: s.title.clone(),
                seconds: 1.5,
                result: json!({}),
            };
            write_record(dir.path(), &rec).unwrap();
        }
        let opts = RunOptions {
            out: dir.path().to_path_buf(),
            device: Device::Cpu,
            progress: false,
            stop_after: None,
        };
        let s = run(&plan, &opts).unwrap();
        assert!(s.executed.is_empty());
        assert_eq!(s.skipped.len(), plan.steps.len());
        let res: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        let total = res["wall_seconds"]["total"].as_f64().unwrap();
        assert!((total - 1.5 * plan.steps.len() as f64).abs() < 1e-9);
        // A broken record is an error naming the file, not a silent redo.
        std::fs::write(record_path(dir.path(), &plan.steps[0].id), "{").unwrap();
        let e = format!("{:#}", run(&plan, &opts).unwrap_err());
        assert!(e.contains(&format!("{}.json", plan.steps[0].id)), "{e}");
    }

    #[test]
    fn a_folder_refuses_another_study() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        check_study_file(&plan, dir.path()).unwrap();
        check_study_file(&plan, dir.path()).unwrap();
        let mut other = preset::tiny();
        other.device = "cuda:0".into();
        other.run_ablation = true;
        check_study_file(&Plan::new(other).unwrap(), dir.path()).unwrap();
        let mut other = preset::tiny();
        other.seed = 7;
        assert!(check_study_file(&Plan::new(other).unwrap(), dir.path()).is_err());
    }
}
