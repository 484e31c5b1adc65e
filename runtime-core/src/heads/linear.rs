//! A linear few-shot classifier fitted on the device with the host's protocol (Chen et al.
//! 2019, as in the paper's §4.1): `Linear(dim → n_way)` initialised like PyTorch's
//! `nn.Linear` (weights and bias `U(−1/√dim, 1/√dim)`), 100 epochs over the support set, a fresh
//! permutation per epoch, mini-batches of 4 (the last one shorter), mean cross-entropy, and
//! PyTorch SGD with lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001 (on weights and
//! bias; the first step's momentum buffer is the raw gradient, as PyTorch does).
//! Randomness comes from [`SplitMix64`] seeded by the caller: init draws weights row-major then
//! the bias, then each epoch shuffles `0..n` with Fisher–Yates.
//!
//! Two storage flavours run the same algorithm (one private implementation over flat row-major
//! slices with a row stride), so they give bit-identical logits for the same inputs and seed:
//! * [`LinearClassifier<W, D>`]: fixed arrays, no heap, capacities chosen at compile time (the
//!   MCU; its fit keeps about `3·W·D` f32 on the stack).
//! * [`LinearHead`]: heap-backed (`alloc`), any number of classes and feature dimensions (the
//!   host's episode scorer, [`crate::protocol::fewshot::episode_accuracy_pct`]).

use alloc::vec;
use alloc::vec::Vec;

use super::rng::SplitMix64;
use super::{argmax_by, check_support, HeadError};

/// The SGD recipe. `Default` is the paper's few-shot protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SgdRecipe {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub epochs: usize,
    pub batch: usize,
}

impl Default for SgdRecipe {
    fn default() -> Self {
        SgdRecipe {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.9,
            weight_decay: 0.001,
            epochs: 100,
            batch: 4,
        }
    }
}

/// Most support samples [`LinearClassifier`] accepts (5-way 5-shot needs 25); its permutation
/// lives on the stack.
pub const MAX_SUPPORT: usize = 256;

/// Most support samples [`LinearHead`] accepts (the permutation holds `u16` indices).
pub const MAX_SUPPORT_HEAP: usize = u16::MAX as usize;

/// Checks everything `fit_core` relies on.
fn check_fit(
    features: &[f32],
    labels: &[u8],
    n_way: usize,
    dim: usize,
    recipe: &SgdRecipe,
    (max_way, max_dim, max_support): (usize, usize, usize),
) -> Result<(), HeadError> {
    check_support(features, labels, n_way, dim, max_way, max_dim)?;
    if labels.len() > max_support || recipe.batch == 0 {
        return Err(HeadError::Capacity);
    }
    Ok(())
}

/// The buffers of one fit, all flat row-major: row `c` of a `[n_way][dim]` matrix is
/// `m[c * stride..][..dim]` (`stride ≥ dim`). `perm` has exactly one slot per support sample;
/// `p` at least `n_way`. The contents of everything but `w` and `b` are scratch.
struct FitBuffers<'s> {
    stride: usize,
    w: &'s mut [f32],
    b: &'s mut [f32],
    mom_w: &'s mut [f32],
    mom_b: &'s mut [f32],
    gw: &'s mut [f32],
    gb: &'s mut [f32],
    p: &'s mut [f32],
    perm: &'s mut [u16],
}

/// `b + w·x`: one logit (the one expression both flavours use, so their sums round alike).
#[inline(always)]
fn logit(w_row: &[f32], b: f32, x: &[f32]) -> f32 {
    b + w_row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
}

