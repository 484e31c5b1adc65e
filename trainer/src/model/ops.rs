//! The numeric building blocks of the ResNet, each in exactly one function.
//!
//! Every convolution of the model goes through [`conv2d`] and every training-mode batch norm
//! through [`batch_norm_train`], so that a faster kernel (a custom CPU op, say) can be swapped in
//! here without touching the network code.
use candle_core::{DType, Result, Tensor, D};

pub use crate::kernels::BnTail;

/// Batch-norm epsilon, as torchvision's `BatchNorm2d` default.
pub const BN_EPS: f64 = 1e-5;
/// Running-statistics momentum, as PyTorch's default: `running = (1-m)·running + m·batch`.
pub const BN_MOMENTUM: f64 = 0.1;

/// 2-D convolution without bias (torchvision's ResNet convs have none).
/// `x`: [B, C_in, H, W], `w`: [C_out, C_in, k, k].
///
/// Runs [`crate::kernels::conv2d`]: im2col + GEMM forward and backward on the CPU (candle's own
/// CPU backward is a naive loop), candle's op on other devices.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    crate::kernels::conv2d(x, w, stride, padding)
}

/// Batch statistics of one training-mode batch-norm call, already detached from the graph.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Per-channel mean, [C]; with several groups, the mean of the group means.
    pub mean: Tensor,
    /// Per-channel *unbiased* variance (what PyTorch puts into `running_var`), [C]; with several
    /// groups, the mean of the groups' unbiased variances.
    pub var_unbiased: Tensor,
}

/// Training-mode batch norm over `groups` equal contiguous sub-batches.
///
/// Each sub-batch is normalised with its own mean and biased variance, which is what MoCo's
/// shuffle-BN sees on `groups` GPUs; `groups = 1` is ordinary batch norm. The returned
/// statistics are for the running-average update and carry no gradient.
///
/// Errors when the batch is not divisible by `groups` or a group has a single value per
/// channel (the variance would be undefined, PyTorch refuses the same case).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
) -> Result<(Tensor, BatchStats)> {
    batch_norm_train_tail(x, gamma, beta, groups, BnTail::Identity)
}

/// [`batch_norm_train`] followed by `tail`: a ReLU, or a ResNet block's residual add and ReLU.
/// On the CPU (f32) one fused op does both, forward and backward, with the same bytes as the
/// unfused ops ([`crate::kernels::batch_norm_train_tail`]); elsewhere the tail runs as candle
/// ops after the batch norm ([`BnTail::apply_unfused`]).
pub fn batch_norm_train_tail(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    tail: BnTail<'_>,
) -> Result<(Tensor, BatchStats)> {
    let (b, _, h, w) = x.dims4()?;
    if groups == 0 || b % groups != 0 {
        candle_core::bail!(
            "batch norm: batch of {b} cannot be split into {groups} equal BN groups"
        );
    }
    let per_group = (b / groups) * h * w;
    if per_group < 2 {
        candle_core::bail!(
            "batch norm: expected more than 1 value per channel in training mode (batch {b}, {groups} groups, {h}×{w} map)"
        );
    }
    // CUDA f32 with cuDNN: all groups in one op (cuDNN per group on slices of one buffer).
    #[cfg(feature = "cudnn")]
    if crate::kernels::cuda::gpu_kernels_enabled() {
        if let Some(r) =
            crate::kernels::cuda::cudnn::batch_norm_train_grouped(x, gamma, beta, groups, BN_EPS)?
        {
            let stats = BatchStats {
                mean: r.mean,
                var_unbiased: r.var_unbiased,
            };
            return Ok((tail.apply_unfused(r.y)?, stats));
        }
    }
    let unbias = per_group as f64 / (per_group as f64 - 1.0);
    let g = groups as f64;
    // CPU f32: all groups and the tail in one fused op with its own backward; the statistics
    // are combined exactly as the per-group loop below combines them.
    if let Some(r) = crate::kernels::batch_norm_train_tail(x, gamma, beta, groups, BN_EPS, tail)? {
        let rows = |t: &Tensor| -> Result<Vec<Tensor>> { (0..groups).map(|i| t.get(i)).collect() };
        let stats = BatchStats {
            mean: (sum_in_order(&rows(&r.mean)?)? / g)?,
            var_unbiased: (sum_in_order(&rows(&r.var)?)? * (unbias / g))?,
        };
        return Ok((r.y, stats));
    }
    // Elsewhere each group is one training-mode BN (crate::kernels::batch_norm_train: plain
    // tensor maths off the CPU fast path).
    let per = b / groups;
    let mut ys = Vec::with_capacity(groups);
    let (mut means, mut vars) = (Vec::with_capacity(groups), Vec::with_capacity(groups));
    for g in 0..groups {
        let xg = if groups == 1 {
            x.clone()
        } else {
            x.narrow(0, g * per, per)?
        };
        let r = crate::kernels::batch_norm_train(&xg, gamma, beta, BN_EPS)?;
        ys.push(r.y);
        means.push(r.mean);
        vars.push(r.var);
    }
    let y = if groups == 1 {
        ys.pop().expect("one group")
    } else {
        Tensor::cat(&ys, 0)?
    };
    let stats = BatchStats {
        mean: (sum_in_order(&means)?.detach() / g)?,
        var_unbiased: (sum_in_order(&vars)?.detach() * (unbias / g))?,
    };
    Ok((tail.apply_unfused(y)?, stats))
}

