//! The study's plan: its steps, in order, from a preset (what to run, never how).

use super::preset::{Ablation, DataSource, Preset};
use crate::analysis::subset::Subset;
use anyhow::Result;
use std::path::{Path, PathBuf};
use trainer::method::Method;
use trainer::train::pretrain::BACKBONE;

use super::*;

/// The two downstream domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// What a pretraining changes from the preset's settings (the ablations); the default changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Variant {
    /// `--aug` list (Table 1).
    pub aug: Option<String>,
    /// Queue length k (Table 10).
    pub queue: Option<usize>,
    /// Temperature τ (Table 10).
    pub tau: Option<f64>,
    /// Pretrain on a subset of the objects (Table 2), for as many steps as the full data: the
    /// epochs are scaled by full / subset training images when the step runs.
    pub subset: Option<Subset>,
}

/// What a step does. Paths are relative to the study folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Synth(Domain),
    /// The objects regenerated with their novel classes at `alignment` (the sweep).
    SynthAligned {
        alignment: f64,
    },
    /// Save a random-init backbone (seeded) as `dir/backbone.safetensors`.
    InitScratch {
        dir: PathBuf,
    },
    Pretrain {
        domain: Domain,
        method: Method,
        epochs: usize,
        dir: PathBuf,
        variant: Variant,
    },
    /// The objects' Table-2 variant `subset` (a mini-ImageNet folder under `data/`).
    WriteSubset {
        subset: Subset,
    },
    /// Feature inversion of held-out objects through `dir`'s backbone (Figure 2).
    Invert {
        dir: PathBuf,
    },
    /// Few-shot on the main objects (`alignment: None`) or on the sweep's copy at an alignment.
    FewShot {
        dir: PathBuf,
        alignment: Option<f64>,
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
    FigureAlignment,
    FigureInvert,
    /// `trajectory.png`: each contrastive pretraining's loss / chance against images seen,
    /// beside the MoCo CIFAR-10 demo's ([`super::trajectory`]).
    FigureTrajectory,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Stable identifier; names the record file `steps/<id>.json`.
    pub id: String,
    /// One-line description for the progress output.
    pub title: String,
    pub action: Action,
    /// Indices of the earlier steps whose outputs this step reads ([`Action::reads`] against
    /// [`Action::writes`]; the figures need every earlier step). `--jobs N` runs a step once
    /// these are done; with one job the plan order alone satisfies them.
    pub needs: Vec<usize>,
}

/// What a step reads or writes, as the study's scheduler sees it: a dataset folder or a file,
/// relative to the study folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Artefact {
    Data(Domain),
    AlignedObjects(String),
    SubsetObjects(Subset),
    File(PathBuf),
}

impl Artefact {
    /// The sweep's objects at `alignment`, keyed as their folder is named
    /// ([`aligned_objects_dir`]).
    fn aligned(alignment: f64) -> Artefact {
        Artefact::AlignedObjects(format!("{alignment:.2}"))
    }
}

impl Action {
    /// The artefacts this action produces.
    pub fn writes(&self) -> Vec<Artefact> {
        match self {
            Action::Synth(d) => vec![Artefact::Data(*d)],
            Action::SynthAligned { alignment } => vec![Artefact::aligned(*alignment)],
            Action::WriteSubset { subset } => vec![Artefact::SubsetObjects(*subset)],
            Action::InitScratch { dir } | Action::Pretrain { dir, .. } => {
                vec![Artefact::File(dir.join(BACKBONE))]
            }
            Action::Landmarks { dir } => vec![Artefact::File(
                dir.join("landmarks").join("landmarks.safetensors"),
            )],
            Action::ExportInt8 { out, .. } => vec![Artefact::File(out.clone())],
            Action::FewShot { .. }
            | Action::BaseProbe { .. }
            | Action::RuntimeFewShot { .. }
            | Action::RuntimeMafl { .. }
            | Action::FigureFewShot
            | Action::FigureLandmarks
            | Action::FigureAlignment
            | Action::Invert { .. }
            | Action::FigureInvert
            | Action::FigureTrajectory => vec![],
        }
    }