/// The fit itself (see the module docs), on inputs [`check_fit`] accepted. Inlined so that the
/// fixed-capacity head's constant stride `D` folds into the row arithmetic.
#[inline(always)]
fn fit_core(
    features: &[f32],
    labels: &[u8],
    n_way: usize,
    dim: usize,
    recipe: &SgdRecipe,
    seed: u64,
    buf: FitBuffers<'_>,
) {
    let FitBuffers {
        stride,
        w,
        b,
        mom_w,
        mom_b,
        gw,
        gb,
        p,
        perm,
    } = buf;
    // Rows of the weight-shaped buffers, `n_way` of them, each cut to `dim` where read.
    let size = n_way * stride;
    let (w, mom_w, gw) = (&mut w[..size], &mut mom_w[..size], &mut gw[..size]);
    let (b, mom_b, gb, p) = (
        &mut b[..n_way],
        &mut mom_b[..n_way],
        &mut gb[..n_way],
        &mut p[..n_way],
    );
    let mut rng = SplitMix64::new(seed);
    let bound = 1.0 / libm::sqrtf(dim as f32);
    for row in w.chunks_exact_mut(stride) {
        for x in row[..dim].iter_mut() {
            *x = (2.0 * rng.unit_f32() - 1.0) * bound;
        }
    }
    for x in b.iter_mut() {
        *x = (2.0 * rng.unit_f32() - 1.0) * bound;
    }
    for (k, i) in perm.iter_mut().enumerate() {
        *i = k as u16;
    }
    let mut started = false;
    for _ in 0..recipe.epochs {
        rng.shuffle(perm);
        for batch in perm.chunks(recipe.batch) {
            gw.fill(0.0);
            gb.fill(0.0);
            let inv_b = 1.0 / batch.len() as f32;
            for &i in batch {
                let x = &features[i as usize * dim..][..dim];
                for ((o, w_row), &bc) in p.iter_mut().zip(w.chunks_exact(stride)).zip(&*b) {
                    *o = logit(&w_row[..dim], bc, x);
                }
                softmax(p);
                p[labels[i as usize] as usize] -= 1.0;
                for ((&pc, g_row), gbc) in p.iter().zip(gw.chunks_exact_mut(stride)).zip(&mut *gb) {
                    let g = pc * inv_b;
                    *gbc += g;
                    g_row[..dim]
                        .iter_mut()
                        .zip(x)
                        .for_each(|(a, &xi)| *a += g * xi);
                }
            }
            // PyTorch SGD step (momentum with dampening, weight decay on everything).
            let first = !started;
            started = true;
            let upd = |p: &mut f32, g: f32, buf: &mut f32| {
                let d = g + recipe.weight_decay * *p;
                *buf = if first {
                    d
                } else {
                    recipe.momentum * *buf + (1.0 - recipe.dampening) * d
                };
                *p -= recipe.lr * *buf;
            };
            let rows = w
                .chunks_exact_mut(stride)
                .zip(gw.chunks_exact(stride))
                .zip(mom_w.chunks_exact_mut(stride));
            for ((w_row, g_row), m_row) in rows {
                for ((wj, &gj), mj) in w_row[..dim]
                    .iter_mut()
                    .zip(&g_row[..dim])
                    .zip(&mut m_row[..dim])
                {
                    upd(wj, gj, mj);
                }
            }
            for ((bc, &gc), mc) in b.iter_mut().zip(&*gb).zip(mom_b.iter_mut()) {
                upd(bc, gc, mc);
            }
        }
    }
}

/// Logits of `x` into `out[..n_way]`.
fn logits_core(w: &[f32], b: &[f32], stride: usize, dim: usize, x: &[f32], out: &mut [f32]) {
    for (c, o) in out.iter_mut().enumerate() {
        *o = logit(&w[c * stride..][..dim], b[c], x);
    }
}

/// Index of the largest logit (first on ties), without a buffer.
fn predict_core(w: &[f32], b: &[f32], n_way: usize, stride: usize, dim: usize, x: &[f32]) -> usize {
    argmax_by(n_way, |c| logit(&w[c * stride..][..dim], b[c], x))
}

/// Fixed-capacity linear classifier for up to `W` classes of `D`-dimensional features (no heap;
/// see [`LinearHead`] for the heap-backed twin).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinearClassifier<const W: usize, const D: usize> {
    n_way: usize,
    dim: usize,
    w: [[f32; D]; W],
    b: [f32; W],
}

