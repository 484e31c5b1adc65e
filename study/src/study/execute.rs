//! Executing one step of the plan: each [`Action`] calls the library function of its command
//! (synth, pretrain, eval, export, runtime-cli's evaluations, figures) and returns its JSON.

use super::preset::{DataSource, Preset};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use exporter::export::{self, ExportOptions, ExportRequest};
use runtime_core::protocol::fewshot::FewShotHead;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use trainer::data::synth::{faces, objects};
use trainer::data::Split;
use trainer::method::Method;
use trainer::model::{Arch, ResNet, ResNetConfig};
use trainer::train::pretrain::{self, PretrainRequest, BACKBONE, LAST};
use transfer_eval::{fewshot, landmarks, probe};

use super::*;

pub(super) fn model_config(p: &Preset) -> Result<ResNetConfig> {
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

pub(super) fn execute(plan: &Plan, step: &Step, opts: &RunOptions) -> Result<Value> {
    let p = &plan.preset;
    let out = &opts.out;
    let size = p.pretrain.image_size;
    match &step.action {
        Action::Synth(d) => synth(p, out, *d, None),
        Action::SynthAligned { alignment } => synth(p, out, Domain::Objects, Some(*alignment)),
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
            epochs,
            dir,
            variant,
        } => {
            let dir = out.join(dir);
            let m: Method = *method;
            let (data, epochs) = match variant.subset {
                None => (data_dir(p, out, *domain), *epochs),
                Some(s) => {
                    // As many steps as the full data (the paper's rule for its smaller sets).
                    let sub = subset_dir(out, s);
                    let count = |root: &Path| -> Result<usize> {
                        Ok(trainer::data::MiniImageNet::open(root)?
                            .split(Split::Train)?
                            .len())
                    };
                    let (full, part) = (count(&data_dir(p, out, *domain))?, count(&sub)?);
                    (sub, (*epochs * full).div_ceil(part.max(1)))
                }
            };
            let d = m.defaults();
            // K ≤ N/2 (see `queue_within_half`): N is what this run trains on, as the trainer
            // will read it.
            let queue = if m.is_contrastive() {
                let n = trainer::train::data::open_pretrain_data(&data, p.seed)?
                    .train
                    .len();
                let k = variant.queue.or(p.pretrain.queue).unwrap_or(d.queue_len);
                Some(queue_within_half(k, n, p.pretrain.batch))
            } else {
                None
            };
            let ropts = pretrain::RunOptions {
                out: dir.clone(),
                device: opts.device.clone(),
                stop_after: opts.stop_after,
                progress: opts.progress,
                // The staleness probe after the last epoch only: it costs one re-encoding of
                // the queue and tells whether the final loss is honest (see `probe.rs`).
                probe_queue_every: if m.is_contrastive() { epochs } else { 0 },
                distributed: None,
            };
            let summary = if dir.join(LAST).is_file() {
                eprintln!("  resuming {} from {LAST}", dir.display());
                pretrain::resume(&dir, None, &ropts)?
            } else {
                let lr = d.lr_for_batch(p.pretrain.batch) * p.pretrain.lr_scale;
                let req = PretrainRequest {
                    method: m,
                    data,
                    model: model_config(p)?,
                    image_size: size,
                    epochs,
                    batch_size: p.pretrain.batch,
                    lr: Some(lr),
                    weight_decay: None,
                    queue,
                    tau: variant.tau,
                    ema_momentum: if m.is_contrastive() {
                        p.pretrain.ema_momentum
                    } else {
                        None
                    },
                    dim: None,
                    aug: variant.aug.clone(),
                    bn_groups: None,
                    replicas: None,
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
                trainer::train::plot::plot_metrics(&metrics, &dir.join("curves.png"))?;
            }
            Ok(serde_json::to_value(&summary)?) // the record read back as `results::PretrainRec`
        }
        Action::WriteSubset { subset } => {
            let src = data_dir(p, out, Domain::Objects);
            let dst = subset_dir(out, *subset);
            let f = p.data_ablation.fraction;
            let summary =
                crate::analysis::subset::write_subset(&src, &dst, *subset, f, p.data_seed())?;
            Ok(serde_json::to_value(records::SubsetRecord {
                summary,
                label: subset.label(f),
            })?)
        }
        Action::Invert { dir } => inversion::run(p, out, &out.join(dir), opts),
        Action::FigureInvert => inversion::figures(plan, out),
        Action::FigureTrajectory => {
            let mut runs = Vec::new();
            for st in &plan.steps {
                let Action::Pretrain { method, dir, .. } = &st.action else {
                    continue;
                };
                let metrics = out.join(dir).join(pretrain::METRICS);
                if !method.is_contrastive() || !metrics.is_file() {
                    continue;
                }
                let Some(rec) = read_record(out, &st.id)? else {
                    continue;
                };
                let s: pretrain::PretrainSummary = serde_json::from_value(rec.result)
                    .with_context(|| format!("{}: not a pretraining record", st.id))?;
                if s.epochs_done == 0 || !s.chance_loss.is_finite() {
                    continue;
                }
                let per_epoch = s.images_seen as f64 / s.epochs_done as f64;
                let pts = trajectory::run_points(&metrics, per_epoch, s.chance_loss)?;
                runs.push((dir.display().to_string(), pts));
            }
            let path = out.join("trajectory.png");
            trajectory::trajectory_png(&runs, &path)?;
            Ok(json!({"file": path, "runs": runs.len()}))
        }
        Action::FewShot { dir, alignment } => {
            let data = match alignment {
                None => data_dir(p, out, Domain::Objects),
                Some(a) => aligned_objects_dir(out, *a),
            };
            let cfg = fewshot::FewShotConfig {
                backbone: out.join(dir).join(BACKBONE),
                data,
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
            Ok(serde_json::to_value(fewshot::FewShotRecord::new(&cfg, &r))?)
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
            // Binomial 95% interval of a top-1 accuracy over the test images (in points).
            let q = r.accuracy / 100.0;
            let ci95 = 100.0 * 1.96 * (q * (1.0 - q) / r.test_images.max(1) as f64).sqrt();
            Ok(serde_json::to_value(results::ProbeRec {
                probe: probe::ProbeRecord::new(&cfg, &r),
                ci95: Some(ci95),
            })?)
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
            // The per-image errors give the interval the library's mean does not.
            let faces = figures::predict_mafl_test(&model, &cfg.data, usize::MAX, &opts.device)?;
            let (mean, ci) = figures::per_image_iod(&faces)?;
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
            let mut eval = landmarks::LandmarkRecord::new(&cfg, &report);
            eval.mean_face_iod_error = Some(mf);
            Ok(serde_json::to_value(results::LandmarkRec {
                eval,
                iod_error_per_image_mean: Some(mean),
                ci95: Some(ci),
                mean_face_ci95: Some(mf_ci),
            })?)
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
            trainer::fsutil::write_atomic(&path, &e.bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            let s = &e.summary;
            Ok(json!({
                "model": path, "ops": s.ops, "macs": s.macs, "weight_bytes": s.weight_bytes,
                "arena_bytes": s.arena_bytes, "file_bytes": s.file_bytes,
                "calibration_images": s.calibration_images, "clamped_biases": s.clamped_biases,
            }))
        }
        Action::RuntimeFewShot { model } => {
            // runtime-cli's own evaluation (its library, in process): the same episodes and the
            // same JSON as `runtime-cli eval fewshot --json`.
            use runtime_cli::fewshot::{self as rt, Classifier, FewShotSpec, SplitArg};
            let spec = FewShotSpec {
                split: SplitArg::Test,
                way: p.fewshot.way,
                shots: p.fewshot.shots.clone(),
                episodes: p.fewshot.episodes,
                query: p.fewshot.query,
                classifier: Classifier::Linear,
                seed: p.seed,
            };
            let path = out.join(model);
            let data = data_dir(p, out, Domain::Objects);
            let r = rt::evaluate(&path, &data, &spec, opts.progress)?;
            Ok(serde_json::to_value(rt::FewShotRecord::new(
                &r, &path, &spec,
            ))?)
        }
        Action::RuntimeMafl { model } => {
            use runtime_cli::mafl::{self as rt, MaflSplit};
            let path = out.join(model);
            let data = data_dir(p, out, Domain::Faces);
            let r = rt::evaluate(&path, &data, MaflSplit::Test, opts.progress)?;
            Ok(serde_json::to_value(rt::MaflRecord::new(
                &r,
                &path,
                MaflSplit::Test,
            ))?)
        }
        Action::FigureFewShot => {
            let res = results::collect(plan, out)?;
            let path = out.join("fewshot.png");
            figures::fewshot_png(&res, &path)?;
            Ok(json!({"file": path}))
        }
        Action::FigureAlignment => {
            let res = results::collect(plan, out)?;
            let path = out.join("alignment.png");
            figures::alignment_png(&res, &path)?;
            Ok(json!({"file": path}))
        }
        Action::FigureLandmarks => {
            let models: Vec<(String, PathBuf)> = rows(p)
                .into_iter()
                .map(|m| {
                    let f = out
                        .join("faces")
                        .join(m.to_string())
                        .join("landmarks")
                        .join("landmarks.safetensors");
                    (m.to_string(), f)
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

/// Generates `d`'s synthetic data; for the objects, at `alignment` (`None`: the main copy, 1).
pub(super) fn synth(p: &Preset, out: &Path, d: Domain, alignment: Option<f64>) -> Result<Value> {
    let dir = match alignment {
        Some(a) => aligned_objects_dir(out, a),
        None => data_dir(p, out, d),
    };
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
                seed: p.data_seed(),
                alignment: alignment.unwrap_or(1.0),
            };
            let s = objects::generate_objects(&cfg, &dir)
                .with_context(|| format!("synth objects into {}", dir.display()))?;
            let preview = match alignment {
                None => out.join("objects_preview.png"),
                Some(a) => out.join(format!("objects_preview_a{a:.2}.png")),
            };
            trainer::data::synth::preview::objects_preview(&cfg, &preview)?;
            Ok(
                json!({"dir": dir, "classes": classes, "per_class": per_class, "size": size, "alignment": cfg.alignment,
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
                seed: p.data_seed(),
            };
            let s = faces::generate_faces(&cfg, &dir)
                .with_context(|| format!("synth faces into {}", dir.display()))?;
            trainer::data::synth::preview::faces_preview(&cfg, &out.join("faces_preview.png"))?;
            Ok(
                json!({"dir": dir, "identities": identities, "per_identity": per_identity, "size": size,
                      "images": s.images, "mafl_train": s.mafl_train, "mafl_test": s.mafl_test, "pretrain": s.pretrain}),
            )
        }
        DataSource::Folder(f) => bail!("{}: a real dataset is not generated", f.display()),
    }
}

/// The queue length a study run uses: the requested `k`, lowered where needed to at most half the
/// `n` training images (and to a whole number of batches, at least one). Why: with K > N/2 the
/// queue holds each instance's own keys from earlier epochs as negatives (at K = 3N, about three
/// of them), so the pretext asks an image to be unlike itself; the Table-2 subsets (N = 320 with
/// K = 1024) and the `main` preset (N = 1 280 with K = 1 024) ran so before this rule.
pub fn queue_within_half(k: usize, n: usize, batch: usize) -> usize {
    let batch = batch.max(1);
    let cap = (n / 2) / batch * batch;
    k.min(cap).max(batch) / batch * batch
}

#[cfg(test)]
mod queue_tests {
    use super::queue_within_half;

    #[test]
    fn the_queue_stays_within_half_the_data_in_whole_batches() {
        assert_eq!(queue_within_half(1024, 3840, 64), 1024); // the small preset: unchanged
        assert_eq!(queue_within_half(1024, 1280, 64), 640); // main: N/2 exactly
        assert_eq!(queue_within_half(1024, 320, 64), 128); // a Table-2 subset: 160 -> 2 batches
        assert_eq!(queue_within_half(65536, 38400, 256), 19200); // paper preset, mini-ImageNet
        assert_eq!(queue_within_half(64, 40, 16), 16); // never below one batch
        for (k, n, b) in [(1000, 999, 10), (50, 1000, 7), (4096, 100, 32)] {
            let q = queue_within_half(k, n, b);
            assert!(q.is_multiple_of(b) && q >= b && q <= k.max(b));
            assert!(q <= (n / 2).max(b));
        }
    }
}

#[cfg(test)]
mod data_seed_tests {
    use super::synth;
    use crate::study::plan::Domain;
    use std::path::{Path, PathBuf};

    /// Every file under `dir` with its bytes, by relative path.
    fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut files = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                    files.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        files
    }

    /// `--data-seed`: two seeds draw the same synthetic objects and faces, byte for byte, when
    /// they share a data seed, and different ones when each draws its own (the default).
    #[test]
    fn a_data_seed_holds_the_data_across_seeds() {
        let gen = |seed: u64, data_seed: Option<u64>| {
            let mut p = super::super::preset::tiny();
            p.seed = seed;
            p.data_seed = data_seed;
            let out = tempfile::tempdir().unwrap();
            for d in [Domain::Objects, Domain::Faces] {
                synth(&p, out.path(), d, None).unwrap();
            }
            tree(&out.path().join("data"))
        };
        let (a, b) = (gen(0, Some(5)), gen(1, Some(5)));
        assert!(a.len() > 10, "{} files", a.len());
        assert_eq!(a, b, "same data seed, other seeds: the same files");
        let (c, d) = (gen(0, None), gen(1, None));
        assert_eq!(c.keys().collect::<Vec<_>>(), d.keys().collect::<Vec<_>>());
        assert_ne!(c, d, "each seed's own data");
        assert_ne!(a, c, "data seed 5 is not seed 0's data");
    }
}
