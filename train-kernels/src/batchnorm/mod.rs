//! Fused training-mode batch-norm (NCHW, statistics over N·H·W per channel) for the CPU, with
//! the element-wise tail that follows it in a ResNet fused in: nothing, a ReLU, or the residual
//! add and its ReLU.
//!
//! Why: written with tensor ops, BN's train-mode forward is ~9 full passes over the activation
//! and its autograd backward ~20 (broadcasts, reductions, their gradients), mostly
//! single-threaded in candle; with the fast conv it took ~37 % of a ResNet-18 step (README.md).
//! Fused, the forward is 3 passes (mean, centred variance, normalise) and the backward 2
//! (Σdy and Σdy·x̂, then dx), all parallel over channels. The tail: candle's ReLU is a pass
//! forward and five backward (`x ≥ 0`, its cast, the product, and the gradient store's
//! `zeros + g` for its input), the residual add one forward and four backward (`zeros + g` for
//! each input), each with a fresh allocation; fused, the ReLU mask is recomputed inside the BN
//! backward's two passes, and the add's gradient is written by the dx pass.
//!
//! Bit-identity: the fused tail computes what the unfused ops compute, in the same f32
//! operations (`z = (x − μ)·s + β`, `z + r`, `max(·, 0)`; backward `0 + g·[z ≥ 0]`, candle's
//! ReLU gradient as accumulated by its gradient store), so a model gives the same bytes with or
//! without the fusion (`tests/bn.rs`).
//!
//! Determinism: each channel's sums run in one task, in (image, pixel) order, accumulated in
//! f64, so results do not depend on the thread count.

use std::mem::MaybeUninit;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::conv::contiguous_f32;
use super::direct::Isa;
use super::{assume_init, uninit};

#[cfg(target_arch = "x86_64")]
mod avx2;

fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => bail!("kernels::batch_norm_train: input must be 4-D NCHW, got shape {d:?}"),
    }
}

/// Channels whose sums one task runs side by side (see [`channel_stats`]).
const LANES: usize = 4;
/// Channels per block of the AVX2 reductions (`avx2.rs`): one f32 vector of channels.
const WIDE: usize = 8;

/// The channel blocks of `c` channels: `(first channel, lanes)`: [`WIDE`] at a time where the
/// AVX2 reductions run, then [`LANES`] at a time, the remainder one by one. The blocking only
/// decides which channels share a task: every channel's sums are the same chain in any block.
fn channel_blocks(c: usize, isa: Isa) -> impl Iterator<Item = (usize, usize)> {
    let wide = if isa == Isa::Avx2 { c / WIDE * WIDE } else { 0 };
    let full = wide + (c - wide) / LANES * LANES;
    (0..wide)
        .step_by(WIDE)
        .map(|ch| (ch, WIDE))
        .chain((wide..full).step_by(LANES).map(|ch| (ch, LANES)))
        .chain((full..c).map(|ch| (ch, 1)))
}

/// (mean, biased variance) of every (group, channel) of an `(n, c, hw)` slice whose images form
/// `groups` equal contiguous groups, two-pass in f64; index `group·c + channel`.
///
/// Each channel's sums are `Σ_images (Σ_pixels v)` with `Iterator::sum`'s fold (its start
/// value, image-major, pixel order); [`LANES`] channels run interleaved in one task, each in its
/// own chain, so the additions overlap (a single chain waits on the adder's latency) while every
/// channel's result is what the one-channel loop gives, to the bit. With `isa` AVX2, blocks of
/// [`WIDE`] channels run as vectors of channels (`avx2::stats`), the same chains to the bit.
///
/// Public for the benches and the tests, which compare the ISAs.
pub fn channel_stats(
    isa: Isa,
    x: &[f32],
    (n, c, hw): (usize, usize, usize),
    groups: usize,
) -> Vec<(f64, f64)> {
    assert!(
        groups > 0 && n % groups == 0 && x.len() >= n * c * hw,
        "channel_stats: {n} images in {groups} groups, {} values for {c}×{hw} each",
        x.len()
    );
    let per = n / groups;
    let m = (per * hw) as f64;
    let blocks: Vec<(usize, usize, usize)> = (0..groups)
        .flat_map(|g| channel_blocks(c, isa).map(move |(ch, l)| (g, ch, l)))
        .collect();
    let done: Vec<Vec<(f64, f64)>> = blocks
        .par_iter()
        .map(|&(g, ch, l)| {
            let images = g * per..(g + 1) * per;
            if l == WIDE {
                wide_stats(x, c, hw, images, ch, m)
            } else if l == LANES {
                stats_lanes::<LANES>(x, c, hw, images, ch, m).to_vec()
            } else {
                stats_lanes::<1>(x, c, hw, images, ch, m).to_vec()
            }
        })
        .collect();
    let mut out = vec![(0f64, 0f64); groups * c];
    for (&(g, ch, l), st) in blocks.iter().zip(done) {
        out[g * c + ch..g * c + ch + l].copy_from_slice(&st);
    }
    out
}

