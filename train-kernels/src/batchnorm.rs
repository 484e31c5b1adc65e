//! Fused training-mode batch-norm (NCHW, statistics over N·H·W per channel) for the CPU.
//!
//! Why: written with tensor ops, BN's train-mode forward is ~9 full passes over the activation
//! and its autograd backward ~20 (broadcasts, reductions, their gradients), mostly
//! single-threaded in candle; with the fast conv it took ~37 % of a ResNet-18 step (README.md).
//! Fused, the forward is 3 passes (mean, centred variance, normalise) and the backward 2
//! (Σdy and Σdy·x̂, then dx), all parallel over channels.
//!
//! Determinism: each channel's sums run in one task, in (image, pixel) order, accumulated in
//! f64, so results do not depend on the thread count.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::contiguous_f32;

fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => bail!("kernels::batch_norm_train: input must be 4-D NCHW, got shape {d:?}"),
    }
}

/// (mean, biased variance) of every (group, channel) of an `(n, c, hw)` slice whose images form
/// `groups` equal contiguous groups, two-pass in f64; index `group·c + channel`.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize, groups: usize) -> Vec<(f64, f64)> {
    let per = n / groups;
    (0..groups * c)
        .into_par_iter()
        .map(|gc| {
            let (g, ch) = (gc / c, gc % c);
            let m = (per * hw) as f64;
            let planes = || {
                (g * per..(g + 1) * per).map(move |b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw])
            };
            let mean = planes()
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum::<f64>()
                / m;
            let var = planes()
                .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                .sum::<f64>()
                / m;
            (mean, var)
        })
        .collect()
}

/// `x → (2, G·C)` tensor of the groups' batch means (row 0) and biased batch variances (row 1),
/// group-major; no gradient.
struct BnStats {
    groups: usize,
}

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "fast-bn-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = nchw(l)?;
        let x = contiguous_f32(s, l, "batch-norm input")?;
        let st = channel_stats(&x, n, c, hw, self.groups);
        let mut out: Vec<f32> = st.iter().map(|s| s.0 as f32).collect();
        out.extend(st.iter().map(|s| s.1 as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, self.groups * c))))
    }
}

/// `apply_op3(x, gamma, beta)` → `gamma·(x − mean)/sqrt(var + eps) + beta`, each image with its
/// group's batch statistics, carried in the op (computed once by [`BnStats`], reused by the
/// backward; index `group·C + channel`).
struct BnTrain {
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f64,
    groups: usize,
}

impl BnTrain {
    /// `1/sqrt(var + eps)` of statistics index `i` (`group·C + channel`).
    fn inv_std(&self, i: usize) -> f64 {
        1.0 / (self.var[i] as f64 + self.eps).sqrt()
    }
}

