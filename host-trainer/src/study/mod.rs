//! The study (`host-trainer study`): the paper's comparisons, end to end, as one resumable plan.
//!
//! synth → pretrain (each method, plus a random-init `scratch` row, on objects and faces) →
//! host evaluation (few-shot, base-class probe, landmarks) → int8 export → runtime evaluation
//! (the `runtime-cli` binary, same episodes) → optional Table-1 augmentation ablation → figures →
//! `results.json` + `results.md`.
//!
//! Resumability: every step writes one record `OUT/steps/<id>.json` (its result and its wall
//! time) atomically when it finishes; a step whose record exists is skipped, so an interrupted
//! study redoes only the unfinished step, and an interrupted pretraining resumes from its
//! `last.safetensors`. The final tables are always rebuilt from the records
//! ([`results::collect`]), so wall times add up across restarts.
pub mod figures;
pub mod preset;
pub mod results;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::synth::{faces, objects};
use crate::data::Split;
use crate::eval::{fewshot, landmarks, probe};
use crate::export::{self, ExportOptions, ExportRequest};
use crate::method::Method;
use crate::model::{Arch, ResNet, ResNetConfig};
use crate::train::pretrain::{self, PretrainRequest, BACKBONE, LAST};
use preset::{DataSource, Preset};
use runtime_core::protocol::fewshot::FewShotHead;

/// The random-init baseline row (paper Table 5 "Scratch").
pub const SCRATCH: &str = "scratch";
/// Folder of the step records.
pub const STEPS_DIR: &str = "steps";
/// The preset a study folder was started with (a restart must use the same one).
pub const STUDY_FILE: &str = "study.json";

/// The two downstream domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Objects,
    Faces,
}

impl Domain {
    pub fn name(self) -> &'static str {
        match self {
            Domain::Objects => "objects",
            Domain::Faces => "faces",
        }
    }
}

/// What a step does. Paths are relative to the study folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Synth(Domain),
    /// Save a random-init backbone (seeded) as `dir/backbone.safetensors`.
    InitScratch {
        dir: PathBuf,
    },
    Pretrain {
        domain: Domain,
        method: String,
        aug: Option<String>,
        epochs: usize,
        dir: PathBuf,
    },
    FewShot {
        dir: PathBuf,
    },
    BaseProbe {
        dir: PathBuf,
    },
    Landmarks {
        dir: PathBuf,
    },
    /// Export `model` to an int8 runtime model `out`, calibrated on `domain`'s data.
    ExportInt8 {
        domain: Domain,
        model: PathBuf,
        out: PathBuf,
    },
    RuntimeFewShot {
        model: PathBuf,
    },
    RuntimeMafl {
        model: PathBuf,
    },
    FigureFewShot,
    FigureLandmarks,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Stable identifier; names the record file `steps/<id>.json`.
    pub id: String,
    /// One-line description for the progress output.
    pub title: String,
    pub action: Action,
}

/// What a finished step leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub title: String,
    /// Wall time of the invocation that finished the step.
    pub seconds: f64,
    pub result: Value,
}

/// Step identifiers: the one place they are spelled (the results tables look records up by them).
pub mod ids {
    pub fn synth(domain: &str) -> String {
        format!("synth.{domain}")
    }
    pub fn pretrain(domain: &str, method: &str) -> String {
        format!("{domain}.{method}.pretrain")
    }
    pub fn fewshot(method: &str) -> String {
        format!("objects.{method}.fewshot")
    }
    pub fn base(method: &str) -> String {
        format!("objects.{method}.base")
    }
    pub fn runtime_fewshot(method: &str) -> String {
        format!("objects.{method}.runtime-fewshot-int8")
    }
    pub fn landmarks(method: &str) -> String {
        format!("faces.{method}.landmarks")
    }
    pub fn runtime_mafl(method: &str) -> String {
        format!("faces.{method}.runtime-mafl-int8")
    }
    pub fn export(domain: &str, method: &str) -> String {
        format!("{domain}.{method}.export-int8")
    }
    pub fn ablation_pretrain(method: &str, level: usize) -> String {
        format!("ablation.{method}.{level}.pretrain")
    }
    pub fn ablation_fewshot(method: &str, level: usize) -> String {
        format!("ablation.{method}.{level}.fewshot")
    }
    pub const FIGURE_FEWSHOT: &str = "figure.fewshot";
    pub const FIGURE_LANDMARKS: &str = "figure.landmarks";
}