/// [`channel_stats`] of channels `ch..ch + L` over `images`.
// `j` indexes the L planes side by side: the interleaving is the point.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn stats_lanes<const L: usize>(
    x: &[f32],
    c: usize,
    hw: usize,
    images: std::ops::Range<usize>,
    ch: usize,
    m: f64,
) -> [(f64, f64); L] {
    // The start value of `Iterator::sum` for f64, so each chain is exactly that fold.
    let init: f64 = std::iter::empty::<f64>().sum();
    let plane = |b: usize, l: usize| &x[(b * c + ch + l) * hw..(b * c + ch + l + 1) * hw];
    let mut total = [init; L];
    for b in images.clone() {
        let planes: [&[f32]; L] = std::array::from_fn(|l| plane(b, l));
        let mut s = [init; L];
        for j in 0..hw {
            for l in 0..L {
                s[l] += planes[l][j] as f64;
            }
        }
        for l in 0..L {
            total[l] += s[l];
        }
    }
    let mean: [f64; L] = std::array::from_fn(|l| total[l] / m);
    let mut total = [init; L];
    for b in images {
        let planes: [&[f32]; L] = std::array::from_fn(|l| plane(b, l));
        let mut s = [init; L];
        for j in 0..hw {
            for l in 0..L {
                s[l] += (planes[l][j] as f64 - mean[l]).powi(2);
            }
        }
        for l in 0..L {
            total[l] += s[l];
        }
    }
    std::array::from_fn(|l| (mean[l], total[l] / m))
}

/// [`stats_lanes`] of the [`WIDE`] channels `ch..ch + 8`, as AVX2 vectors of channels where
/// the CPU has AVX2 (the same chains, to the bit: `avx2::stats`), else as two [`LANES`] blocks.
fn wide_stats(
    x: &[f32],
    c: usize,
    hw: usize,
    images: std::ops::Range<usize>,
    ch: usize,
    m: f64,
) -> Vec<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; the planes of `images` × `ch..ch + 8` lie inside `x`
        // (checked by `channel_stats`, and again by the kernel's slicing).
        return unsafe { avx2::stats(x, c, hw, images, ch, m) }.to_vec();
    }
    let mut v = stats_lanes::<LANES>(x, c, hw, images.clone(), ch, m).to_vec();
    v.extend(stats_lanes::<LANES>(x, c, hw, images, ch + LANES, m));
    v
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
        let st = channel_stats(Isa::detect(), &x, (n, c, hw), self.groups);
        let mut out: Vec<f32> = st.iter().map(|s| s.0 as f32).collect();
        out.extend(st.iter().map(|s| s.1 as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, self.groups * c))))
    }
}

/// The tails, as const-generic parameters of the kernels (one monomorphic, vectorisable loop
/// each): `y = z`, `y = max(z, 0)`, `y = max(z + r, 0)`.
pub(crate) const IDENTITY: u8 = 0;
pub(crate) const RELU: u8 = 1;
pub(crate) const ADD_RELU: u8 = 2;

/// The element-wise tail of [`batch_norm_train_tail`], after `z = γ·(x − μ)/σ + β`.
#[derive(Clone, Copy, Debug)]
pub enum BnTail<'a> {
    /// Plain batch norm: `y = z`.
    Identity,
    /// `y = relu(z)`.
    Relu,
    /// `y = relu(z + residual)`, `residual` of `x`'s shape (the end of a ResNet block).
    AddRelu(&'a Tensor),
}

impl BnTail<'_> {
    /// The tail with candle's own ops, on `y = bn(x)`: what the fused op computes, for devices
    /// and dtypes it does not cover (and the tests' reference).
    pub fn apply_unfused(&self, y: Tensor) -> Result<Tensor> {
        match self {
            BnTail::Identity => Ok(y),
            BnTail::Relu => y.relu(),
            BnTail::AddRelu(r) => (y + *r)?.relu(),
        }
    }
}