    /// The artefacts this action reads; `None` for the figures, which read the records of every
    /// earlier step.
    pub fn reads(&self) -> Option<Vec<Artefact>> {
        let backbone = |dir: &Path| Artefact::File(dir.join(BACKBONE));
        Some(match self {
            Action::Synth(_) | Action::SynthAligned { .. } | Action::InitScratch { .. } => vec![],
            Action::Pretrain {
                variant: Variant {
                    subset: Some(s), ..
                },
                ..
            } => vec![Artefact::SubsetObjects(*s)],
            Action::Pretrain { domain, .. } => vec![Artefact::Data(*domain)],
            Action::WriteSubset { .. } => vec![Artefact::Data(Domain::Objects)],
            Action::Invert { dir } => vec![backbone(dir), Artefact::Data(Domain::Objects)],
            Action::FewShot { dir, alignment } => vec![
                backbone(dir),
                match alignment {
                    None => Artefact::Data(Domain::Objects),
                    Some(a) => Artefact::aligned(*a),
                },
            ],
            Action::BaseProbe { dir } => vec![backbone(dir), Artefact::Data(Domain::Objects)],
            Action::Landmarks { dir } => vec![backbone(dir), Artefact::Data(Domain::Faces)],
            Action::ExportInt8 { domain, model, .. } => {
                vec![Artefact::File(model.clone()), Artefact::Data(*domain)]
            }
            Action::RuntimeFewShot { model } => {
                vec![
                    Artefact::File(model.clone()),
                    Artefact::Data(Domain::Objects),
                ]
            }
            Action::RuntimeMafl { model } => {
                vec![Artefact::File(model.clone()), Artefact::Data(Domain::Faces)]
            }
            Action::FigureFewShot
            | Action::FigureLandmarks
            | Action::FigureAlignment
            | Action::FigureInvert
            | Action::FigureTrajectory => return None,
        })
    }
}

/// Each step's `needs`: the latest earlier writer of every artefact it reads (an artefact no
/// step writes is an input from outside the study, e.g. a real dataset folder).
fn link_needs(steps: &mut [Step]) {
    let mut writer: std::collections::HashMap<Artefact, usize> = Default::default();
    for (i, step) in steps.iter_mut().enumerate() {
        step.needs = match step.action.reads() {
            None => (0..i).collect(),
            Some(reads) => {
                let mut n: Vec<usize> = reads
                    .iter()
                    .filter_map(|a| writer.get(a).copied())
                    .collect();
                n.sort_unstable();
                n.dedup();
                n
            }
        };
        for a in step.action.writes() {
            writer.insert(a, i);
        }
    }
}

/// Step identifiers: the one place they are spelled (the results tables look records up by them).
/// A `method` is a [`Method`](trainer::method::Method) or a table row's [`Backbone`](super::Backbone).
pub mod ids {
    use std::fmt::Display;

