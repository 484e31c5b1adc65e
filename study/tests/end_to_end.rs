//! End to end: the `tiny` study plan with runtime-cli's evaluation in process — every step runs, the
//! result files exist and hold sane figures, a second run skips everything, and deleting one
//! step's record redoes only that step (with the same result: every step is seeded).

use ::study::study::{self, ids, preset, Plan, RunOptions};
use serde_json::Value;
use trainer::method::{Method, Version};

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every step record of a typed kind parses into its struct (the one its step serialised), and
/// the struct writes the record's JSON again, key for key and value for value.
fn records_round_trip(plan: &Plan, out: &std::path::Path) {
    use study::results;
    fn same<T: serde::Serialize + serde::de::DeserializeOwned>(v: &Value) -> Value {
        let t: T = serde_json::from_value(v.clone()).unwrap();
        serde_json::to_value(t).unwrap()
    }
    let mut typed = 0;
    for s in &plan.steps {
        let v = study::read_record(out, &s.id).unwrap().unwrap().result;
        let again = match &s.action {
            study::Action::Pretrain { .. } => same::<results::PretrainRec>(&v),
            study::Action::FewShot { .. } => same::<results::FewShotRec>(&v),
            study::Action::RuntimeFewShot { .. } => same::<results::RuntimeFewShotRec>(&v),
            study::Action::BaseProbe { .. } => same::<results::ProbeRec>(&v),
            study::Action::Landmarks { .. } => same::<results::LandmarkRec>(&v),
            study::Action::RuntimeMafl { .. } => same::<results::MaflRec>(&v),
            study::Action::WriteSubset { .. } => same::<study::SubsetRecord>(&v),
            _ => continue,
        };
        assert_eq!(again, v, "{}", s.id);
        typed += 1;
    }
    assert!(typed > 20, "{typed} typed records");
}