/// A fused op's batch statistics and affine parameters, carried from the forward to the
/// backward (statistics index `group·C + channel`).
#[derive(Clone, Debug)]
struct Affine {
    mean: Vec<f32>,
    var: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
    groups: usize,
}

impl Affine {
    /// `1/sqrt(var + eps)` of statistics index `i` (`group·C + channel`).
    fn inv_std(&self, i: usize) -> f64 {
        1.0 / (self.var[i] as f64 + self.eps).sqrt()
    }

    /// `(μ, s, β)` of statistics index `i`, channel `ch`: `z = (x − μ)·s + β`. Centred first:
    /// folding the mean into the shift would cancel catastrophically for channels whose mean is
    /// large relative to their spread.
    fn coefs(&self, i: usize, ch: usize) -> (f32, f32, f32) {
        (
            self.mean[i],
            (self.gamma[ch] as f64 * self.inv_std(i)) as f32,
            self.beta[ch],
        )
    }

    /// `(n, c, hw)` of the input at `l`, checked against the statistics and parameters.
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize)> {
        let (n, c, hw) = nchw(l)?;
        if self.groups == 0
            || n % self.groups != 0
            || self.mean.len() != self.groups * c
            || self.gamma.len() != c
            || self.beta.len() != c
        {
            bail!(
                "kernels::batch_norm_train: input {:?} does not match {} groups' statistics of \
                 {} values and {} channels' gamma/beta",
                l.dims(),
                self.groups,
                self.mean.len(),
                self.gamma.len()
            );
        }
        Ok((n, c, hw))
    }
}

/// The pre-activation the tail's ReLU sees (`z`, or `z + r`), computed with exactly the f32
/// operations of the forward, so the backward's mask is the forward's.
#[inline(always)]
pub(crate) fn pre<const T: u8>(v: f32, r: f32, (mu, scale, shift): (f32, f32, f32)) -> f32 {
    let z = (v - mu) * scale + shift;
    if T == ADD_RELU {
        z + r
    } else {
        z
    }
}

/// The forward of one (image, channel) plane: `dst = tail((src − μ)·s + β)`.
#[inline(always)]
fn forward_plane<const T: u8>(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    res: &[f32],
    coefs: (f32, f32, f32),
) {
    if T == ADD_RELU {
        for ((d, &v), &r) in dst.iter_mut().zip(src).zip(res) {
            d.write(pre::<T>(v, r, coefs).max(0f32));
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            let z = pre::<T>(v, 0f32, coefs);
            d.write(if T == RELU { z.max(0f32) } else { z });
        }
    }
}

/// `y = tail(bn(x))` for an `(n, c, hw)` input, each image with its group's statistics;
/// `res` is the residual (`AddRelu`; empty otherwise).
fn forward<const T: u8>(
    x: &[f32],
    res: &[f32],
    a: &Affine,
    (n, c, hw): (usize, usize, usize),
) -> Vec<f32> {
    let per = n / a.groups;
    let mut y = uninit(x.len());
    // Parallel over images; each (image, channel) plane is an independent affine map.
    y.par_chunks_mut(c * hw).enumerate().for_each(|(b, yb)| {
        let base = (b / per) * c;
        for ch in 0..c {
            let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
            let res = if T == ADD_RELU { &res[r.clone()] } else { &[] };
            forward_plane::<T>(
                &mut yb[ch * hw..(ch + 1) * hw],
                &x[r],
                res,
                a.coefs(base + ch, ch),
            );
        }
    });
    debug_assert_eq!(y.len(), n * c * hw);
    assume_init(y)
}

/// The gradient reaching `z` through the tail, as candle's unfused ops produce it: `g` itself,
/// or for a ReLU `0 + g·[pre ≥ 0]` (candle's ReLU backward `g · (pre ≥ 0) as f32`, added into a
/// fresh zero gradient by its gradient store; the residual add passes it on unchanged).
#[inline(always)]
pub(crate) fn tail_grad<const T: u8>(g: f32, v: f32, r: f32, coefs: (f32, f32, f32)) -> f32 {
    if T == IDENTITY {
        return g;
    }
    let mask = if pre::<T>(v, r, coefs) >= 0f32 {
        1f32
    } else {
        0f32
    };
    0f32 + g * mask
}

