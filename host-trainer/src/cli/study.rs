//! `host-trainer study`: argument parsing; the plan, the runner and the tables are in
//! `study::study`.
use std::path::PathBuf;

use ::study::study::{self, preset, Plan};
use anyhow::Result;
use clap::Args;

/// Run the paper's comparisons end to end (resumable): pretrain supervised, MoCo-v2 and
/// Exemplar-v2 (plus a scratch baseline) on objects and faces, evaluate few-shot, base-class and
/// landmark transfer on the host and on the runtime (int8), write results.json, results.md and
/// the figures.
#[derive(Args, Debug)]
pub struct StudyArgs {
    /// tiny | main | small | long | paper (paper needs --objects and --faces).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Output folder; re-running with the same folder skips finished steps.
    #[arg(long)]
    pub out: PathBuf,
    /// Add ablations (repeat or comma-separate): augment (Table 1), data (Table 2: 10% of the
    /// images, 10% of the classes, the other domain), k-tau (Table 10: queue size and
    /// temperature), same-tau (the main table's Exemplar and MoCo runs each repeated at the
    /// other's τ). Adding one to a finished study runs only its steps.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ablation: Vec<preset::Ablation>,
    /// A mini-ImageNet folder instead of the synthetic objects.
    #[arg(long)]
    pub objects: Option<PathBuf>,
    /// A CelebA folder (with MAFL/) instead of the synthetic faces.
    #[arg(long)]
    pub faces: Option<PathBuf>,
    /// Seed (data, initialisation, episodes).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seed of the synthetic datasets and the Table-2 subsets only (default: --seed). With
    /// --seeds N, every seed then trains and evaluates on the same data, so the spread across
    /// seeds is that of initialisation, augmentation, batches and episodes alone.
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// Pretraining epochs (objects and faces).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Landmark fine-tuning epochs.
    #[arg(long)]
    pub landmark_epochs: Option<usize>,
    /// Few-shot episodes.
    #[arg(long)]
    pub episodes: Option<u64>,
    /// cpu, cuda or cuda:N (default: the preset's).
    #[arg(long)]
    pub device: Option<String>,
    /// Run the whole study for this many seeds (the preset's seed, +1, …), each in
    /// `OUT/seed-<s>/`, and write tables across seeds (mean ± 95% interval across seeds) to
    /// `OUT/results.md` and `OUT/results.json`.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Print the resolved settings and the steps (done / to do), run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop each pretraining after this many epochs of this invocation (a later run resumes it).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bars (the one line per step stays).
    #[arg(long)]
    pub quiet: bool,
    /// Run up to this many independent steps at once (e.g. two pretrainings). Each step waits
    /// for the steps whose outputs it reads; results do not depend on it. Progress bars are off
    /// when it is above 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Run only the steps whose id starts with this (repeat or comma-separate; `--dry-run`
    /// lists the ids, e.g. `objects.moco-v2.pretrain`), and the steps they need. The tables
    /// show whatever is finished.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn run(a: StudyArgs) -> Result<()> {
    let mut p = preset::preset(&a.preset, a.objects.clone(), a.faces.clone())?;
    p.ablations = a.ablation.clone();
    p.ablations.sort();
    p.ablations.dedup();
    if let Some(s) = a.seed {
        p.seed = s;
    }
    if a.data_seed.is_some() {
        p.data_seed = a.data_seed;
    }
    if let Some(e) = a.epochs {
        p.pretrain.epochs_objects = e;
        p.pretrain.epochs_faces = e;
    }
    if let Some(e) = a.landmark_epochs {
        p.landmark_epochs = e;
    }
    if let Some(e) = a.episodes {
        p.fewshot.episodes = e;
    }
    if let Some(d) = &a.device {
        p.device = d.clone();
    }
    let plan = Plan::new(p)?;
    if a.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan.preset)?);
        for (name, src) in [
            ("objects", &plan.preset.objects),
            ("faces", &plan.preset.faces),
        ] {
            if let preset::DataSource::Folder(f) = src {
                let state = if f.is_dir() { "found" } else { "NOT FOUND" };
                println!("{name}: {} ({state})", f.display());
            }
        }
        let n = plan.steps.len();
        let selected = plan.select(&a.only)?;
        for (i, s) in plan.steps.iter().enumerate() {
            let done = study::read_record(&a.out, &s.id)?.is_some();
            let state = match (done, selected[i]) {
                (true, _) => " — done",
                (false, false) => " — left out (--only)",
                (false, true) => "",
            };
            println!("[{}/{n}] {} ({}){state}", i + 1, s.title, s.id);
        }
        return Ok(());
    }
    // One study per folder at a time (a second one is refused naming the first one's PID).
    let _lock = trainer::train::pretrain::lock_dir(&a.out, "host-trainer study")?;
    let device = trainer::device::parse_device(&plan.preset.device)?;
    let opts = study::RunOptions {
        out: a.out.clone(),
        device,
        progress: !a.quiet,
        stop_after: a.stop_after,
        jobs: usize::from(a.jobs),
        only: a.only.clone(),
    };
    if a.seeds > 1 {
        let (s, agg) = study::seeds::run(&plan.preset, a.seeds, &opts)?;
        eprintln!(
            "study: seeds {:?}: {} steps run, {} done earlier, {:.1} min; tables in {}",
            agg.seeds,
            s.executed.len(),
            s.skipped.len(),
            s.seconds / 60.0,
            a.out.join("results.md").display()
        );
        print!("{}", std::fs::read_to_string(a.out.join("results.md"))?);
        return Ok(());
    }
    let s = study::run(&plan, &opts)?;
    eprintln!(
        "study: {} steps run, {} done earlier, {:.1} min; tables in {}",
        s.executed.len(),
        s.skipped.len(),
        s.seconds / 60.0,
        a.out.join("results.md").display()
    );
    print!("{}", std::fs::read_to_string(a.out.join("results.md"))?);
    Ok(())
}