/// Eval-mode batch norm: `(x - running_mean) / sqrt(running_var + eps) · gamma + beta`, folded into
/// one per-channel scale and shift (gradients still reach `gamma` and `beta`).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let scale = gamma.div(&(running_var + BN_EPS)?.sqrt()?)?;
    let shift = beta.sub(&running_mean.mul(&scale)?)?;
    x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)
}

/// PyTorch's running-statistics update: `new = (1 - momentum)·old + momentum·batch`.
pub fn ema_update(old: &Tensor, batch: &Tensor) -> Result<Tensor> {
    (old * (1.0 - BN_MOMENTUM))? + (batch.to_dtype(old.dtype())? * BN_MOMENTUM)?
}

/// `running ← ` [`ema_update`]`(running, batch)`, the running-statistics update of one BN
/// buffer. On CUDA f32 one fused in-place kernel (`kernels::cuda::ema_update`, same rounding)
/// instead of three ops, an allocation and a copy.
pub fn update_running(running: &candle_core::Var, batch: &Tensor) -> Result<()> {
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda::is_cuda_f32(running) && crate::kernels::cuda::is_cuda_f32(batch) {
        return crate::kernels::cuda::ema_update(running.as_tensor(), batch, 1.0 - BN_MOMENTUM);
    }
    running.set(&ema_update(&running.as_detached_tensor(), batch)?)
}

/// The whole running-statistics update of one training-mode BN call: `running_mean` and
/// `running_var` by [`update_running`], `num_batches_tracked` + 1 (as torchvision).
pub fn update_bn_buffers(
    running_mean: &candle_core::Var,
    running_var: &candle_core::Var,
    num_batches_tracked: &candle_core::Var,
    stats: &BatchStats,
) -> Result<()> {
    update_running(running_mean, &stats.mean)?;
    update_running(running_var, &stats.var_unbiased)?;
    let nbt = num_batches_tracked.as_detached_tensor();
    num_batches_tracked.set(&(&nbt + Tensor::ones((), DType::I64, nbt.device())?)?)
}

/// `t₀ + t₁ + …` added left to right, so that a sum over groups or replicas rounds the same
/// every run. Errors on an empty list.
pub fn sum_in_order<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Tensor> {
    let mut it = tensors.into_iter();
    let first = it
        .next()
        .ok_or_else(|| candle_core::Error::Msg("internal: sum of no tensors".into()))?;
    it.try_fold(first.clone(), |acc, t| acc + t)
}

/// torchvision's stem max-pool: 3×3, stride 2, padding 1.
///
/// Padding is with zeros, which equals PyTorch's −∞ padding here because the input comes
/// straight out of a ReLU (all values ≥ 0) and every window holds at least one real pixel.
///
/// Built from `maximum`s of shifted views rather than candle's `max_pool2d`, whose backward
/// only supports kernel = stride (candle 0.11: "backward not supported for maxpool2d if ksize
/// (3, 3) != stride (2, 2)"), which made every ImageNet-stem training fail. The max over a 3×3
/// window is the max over its rows of the max over its columns, so the pool is two 1-D pools
/// ([`max_pool_1d_k3_s2`]); the gradient reaches each window's maximum (PyTorch's rule; an exact
/// tie between two positive values shares it, where PyTorch gives it to the first).
pub fn max_pool_3x3_s2_after_relu(x: &Tensor) -> Result<Tensor> {
    max_pool_1d_k3_s2(&max_pool_1d_k3_s2(x, 3)?, 2)
}