/// `(Σg, Σg·x̂)` of channels `ch..ch + L` (statistics index `i..i + L`) over `images`, `g` the
/// gradient at `z` ([`tail_grad`]): one chain per channel, from 0, in (image, pixel) order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn grad_sums<const T: u8, const L: usize>(
    x: &[f32],
    res: &[f32],
    dy: &[f32],
    a: &Affine,
    c: usize,
    hw: usize,
    images: std::ops::Range<usize>,
    i: usize,
    ch: usize,
) -> [(f64, f64); L] {
    let coefs: [(f32, f32, f32); L] = std::array::from_fn(|l| a.coefs(i + l, ch + l));
    let mu: [f64; L] = std::array::from_fn(|l| a.mean[i + l] as f64);
    let is: [f64; L] = std::array::from_fn(|l| a.inv_std(i + l));
    let (mut s_dy, mut s_dyx) = ([0f64; L], [0f64; L]);
    for b in images {
        let start: [usize; L] = std::array::from_fn(|l| (b * c + ch + l) * hw);
        for j in 0..hw {
            for l in 0..L {
                let k = start[l] + j;
                let r = if T == ADD_RELU { res[k] } else { 0f32 };
                let gr = tail_grad::<T>(dy[k], x[k], r, coefs[l]) as f64;
                s_dy[l] += gr;
                s_dyx[l] += gr * (x[k] as f64 - mu[l]) * is[l];
            }
        }
    }
    std::array::from_fn(|l| (s_dy[l], s_dyx[l]))
}

/// [`grad_sums`] of the [`WIDE`] channels `ch..ch + 8` (statistics index `i..i + 8`), as AVX2
/// vectors of channels where the CPU has AVX2 (the same chains, to the bit:
/// `avx2::grad_sums`), else as two [`LANES`] blocks.
#[allow(clippy::too_many_arguments)]
fn wide_grad_sums<const T: u8>(
    x: &[f32],
    res: &[f32],
    dy: &[f32],
    a: &Affine,
    c: usize,
    hw: usize,
    images: std::ops::Range<usize>,
    i: usize,
    ch: usize,
) -> Vec<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        let coefs: [(f32, f32, f32); WIDE] = std::array::from_fn(|l| a.coefs(i + l, ch + l));
        let mu: [f64; WIDE] = std::array::from_fn(|l| a.mean[i + l] as f64);
        let is: [f64; WIDE] = std::array::from_fn(|l| a.inv_std(i + l));
        // SAFETY: AVX2 is present; the kernel slices every plane it reads (bounds-checked).
        return unsafe { avx2::grad_sums::<T>(x, res, dy, &coefs, &mu, &is, c, hw, images, ch) }
            .to_vec();
    }
    let mut v = grad_sums::<T, LANES>(x, res, dy, a, c, hw, images.clone(), i, ch).to_vec();
    v.extend(grad_sums::<T, LANES>(
        x,
        res,
        dy,
        a,
        c,
        hw,
        images,
        i + LANES,
        ch + LANES,
    ));
    v
}