/// The resolved study: settings and the ordered steps.
#[derive(Debug, Clone)]
pub struct Plan {
    pub preset: Preset,
    pub steps: Vec<Step>,
}

/// Method rows of the tables: the preset's methods, then `scratch`.
pub fn rows(p: &Preset) -> Vec<String> {
    let mut r = p.methods.clone();
    r.push(SCRATCH.to_string());
    r
}

impl Plan {
    /// All steps of `preset`, in execution order.
    pub fn new(preset: Preset) -> Result<Plan> {
        preset.validate()?;
        let mut s = Vec::new();
        let mut push =
            |id: String, title: String, action: Action| s.push(Step { id, title, action });
        for d in [Domain::Objects, Domain::Faces] {
            let synthetic = !matches!(data_source(&preset, d), DataSource::Folder(_));
            if synthetic {
                push(
                    ids::synth(d.name()),
                    format!("synth {}", d.name()),
                    Action::Synth(d),
                );
            }
        }
        for m in rows(&preset) {
            for d in [Domain::Objects, Domain::Faces] {
                let dir = PathBuf::from(d.name()).join(&m);
                let id = ids::pretrain(d.name(), &m);
                if m == SCRATCH {
                    let title = format!("random-init backbone for {}", d.name());
                    push(id, title, Action::InitScratch { dir: dir.clone() });
                } else {
                    let epochs = match d {
                        Domain::Objects => preset.pretrain.epochs_objects,
                        Domain::Faces => preset.pretrain.epochs_faces,
                    };
                    let title = format!("pretrain {m} on {} ({epochs} epochs)", d.name());
                    let action = Action::Pretrain {
                        domain: d,
                        method: m.clone(),
                        aug: None,
                        epochs,
                        dir: dir.clone(),
                    };
                    push(id, title, action);
                }
                match d {
                    Domain::Objects => {
                        push(
                            ids::fewshot(&m),
                            format!("few-shot {m} (host f32)"),
                            Action::FewShot { dir: dir.clone() },
                        );
                        push(
                            ids::base(&m),
                            format!("base-class probe {m} (host f32)"),
                            Action::BaseProbe { dir: dir.clone() },
                        );
                        let model = dir.join(BACKBONE);
                        let out = dir.join("model.int8.safetensors");
                        push(
                            ids::export(d.name(), &m),
                            format!("export {m} objects backbone (int8)"),
                            Action::ExportInt8 {
                                domain: d,
                                model,
                                out: out.clone(),
                            },
                        );
                        push(
                            ids::runtime_fewshot(&m),
                            format!("few-shot {m} (runtime int8)"),
                            Action::RuntimeFewShot { model: out },
                        );
                    }
                    Domain::Faces => {
                        push(
                            ids::landmarks(&m),
                            format!("landmarks {m} (host f32)"),
                            Action::Landmarks { dir: dir.clone() },
                        );
                        let model = dir.join("landmarks").join("landmarks.safetensors");
                        let out = dir.join("landmarks.int8.safetensors");
                        push(
                            ids::export(d.name(), &m),
                            format!("export {m} landmark model (int8)"),
                            Action::ExportInt8 {
                                domain: d,
                                model,
                                out: out.clone(),
                            },
                        );
                        push(
                            ids::runtime_mafl(&m),
                            format!("landmarks {m} (runtime int8)"),
                            Action::RuntimeMafl { model: out },
                        );
                    }
                }
            }
        }
        if preset.run_ablation {
            for (k, (label, aug)) in preset.ablation.levels.iter().enumerate() {
                for m in &preset.ablation.methods {
                    let dir = PathBuf::from("ablation").join(m).join(k.to_string());
                    let epochs = preset.ablation.epochs;
                    let action = Action::Pretrain {
                        domain: Domain::Objects,
                        method: m.clone(),
                        aug: Some(aug.clone()),
                        epochs,
                        dir: dir.clone(),
                    };
                    push(
                        ids::ablation_pretrain(m, k),
                        format!(
                            "ablation: pretrain {m} on objects, {label} ({aug}, {epochs} epochs)"
                        ),
                        action,
                    );
                    push(
                        ids::ablation_fewshot(m, k),
                        format!("ablation: few-shot {m}, {label}"),
                        Action::FewShot { dir },
                    );
                }
            }
        }
        push(
            ids::FIGURE_FEWSHOT.into(),
            "figure fewshot.png".into(),
            Action::FigureFewShot,
        );
        push(
            ids::FIGURE_LANDMARKS.into(),
            "figure landmarks.png".into(),
            Action::FigureLandmarks,
        );
        Ok(Plan { preset, steps: s })
    }
}