/// Kernel 3, stride 2, zero padding 1 along `dim` (values ≥ 0): output `i` is the max of padded
/// positions `2i, 2i+1, 2i+2`. The padded axis, extended to `2(n_out+1)` zeros-padded entries,
/// is viewed as `(n_out+1) × 2` pairs: position `2i` is pair `i` slot 0, `2i+1` pair `i` slot 1,
/// `2i+2` pair `i+1` slot 0.
fn max_pool_1d_k3_s2(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let n_out = (n - 1) / 2 + 1;
    let right = 2 * (n_out + 1) - n - 1;
    let p = x.pad_with_zeros(dim, 1, right)?;
    let mut pairs_shape = p.dims().to_vec();
    pairs_shape[dim] = n_out + 1;
    pairs_shape.insert(dim + 1, 2);
    let pairs = p.reshape(pairs_shape)?;
    let slot = |first: usize, s: usize| -> Result<Tensor> {
        pairs
            .narrow(dim, first, n_out)?
            .narrow(dim + 1, s, 1)?
            .squeeze(dim + 1)
    };
    slot(0, 0)?.maximum(&slot(0, 1)?)?.maximum(&slot(1, 0)?)
}

/// Global average pool: [B, C, H, W] → [B, C].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

/// Fully connected layer as `torch.nn.Linear`: `x · wᵀ + b`, `w`: [out, in].
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