    pub fn synth(domain: &str) -> String {
        format!("synth.{domain}")
    }
    pub fn pretrain(domain: &str, method: impl Display) -> String {
        format!("{domain}.{method}.pretrain")
    }
    pub fn fewshot(method: impl Display) -> String {
        format!("objects.{method}.fewshot")
    }
    pub fn base(method: impl Display) -> String {
        format!("objects.{method}.base")
    }
    pub fn runtime_fewshot(method: impl Display) -> String {
        format!("objects.{method}.runtime-fewshot-int8")
    }
    pub fn landmarks(method: impl Display) -> String {
        format!("faces.{method}.landmarks")
    }
    pub fn runtime_mafl(method: impl Display) -> String {
        format!("faces.{method}.runtime-mafl-int8")
    }
    pub fn export(domain: &str, method: impl Display) -> String {
        format!("{domain}.{method}.export-int8")
    }
    pub fn ablation_pretrain(method: impl Display, level: usize) -> String {
        format!("ablation.{method}.{level}.pretrain")
    }
    pub fn ablation_fewshot(method: impl Display, level: usize) -> String {
        format!("ablation.{method}.{level}.fewshot")
    }
    pub fn synth_aligned(alignment: f64) -> String {
        format!("synth.objects-a{alignment:.2}")
    }
    pub fn aligned_fewshot(method: impl Display, alignment: f64) -> String {
        format!("alignment.{alignment:.2}.{method}.fewshot")
    }
    pub fn invert(method: impl Display) -> String {
        format!("objects.{method}.invert")
    }
    pub fn subset(subset: &str) -> String {
        format!("synth.objects-{subset}")
    }
    /// A Table-2 row: `data` is a subset name, or the other domain the backbone came from.
    pub fn data_pretrain(data: &str, method: impl Display) -> String {
        format!("data.{data}.{method}.pretrain")
    }
    pub fn data_fewshot(data: &str, method: impl Display) -> String {
        format!("data.{data}.{method}.fewshot")
    }
    pub fn data_landmarks(data: &str, method: impl Display) -> String {
        format!("data.{data}.{method}.landmarks")
    }
    pub fn k_tau_pretrain(method: impl Display, queue: usize, tau: f64) -> String {
        format!("k-tau.{method}.k{queue}.t{tau}.pretrain")
    }
    pub fn k_tau_fewshot(method: impl Display, queue: usize, tau: f64) -> String {
        format!("k-tau.{method}.k{queue}.t{tau}.fewshot")
    }
    pub fn same_tau_pretrain(method: impl Display, tau: f64) -> String {
        format!("same-tau.{method}.t{tau}.pretrain")
    }
    pub fn same_tau_fewshot(method: impl Display, tau: f64) -> String {
        format!("same-tau.{method}.t{tau}.fewshot")
    }
    pub const FIGURE_INVERT: &str = "figure.invert";
    pub const FIGURE_FEWSHOT: &str = "figure.fewshot";
    pub const FIGURE_ALIGNMENT: &str = "figure.alignment";
    pub const FIGURE_LANDMARKS: &str = "figure.landmarks";
    pub const FIGURE_TRAJECTORY: &str = "figure.trajectory";
}

/// The resolved study: settings and the ordered steps.
#[derive(Debug, Clone)]
pub struct Plan {
    pub preset: Preset,
    pub steps: Vec<Step>,
}

/// Method rows of the tables: the preset's methods, then `scratch`.
pub fn rows(p: &Preset) -> Vec<Backbone> {
    let mut r: Vec<Backbone> = p
        .methods
        .iter()
        .copied()
        .map(Backbone::Pretrained)
        .collect();
    r.push(Backbone::Scratch);
    r
}

impl Plan {
    /// The steps `--only` keeps: those whose id starts with one of `patterns`, and every step
    /// they need (transitively), so that a selected step always finds its inputs. No pattern
    /// keeps every step; a pattern that matches no step is an error (a typo would otherwise
    /// run nothing and say nothing).
    pub fn select(&self, patterns: &[String]) -> Result<Vec<bool>> {
        if patterns.is_empty() {
            return Ok(vec![true; self.steps.len()]);
        }
        let mut keep = vec![false; self.steps.len()];
        let mut todo = Vec::new();
        for pat in patterns {
            let hits: Vec<usize> = (0..self.steps.len())
                .filter(|&i| self.steps[i].id.starts_with(pat.as_str()))
                .collect();
            if hits.is_empty() {
                anyhow::bail!(
                    "--only {pat}: no step id starts with it (`study --dry-run` lists the ids)"
                );
            }
            todo.extend(hits);
        }
        while let Some(i) = todo.pop() {
            if !keep[i] {
                keep[i] = true;
                todo.extend(self.steps[i].needs.iter().copied());
            }
        }
        Ok(keep)
    }