#[test]
fn tiny_study_runs_resumes_and_redoes_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = preset::tiny();
    p.ablations = vec![preset::Ablation::Augment];
    let plan = Plan::new(p.clone()).unwrap();
    let opts = RunOptions {
        out: dir.path().to_path_buf(),
        device: trainer::device::parse_device("cpu").unwrap(),
        progress: false,
        stop_after: None,
        jobs: 1,
        only: Vec::new(),
    };
    let first = study::run(&plan, &opts).unwrap();
    assert_eq!(first.executed.len(), plan.steps.len());
    assert!(first.skipped.is_empty());
    for f in [
        "results.json",
        "results.md",
        "fewshot.png",
        "landmarks.png",
        "alignment.png",
        "trajectory.png",
        "study.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    // The trajectory figure drew every contrastive pretraining of the plan (objects and faces).
    let contrastive = plan
        .steps
        .iter()
        .filter(|s| matches!(&s.action, study::Action::Pretrain { method, .. } if method.is_contrastive()))
        .count();
    assert!(contrastive >= 4);
    let traj = study::read_record(dir.path(), "figure.trajectory")
        .unwrap()
        .unwrap();
    assert_eq!(traj.result["runs"], contrastive, "{}", traj.result);
    let res = read_json(&dir.path().join("results.json"));
    let rows = res["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["supervised", "moco-v2", "exemplar-v2", "scratch"]);
    for r in rows {
        for c in r["fewshot"].as_array().unwrap() {
            let figure = |side: &str| {
                let v = &c[side];
                let (a, ci) = (v["value"].as_f64(), v["ci95"].as_f64());
                let (a, ci) = a.zip(ci).unwrap_or_else(|| panic!("{r}: no {side}"));
                assert!(
                    (0.0..=100.0).contains(&a) && ci >= 0.0,
                    "{side}: {a} ± {ci}"
                );
                (a, ci)
            };
            let ((host, host_ci), (int8, _)) = (figure("host"), figure("runtime_int8"));
            // The same episodes on int8 features: within twice the host's episode interval
            // (plus one query's worth, for an interval of zero).
            let bound = 2.0 * host_ci + 100.0 / (p.fewshot.way * p.fewshot.query) as f64;
            assert!(
                (host - int8).abs() <= bound,
                "{r}: int8 {int8} vs host {host} (bound {bound})"
            );
        }
        assert!(r["iod_host"]["value"].as_f64().unwrap() > 0.0);
        assert!(r["iod_runtime_int8"]["value"].as_f64().unwrap() > 0.0);
        assert!(r["base"]["value"].as_f64().is_some());
    }
    assert_eq!(
        res["ablation"].as_array().unwrap().len(),
        p.ablation.levels.len()
    );
    let steps = res["wall_seconds"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), plan.steps.len());
    // Every pretraining records what it learnt: its loss against chance and what it saw.
    let pre = res["pretraining"].as_array().unwrap();
    assert_eq!(
        pre.len(),
        2 * p.methods.len(),
        "objects and faces per method"
    );
    for t in pre {
        let (loss, chance) = (
            t["final_loss"].as_f64().unwrap(),
            t["chance_loss"].as_f64().unwrap(),
        );
        assert!(loss.is_finite() && loss > 0.0, "{t}");
        if t["method"].as_str().unwrap() != "supervised" {
            // The study keeps K ≤ N/2 (`tiny` asks for 64 and trains on fewer than 128 images).
            let (k, n) = (
                t["queue"].as_u64().unwrap(),
                t["train_images"].as_u64().unwrap(),
            );
            assert!(k <= 64 && 2 * k <= n.max(32) && k.is_multiple_of(16), "{t}");
            let ratio = t["queue_over_train"].as_f64().unwrap();
            assert!((ratio - k as f64 / n as f64).abs() < 1e-12, "{t}");
        }
        let k_plus_1 = t["queue"].as_f64().map_or(0.0, |k| k + 1.0);
        let expected_chance = match t["method"].as_str().unwrap() {
            // MoCo compares the positive with the whole queue.
            "moco-v2" => k_plus_1.ln(),
            // Exemplar drops the same-label entries: fewer candidates than MoCo.
            "exemplar-v2" => {
                assert!(chance < k_plus_1.ln() && chance > 0.0, "{t}");
                chance
            }
            // Supervised: ln of the classes (6 base object classes; face identities vary).
            _ => chance,
        };
        assert!((chance - expected_chance).abs() < 1e-9, "{t}");
        assert!(t["images_seen"].as_u64().unwrap() > 0, "{t}");
        assert!((t["loss_ratio"].as_f64().unwrap() - loss / chance).abs() < 1e-9);
    }
    // The alignment sweep: every method at alignment 1 (the main objects) and at 0.
    let cells = res["alignment"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * rows.len());
    for c in cells {
        for f in c["fewshot"].as_array().unwrap() {
            let a = f[1]["value"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&a), "{c}");
        }
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    for needle in [
        "## Table 4 layout",
        "## Table 5 layout",
        "## Table 1 layout",
        "| scratch |",
        "orderings",
        "## Did each pretraining learn?",
        "## Task alignment",
    ] {
        assert!(md.contains(needle), "results.md lacks {needle:?}:\n{md}");
    }

    records_round_trip(&plan, dir.path());

    // Second run: nothing to do.
    let second = study::run(&plan, &opts).unwrap();
    assert!(second.executed.is_empty(), "{:?}", second.executed);
    assert_eq!(second.skipped.len(), plan.steps.len());

    // Delete two independent records: only those steps run again, side by side (`--jobs 2`),
    // and each reproduces its result.
    let redo = [ids::fewshot("moco-v2"), ids::landmarks("exemplar-v2")];
    let before: Vec<_> = redo
        .iter()
        .map(|id| study::read_record(dir.path(), id).unwrap().unwrap())
        .collect();
    for id in &redo {
        std::fs::remove_file(study::record_path(dir.path(), id)).unwrap();
    }
    let two_jobs = RunOptions { jobs: 2, ..opts };
    let mut third = study::run(&plan, &two_jobs).unwrap().executed;
    third.sort();
    let mut want = redo.to_vec();
    want.sort();
    assert_eq!(third, want);
    for ((id, key), b) in redo.iter().zip(["results", "iod_error"]).zip(&before) {
        let after = study::read_record(dir.path(), id).unwrap().unwrap();
        assert!(b.result.get(key).is_some(), "{id}: no {key}");
        assert_eq!(b.result.get(key), after.result.get(key), "{id}: {key}");
    }
}

