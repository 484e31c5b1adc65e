//! The study (`host-trainer study`): the paper's comparisons, end to end, as one resumable plan.
//!
//! synth → pretrain (each method, plus a random-init `scratch` row, on objects and faces) →
//! host evaluation (few-shot, base-class probe, landmarks) → int8 export → runtime evaluation
//! (runtime-cli's evaluations called as a library: the same episodes and JSON as
//! `runtime-cli eval … --json`) → optional Table-1 augmentation ablation → the alignment sweep →
//! figures → `results.json` + `results.md`. Modules: [`preset`] (sizes), [`plan`] (the steps),
//! [`execute`] (one step), [`records`] (step records), [`results`] (tables), [`figures`],
//! [`seeds`] (`--seeds N`), [`trajectory`] (runs against the canonical MoCo curve).
//!
//! Resumability: every step writes one record `OUT/steps/<id>.json` (its result and its wall
//! time) atomically when it finishes; a step whose record exists is skipped, so an interrupted
//! study redoes only the unfinished step, and an interrupted pretraining resumes from its
//! `last.safetensors`. The final tables are always rebuilt from the records
//! ([`results::collect`]), so wall times add up across restarts.
pub mod analyses;
mod backbone;
pub mod figures;
pub mod preset;
pub mod results;
pub mod seeds;
pub mod trajectory;

mod execute;
pub mod inversion;
mod plan;
mod records;

pub use backbone::Backbone;
use execute::execute;
pub use plan::*;
use records::{check_study_file, write_record};
pub use records::{read_record, record_path, StepRecord, SubsetRecord};

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;

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
    /// How many steps may run at once (`--jobs`; each waits for the steps it needs). 1 = the
    /// plan order, one step at a time.
    pub jobs: usize,
    /// `--only`: run just the steps whose id starts with one of these, and the steps they need
    /// ([`Plan::select`]); empty = every step. The tables are written from whatever records
    /// exist, so a partial study reports its finished parts.
    pub only: Vec<String>,
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
    check_study_file(plan, &opts.out)?;
    let started = Instant::now();
    let mut summary = run_steps(plan, opts, |step, o| execute(plan, step, o))?;
    let res = results::collect(plan, &opts.out)?;
    results::write(&res, &opts.out)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The scheduler: runs every step without a record through `exec`, on up to `opts.jobs`