    /// All steps of `preset`, in execution order.
    pub fn new(preset: Preset) -> Result<Plan> {
        preset.validate()?;
        let mut s = Vec::new();
        let mut push = |id: String, title: String, action: Action| {
            s.push(Step {
                id,
                title,
                action,
                needs: Vec::new(),
            })
        };
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
                let dir = PathBuf::from(d.name()).join(m.to_string());
                let id = ids::pretrain(d.name(), m);
                if let Backbone::Pretrained(method) = m {
                    let epochs = match d {
                        Domain::Objects => preset.pretrain.epochs_objects,
                        Domain::Faces => preset.pretrain.epochs_faces,
                    };
                    let title = format!("pretrain {m} on {} ({epochs} epochs)", d.name());
                    let action = Action::Pretrain {
                        domain: d,
                        method,
                        epochs,
                        dir: dir.clone(),
                        variant: Variant::default(),
                    };
                    push(id, title, action);
                } else {
                    let title = format!("random-init backbone for {}", d.name());
                    push(id, title, Action::InitScratch { dir: dir.clone() });
                }
                match d {
                    Domain::Objects => {
                        push(
                            ids::fewshot(m),
                            format!("few-shot {m} (host f32)"),
                            Action::FewShot {
                                dir: dir.clone(),
                                alignment: None,
                            },
                        );
                        push(
                            ids::base(m),
                            format!("base-class probe {m} (host f32)"),
                            Action::BaseProbe { dir: dir.clone() },
                        );
                        let model = dir.join(BACKBONE);
                        let out = dir.join("model.int8.safetensors");
                        push(
                            ids::export(d.name(), m),
                            format!("export {m} objects backbone (int8)"),
                            Action::ExportInt8 {
                                domain: d,
                                model,
                                out: out.clone(),
                            },
                        );
                        push(
                            ids::runtime_fewshot(m),
                            format!("few-shot {m} (runtime int8)"),
                            Action::RuntimeFewShot { model: out },
                        );
                    }
                    Domain::Faces => {
                        push(
                            ids::landmarks(m),
                            format!("landmarks {m} (host f32)"),
                            Action::Landmarks { dir: dir.clone() },
                        );
                        let model = dir.join("landmarks").join("landmarks.safetensors");
                        let out = dir.join("landmarks.int8.safetensors");
                        push(
                            ids::export(d.name(), m),
                            format!("export {m} landmark model (int8)"),
                            Action::ExportInt8 {
                                domain: d,
                                model,
                                out: out.clone(),
                            },
                        );
                        push(
                            ids::runtime_mafl(m),
                            format!("landmarks {m} (runtime int8)"),
                            Action::RuntimeMafl { model: out },
                        );
                    }
                }
            }
        }
        if preset.invert.images > 0 {
            for m in rows(&preset) {
                push(
                    ids::invert(m),
                    format!(
                        "feature inversion through the {m} objects backbone ({} images)",
                        preset.invert.images
                    ),
                    Action::Invert {
                        dir: PathBuf::from(Domain::Objects.name()).join(m.to_string()),
                    },
                );
            }
            push(
                ids::FIGURE_INVERT.into(),
                "figures inversion.png, inversion_distance.png".into(),
                Action::FigureInvert,
            );
        }
        if preset.runs(Ablation::Data) {
            data_ablation_steps(&preset, &mut push);
        }
        if preset.runs(Ablation::KTau) {
            k_tau_steps(&preset, &mut push);
        }
        if preset.runs(Ablation::SameTau) {
            same_tau_steps(&preset, &mut push);
        }
        if preset.runs(Ablation::Augment) {
            for (k, (label, aug)) in preset.ablation.levels.iter().enumerate() {
                for m in &preset.ablation.methods {
                    let dir = PathBuf::from("ablation")
                        .join(m.to_string())
                        .join(k.to_string());
                    let epochs = preset.ablation.epochs;
                    let action = Action::Pretrain {
                        domain: Domain::Objects,
                        method: *m,
                        epochs,
                        dir: dir.clone(),
                        variant: Variant {
                            aug: Some(aug.clone()),
                            ..Default::default()
                        },
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
                        Action::FewShot {
                            dir,
                            alignment: None,
                        },
                    );
                }
            }
        }
        let sweep = !matches!(preset.objects, DataSource::Folder(_));
        if sweep && !preset.alignments.is_empty() {
            for &a in &preset.alignments {
                push(
                    ids::synth_aligned(a),
                    format!("synth objects, novel classes at alignment {a}"),
                    Action::SynthAligned { alignment: a },
                );
                for m in rows(&preset) {
                    push(
                        ids::aligned_fewshot(m, a),
                        format!("few-shot {m} at alignment {a} (host f32)"),
                        Action::FewShot {
                            dir: PathBuf::from(Domain::Objects.name()).join(m.to_string()),
                            alignment: Some(a),
                        },
                    );
                }
            }
            push(
                ids::FIGURE_ALIGNMENT.into(),
                "figure alignment.png".into(),
                Action::FigureAlignment,
            );
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
        push(
            ids::FIGURE_TRAJECTORY.into(),
            "figure trajectory.png".into(),
            Action::FigureTrajectory,
        );
        link_needs(&mut s);
        Ok(Plan { preset, steps: s })
    }
}

