//! Softmax-regression probes on frozen features: `eval base` (paper Table 4, "Base classes Acc")
//! and `eval linear` (MoCo's lincls, scaled down).
//!
//! Both fit `Linear(dim → classes)` with mean cross-entropy and PyTorch-semantics SGD
//! (momentum 0.9, no dampening), cosine lr, on **L2-normalised** pooled features: normalising
//! makes one learning rate fit every backbone and width (MoCo's lr 30 is tuned to the scale of
//! its BN'ed ResNet-50 features and would diverge or crawl on others). Features are extracted
//! once without augmentation (MoCo's lincls re-augments every epoch with RRC + flip; on frozen
//! features that costs a backbone pass per image per epoch, too slow for the CPU budget).
//!
//! - `eval base`: the held-out 10% of the pretraining classes ([`holdout_split`] with the
//!   pretraining seed — images pretraining never saw) is split per class into two halves by
//!   position (even → fit, odd → test); the probe is fitted on one half and scored on the other.
//! - `eval linear`: fitted on the pretraining train split, scored on the held-out split.
//!
//! [`holdout_split`]: trainer::train::data::holdout_split
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::features::{self, Features};
use trainer::augment::loader::epoch_order;
use trainer::data::LabelledImages;
use trainer::train::data::{open_pretrain_data, source};
use trainer::train::optim::{Sgd, SgdConfig};
use trainer::train::schedule::{lr_at, Schedule};