/// Flat `[dx (N·C·H·W), dr (N·C·H·W, `AddRelu` only), dgamma (C), dbeta (C)]` of
/// `y = tail(bn(x))` given `dy`.
///
/// `dx = gamma·inv_std/M · (M·g − Σg − x̂·Σ(g·x̂))` within each group (`g` the gradient at `z`,
/// [`tail_grad`]), the standard train-mode BN gradient (the batch statistics depend on x);
/// `dr = g`; `dgamma`, `dbeta` are the groups' `Σ(g·x̂)`, `Σg`, each rounded to f32 and added
/// from the last group to the first: the order in which candle's autograd sums the gradients of
/// one BN call per group, so the grouped op is bit-identical with that loop (and the committed
/// fixtures stay byte-identical).
fn backward<const T: u8>(
    isa: Isa,
    x: &[f32],
    res: &[f32],
    dy: &[f32],
    a: &Affine,
    (n, c, hw): (usize, usize, usize),
) -> Vec<f32> {
    let groups = a.groups;
    let per = n / groups;
    let m = (per * hw) as f64;
    let nx = x.len();
    // Per-(group, channel) sums (Σg, Σg·x̂), each one chain from 0 in (image, pixel) order,
    // [`LANES`] channels interleaved per task as in [`channel_stats`].
    let blocks: Vec<(usize, usize, usize)> = (0..groups)
        .flat_map(|g| channel_blocks(c, isa).map(move |(ch, l)| (g, ch, l)))
        .collect();
    let done: Vec<Vec<(f64, f64)>> = blocks
        .par_iter()
        .map(|&(g, ch, l)| {
            let images = g * per..(g + 1) * per;
            if l == WIDE {
                wide_grad_sums::<T>(x, res, dy, a, c, hw, images, g * c + ch, ch)
            } else if l == LANES {
                grad_sums::<T, LANES>(x, res, dy, a, c, hw, images, g * c + ch, ch).to_vec()
            } else {
                grad_sums::<T, 1>(x, res, dy, a, c, hw, images, g * c + ch, ch).to_vec()
            }
        })
        .collect();
    let mut sums = vec![(0f64, 0f64); groups * c];
    for (&(g, ch, l), st) in blocks.iter().zip(done) {
        sums[g * c + ch..g * c + ch + l].copy_from_slice(&st);
    }
    let parts = if T == ADD_RELU { 2 } else { 1 };
    let mut out = uninit(parts * nx + 2 * c);
    let (data, dgb) = out.split_at_mut(parts * nx);
    let (dx, dr) = data.split_at_mut(nx);
    // dx (and dr), parallel over images: one chunk of each per image.
    let one_image = |b: usize, dxb: &mut [MaybeUninit<f32>], drb: &mut [MaybeUninit<f32>]| {
        let base = (b / per) * c;
        for ch in 0..c {
            let i = base + ch;
            let coefs = a.coefs(i, ch);
            let is = a.inv_std(i);
            let k = a.gamma[ch] as f64 * is;
            let (mean_dy, mean_dyx) = (sums[i].0 / m, sums[i].1 / m);
            // dx = k·(g − mean_dy − x̂·mean_dyx), x̂ = (x − mu)·is, as ka·g + bc·(x − mu) + c0.
            let (ka, bc, c0) = (k as f32, (-k * mean_dyx * is) as f32, (-k * mean_dy) as f32);
            let mu = a.mean[i];
            let start = (b * c + ch) * hw;
            let src = start..start + hw;
            let dst = ch * hw..(ch + 1) * hw;
            if T == ADD_RELU {
                let it = dxb[dst.clone()].iter_mut().zip(&mut drb[dst]);
                for (((o, d), &g), (&v, &r)) in it
                    .zip(&dy[src.clone()])
                    .zip(x[src.clone()].iter().zip(&res[src]))
                {
                    let gr = tail_grad::<T>(g, v, r, coefs);
                    o.write(ka * gr + bc * (v - mu) + c0);
                    d.write(gr);
                }
            } else {
                for ((o, &g), &v) in dxb[dst].iter_mut().zip(&dy[src.clone()]).zip(&x[src]) {
                    let gr = tail_grad::<T>(g, v, 0f32, coefs);
                    o.write(ka * gr + bc * (v - mu) + c0);
                }
            }
        }
    };
    if T == ADD_RELU {
        dx.par_chunks_mut(c * hw)
            .zip(dr.par_chunks_mut(c * hw))
            .enumerate()
            .for_each(|(b, (dxb, drb))| one_image(b, dxb, drb));
    } else {
        dx.par_chunks_mut(c * hw)
            .enumerate()
            .for_each(|(b, dxb)| one_image(b, dxb, &mut []));
    }
    for ch in 0..c {
        let last = (groups - 1) * c + ch;
        let (mut dgamma, mut dbeta) = (sums[last].1 as f32, sums[last].0 as f32);
        for g in (0..groups - 1).rev() {
            dgamma += sums[g * c + ch].1 as f32;
            dbeta += sums[g * c + ch].0 as f32;
        }
        dgb[ch].write(dgamma);
        dgb[c + ch].write(dbeta);
    }
    assume_init(out)
}