/// The Table-2 steps: each method on each subset of the objects (pretrain, few-shot, landmarks),
/// and each method's backbone of the other domain on the same tasks (faces → few-shot, objects
/// → landmarks; the backbones of the main rows, so no new pretraining).
fn data_ablation_steps(p: &Preset, push: &mut impl FnMut(String, String, Action)) {
    let objects = Domain::Objects.name();
    let pct = p.data_ablation.fraction * 100.0;
    for s in Subset::ALL {
        push(
            ids::subset(s.name()),
            format!("objects with {}", s.label(p.data_ablation.fraction)),
            Action::WriteSubset { subset: s },
        );
        for m in &p.data_ablation.methods {
            let dir = PathBuf::from("data").join(s.name()).join(m.to_string());
            push(
                ids::data_pretrain(s.name(), m),
                format!(
                    "pretrain {m} on {pct:.0}% of the objects' {} (as many steps as the full data)",
                    if s == Subset::Classes {
                        "classes"
                    } else {
                        "images per class"
                    }
                ),
                Action::Pretrain {
                    domain: Domain::Objects,
                    method: *m,
                    epochs: p.pretrain.epochs_objects,
                    dir: dir.clone(),
                    variant: Variant {
                        subset: Some(s),
                        ..Default::default()
                    },
                },
            );
            push(
                ids::data_fewshot(s.name(), m),
                format!("few-shot {m} pretrained on the {} objects", s.name()),
                Action::FewShot {
                    dir: dir.clone(),
                    alignment: None,
                },
            );
            push(
                ids::data_landmarks(s.name(), m),
                format!("landmarks {m} pretrained on the {} objects", s.name()),
                Action::Landmarks { dir },
            );
        }
    }
    for m in &p.data_ablation.methods {
        push(
            ids::data_fewshot(Domain::Faces.name(), m),
            format!("few-shot on objects, {m} pretrained on faces"),
            Action::FewShot {
                dir: PathBuf::from(Domain::Faces.name()).join(m.to_string()),
                alignment: None,
            },
        );
        push(
            ids::data_landmarks(objects, m),
            format!("landmarks, {m} pretrained on objects"),
            Action::Landmarks {
                dir: PathBuf::from(objects).join(m.to_string()),
            },
        );
    }
}

/// The (queue, τ) pairs of the Table-10 ablation for `method`, each with whether the main run
/// already is that pretraining.
pub fn k_tau_cells(p: &Preset, method: Method) -> Vec<(usize, f64, bool)> {
    let defaults = method.defaults();
    let main_queue = p.pretrain.queue.or(Some(defaults.queue_len));
    let main_tau = defaults.tau;
    let mut cells = Vec::new();
    for &q in &p.k_tau.queues {
        for &t in &p.k_tau.taus {
            let is_main = p.methods.contains(&method)
                && Some(q) == main_queue
                && main_tau.is_some_and(|mt| (mt - t).abs() < 1e-12)
                && p.k_tau.epochs == p.pretrain.epochs_objects;
            cells.push((q, t, is_main));
        }
    }
    cells
}