/// The probe's optimisation recipe.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecipe {
    pub epochs: usize,
    pub batch: usize,
    /// Learning rate at batch 256 (scaled linearly with `batch`).
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl ProbeRecipe {
    /// `eval base`: 100 epochs (the fit half is small), wd 5e-4.
    pub fn base() -> Self {
        ProbeRecipe {
            epochs: 100,
            batch: 256,
            lr: 10.0,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
        }
    }

    /// `eval linear`: MoCo lincls (momentum 0.9, wd 0, cosine) at 10 epochs, lr 10 at batch 256
    /// for unit-norm features.
    pub fn lincls() -> Self {
        ProbeRecipe {
            epochs: 10,
            batch: 256,
            lr: 10.0,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

/// Unit-L2 rows (zero rows stay zero).
pub fn l2_normalize_rows(data: &mut [f32], dim: usize) {
    for r in data.chunks_exact_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
}

/// A fitted probe: `logits = x·wᵀ + b`.
pub struct Probe {
    pub w: Tensor,
    pub b: Tensor,
}

impl Probe {
    /// Predicted class of each row of `x` (`[n, dim]`).
    pub fn predict(&self, x: &Tensor) -> Result<Vec<usize>> {
        let logits = x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?;
        Ok(logits
            .argmax(1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|c| c as usize)
            .collect())
    }
}

/// Fits `Linear(dim → classes)` on rows `x` (`n × dim`, row-major) with labels `y`.
pub fn fit(
    x: &[f32],
    y: &[usize],
    dim: usize,
    classes: usize,
    r: &ProbeRecipe,
    device: &Device,
) -> Result<Probe> {
    let n = y.len();
    if n == 0 || dim == 0 || x.len() != n * dim || classes == 0 || r.batch == 0 {
        bail!("probe: {n} samples of dim {dim} for {classes} classes (need a non-empty fit set)");
    }
    if let Some(&bad) = y.iter().find(|&&c| c >= classes) {
        bail!("probe: label {bad} >= {classes} classes");
    }
    let xt = Tensor::from_slice(x, (n, dim), device)?;
    let yt = Tensor::from_vec(y.iter().map(|&c| c as u32).collect::<Vec<_>>(), n, device)?;
    // PyTorch nn.Linear init would be random; zeros are deterministic and the problem convex.
    let w = Var::zeros((classes, dim), DType::F32, device)?;
    let b = Var::zeros(classes, DType::F32, device)?;
    let base_lr = r.lr * r.batch.min(n) as f64 / 256.0;
    let cfg = SgdConfig {
        lr: base_lr,
        momentum: r.momentum,
        dampening: 0.0,
        weight_decay: r.weight_decay,
        nesterov: false,
    };
    let mut opt = Sgd::new(
        vec![("weight".into(), w.clone()), ("bias".into(), b.clone())],
        cfg,
    )?;
    for epoch in 0..r.epochs {
        opt.set_lr(lr_at(epoch, r.epochs, base_lr, &Schedule::Cosine));
        let order = epoch_order(n, r.seed, epoch as u64);
        for chunk in order.chunks(r.batch) {
            let idx = Tensor::from_vec(
                chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                chunk.len(),
                device,
            )?;
            let xb = xt.index_select(&idx, 0)?;
            let yb = yt.index_select(&idx, 0)?;
            let logits = xb
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            opt.backward_step(&loss)?;
        }
    }
    Ok(Probe {
        w: w.as_tensor().clone(),
        b: b.as_tensor().clone(),
    })
}

/// Top-1 accuracy (%) of `probe` on rows `x` with labels `y`.
pub fn top1(probe: &Probe, x: &[f32], y: &[usize], dim: usize, device: &Device) -> Result<f64> {
    if y.is_empty() {
        bail!("probe: empty test set");
    }
    let pred = probe.predict(&Tensor::from_slice(x, (y.len(), dim), device)?)?;
    Ok(100.0 * pred.iter().zip(y).filter(|(p, t)| p == t).count() as f64 / y.len() as f64)
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Fit on half of the held-out images, test on the other half.
    Base,
    /// Fit on the pretraining train split, test on the held-out split.
    Linear,
}

impl ProbeKind {
    pub fn command(self) -> &'static str {
        match self {
            ProbeKind::Base => "eval base",
            ProbeKind::Linear => "eval linear",
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub backbone: PathBuf,
    pub data: PathBuf,
    /// The seed pretraining split its held-out images with (`--pretrain-seed`).
    pub pretrain_seed: u64,
    pub image_size: usize,
    pub batch: usize,
    pub recipe: ProbeRecipe,
}

/// The result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub accuracy: f64,
    pub fit_images: usize,
    pub test_images: usize,
    pub classes: usize,
    pub backbone_fnv64: String,
}

/// Per class, even positions (in list order) vs odd positions: a deterministic halving.
pub fn halves(list: &LabelledImages) -> (Vec<usize>, Vec<usize>) {
    let mut seen = vec![0usize; list.num_classes()];
    let (mut fit, mut test) = (Vec::new(), Vec::new());
    for (i, (_, c)) in list.items.iter().enumerate() {
        if seen[*c].is_multiple_of(2) {
            fit.push(i)
        } else {
            test.push(i)
        }
        seen[*c] += 1;
    }
    (fit, test)
}

fn labelled(list: &LabelledImages, feats: &mut Features) -> Vec<usize> {
    l2_normalize_rows(&mut feats.data, feats.dim);
    feats.indices.iter().map(|&i| list.items[i].1).collect()
}

/// Runs `eval base` or `eval linear`.
pub fn evaluate(cfg: &ProbeConfig, device: &Device) -> Result<ProbeReport> {
    let data = open_pretrain_data(&cfg.data, cfg.pretrain_seed)?;
    let (net, hash) = super::open_backbone(&cfg.backbone, device)?;
    let classes = data.num_classes();
    let (fit_list, fit_idx, test_list, test_idx) = match cfg.kind {
        ProbeKind::Base => {
            let (f, t) = halves(&data.heldout);
            (&data.heldout, f, &data.heldout, t)
        }
        ProbeKind::Linear => (
            &data.train,
            (0..data.train.len()).collect(),
            &data.heldout,
            (0..data.heldout.len()).collect(),
        ),
    };
    if fit_idx.is_empty() || test_idx.is_empty() {
        bail!(
            "{}: too few held-out images per class to fit and test a probe",
            cfg.data.display()
        );
    }
    let mut fit_f = features::extract(
        &net,
        source(fit_list),
        &fit_idx,
        cfg.image_size,
        cfg.batch,
        device,
    )?;
    let mut test_f = features::extract(
        &net,
        source(test_list),
        &test_idx,
        cfg.image_size,
        cfg.batch,
        device,
    )?;
    let fit_y = labelled(fit_list, &mut fit_f);
    let test_y = labelled(test_list, &mut test_f);
    let probe = fit(&fit_f.data, &fit_y, fit_f.dim, classes, &cfg.recipe, device)?;
    let accuracy = top1(&probe, &test_f.data, &test_y, test_f.dim, device)?;
    Ok(ProbeReport {
        accuracy,
        fit_images: fit_y.len(),
        test_images: test_y.len(),
        classes,
        backbone_fnv64: hash,
    })
}

/// The JSON result.
pub fn to_json(cfg: &ProbeConfig, r: &ProbeReport) -> serde_json::Value {
    serde_json::to_value(ProbeRecord::new(cfg, r)).expect("a probe record is JSON")
}

/// The JSON result as a struct: what [`to_json`] writes and the study's probe step records hold.
/// Fields a record lacks read as their defaults (the study shows them as empty cells).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(default)]
pub struct ProbeRecord {
    pub command: String,
    pub backbone: String,
    pub backbone_fnv64: String,
    pub data: String,
    pub pretrain_seed: u64,
    pub image_size: usize,
    pub recipe: ProbeRecipe,
    pub classes: usize,
    pub fit_images: usize,
    pub test_images: usize,
    /// Top-1 (%); `null` where it is not a number.
    pub accuracy: Option<f64>,
}

impl ProbeRecord {
    pub fn new(cfg: &ProbeConfig, r: &ProbeReport) -> Self {
        ProbeRecord {
            command: cfg.kind.command().into(),
            backbone: cfg.backbone.display().to_string(),
            backbone_fnv64: r.backbone_fnv64.clone(),
            data: cfg.data.display().to_string(),
            pretrain_seed: cfg.pretrain_seed,
            image_size: cfg.image_size,
            recipe: cfg.recipe,
            classes: r.classes,
            fit_images: r.fit_images,
            test_images: r.test_images,
            accuracy: Some(r.accuracy),
        }
    }
}

/// The small table printed without `--json`.
pub fn to_text(cfg: &ProbeConfig, r: &ProbeReport) -> String {
    format!(
        "{}: {} classes, fit on {} images, tested on {}\n  top-1 accuracy  {:.2}%",
        cfg.kind.command(),
        r.classes,
        r.fit_images,
        r.test_images,
        r.accuracy
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_separates_linearly_separable_points() {
        // 3 classes in 2-D at angles 0, 120, 240 degrees with small radial jitter.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for c in 0..3 {
            for k in 0..10 {
                let a = c as f32 * 2.094 + (k as f32 - 4.5) * 0.05;
                x.extend_from_slice(&[a.cos(), a.sin()]);
                y.push(c);
            }
        }
        let dev = Device::Cpu;
        let r = ProbeRecipe {
            epochs: 30,
            batch: 8,
            ..ProbeRecipe::lincls()
        };
        let p = fit(&x, &y, 2, 3, &r, &dev).unwrap();
        assert_eq!(top1(&p, &x, &y, 2, &dev).unwrap(), 100.0);
        // Swapped labels on the same points are all wrong: the score reads the labels.
        let swapped: Vec<usize> = y.iter().map(|c| (c + 1) % 3).collect();
        assert_eq!(top1(&p, &x, &swapped, 2, &dev).unwrap(), 0.0);
    }

    #[test]
    fn halves_alternate_within_each_class() {
        let list = LabelledImages {
            root: "r".into(),
            items: [0, 1, 0, 0, 1, 1, 0]
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("{i}").into(), c))
                .collect(),
            class_names: vec!["a".into(), "b".into()],
            landmarks: None,
        };
        assert_eq!(halves(&list), (vec![0, 1, 3, 5], vec![2, 4, 6]));
    }

    #[test]
    fn rows_are_unit_norm() {
        let mut d = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut d, 2);
        assert_eq!(d, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