/// The backward of batch-norm + ReLU on plain slices (`[dx, dγ, dβ]` as [`backward`]), with
/// the batch statistics computed first, all with the kernels of `isa`. Public for the benches,
/// which time the ISAs side by side; training reaches the same code through the ops' `bwd`.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward(
    isa: Isa,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    groups: usize,
    dims: (usize, usize, usize),
) -> Vec<f32> {
    let st = channel_stats(isa, x, dims, groups);
    let a = Affine {
        mean: st.iter().map(|s| s.0 as f32).collect(),
        var: st.iter().map(|s| s.1 as f32).collect(),
        gamma: gamma.to_vec(),
        beta: beta.to_vec(),
        eps,
        groups,
    };
    assert!(
        gamma.len() == dims.1 && beta.len() == dims.1 && dy.len() == x.len(),
        "relu_backward: gamma/beta of {} and {}, {} gradients for {} inputs of {dims:?}",
        gamma.len(),
        beta.len(),
        dy.len(),
        x.len()
    );
    backward::<RELU>(isa, x, &[], dy, &a, dims)
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

/// `same_shape(l, x)`: the residual (or gradient) must have the input's shape.
fn same_shape(l: &Layout, x: &Layout, what: &str) -> Result<()> {
    if l.dims() != x.dims() {
        bail!(
            "kernels::batch_norm_train: {what} has shape {:?}, the input {:?}",
            l.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// `apply_op3(x, gamma, beta)` → `tail(gamma·(x − mean)/sqrt(var + eps) + beta)` with tail
/// `Identity` or `Relu` (`T`), each image with its group's batch statistics, carried in the op
/// (computed once by [`BnStats`], reused by the backward).
struct BnTrain<const T: u8> {
    a: Affine,
}

impl<const T: u8> CustomOp3 for BnTrain<T> {
    fn name(&self) -> &'static str {
        if T == RELU {
            "fast-bn-train-relu"
        } else {
            "fast-bn-train"
        }
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
        let dims = self.a.dims(l1)?;
        let x = contiguous_f32(s1, l1, "batch-norm input")?;
        // gamma and beta are inputs so that autograd reaches them; their values are in `a`.
        vec_f32(s2, l2, dims.1, "gamma")?;
        vec_f32(s3, l3, dims.1, "beta")?;
        let y = forward::<T>(&x, &[], &self.a, dims);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let op = BnTrainGrad::<T> { a: self.a.clone() };
        let packed = x.apply_op2_no_bwd(grad, &op)?;
        let nx = x.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dgamma = packed.narrow(0, nx, c)?;
        let dbeta = packed.narrow(0, nx + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `apply_op3(x, residual, gamma‖beta)` → `relu(gamma·(x − mean)/sqrt(var + eps) + beta +
/// residual)`: the last batch norm of a ResNet block with the block's residual add and ReLU.
/// gamma and beta travel as one `(2C,)` tensor (a custom op has at most three inputs).
struct BnAddReluTrain {
    a: Affine,
}

impl CustomOp3 for BnAddReluTrain {
    fn name(&self) -> &'static str {
        "fast-bn-train-add-relu"
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
        let dims = self.a.dims(l1)?;
        same_shape(l2, l1, "the residual")?;
        let x = contiguous_f32(s1, l1, "batch-norm input")?;
        let r = contiguous_f32(s2, l2, "residual")?;
        vec_f32(s3, l3, 2 * dims.1, "gamma‖beta")?;
        let y = forward::<ADD_RELU>(&x, &r, &self.a, dims);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let op = BnTrainGrad::<ADD_RELU> { a: self.a.clone() };
        let packed = x.apply_op3_no_bwd(residual, grad, &op)?;
        let nx = x.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dr = packed.narrow(0, nx, nx)?.reshape(x.dims())?;
        let dgb = packed.narrow(0, 2 * nx, 2 * c)?;
        Ok((Some(dx), Some(dr), Some(dgb)))
    }
}

/// The backward of [`BnTrain`] (`apply_op2_no_bwd(x, dy)`) and of [`BnAddReluTrain`]
/// (`apply_op3_no_bwd(x, residual, dy)`): the packed gradients of [`backward`].
struct BnTrainGrad<const T: u8> {
    a: Affine,
}

impl<const T: u8> BnTrainGrad<T> {
    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        res: Option<(&CpuStorage, &Layout)>,
        (sg, lg): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.a.dims(l1)?;
        same_shape(lg, l1, "the output gradient")?;
        let x = contiguous_f32(s1, l1, "batch-norm input")?;
        let dy = contiguous_f32(sg, lg, "batch-norm output gradient")?;
        let r = match res {
            Some((s, l)) => {
                same_shape(l, l1, "the residual")?;
                contiguous_f32(s, l, "residual")?
            }
            None => std::borrow::Cow::Borrowed(&[][..]),
        };
        let out = backward::<T>(Isa::detect(), &x, &r, &dy, &self.a, dims);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

impl<const T: u8> CustomOp2 for BnTrainGrad<T> {
    fn name(&self) -> &'static str {
        "fast-bn-train-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if T == ADD_RELU {
            bail!("internal: the add-ReLU batch-norm gradient needs the residual");
        }
        self.run((s1, l1), None, (s2, l2))
    }
}

impl<const T: u8> CustomOp3 for BnTrainGrad<T> {
    fn name(&self) -> &'static str {
        "fast-bn-train-add-relu-grad"
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
        self.run((s1, l1), Some((s2, l2)), (s3, l3))
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

fn fused_cpu(x: &Tensor, gamma: &Tensor, beta: &Tensor, tail: &BnTail<'_>) -> bool {
    let residual_ok = match tail {
        BnTail::AddRelu(r) => r.device().is_cpu() && r.dtype() == candle_core::DType::F32,
        _ => true,
    };
    super::cpu_kernels_enabled()
        && residual_ok
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
    tail: BnTail<'_>,
) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    if groups == 0 || n % groups != 0 {
        bail!("kernels::batch_norm_train: batch of {n} does not split into {groups} equal groups");
    }
    let stats = x.apply_op1_no_bwd(&BnStats { groups })?;
    let mut rows = stats.to_vec2::<f32>()?.into_iter();
    let (mean, var) = match (rows.next(), rows.next()) {
        (Some(m), Some(v)) => (m, v),
        _ => bail!("internal: batch-norm statistics without two rows"),
    };
    let a = Affine {
        mean,
        var,
        gamma: gamma.flatten_all()?.to_vec1::<f32>()?,
        beta: beta.flatten_all()?.to_vec1::<f32>()?,
        eps,
        groups,
    };
    let y = match tail {
        BnTail::Identity => x.apply_op3(gamma, beta, BnTrain::<IDENTITY> { a })?,
        BnTail::Relu => x.apply_op3(gamma, beta, BnTrain::<RELU> { a })?,
        BnTail::AddRelu(r) => {
            let gb = Tensor::cat(&[gamma, beta], 0)?;
            x.apply_op3(r, &gb, BnAddReluTrain { a })?
        }
    };
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
    if fused_cpu(x, gamma, beta, &BnTail::Identity) {
        let (y, stats) = fused(x, gamma, beta, 1, eps, BnTail::Identity)?;
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
    batch_norm_train_tail(x, gamma, beta, groups, eps, BnTail::Identity)
}

/// [`batch_norm_train_grouped`] followed by `tail` (a ReLU, or a ResNet block's residual add
/// and ReLU) in the same op: `y` is `tail.apply_unfused(bn(x))`, to the bit, forward and
/// backward, with one pass over the activation instead of two or three forward, and none of
/// the unfused tail's ~5 backward passes per op. `None` where the fused CPU op does not apply:
/// the caller runs the groups' BN and then [`BnTail::apply_unfused`].
pub fn batch_norm_train_tail(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    tail: BnTail<'_>,
) -> Result<Option<GroupedBatchNormTrain>> {
    if !fused_cpu(x, gamma, beta, &tail) {
        return Ok(None);
    }
    if let BnTail::AddRelu(r) = tail {
        if r.dims() != x.dims() {
            bail!(
                "kernels::batch_norm_train: the residual has shape {:?}, the input {:?}",
                r.dims(),
                x.dims()
            );
        }
    }
    let c = x.dim(1)?;
    let (y, stats) = fused(x, gamma, beta, groups, eps, tail)?;
    let mean = stats.get(0)?.reshape((groups, c))?;
    let var = stats.get(1)?.reshape((groups, c))?;
    Ok(Some(GroupedBatchNormTrain { y, mean, var }))
}

#[cfg(test)]
mod tests {
    //! The AVX2 reductions against the portable ones, bit for bit, on random shapes (odd plane
    //! sizes, every channel count from 1 to 64, 1–3 groups), and the statistics against the
    //! exact f64 formula.
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Values around a per-channel offset, a fifth of them exactly 0 (ReLU masks both ways;
    /// `pre` lands on 0 where `x` is the mean of a constant channel).
    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len)
            .map(|_| {
                if rng.gen_range(0..5) == 0 {
                    0.0
                } else {
                    rng.gen_range(-2.0f32..3.0)
                }
            })
            .collect()
    }

    fn bits(v: &[(f64, f64)]) -> Vec<(u64, u64)> {
        v.iter().map(|p| (p.0.to_bits(), p.1.to_bits())).collect()
    }

    fn affine(x: &[f32], dims: (usize, usize, usize), groups: usize, seed: u64) -> Affine {
        let st = channel_stats(Isa::Portable, x, dims, groups);
        let gb = data(2 * dims.1, seed);
        Affine {
            mean: st.iter().map(|s| s.0 as f32).collect(),
            var: st.iter().map(|s| s.1 as f32).collect(),
            gamma: gb[..dims.1].to_vec(),
            beta: gb[dims.1..].to_vec(),
            eps: 1e-5,
            groups,
        }
    }

    fn backward_bits<const T: u8>(
        isa: Isa,
        x: &[f32],
        r: &[f32],
        dy: &[f32],
        a: &Affine,
        dims: (usize, usize, usize),
    ) -> Vec<u32> {
        backward::<T>(isa, x, r, dy, a, dims)
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Tolerance 0: the AVX2 statistics are the portable ones to the bit; both within
        /// 1e-12 (relative to the channel's scale) of the exact two-pass f64 formula.
        #[test]
        fn stats_avx2_is_portable_to_the_bit(groups in 1usize..4, per in 1usize..3,
                                             c in 1usize..65, h in 1usize..10, w in 1usize..10,
                                             seed in 0u64..1000) {
            let (n, hw) = (groups * per, h * w);
            let x = data(n * c * hw, seed);
            let fast = channel_stats(Isa::detect(), &x, (n, c, hw), groups);
            let port = channel_stats(Isa::Portable, &x, (n, c, hw), groups);
            prop_assert_eq!(bits(&fast), bits(&port));
            for g in 0..groups {
                for ch in 0..c {
                    let vals: Vec<f64> = (g * per..(g + 1) * per)
                        .flat_map(|b| x[(b * c + ch) * hw..][..hw].iter().map(|&v| v as f64))
                        .collect();
                    let m = vals.len() as f64;
                    let mean = vals.iter().sum::<f64>() / m;
                    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
                    let (fm, fv) = fast[g * c + ch];
                    prop_assert!((fm - mean).abs() <= 1e-12 * (1.0 + mean.abs()), "mean {fm} vs {mean}");
                    prop_assert!((fv - var).abs() <= 1e-12 * (1.0 + var), "var {fv} vs {var}");
                }
            }
        }

        /// Tolerance 0: the backward (both reductions and the dx/dr/dγ/dβ that follow) with
        /// the AVX2 sums is the portable backward to the bit, for each tail.
        #[test]
        fn grad_sums_avx2_is_portable_to_the_bit(groups in 1usize..4, per in 1usize..3,
                                                 c in 1usize..65, h in 1usize..10, w in 1usize..10,
                                                 seed in 0u64..1000) {
            let (n, hw) = (groups * per, h * w);
            let dims = (n, c, hw);
            let x = data(n * c * hw, seed);
            let r = data(n * c * hw, seed + 1);
            let dy = data(n * c * hw, seed + 2);
            let a = affine(&x, dims, groups, seed + 3);
            let fast = Isa::detect();
            prop_assert_eq!(backward_bits::<IDENTITY>(fast, &x, &[], &dy, &a, dims),
                            backward_bits::<IDENTITY>(Isa::Portable, &x, &[], &dy, &a, dims));
            prop_assert_eq!(backward_bits::<RELU>(fast, &x, &[], &dy, &a, dims),
                            backward_bits::<RELU>(Isa::Portable, &x, &[], &dy, &a, dims));
            prop_assert_eq!(backward_bits::<ADD_RELU>(fast, &x, &r, &dy, &a, dims),
                            backward_bits::<ADD_RELU>(Isa::Portable, &x, &r, &dy, &a, dims));
        }
    }

    /// The blocks cover every channel once, in order, for both ISAs.
    #[test]
    fn channel_blocks_cover_each_channel_once() {
        for isa in [Isa::Portable, Isa::Avx2] {
            for c in 0..70 {
                let mut next = 0;
                for (ch, l) in channel_blocks(c, isa) {
                    assert_eq!(ch, next);
                    assert!(l == 1 || l == LANES || (l == WIDE && isa == Isa::Avx2));
                    next += l;
                }
                assert_eq!(next, c);
            }
        }
    }
}