/// The dtype every model parameter is held in.
pub const PARAM_DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Naive per-channel BN on a Vec, written independently of the tensor code.
    fn naive_bn(
        x: &[f32],
        b: usize,
        c: usize,
        hw: usize,
        groups: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut y = vec![0f32; x.len()];
        let mut mean_acc = vec![0f64; c];
        let mut var_acc = vec![0f64; c];
        let gb = b / groups;
        for g in 0..groups {
            for ch in 0..c {
                let idx = |n: usize, p: usize| ((g * gb + n) * c + ch) * hw + p;
                let n = (gb * hw) as f64;
                let mut s = 0f64;
                for i in 0..gb {
                    for p in 0..hw {
                        s += x[idx(i, p)] as f64;
                    }
                }
                let m = s / n;
                let mut v = 0f64;
                for i in 0..gb {
                    for p in 0..hw {
                        v += (x[idx(i, p)] as f64 - m).powi(2);
                    }
                }
                let v = v / n;
                for i in 0..gb {
                    for p in 0..hw {
                        y[idx(i, p)] = ((x[idx(i, p)] as f64 - m) / (v + 1e-5).sqrt()) as f32;
                    }
                }
                mean_acc[ch] += m / groups as f64;
                var_acc[ch] += v * n / (n - 1.0) / groups as f64;
            }
        }
        (
            y,
            mean_acc.iter().map(|v| *v as f32).collect(),
            var_acc.iter().map(|v| *v as f32).collect(),
        )
    }

    #[test]
    fn train_bn_matches_naive_formula_for_one_and_two_groups() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (4, 3, 2, 3);
        let x: Vec<f32> = (0..b * c * h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3 + (i % 5) as f32)
            .collect();
        let xt = Tensor::from_vec(x.clone(), (b, c, h, w), &dev).unwrap();
        let gamma = Tensor::new(&[1.0f32, 2.0, -0.5], &dev).unwrap();
        let beta = Tensor::new(&[0.0f32, 1.0, 3.0], &dev).unwrap();
        for groups in [1, 2] {
            let (y, st) = batch_norm_train(&xt, &gamma, &beta, groups).unwrap();
            let (yn, mn, vn) = naive_bn(&x, b, c, h * w, groups);
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = [1.0f32, 2.0, -0.5];
            let bb = [0.0f32, 1.0, 3.0];
            for (i, (a, e)) in y.iter().zip(&yn).enumerate() {
                let ch = (i / (h * w)) % c;
                let e = e * g[ch] + bb[ch];
                assert!((a - e).abs() < 1e-4, "groups {groups} elem {i}: {a} vs {e}");
            }
            let m = st.mean.to_vec1::<f32>().unwrap();
            let v = st.var_unbiased.to_vec1::<f32>().unwrap();
            for ch in 0..c {
                assert!((m[ch] - mn[ch]).abs() < 1e-4, "mean {groups}");
                assert!(
                    (v[ch] - vn[ch]).abs() < 1e-3 * vn[ch].abs().max(1.0),
                    "var {groups}: {} vs {}",
                    v[ch],
                    vn[ch]
                );
            }
        }
    }

    #[test]
    fn two_groups_differ_from_one_when_groups_differ() {
        let dev = Device::Cpu;
        // first half constant 0..., second half shifted by 10: per-group BN removes the shift.
        let mut x = vec![0f32; 4 * 2];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i % 2) as f32 + if i >= 4 { 10.0 } else { 0.0 };
        }
        let xt = Tensor::from_vec(x, (4, 1, 1, 2), &dev).unwrap();
        let one = Tensor::new(&[1f32], &dev).unwrap();
        let zero = Tensor::new(&[0f32], &dev).unwrap();
        let (y2, _) = batch_norm_train(&xt, &one, &zero, 2).unwrap();
        let y2 = y2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (y2[0] - y2[4]).abs() < 1e-5,
            "group-wise BN should remove the group shift: {y2:?}"
        );
        let (y1, _) = batch_norm_train(&xt, &one, &zero, 1).unwrap();
        let y1 = y1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(y1[4] - y1[0] > 1.0);
    }

    #[test]
    fn bad_groups_are_errors_not_panics() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((3, 2, 2, 2), DType::F32, &dev).unwrap();
        let g = Tensor::ones(2, DType::F32, &dev).unwrap();
        assert!(batch_norm_train(&x, &g, &g, 2).is_err());
        assert!(batch_norm_train(&x, &g, &g, 0).is_err());
        let x = Tensor::zeros((2, 2, 1, 1), DType::F32, &dev).unwrap();
        assert!(batch_norm_train(&x, &g, &g, 2).is_err());
    }

    #[test]
    fn eval_bn_and_maxpool_match_hand_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[2f32]]], [[[4f32]]]], &dev).unwrap(); // [2,1,1,1]
        let g = Tensor::new(&[3f32], &dev).unwrap();
        let b = Tensor::new(&[1f32], &dev).unwrap();
        let m = Tensor::new(&[1f32], &dev).unwrap();
        let v = Tensor::new(&[4f32], &dev).unwrap();
        let y = batch_norm_eval(&x, &g, &b, &m, &v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let s = 3.0 / (4.0f32 + 1e-5).sqrt();
        assert!((y[0] - (1.0 * s + 1.0)).abs() < 1e-5 && (y[1] - (3.0 * s + 1.0)).abs() < 1e-5);

        // 4×4 input, 3×3/2 pool with pad 1 → 2×2; window (0,0) covers rows/cols 0..=1.
        let x = Tensor::arange(0f32, 16.0, &dev)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let p = max_pool_3x3_s2_after_relu(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(p, vec![5.0, 7.0, 13.0, 15.0]);
    }

    /// The stem pool against a naive loop (forward) and against routing each output's gradient
    /// to its window's arg-max (backward), on odd and even sizes; distinct positive inputs, so
    /// there are no ties.
    #[test]
    fn stem_max_pool_forward_and_backward_match_the_naive_rule() {
        let dev = Device::Cpu;
        for (h, w) in [(7usize, 6usize), (8, 9), (1, 4)] {
            let n = 2 * 3 * h * w;
            // A permutation of 1..=n scaled: distinct, positive.
            let vals: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % n + 1) as f32 / n as f32)
                .collect();
            let x = candle_core::Var::from_tensor(
                &Tensor::from_vec(vals.clone(), (2, 3, h, w), &dev).unwrap(),
            )
            .unwrap();
            let y = max_pool_3x3_s2_after_relu(x.as_tensor()).unwrap();
            let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
            assert_eq!(y.dims(), &[2, 3, ho, wo]);
            // Upstream gradient: distinct weights per output.
            let gy: Vec<f32> = (0..2 * 3 * ho * wo).map(|i| 1.0 + i as f32).collect();
            let gy_t = Tensor::from_vec(gy.clone(), (2, 3, ho, wo), &dev).unwrap();
            let grads = (&y * &gy_t).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
            let (y, gx) = (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                gx.to_vec1::<f32>().unwrap(),
            );
            let mut want_gx = vec![0f32; n];
            for bc in 0..6 {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut best = (f32::MIN, 0usize);
                        for di in 0..3 {
                            for dj in 0..3 {
                                let (r, c) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                                if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                                    continue;
                                }
                                let k = bc * h * w + r as usize * w + c as usize;
                                if vals[k] > best.0 {
                                    best = (vals[k], k);
                                }
                            }
                        }
                        let o = bc * ho * wo + i * wo + j;
                        assert_eq!(y[o], best.0, "{h}x{w} out {o}");
                        want_gx[best.1] += gy[o];
                    }
                }
            }
            assert_eq!(gx, want_gx, "{h}x{w}: gradient");
        }
    }
}