/// threads, each step once all its [`Step::needs`] have finished, the lowest-numbered ready step
/// first (so one job is exactly the plan order). Each finished step's record is written at once;
/// after a failure no new step starts, the running ones finish (and keep their records), and the
/// first error is returned. With several jobs the progress bars are off (they would interleave);
/// the one line per step stays.
fn run_steps<F>(plan: &Plan, opts: &RunOptions, exec: F) -> Result<RunSummary>
where
    F: Fn(&Step, &RunOptions) -> Result<serde_json::Value> + Sync,
{
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        ToDo,
        Running,
        Done,
    }
    struct Shared {
        state: Vec<State>,
        executed: Vec<usize>,
        error: Option<anyhow::Error>,
    }
    let n = plan.steps.len();
    let jobs = opts.jobs.max(1);
    let mut summary = RunSummary::default();
    let mut state = vec![State::ToDo; n];
    let selected = plan.select(&opts.only)?;
    let left_out = selected.iter().filter(|&&k| !k).count();
    if left_out > 0 {
        eprintln!("--only: {left_out} of {n} steps left out");
    }
    for (i, step) in plan.steps.iter().enumerate() {
        if !selected[i] {
            // Counted as done for the scheduler: no selected step needs it (the selection is
            // closed under `needs`), so it only keeps the left-out steps from running.
            state[i] = State::Done;
            continue;
        }
        if let Some(rec) = records::read_record_or_redo(&opts.out, &step.id)? {
            eprintln!(
                "[{}/{n}] {} … done earlier ({:.0} s)",
                i + 1,
                step.title,
                rec.seconds
            );
            summary.skipped.push(step.id.clone());
            state[i] = State::Done;
        }
    }
    let step_opts = RunOptions {
        out: opts.out.clone(),
        device: opts.device.clone(),
        progress: opts.progress && jobs == 1,
        stop_after: opts.stop_after,
        jobs: 1,
        only: Vec::new(),
    };
    let shared = Mutex::new(Shared {
        state,
        executed: Vec::new(),
        error: None,
    });
    let wake = Condvar::new();
    // With several jobs each worker runs its steps on its own rayon pool holding its share of
    // the threads: two steps queueing into one shared pool measured no faster than one job (the
    // `main` preset: 67.9 s vs 67.2 s), because the kernels' fork/join hand-offs then wait on
    // each other.
    let threads = (rayon::current_num_threads() / jobs).max(1);
    let worker = || {
        let pool = (jobs > 1)
            .then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
            .transpose();
        let pool = match pool {
            Ok(p) => p,
            Err(e) => {
                let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                g.error
                    .get_or_insert(anyhow::anyhow!("study --jobs: thread pool: {e}"));
                wake.notify_all();
                return;
            }
        };
        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.error.is_some() {
                return;
            }
            let ready = (0..n).find(|&i| {
                g.state[i] == State::ToDo
                    && plan.steps[i]
                        .needs
                        .iter()
                        .all(|&j| g.state[j] == State::Done)
            });
            let Some(i) = ready else {
                if g.state.iter().all(|&s| s != State::Running) {
                    if g.state.contains(&State::ToDo) {
                        g.error = Some(anyhow::anyhow!(
                            "study plan: no step can run, but some are not done (a step needs a later one)"
                        ));
                        wake.notify_all();
                    }
                    return;
                }
                g = wake.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            g.state[i] = State::Running;
            drop(g);
            let step = &plan.steps[i];
            eprintln!("[{}/{n}] {} …", i + 1, step.title);
            let t = Instant::now();
            let run = || exec(step, &step_opts);
            let outcome = match &pool {
                Some(p) => p.install(run),
                None => run(),
            }
            .with_context(|| format!("step {} ({})", step.id, step.title))
            .and_then(|result| {
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
                Ok(())
            });
            g = shared.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => {
                    g.state[i] = State::Done;
                    g.executed.push(i);
                }
                Err(e) => {
                    g.state[i] = State::ToDo;
                    if g.error.is_none() {
                        g.error = Some(e);
                    }
                }
            }
            wake.notify_all();
        }
    };
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(worker);
        }
        worker();
    });
    let shared = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = shared.error {
        return Err(e);
    }
    summary.executed = shared
        .executed
        .iter()
        .map(|&i| plan.steps[i].id.clone())
        .collect();
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
        // 2 synth + 4 rows × (objects: 5 steps + faces: 4 steps) + 3 figures, and the alignment
        // sweep (tiny: one alignment): its synth, 4 rows' few-shot, its figure.
        // The inversion: 4 rows and its figure.
        assert_eq!(n, 2 + 4 * 9 + 3 + (1 + 4 + 1) + (4 + 1));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "step ids must be unique");
        let mut p = preset::tiny();
        p.ablations = vec![preset::Ablation::Augment];
        let with = Plan::new(p.clone()).unwrap();
        assert_eq!(
            with.steps.len(),
            n + 2 * p.ablation.levels.len() * p.ablation.methods.len()
        );
        // Table 2: per subset one folder and 3 steps per method; per method 2 transfers.
        p.ablations = vec![preset::Ablation::Data];
        let m = p.data_ablation.methods.len();
        assert_eq!(
            Plan::new(p.clone()).unwrap().steps.len(),
            n + 2 * (1 + 3 * m) + 2 * m
        );
        // Table 10: 2 steps per (method, k, τ) cell, less the cells the main runs are.
        p.ablations = vec![preset::Ablation::KTau];
        let cells: usize = p
            .k_tau
            .methods
            .iter()
            .map(|&m| plan::k_tau_cells(&p, m).iter().filter(|c| !c.2).count())
            .sum();
        assert_eq!(
            cells,
            2 * 4 - 2,
            "MoCo-v2 (64, 0.2) and Exemplar-v2 (64, 0.1) are main runs"
        );
        assert_eq!(Plan::new(p.clone()).unwrap().steps.len(), n + 2 * cells);
        // Same τ: MoCo-v2 at Exemplar-v2's τ and the reverse, 2 steps each.
        p.ablations = vec![preset::Ablation::SameTau];
        assert_eq!(plan::same_tau_cells(&p).len(), 2);
        assert_eq!(Plan::new(p).unwrap().steps.len(), n + 2 * 2);
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
            jobs: 1,
            only: Vec::new(),
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
        // A damaged record is moved aside (kept) and its step runs again, alone.
        let path = record_path(dir.path(), &plan.steps[0].id);
        std::fs::write(&path, "{").unwrap();
        let r = run(&plan, &opts);
        assert_eq!(
            std::fs::read_to_string(path.with_extension("json.damaged")).unwrap(),
            "{"
        );
        if let Ok(s) = r {
            assert_eq!(s.executed.len(), 1, "only the damaged step is redone");
        }
    }

    #[test]
    fn a_folder_refuses_another_study() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        check_study_file(&plan, dir.path()).unwrap();
        check_study_file(&plan, dir.path()).unwrap();
        let mut other = preset::tiny();
        other.device = "cuda:0".into();
        other.ablations = vec![preset::Ablation::Augment, preset::Ablation::KTau];
        check_study_file(&Plan::new(other).unwrap(), dir.path()).unwrap();
        let mut other = preset::tiny();
        other.seed = 7;
        assert!(check_study_file(&Plan::new(other).unwrap(), dir.path()).is_err());
        let mut other = preset::tiny();
        other.data_seed = Some(0);
        assert!(
            check_study_file(&Plan::new(other).unwrap(), dir.path()).is_err(),
            "a data seed set is another study, even one equal to the seed"
        );
    }

    /// Without `--data-seed` the study's identity is what it was before the option existed, so
    /// folders made then resume.
    #[test]
    fn no_data_seed_leaves_the_identity_as_it_was() {
        let id = records::identity(&preset::tiny());
        assert!(id.get("seed").is_some());
        assert!(id.get("data_seed").is_none(), "{id}");
    }

    fn fake_opts(dir: &Path, jobs: usize) -> RunOptions {
        RunOptions {
            out: dir.to_path_buf(),
            device: Device::Cpu,
            progress: false,
            stop_after: None,
            jobs,
            only: Vec::new(),
        }
    }

    #[test]
    fn needs_follow_what_each_step_reads() {
        let plan = Plan::new(preset::tiny()).unwrap();
        let index = |id: &str| plan.steps.iter().position(|s| s.id == id).unwrap();
        // Transitive closure of one step's needs.
        let closure = |id: &str| {
            let mut seen = std::collections::BTreeSet::new();
            let mut todo = vec![index(id)];
            while let Some(i) = todo.pop() {
                for &j in &plan.steps[i].needs {
                    assert!(
                        j < i,
                        "{} needs the later {}",
                        plan.steps[i].id,
                        plan.steps[j].id
                    );
                    if seen.insert(j) {
                        todo.push(j);
                    }
                }
            }
            seen.into_iter()
                .map(|j| plan.steps[j].id.clone())
                .collect::<Vec<_>>()
        };
        let rt = closure(&ids::runtime_fewshot("moco-v2"));
        for want in [
            ids::export("objects", "moco-v2"),
            ids::pretrain("objects", "moco-v2"),
            ids::synth("objects"),
        ] {
            assert!(rt.contains(&want), "{rt:?} lacks {want}");
        }
        assert!(!rt.contains(&ids::synth("faces")), "{rt:?}");
        assert!(!rt.iter().any(|s| s.contains("supervised")), "{rt:?}");
        assert_eq!(
            closure(&ids::landmarks("supervised")),
            [ids::synth("faces"), ids::pretrain("faces", "supervised")]
        );
        // The two pretrainings of one domain are independent of each other.
        assert_eq!(
            plan.steps[index(&ids::pretrain("objects", "moco-v2"))].needs,
            [index(&ids::synth("objects"))]
        );
        let fig = index(ids::FIGURE_FEWSHOT);
        assert_eq!(plan.steps[fig].needs, (0..fig).collect::<Vec<_>>());
    }

    #[test]
    fn the_scheduler_keeps_the_needs_and_runs_independent_steps_together() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        let finished = Mutex::new(Vec::<String>::new());
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let exec = |step: &Step, o: &RunOptions| -> Result<serde_json::Value> {
            assert!(!o.progress);
            let done = finished.lock().unwrap().clone();
            for &j in &step.needs {
                let need = &plan.steps[j].id;
                assert!(done.contains(need), "{} started before {need}", step.id);
            }
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Until two steps have overlapped once, give another worker the chance to start an
            // independent step meanwhile (the two synth steps are ready together at the start).
            let t = Instant::now();
            while most.load(Ordering::SeqCst) < 2 && t.elapsed().as_millis() < 500 {
                std::thread::yield_now();
            }
            running.fetch_sub(1, Ordering::SeqCst);
            finished.lock().unwrap().push(step.id.clone());
            Ok(json!({}))
        };
        let s = run_steps(&plan, &fake_opts(dir.path(), 3), exec).unwrap();
        assert_eq!(s.executed.len(), plan.steps.len());
        assert_eq!(finished.lock().unwrap().len(), plan.steps.len());
        assert!(
            most.load(Ordering::SeqCst) >= 2,
            "never ran two steps at once"
        );
        for st in &plan.steps {
            assert!(
                read_record(dir.path(), &st.id).unwrap().is_some(),
                "{}",
                st.id
            );
        }
    }

    #[test]
    fn after_a_failure_no_new_step_starts_and_the_error_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        let bad = ids::pretrain("objects", "moco-v2");
        let started = Mutex::new(Vec::<String>::new());
        let exec = |step: &Step, _: &RunOptions| -> Result<serde_json::Value> {
            started.lock().unwrap().push(step.id.clone());
            if step.id == bad {
                anyhow::bail!("boom");
            }
            Ok(json!({}))
        };
        for jobs in [1, 2] {
            let d = dir.path().join(jobs.to_string());
            let e = format!(
                "{:#}",
                run_steps(&plan, &fake_opts(&d, jobs), exec).unwrap_err()
            );
            assert!(e.contains(&bad) && e.contains("boom"), "{e}");
            let started = std::mem::take(&mut *started.lock().unwrap());
            // Nothing that needs the failed step ran, and it left no record.
            for st in &plan.steps {
                if st
                    .needs
                    .contains(&plan.steps.iter().position(|s| s.id == bad).unwrap())
                {
                    assert!(
                        !started.contains(&st.id),
                        "{} ran after {bad} failed",
                        st.id
                    );
                }
            }
            assert!(read_record(&d, &bad).unwrap().is_none());
            if jobs == 1 {
                // One job: the plan order, stopping at the failure.
                let k = plan.steps.iter().position(|s| s.id == bad).unwrap();
                let order: Vec<String> = plan.steps[..=k].iter().map(|s| s.id.clone()).collect();
                assert_eq!(started, order);
            }
        }
    }
    #[test]
    fn only_runs_the_selected_steps_and_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(preset::tiny()).unwrap();
        let started = Mutex::new(Vec::<String>::new());
        let exec = |step: &Step, _: &RunOptions| -> Result<serde_json::Value> {
            started.lock().unwrap().push(step.id.clone());
            Ok(json!({}))
        };
        let mut opts = fake_opts(dir.path(), 1);
        opts.only = vec![ids::pretrain("objects", "moco-v2"), ids::synth("faces")];
        let s = run_steps(&plan, &opts, exec).unwrap();
        // The selected steps and the one the pretraining reads, in plan order; nothing else.
        let want: Vec<String> = plan
            .steps
            .iter()
            .map(|st| st.id.clone())
            .filter(|id| {
                [
                    ids::synth("objects"),
                    ids::synth("faces"),
                    ids::pretrain("objects", "moco-v2"),
                ]
                .contains(id)
            })
            .collect();
        assert_eq!(*started.lock().unwrap(), want);
        assert_eq!(s.executed, want);
        // A pattern that matches nothing is an error, not a silent no-op.
        opts.only = vec!["objects.mocco".into()];
        let e = format!("{:#}", run_steps(&plan, &opts, exec).unwrap_err());
        assert!(e.contains("objects.mocco"), "{e}");
    }
}