#[test]
fn an_interrupted_pretraining_resumes_from_its_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = preset::tiny();
    p.methods = vec![Method::Supervised];
    p.pretrain.epochs_objects = 2;
    let plan = Plan::new(p).unwrap();
    let mut opts = RunOptions {
        out: dir.path().to_path_buf(),
        device: trainer::device::parse_device("cpu").unwrap(),
        progress: false,
        stop_after: Some(1),
        jobs: 1,
        only: Vec::new(),
    };
    let id = ids::pretrain("objects", "supervised");
    let e = format!("{:#}", study::run(&plan, &opts).unwrap_err());
    assert!(e.contains("stopped after epoch 1 of 2"), "{e}");
    let run_dir = dir.path().join("objects").join("supervised");
    assert!(run_dir.join("last.safetensors").is_file());
    assert!(study::read_record(dir.path(), &id).unwrap().is_none());

    opts.stop_after = None;
    let s = study::run(&plan, &opts).unwrap();
    // The synth steps were done before the interruption; the pretraining resumed, not restarted:
    // its metrics hold each epoch exactly once.
    assert!(s.skipped.contains(&ids::synth("objects")));
    assert!(s.executed.contains(&id));
    let rec = study::read_record(dir.path(), &id).unwrap().unwrap();
    assert_eq!(rec.result["epochs_done"], 2);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0, 1]);
}

