//! A linear few-shot classifier fitted on the device with the host's protocol (Chen et al.
//! 2019, as in the paper's §4.1): `Linear(dim → n_way)` initialised like PyTorch's
//! `nn.Linear` (weights and bias `U(−1/√dim, 1/√dim)`), 100 epochs over the support set, a fresh
//! permutation per epoch, mini-batches of 4 (the last one shorter), mean cross-entropy, and
//! PyTorch SGD with lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001 (on weights and
//! bias; the first step's momentum buffer is the raw gradient, as PyTorch does).
//! Randomness comes from [`SplitMix64`] seeded by the caller: init draws weights row-major then
//! the bias, then each epoch shuffles `0..n` with Fisher–Yates.

use super::rng::SplitMix64;
use super::{check_support, HeadError};

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

/// Most support samples the on-device fit accepts (5-way 5-shot needs 25).
pub const MAX_SUPPORT: usize = 256;

/// Fixed-capacity linear classifier for up to `W` classes of `D`-dimensional features.
#[derive(Debug, Clone)]
pub struct LinearClassifier<const W: usize, const D: usize> {
    n_way: usize,
    dim: usize,
    w: [[f32; D]; W],
    b: [f32; W],
}

struct Momentum<const W: usize, const D: usize> {
    w: [[f32; D]; W],
    b: [f32; W],
    started: bool,
}

impl<const W: usize, const D: usize> LinearClassifier<W, D> {
    /// Fits the classifier on the support set (row-major features, `dim` each).
    pub fn fit(
        features: &[f32],
        labels: &[u8],
        n_way: usize,
        dim: usize,
        recipe: &SgdRecipe,
        seed: u64,
    ) -> Result<Self, HeadError> {
        check_support(features, labels, n_way, dim, W, D)?;
        let n = labels.len();
        if n > MAX_SUPPORT || recipe.batch == 0 {
            return Err(HeadError::Capacity);
        }
        let mut rng = SplitMix64::new(seed);
        let bound = 1.0 / libm::sqrtf(dim as f32);
        let mut m = LinearClassifier {
            n_way,
            dim,
            w: [[0.0; D]; W],
            b: [0.0; W],
        };
        for row in m.w[..n_way].iter_mut() {
            for x in row[..dim].iter_mut() {
                *x = (2.0 * rng.unit_f32() - 1.0) * bound;
            }
        }
        for x in m.b[..n_way].iter_mut() {
            *x = (2.0 * rng.unit_f32() - 1.0) * bound;
        }
        let mut mom = Momentum {
            w: [[0.0; D]; W],
            b: [0.0; W],
            started: false,
        };
        let mut gw = [[0.0f32; D]; W];
        let mut gb = [0.0f32; W];
        let mut perm: heapless::Vec<u16, MAX_SUPPORT> = (0..n as u16).collect();
        for _ in 0..recipe.epochs {
            rng.shuffle(&mut perm);
            for batch in perm.chunks(recipe.batch) {
                gw[..n_way].iter_mut().for_each(|r| r[..dim].fill(0.0));
                gb[..n_way].fill(0.0);
                let inv_b = 1.0 / batch.len() as f32;
                for &i in batch {
                    let x = &features[i as usize * dim..][..dim];
                    let mut p = [0.0f32; W];
                    m.logits_into(x, &mut p[..n_way]);
                    softmax(&mut p[..n_way]);
                    p[labels[i as usize] as usize] -= 1.0;
                    for c in 0..n_way {
                        let g = p[c] * inv_b;
                        gb[c] += g;
                        gw[c][..dim]
                            .iter_mut()
                            .zip(x)
                            .for_each(|(a, &xi)| *a += g * xi);
                    }
                }
                m.sgd_step(&gw, &gb, &mut mom, recipe);
            }
        }
        Ok(m)
    }

    fn sgd_step(
        &mut self,
        gw: &[[f32; D]; W],
        gb: &[f32; W],
        mom: &mut Momentum<W, D>,
        r: &SgdRecipe,
    ) {
        let (n_way, dim) = (self.n_way, self.dim);
        let first = !mom.started;
        mom.started = true;
        let upd = |p: &mut f32, g: f32, buf: &mut f32| {
            let d = g + r.weight_decay * *p;
            *buf = if first {
                d
            } else {
                r.momentum * *buf + (1.0 - r.dampening) * d
            };
            *p -= r.lr * *buf;
        };
        for c in 0..n_way {
            for j in 0..dim {
                upd(&mut self.w[c][j], gw[c][j], &mut mom.w[c][j]);
            }
            upd(&mut self.b[c], gb[c], &mut mom.b[c]);
        }
    }

    fn logits_into(&self, x: &[f32], out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.b[c]
                + self.w[c][..self.dim]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
        }
    }

    /// Class scores (logits) of `feature` into `out[..n_way]`.
    pub fn logits(&self, feature: &[f32], out: &mut [f32]) -> Result<(), HeadError> {
        if feature.len() != self.dim || out.len() < self.n_way {
            return Err(HeadError::Shape);
        }
        self.logits_into(feature, &mut out[..self.n_way]);
        Ok(())
    }

    /// The predicted class of `feature`.
    pub fn predict(&self, feature: &[f32]) -> Result<usize, HeadError> {
        let mut s = [0.0f32; W];
        self.logits(feature, &mut s)?;
        Ok(super::argmax(&s[..self.n_way]))
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