fn vec_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    c: usize,
    what: &str,
) -> Result<std::borrow::Cow<'a, [f32]>> {
    if l.dims() != [c] {
        bail!(
            "kernels::batch_norm_train: {what} must have shape [{c}], got {:?}",
            l.dims()
        );
    }
    contiguous_f32(s, l, what)
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "fast-bn-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = nchw(l1)?;
        let x = contiguous_f32(s1, l1, "batch-norm input")?;
        let gamma = vec_f32(s2, l2, c, "gamma")?;
        let beta = vec_f32(s3, l3, c, "beta")?;
        let per = n / self.groups;
        let mut y = vec![0f32; x.len()];
        // Parallel over images; each (image, channel) plane is an independent affine map.
        y.par_chunks_mut(c * hw).enumerate().for_each(|(b, yb)| {
            let base = (b / per) * c;
            for ch in 0..c {
                // Centre first: folding the mean into the shift would cancel catastrophically
                // for channels whose mean is large relative to their spread.
                let (mu, scale, shift) = (
                    self.mean[base + ch],
                    (gamma[ch] as f64 * self.inv_std(base + ch)) as f32,
                    beta[ch],
                );
                let src = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                for (d, &v) in yb[ch * hw..(ch + 1) * hw].iter_mut().zip(src) {
                    *d = (v - mu) * scale + shift;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let op = BnTrainGrad {
            mean: self.mean.clone(),
            var: self.var.clone(),
            eps: self.eps,
            groups: self.groups,
        };
        let packed = x.apply_op3_no_bwd(gamma, grad, &op)?;
        let nx = x.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dgamma = packed.narrow(0, nx, c)?;
        let dbeta = packed.narrow(0, nx + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `apply_op3_no_bwd(x, gamma, dy)` → flat `[dx (N·C·H·W), dgamma (C), dbeta (C)]`.
///
/// `dx = gamma·inv_std/M · (M·dy − Σdy − x̂·Σ(dy·x̂))` within each group, the standard
/// train-mode BN gradient (the batch statistics depend on x); `dgamma`, `dbeta` are the groups'
/// `Σ(dy·x̂)`, `Σdy`, each rounded to f32 and added from the last group to the first: the order
/// in which candle's autograd sums the gradients of one BN call per group, so the grouped op is
/// bit-identical with that loop (and the committed fixtures stay byte-identical).
struct BnTrainGrad {
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f64,
    groups: usize,
}

impl CustomOp3 for BnTrainGrad {
    fn name(&self) -> &'static str {
        "fast-bn-train-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = nchw(l1)?;
        if l3.dims() != l1.dims() {
            bail!(
                "kernels::batch_norm_train grad: gradient shape {:?} != input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let x = contiguous_f32(s1, l1, "batch-norm input")?;
        let gamma = vec_f32(s2, l2, c, "gamma")?;
        let dy = contiguous_f32(s3, l3, "batch-norm output gradient")?;
        let groups = self.groups;
        let per = n / groups;
        let m = (per * hw) as f64;
        let inv_std: Vec<f64> = (0..groups * c)
            .map(|i| 1.0 / (self.var[i] as f64 + self.eps).sqrt())
            .collect();
        // Per-(group, channel) sums, one task each, fixed order.
        let sums: Vec<(f64, f64)> = (0..groups * c)
            .into_par_iter()
            .map(|gc| {
                let (g, ch) = (gc / c, gc % c);
                let (mu, is) = (self.mean[gc] as f64, inv_std[gc]);
                let (mut s_dy, mut s_dyx) = (0f64, 0f64);
                for b in g * per..(g + 1) * per {
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
                        s_dy += g as f64;
                        s_dyx += g as f64 * (v as f64 - mu) * is;
                    }
                }
                (s_dy, s_dyx)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * c];
        out[..x.len()]
            .par_chunks_mut(c * hw)
            .enumerate()
            .for_each(|(b, ob)| {
                let base = (b / per) * c;
                for ch in 0..c {
                    let i = base + ch;
                    let (mu, is) = (self.mean[i] as f64, inv_std[i]);
                    let k = gamma[ch] as f64 * is;
                    let (mean_dy, mean_dyx) = (sums[i].0 / m, sums[i].1 / m);
                    // dx = k·(dy − mean_dy − x̂·mean_dyx), x̂ = (x − mu)·is, as a·dy + bc·(x − mu) + c0.
                    let (a, bc, c0) =
                        (k as f32, (-k * mean_dyx * is) as f32, (-k * mean_dy) as f32);
                    let mu = mu as f32;
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    for ((o, &g), &v) in ob[ch * hw..(ch + 1) * hw]
                        .iter_mut()
                        .zip(&dy[r.clone()])
                        .zip(&x[r])
                    {
                        *o = a * g + bc * (v - mu) + c0;
                    }
                }
            });
        let nx = x.len();
        for ch in 0..c {
            let last = (groups - 1) * c + ch;
            let (mut dgamma, mut dbeta) = (sums[last].1 as f32, sums[last].0 as f32);
            for g in (0..groups - 1).rev() {
                dgamma += sums[g * c + ch].1 as f32;
                dbeta += sums[g * c + ch].0 as f32;
            }
            out[nx + ch] = dgamma;
            out[nx + c + ch] = dbeta;
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + 2 * c)))
    }
}

/// Output of [`batch_norm_train`]: the normalised tensor and the (detached) batch statistics,
/// which the caller folds into its running mean/variance.
pub struct BatchNormTrain {
    pub y: Tensor,
    /// Batch mean per channel, shape `(C,)`.
    pub mean: Tensor,
    /// Biased batch variance per channel (divide by N·H·W), shape `(C,)`; PyTorch's running
    /// variance uses the unbiased one, `var · M/(M−1)`.
    pub var: Tensor,
}

/// Output of [`batch_norm_train_grouped`]: the normalised tensor and each group's (detached)
/// batch statistics.
pub struct GroupedBatchNormTrain {
    pub y: Tensor,
    /// Batch mean per group and channel, shape `(G, C)`.
    pub mean: Tensor,
    /// Biased batch variance per group and channel, shape `(G, C)`.
    pub var: Tensor,
}

fn fused_cpu(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    super::cpu_kernels_enabled()
        && x.device().is_cpu()
        && [x.dtype(), gamma.dtype(), beta.dtype()]
            .iter()
            .all(|d| *d == candle_core::DType::F32)
}

/// The fused op over `groups` equal contiguous groups of images: `(y, (2, G·C) statistics)`.
fn fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    if groups == 0 || n % groups != 0 {
        bail!("kernels::batch_norm_train: batch of {n} does not split into {groups} equal groups");
    }
    let stats = x.apply_op1_no_bwd(&BnStats { groups })?;
    let rows = stats.to_vec2::<f32>()?;
    let y = x.apply_op3(
        gamma,
        beta,
        BnTrain {
            mean: rows[0].clone(),
            var: rows[1].clone(),
            eps,
            groups,
        },
    )?;
    Ok((y, stats))
}

/// Training-mode batch-norm of an NCHW tensor with per-channel `gamma`, `beta` of shape `(C,)`.
///
/// CPU f32: fused custom op with a fused backward. Elsewhere: the same maths as tensor ops.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormTrain> {
    let c = x.dim(1)?;
    if fused_cpu(x, gamma, beta) {
        let (y, stats) = fused(x, gamma, beta, 1, eps)?;
        let (mean, var) = (stats.get(0)?, stats.get(1)?);
        return Ok(BatchNormTrain { y, mean, var });
    }
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let xhat = xc.broadcast_div(&(&var + eps)?.sqrt()?)?;
    let y = xhat
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    Ok(BatchNormTrain {
        y,
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
    })
}

/// Training-mode batch-norm of `groups` equal contiguous groups of images at once, each group
/// normalised with its own statistics (MoCo's shuffle-BN on one device), as one fused op: the
/// same numbers, to the bit, as [`batch_norm_train`] on each group's slice concatenated, without
/// slicing the batch and concatenating the results (at 8 groups that loop cost a quarter of a
/// width-0.125 MoCo step on one thread). `None` where the fused CPU op
/// does not apply (CUDA, other dtypes, kernels switched off): the caller loops over the groups.
pub fn batch_norm_train_grouped(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Option<GroupedBatchNormTrain>> {
    if !fused_cpu(x, gamma, beta) {
        return Ok(None);
    }
    let c = x.dim(1)?;
    let (y, stats) = fused(x, gamma, beta, groups, eps)?;
    let mean = stats.get(0)?.reshape((groups, c))?;
    let var = stats.get(1)?.reshape((groups, c))?;
    Ok(Some(GroupedBatchNormTrain { y, mean, var }))
}