fn k_tau_steps(p: &Preset, push: &mut impl FnMut(String, String, Action)) {
    let epochs = p.k_tau.epochs;
    for m in &p.k_tau.methods {
        for (q, t, is_main) in k_tau_cells(p, *m) {
            if is_main {
                continue;
            }
            let dir = PathBuf::from("k-tau")
                .join(m.to_string())
                .join(format!("k{q}-t{t}"));
            push(
                ids::k_tau_pretrain(m, q, t),
                format!("pretrain {m} on objects, k {q}, τ {t} ({epochs} epochs)"),
                Action::Pretrain {
                    domain: Domain::Objects,
                    method: *m,
                    epochs,
                    dir: dir.clone(),
                    variant: Variant {
                        queue: Some(q),
                        tau: Some(t),
                        ..Default::default()
                    },
                },
            );
            push(
                ids::k_tau_fewshot(m, q, t),
                format!("few-shot {m}, k {q}, τ {t}"),
                Action::FewShot {
                    dir,
                    alignment: None,
                },
            );
        }
    }
}

/// The contrastive method that differs from `m` only by the label mask (MoCo-vN ↔ Exemplar-vN).
pub fn counterpart(m: Method) -> Option<Method> {
    match m {
        Method::Moco(v) => Some(Method::Exemplar(v)),
        Method::Exemplar(v) => Some(Method::Moco(v)),
        Method::Supervised => None,
    }
}

/// The extra runs of the same-τ ablation: `(method, τ)` for each contrastive method of the main
/// table whose counterpart is also there with another default τ: the method at the
/// counterpart's τ. Everything else is the main run's (epochs, queue, augmentation, seed).
pub fn same_tau_cells(p: &Preset) -> Vec<(Method, f64)> {
    let mut cells = Vec::new();
    for &m in &p.methods {
        let Some(c) = counterpart(m).filter(|c| p.methods.contains(c)) else {
            continue;
        };
        if let (Some(own), Some(other)) = (m.defaults().tau, c.defaults().tau) {
            if (own - other).abs() > 1e-12 {
                cells.push((m, other));
            }
        }
    }
    cells
}

fn same_tau_steps(p: &Preset, push: &mut impl FnMut(String, String, Action)) {
    let epochs = p.pretrain.epochs_objects;
    for (m, t) in same_tau_cells(p) {
        let dir = PathBuf::from("same-tau")
            .join(m.to_string())
            .join(format!("t{t}"));
        push(
            ids::same_tau_pretrain(m, t),
            format!("pretrain {m} on objects at τ {t} ({epochs} epochs, the main run's settings otherwise)"),
            Action::Pretrain {
                domain: Domain::Objects,
                method: m,
                epochs,
                dir: dir.clone(),
                variant: Variant {
                    tau: Some(t),
                    ..Default::default()
                },
            },
        );
        push(
            ids::same_tau_fewshot(m, t),
            format!("few-shot {m} at τ {t}"),
            Action::FewShot {
                dir,
                alignment: None,
            },
        );
    }
}

/// Where the Table-2 variant `s` of the objects is written.
pub fn subset_dir(out: &Path, s: Subset) -> PathBuf {
    out.join("data").join(format!("objects-{}", s.name()))
}

pub(super) fn data_source(p: &Preset, d: Domain) -> &DataSource {
    match d {
        Domain::Objects => &p.objects,
        Domain::Faces => &p.faces,
    }
}

/// The sweep's objects at `alignment` (generated under `out/data/`).
pub fn aligned_objects_dir(out: &Path, alignment: f64) -> PathBuf {
    out.join("data").join(format!("objects-a{alignment:.2}"))
}

/// The dataset root of `d`: the generated copy under `out/data/`, or the real folder.
pub fn data_dir(p: &Preset, out: &Path, d: Domain) -> PathBuf {
    match data_source(p, d) {
        DataSource::Folder(f) => f.clone(),
        _ => out.join("data").join(d.name()),
    }
}