/// `--seeds 2`: two complete tiny studies in `seed-0/` and `seed-1/`, and the tables across
/// them; the aggregate is recomputed here from the two per-seed `results.json`.
#[test]
fn two_seeds_aggregate_what_each_seed_measured() {
    let dir = tempfile::tempdir().unwrap();
    let p = preset::tiny();
    let opts = RunOptions {
        out: dir.path().to_path_buf(),
        device: trainer::device::parse_device("cpu").unwrap(),
        progress: false,
        stop_after: None,
        jobs: 1,
        only: Vec::new(),
    };
    let (summary, agg) = study::seeds::run(&p, 2, &opts).unwrap();
    assert_eq!(agg.seeds, vec![0, 1]);
    assert!(summary.skipped.is_empty());
    let res = read_json(&dir.path().join("results.json"));
    assert_eq!(res["seeds"], serde_json::json!([0, 1]));
    let per: Vec<Value> = [0, 1]
        .iter()
        .map(|s| read_json(&dir.path().join(format!("seed-{s}")).join("results.json")))
        .collect();
    assert_ne!(
        per[0]["rows"], per[1]["rows"],
        "different seeds, different results"
    );
    for (i, row) in res["rows"].as_array().unwrap().iter().enumerate() {
        // Few-shot host accuracy of the first shot setting: mean of the two seeds.
        let v: Vec<f64> = per
            .iter()
            .map(|r| {
                r["rows"][i]["fewshot"][0]["host"]["value"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        let got = &row["fewshot"][0][1];
        assert!((got["mean"].as_f64().unwrap() - (v[0] + v[1]) / 2.0).abs() < 1e-9);
        // Two seeds: sample sd |a − b|/√2, interval t(0.975, 1)·sd/√2 = 12.706·|a − b|/2.
        let ci = 12.706 * (v[0] - v[1]).abs() / 2.0;
        assert!(
            (got["ci95_seeds"].as_f64().unwrap() - ci).abs() < 1e-9,
            "{got}"
        );
        assert_eq!(got["values"], serde_json::json!(v));
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(
        md.contains("over 2 seeds") && md.contains("judged across seeds"),
        "{md}"
    );
    // A second invocation resumes: nothing left to run.
    let (again, _) = study::seeds::run(&p, 2, &opts).unwrap();
    assert!(again.executed.is_empty(), "{:?}", again.executed);
}

/// The analyses: feature inversion (in every plan), the Table-2 data ablation and the Table-10
/// k/τ ablation added to a finished tiny study: only their steps run, their artefacts exist,
/// the subsets keep what they claim, and the tables hold what the records measured.
#[test]
fn analyses_inversion_data_and_k_tau() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = preset::tiny();
    p.methods = vec![Method::Supervised, Method::Moco(Version::V2)];
    p.k_tau.methods = vec![Method::Moco(Version::V2)];
    p.alignments.clear();
    p.invert.iterations = 25;
    let opts = RunOptions {
        out: dir.path().to_path_buf(),
        device: trainer::device::parse_device("cpu").unwrap(),
        progress: false,
        stop_after: None,
        jobs: 1,
        only: Vec::new(),
    };
    let base = Plan::new(p.clone()).unwrap();
    study::run(&base, &opts).unwrap();
    for f in ["inversion.png", "inversion_distance.png"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    // Every row inverted the same held-out images, and the inversion loss fell.
    let res = read_json(&dir.path().join("results.json"));
    let inv = res["analyses"]["inversion"].as_array().unwrap();
    assert_eq!(inv.len(), 3, "supervised, moco-v2, scratch: {inv:?}");
    for r in inv {
        assert_eq!(r["images"], p.invert.images);
        let (start, end) = (
            r["initial_loss"].as_f64().unwrap(),
            r["final_loss"]["value"].as_f64().unwrap(),
        );
        assert!(end < start, "{r}");
        let ssim = r["ssim"]["value"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ssim), "{r}");
    }
    let rec = study::read_record(dir.path(), &ids::invert("moco-v2"))
        .unwrap()
        .unwrap();
    let png = rec.result["images"][0]["png"].as_str().unwrap();
    let img = image::open(png).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
    assert_eq!(
        res["analyses"]["inversion_claims"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Add the two ablations to the finished study: only their steps run.
    p.ablations = vec![preset::Ablation::Data, preset::Ablation::KTau];
    let with = Plan::new(p.clone()).unwrap();
    let s = study::run(&with, &opts).unwrap();
    assert_eq!(
        s.executed.len(),
        with.steps.len() - base.steps.len(),
        "{:?}",
        s.executed
    );
    // The subsets: half the images of every class; half the classes with all their images.
    let full = trainer::data::MiniImageNet::open(dir.path().join("data/objects"))
        .unwrap()
        .split(trainer::data::Split::Train)
        .unwrap();
    let sub = |name: &str| {
        trainer::data::MiniImageNet::open(dir.path().join("data").join(name))
            .unwrap()
            .split(trainer::data::Split::Train)
            .unwrap()
    };
    let (imgs, classes) = (sub("objects-images-subset"), sub("objects-classes-subset"));
    assert_eq!(imgs.num_classes(), full.num_classes());
    assert_eq!(imgs.len() * 2, full.len());
    assert_eq!(classes.num_classes(), full.num_classes().div_ceil(2));
    // The subset pretrainings ran as many steps as the full data: twice the epochs.
    let rec = study::read_record(
        dir.path(),
        &ids::data_pretrain("images-subset", "supervised"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(rec.result["epochs"], 2 * p.pretrain.epochs_objects);
    let res = read_json(&dir.path().join("results.json"));
    let data = res["analyses"]["pretraining_data"].as_array().unwrap();
    assert_eq!(data.len(), 2 * 4, "4 data rows per method");
    for r in data {
        assert!(r["fewshot"][0][1]["value"].as_f64().is_some(), "{r}");
        assert!(r["iod"]["value"].as_f64().unwrap() > 0.0, "{r}");
    }
    // 2 subsets + the two other-domain transfers, for moco-v2 against supervised.
    let claims = res["analyses"]["pretraining_data_claims"]
        .as_array()
        .unwrap();
    assert_eq!(claims.len(), 4);
    assert!(
        claims.iter().all(|c| c["margin"].as_f64().is_some()),
        "{claims:?}"
    );
    // k/τ: 2 × 2 cells, the main run's one reused (queue 64, τ 0.2 for MoCo-v2).
    let kt = res["analyses"]["k_tau"].as_array().unwrap();
    assert_eq!(kt.len(), 4);
    let main: Vec<_> = kt.iter().filter(|r| r["main_run"] == true).collect();
    assert_eq!(main.len(), 1);
    assert_eq!(
        (main[0]["queue"].as_u64(), main[0]["tau"].as_f64()),
        (Some(64), Some(0.2))
    );
    let main_fs = study::read_record(dir.path(), &ids::fewshot("moco-v2"))
        .unwrap()
        .unwrap();
    assert_eq!(
        main[0]["fewshot"][0][1]["value"].as_f64(),
        main_fs.result["results"][0]["accuracy"].as_f64()
    );
    for r in kt {
        let chance = r["chance_loss"].as_f64().unwrap();
        // MoCo's chance loss is ln(k + 1): the queue each cell ran with (at most half the data).
        let k = r["queue_used"].as_f64().unwrap();
        assert!(k <= r["queue"].as_f64().unwrap(), "{r}");
        assert!((chance - (k + 1.0).ln()).abs() < 1e-9, "{r}");
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    for needle in [
        "## Feature inversion",
        "## Table 2 layout",
        "## Table 10 layout",
    ] {
        assert!(md.contains(needle), "results.md lacks {needle:?}");
    }
}