fn data_source(p: &Preset, d: Domain) -> &DataSource {
    match d {
        Domain::Objects => &p.objects,
        Domain::Faces => &p.faces,
    }
}

/// The dataset root of `d`: the generated copy under `out/data/`, or the real folder.
pub fn data_dir(p: &Preset, out: &Path, d: Domain) -> PathBuf {
    match data_source(p, d) {
        DataSource::Folder(f) => f.clone(),
        _ => out.join("data").join(d.name()),
    }
}

/// How to run a plan (not part of the study's identity).
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// The `runtime-cli` binary ([`locate_runtime_cli`]).
    pub runtime_cli: PathBuf,
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

/// The record file of step `id`.
pub fn record_path(out: &Path, id: &str) -> PathBuf {
    out.join(STEPS_DIR).join(format!("{id}.json"))
}

/// The record of step `id`, if it finished. A record that does not parse is an error naming the
/// file (delete it to redo the step), never a silent redo.
pub fn read_record(out: &Path, id: &str) -> Result<Option<StepRecord>> {
    let path = record_path(out, id);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rec: StepRecord = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a step record (delete it to redo the step)",
            path.display()
        )
    })?;
    Ok(Some(rec))
}

fn write_record(out: &Path, rec: &StepRecord) -> Result<()> {
    let path = record_path(out, &rec.id);
    let dir = out.join(STEPS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(rec)? + "\n";
    crate::fsutil::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The settings that define a study's results (device and the ablation switch excluded: a restart
/// on another device, or adding the ablation, continues the same study).
fn identity(p: &Preset) -> Value {
    let mut q = p.clone();
    q.device = String::new();
    q.run_ablation = false;
    serde_json::to_value(&q).unwrap_or(Value::Null)
}

/// Refuse to mix two studies in one folder; record the preset on the first run.
fn check_study_file(plan: &Plan, out: &Path) -> Result<()> {
    let path = out.join(STUDY_FILE);
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let old: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let old_id = old.get("identity").cloned().unwrap_or(Value::Null);
        if old_id != identity(&plan.preset) {
            bail!(
                "{} holds a study with other settings (preset {}); use another --out, or delete the folder to start over",
                out.display(),
                old.pointer("/preset/name").and_then(Value::as_str).unwrap_or("?")
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let v = json!({"preset": plan.preset, "identity": identity(&plan.preset)});
    crate::fsutil::write_atomic(&path, (serde_json::to_string_pretty(&v)? + "\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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

/// The `runtime-cli` binary: `explicit`, else the file next to this executable, else `PATH`.
pub fn locate_runtime_cli(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "--runtime-cli {}: no such file (build it: cargo build --release -p runtime-cli)",
            p.display()
        );
    }
    let name = format!("runtime-cli{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("runtime-cli not found next to host-trainer nor on PATH: build it with `cargo build --release -p runtime-cli`, or pass --runtime-cli PATH")
}

fn model_config(p: &Preset) -> Result<ResNetConfig> {
    let arch: Arch = p
        .pretrain
        .arch
        .parse()
        .map_err(|e: String| anyhow::anyhow!("preset {}: arch: {e}", p.name))?;
    Ok(ResNetConfig {
        arch,
        width: p.pretrain.width,
        small_stem: !p.pretrain.imagenet_stem,
        num_classes: None,
    })
}

fn execute(plan: &Plan, step: &Step, opts: &RunOptions) -> Result<Value> {
    let p = &plan.preset;
    let out = &opts.out;
    let size = p.pretrain.image_size;
    match &step.action {
        Action::Synth(d) => synth(p, out, *d),
        Action::InitScratch { dir } => {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let net = ResNet::new(&model_config(p)?, p.seed, &Device::Cpu)?;
            let path = dir.join(BACKBONE);
            pretrain::save_backbone(&net, &path)?;
            Ok(json!({"backbone": path, "seed": p.seed}))
        }
        Action::Pretrain {
            domain,
            method,
            aug,
            epochs,
            dir,
        } => {
            let dir = out.join(dir);
            let m: Method = method.parse()?;
            let d = m.defaults();
            let ropts = pretrain::RunOptions {
                out: dir.clone(),
                device: opts.device.clone(),
                stop_after: opts.stop_after,
                progress: opts.progress,
            };
            let summary = if dir.join(LAST).is_file() {
                eprintln!("  resuming {} from {LAST}", dir.display());
                pretrain::resume(&dir, None, &ropts)?
            } else {
                let lr =
                    d.base_lr * p.pretrain.batch as f64 / d.base_batch as f64 * p.pretrain.lr_scale;
                let req = PretrainRequest {
                    method: m,
                    data: data_dir(p, out, *domain),
                    model: model_config(p)?,
                    image_size: size,
                    epochs: *epochs,
                    batch_size: p.pretrain.batch,
                    lr: Some(lr),
                    weight_decay: None,
                    queue: if m.is_contrastive() {
                        p.pretrain.queue
                    } else {
                        None
                    },
                    tau: None,
                    ema_momentum: if m.is_contrastive() {
                        p.pretrain.ema_momentum
                    } else {
                        None
                    },
                    dim: None,
                    aug: aug.clone(),
                    bn_groups: None,
                    seed: p.seed,
                    knn_images: p.pretrain.knn_images,
                    log_every: 10,
                };
                pretrain::pretrain(&req, &ropts)?
            };
            if summary.epochs_done < summary.epochs {
                bail!(
                    "stopped after epoch {} of {} (--stop-after); run the study again to resume {}",
                    summary.epochs_done,
                    summary.epochs,
                    dir.display()
                );
            }
            let metrics = dir.join(pretrain::METRICS);
            if metrics.is_file() {
                crate::train::plot::plot_metrics(&metrics, &dir.join("curves.png"))?;
            }
            Ok(serde_json::to_value(&summary)?)
        }
        Action::FewShot { dir } => {
            let cfg = fewshot::FewShotConfig {
                backbone: out.join(dir).join(BACKBONE),
                data: data_dir(p, out, Domain::Objects),
                split: Split::Test,
                way: p.fewshot.way,
                shots: p.fewshot.shots.clone(),
                episodes: p.fewshot.episodes,
                query: p.fewshot.query,
                classifier: FewShotHead::Linear,
                seed: p.seed,
                image_size: size,
                batch: 64,
            };
            let r = fewshot::evaluate(&cfg, &opts.device)?;
            Ok(fewshot::to_json(&cfg, &r))
        }
        Action::BaseProbe { dir } => {
            let mut recipe = probe::ProbeRecipe::base();
            recipe.epochs = p.base_probe_epochs;
            let cfg = probe::ProbeConfig {
                kind: probe::ProbeKind::Base,
                backbone: out.join(dir).join(BACKBONE),
                data: data_dir(p, out, Domain::Objects),
                pretrain_seed: p.seed,
                image_size: size,
                batch: 64,
                recipe,
            };
            let r = probe::evaluate(&cfg, &opts.device)?;
            let mut v = probe::to_json(&cfg, &r);
            // Binomial 95% interval of a top-1 accuracy over the test images (in points).
            let q = r.accuracy / 100.0;
            v["ci95"] = json!(100.0 * 1.96 * (q * (1.0 - q) / r.test_images.max(1) as f64).sqrt());
            Ok(v)
        }
        Action::Landmarks { dir } => {
            let dir = out.join(dir);
            let cfg = landmarks::LandmarkConfig {
                backbone: landmarks::BackboneSource::File(dir.join(BACKBONE)),
                data: data_dir(p, out, Domain::Faces),
                image_size: size,
                epochs: p.landmark_epochs,
                batch: p.landmark_batch,
                lr: p.landmark_lr(),
                frozen: false,
                seed: p.seed,
            };
            let (model, report) = landmarks::evaluate(&cfg, &opts.device)?;
            let lm_dir = dir.join("landmarks");
            std::fs::create_dir_all(&lm_dir)
                .with_context(|| format!("creating {}", lm_dir.display()))?;
            model.save(&lm_dir.join("landmarks.safetensors"))?;
            let mut v = landmarks::to_json(&cfg, &report);
            // The per-image errors give the interval the library's mean does not.
            let faces = figures::predict_mafl_test(&model, &cfg.data, usize::MAX, &opts.device)?;
            let (mean, ci) = figures::per_image_iod(&faces)?;
            v["iod_error_per_image_mean"] = json!(mean);
            v["ci95"] = json!(ci);
            // Table 5's "mean face (no image)" row: the training mean predicted for the same test
            // faces, with the same per-image interval, so the methods can be checked against it.
            let base: Vec<f64> = faces
                .iter()
                .filter_map(|f| {
                    landmarks::iod_error(&[report.mean_face], &[f.gt])
                        .ok()
                        .map(|r| r.iod_error)
                })
                .collect();
            let (mf, mf_ci) = figures::mean_ci95(&base)
                .context("no test face with distinct ground-truth eyes for the mean face")?;
            v["mean_face_iod_error"] = json!(mf);
            v["mean_face_ci95"] = json!(mf_ci);
            Ok(v)
        }
        Action::ExportInt8 {
            domain,
            model,
            out: file,
        } => {
            let req = ExportRequest {
                model: out.join(model),
                calib_data: Some(data_dir(p, out, *domain)),
                calib_images: p.calib_images,
                image_size: Some(size),
                seed: p.seed,
                opts: ExportOptions::int8(),
            };
            let e = export::export_file(&req)
                .with_context(|| format!("exporting {}", req.model.display()))?;
            let path = out.join(file);
            crate::fsutil::write_atomic(&path, &e.bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            let s = &e.summary;
            Ok(json!({
                "model": path, "ops": s.ops, "macs": s.macs, "weight_bytes": s.weight_bytes,
                "arena_bytes": s.arena_bytes, "file_bytes": s.file_bytes,
                "calibration_images": s.calibration_images, "clamped_biases": s.clamped_biases,
            }))
        }
        Action::RuntimeFewShot { model } => {
            let shots: Vec<String> = p.fewshot.shots.iter().map(|s| s.to_string()).collect();
            let data = data_dir(p, out, Domain::Objects);
            let args: Vec<String> = vec![
                "eval".into(),
                "fewshot".into(),
                "--model".into(),
                out.join(model).display().to_string(),
                "--data".into(),
                data.display().to_string(),
                "--way".into(),
                p.fewshot.way.to_string(),
                "--shot".into(),
                shots.join(","),
                "--episodes".into(),
                p.fewshot.episodes.to_string(),
                "--query".into(),
                p.fewshot.query.to_string(),
                "--seed".into(),
                p.seed.to_string(),
                "--json".into(),
            ];
            run_runtime(&opts.runtime_cli, &args)
        }
        Action::RuntimeMafl { model } => {
            let args: Vec<String> = vec![
                "eval".into(),
                "mafl".into(),
                "--model".into(),
                out.join(model).display().to_string(),
                "--data".into(),
                data_dir(p, out, Domain::Faces).display().to_string(),
                "--json".into(),
            ];
            run_runtime(&opts.runtime_cli, &args)
        }
        Action::FigureFewShot => {
            let res = results::collect(plan, out)?;
            let path = out.join("fewshot.png");
            figures::fewshot_png(&res, &path)?;
            Ok(json!({"file": path}))
        }
        Action::FigureLandmarks => {
            let models: Vec<(String, PathBuf)> = rows(p)
                .into_iter()
                .map(|m| {
                    let f = out
                        .join("faces")
                        .join(&m)
                        .join("landmarks")
                        .join("landmarks.safetensors");
                    (m, f)
                })
                .collect();
            let path = out.join("landmarks.png");
            figures::landmarks_png(
                &models,
                &data_dir(p, out, Domain::Faces),
                p.figure_faces,
                &opts.device,
                &path,
            )?;
            Ok(json!({"file": path}))
        }
    }
}

fn synth(p: &Preset, out: &Path, d: Domain) -> Result<Value> {
    let dir = data_dir(p, out, d);
    match data_source(p, d) {
        DataSource::SynthObjects {
            classes,
            per_class,
            size,
        } => {
            let cfg = objects::ObjectsConfig {
                classes: *classes,
                per_class: *per_class,
                size: *size,
                seed: p.seed,
            };
            let s = objects::generate_objects(&cfg, &dir)
                .with_context(|| format!("synth objects into {}", dir.display()))?;
            crate::data::synth::preview::objects_preview(&cfg, &out.join("objects_preview.png"))?;
            Ok(
                json!({"dir": dir, "classes": classes, "per_class": per_class, "size": size,
                      "per_split": s.per_split.iter().map(|(c, i)| json!({"classes": c, "images": i})).collect::<Vec<_>>()}),
            )
        }
        DataSource::SynthFaces {
            identities,
            per_identity,
            size,
        } => {
            let cfg = faces::FacesConfig {
                identities: *identities,
                per_identity: *per_identity,
                size: *size,
                seed: p.seed,
            };
            let s = faces::generate_faces(&cfg, &dir)
                .with_context(|| format!("synth faces into {}", dir.display()))?;
            crate::data::synth::preview::faces_preview(&cfg, &out.join("faces_preview.png"))?;
            Ok(
                json!({"dir": dir, "identities": identities, "per_identity": per_identity, "size": size,
                      "images": s.images, "mafl_train": s.mafl_train, "mafl_test": s.mafl_test, "pretrain": s.pretrain}),
            )
        }
        DataSource::Folder(f) => bail!("{}: a real dataset is not generated", f.display()),
    }
}

/// Run `runtime-cli ARGS` and parse its `--json` output.
fn run_runtime(bin: &Path, args: &[String]) -> Result<Value> {
    let o = Command::new(bin).args(args).output().with_context(|| {
        format!(
            "running {} (build it: cargo build --release -p runtime-cli)",
            bin.display()
        )
    })?;
    if !o.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    serde_json::from_slice(&o.stdout)
        .with_context(|| format!("{} {}: output is not JSON", bin.display(), args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_every_stage_once_and_unique_ids() {
        let plan = Plan::new(preset::tiny()).unwrap();
        let mut ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        let n = ids.len();
        // 2 synth + 4 rows × (objects: 5 steps + faces: 4 steps) + 2 figures.
        assert_eq!(n, 2 + 4 * 9 + 2);
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
            runtime_cli: PathBuf::from("/nonexistent/runtime-cli"),
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

    #[test]
    fn missing_runtime_cli_says_how_to_build_it() {
        let e = locate_runtime_cli(Some("/nonexistent/rc".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo build --release -p runtime-cli"), "{e}");
    }
}