impl<const W: usize, const D: usize> LinearClassifier<W, D> {
    /// Fits the classifier on the support set (row-major features, `dim` each): at most `W`
    /// classes, `D` dimensions and [`MAX_SUPPORT`] samples, else [`HeadError::Capacity`].
    pub fn fit(
        features: &[f32],
        labels: &[u8],
        n_way: usize,
        dim: usize,
        recipe: &SgdRecipe,
        seed: u64,
    ) -> Result<Self, HeadError> {
        check_fit(features, labels, n_way, dim, recipe, (W, D, MAX_SUPPORT))?;
        let mut m = LinearClassifier {
            n_way,
            dim,
            w: [[0.0; D]; W],
            b: [0.0; W],
        };
        let mut mom_w = [[0.0f32; D]; W];
        let mut mom_b = [0.0f32; W];
        let mut gw = [[0.0f32; D]; W];
        let mut gb = [0.0f32; W];
        let mut p = [0.0f32; W];
        let mut perm = [0u16; MAX_SUPPORT];
        fit_core(
            features,
            labels,
            n_way,
            dim,
            recipe,
            seed,
            FitBuffers {
                stride: D,
                w: m.w.as_flattened_mut(),
                b: &mut m.b,
                mom_w: mom_w.as_flattened_mut(),
                mom_b: &mut mom_b,
                gw: gw.as_flattened_mut(),
                gb: &mut gb,
                p: &mut p,
                perm: &mut perm[..labels.len()],
            },
        );
        Ok(m)
    }

    /// Number of classes.
    pub fn n_way(&self) -> usize {
        self.n_way
    }

    /// Feature dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Class scores (logits) of `feature` into `out[..n_way]`.
    pub fn logits(&self, feature: &[f32], out: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || out.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        let (w, stride) = (self.w.as_flattened(), D);
        logits_core(
            w,
            &self.b,
            stride,
            self.dim,
            feature,
            &mut out[..self.n_way],
        );
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        if feature.len() != self.dim {
            return Err(HeadError::Shape);
        }
        let w = self.w.as_flattened();
        Ok(predict_core(w, &self.b, self.n_way, D, self.dim, feature))
    }
}

/// Heap-backed linear classifier: any number of classes (labels are `u8`, so at most 256) and
/// any feature dimension, up to [`MAX_SUPPORT_HEAP`] support samples. Same algorithm and the
/// same arithmetic as [`LinearClassifier`], so both give bit-identical logits; its fit
/// allocates `3·n_way·dim` f32 instead of using the stack.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinearHead {
    n_way: usize,
    dim: usize,
    /// Row-major `[n_way][dim]`.
    w: Vec<f32>,
    b: Vec<f32>,
}

impl LinearHead {
    /// Fits the classifier on the support set (row-major features, `dim` each).
    pub fn fit(
        features: &[f32],
        labels: &[u8],
        n_way: usize,
        dim: usize,
        recipe: &SgdRecipe,
        seed: u64,
    ) -> Result<Self, HeadError> {
        let no_limit = usize::MAX;
        check_fit(
            features,
            labels,
            n_way,
            dim,
            recipe,
            (no_limit, no_limit, MAX_SUPPORT_HEAP),
        )?;
        let size = n_way.checked_mul(dim).ok_or(HeadError::Capacity)?;
        let mut m = LinearHead {
            n_way,
            dim,
            w: vec![0.0; size],
            b: vec![0.0; n_way],
        };
        let (mut mom_w, mut gw) = (vec![0.0f32; size], vec![0.0f32; size]);
        let (mut mom_b, mut gb, mut p) = (
            vec![0.0f32; n_way],
            vec![0.0f32; n_way],
            vec![0.0f32; n_way],
        );
        let mut perm = vec![0u16; labels.len()];
        fit_core(
            features,
            labels,
            n_way,
            dim,
            recipe,
            seed,
            FitBuffers {
                stride: dim,
                w: &mut m.w,
                b: &mut m.b,
                mom_w: &mut mom_w,
                mom_b: &mut mom_b,
                gw: &mut gw,
                gb: &mut gb,
                p: &mut p,
                perm: &mut perm,
            },
        );
        Ok(m)
    }

    /// Number of classes.
    pub fn n_way(&self) -> usize {
        self.n_way
    }

    /// Feature dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Class scores (logits) of `feature` into `out[..n_way]`.
    pub fn logits(&self, feature: &[f32], out: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || out.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        logits_core(
            &self.w,
            &self.b,
            self.dim,
            self.dim,
            feature,
            &mut out[..self.n_way],
        );
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        if feature.len() != self.dim {
            return Err(HeadError::Shape);
        }
        Ok(predict_core(
            &self.w, &self.b, self.n_way, self.dim, self.dim, feature,
        ))
    }
}

/// In-place numerically stable softmax.
fn softmax(v: &mut [f32]) {
    let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = libm::expf(*x - mx);
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}
