//! conv2d (NCHW input, OIHW weights, groups 1, dilation 1) on the CPU: the candle op, the
//! geometry, the dispatch ([`conv2d_forward`] and its two gradients run the direct kernels of
//! [`crate::direct`] where they apply) and the im2col/col2im + GEMM path below, which is the
//! fallback and the benches' reference.
//!
//! Why: candle 0.11's CPU backward of `conv2d` runs the input gradient through a naive
//! `conv_transpose2d` loop and the weight gradient as a conv2d whose "kernel" is the whole
//! output map; both are far slower than the forward pass (see `README.md` for the profile).
//! Here all three products are plain matrix multiplications:
//!
//! * forward:      `Y_b (C_out × P) = W (C_out × K) · col(X_b) (K × P)`
//! * input grad:   `dX_b = col2im( Wᵀ (K × C_out) · dY_b (C_out × P) )`
//! * weight grad:  `dW (C_out × K) = Σ_b dY_b (C_out × P) · col(X_b)ᵀ (P × K)`
//!
//! with `K = C_in·kh·kw` (rows ordered `(c, ky, kx)`, exactly the OIHW weight layout, so the
//! weight needs no reshuffle) and `P = H_out·W_out`.
//!
//! Work is split over fixed chunks of images ([`Geom::images_per_chunk`]) run in parallel with
//! rayon; each GEMM runs single-threaded (`Parallelism::None`). Every output element is written by
//! exactly one chunk, except the weight gradient, which sums over the batch: it is accumulated per
//! *reduction group* (a fixed run of consecutive chunks, [`Geom::weight_grad_groups`]) and the
//! group partials are then added in group order. Chunking depends only on the tensor shapes,
//! never on the number of threads, so results are bit-identical for any `RAYON_NUM_THREADS`.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Target number of GEMM columns (`images · P`) per chunk: below a few hundred columns the
/// packing overhead of the GEMM dominates (layer4 of a 32 px ResNet has P = 16).
const MIN_COLS_PER_CHUNK: usize = 256;
/// Upper bound on the weight-gradient reduction groups (and so on the partial sums alive at once).
const MAX_WEIGHT_GRAD_GROUPS: usize = 16;
/// Memory cap for the weight-gradient partial sums, in f32 elements (64 MiB).
const MAX_PARTIAL_ELEMS: usize = 16 << 20;

thread_local! {
    /// This thread's spare work buffers (see [`Scratch`]).
    static SCRATCH_POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A work buffer (im2col columns, GEMM staging) borrowed from the thread's pool and given back
/// on drop. Its contents are left over from earlier use: only for buffers that are written in
/// full before being read. Why: these buffers were `vec![0; n]` per call, and zeroing them was
/// about a tenth of a training step (`memset` in the profile); each replica thread (or rayon
/// worker) now keeps its few largest buffers.
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    pub(crate) fn take(len: usize) -> Scratch {
        let mut buf = SCRATCH_POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // At most a handful per thread (a forward holds two at once, a weight gradient three).
        let _ = SCRATCH_POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 4 {
                p.push(buf);
            }
        });
    }
}

/// Shapes of one convolution; all index arithmetic lives here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// Validates shapes the way `Tensor::conv2d` would and computes the output size.
    pub fn new(
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (n, c_in, h, wd) = x;
        let (c_out, c_in_w, kh, kw) = w;
        if stride == 0 {
            bail!("kernels::conv2d: stride must be >= 1");
        }
        if c_in != c_in_w {
            bail!("kernels::conv2d: input has {c_in} channels but weight expects {c_in_w} (groups must be 1)");
        }
        if kh == 0 || kw == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            bail!("kernels::conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd} (padding {pad})");
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (wd + 2 * pad - kw) / stride + 1;
        Ok(Self {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        })
    }

    /// Rows of the im2col matrix (= columns of the weight matrix).
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// Images per chunk: enough to give each GEMM at least [`MIN_COLS_PER_CHUNK`] columns.
    pub fn images_per_chunk(&self) -> usize {
        MIN_COLS_PER_CHUNK
            .div_ceil(self.p().max(1))
            .clamp(1, self.n.max(1))
    }

    pub(crate) fn chunks(&self) -> Vec<(usize, usize)> {
        let g = self.images_per_chunk();
        (0..self.n)
            .step_by(g)
            .map(|b0| (b0, (b0 + g).min(self.n)))
            .collect()
    }

    /// Number of weight-gradient partial sums: a function of the shape only.
    pub fn weight_grad_groups(&self) -> usize {
        let n_chunks = self.n.div_ceil(self.images_per_chunk());
        let by_mem = (MAX_PARTIAL_ELEMS / (self.c_out * self.k()).max(1)).max(1);
        n_chunks.min(MAX_WEIGHT_GRAD_GROUPS).min(by_mem).max(1)
    }

    /// The images `[b0, b1)` of each weight-gradient reduction group, in order: a run of whole
    /// chunks per group, fixed by the shape alone.
    pub fn weight_grad_group_images(&self) -> Vec<(usize, usize)> {
        let chunks = self.chunks();
        if chunks.is_empty() {
            return Vec::new();
        }
        let n_groups = self.weight_grad_groups();
        (0..n_groups)
            .map(|r| {
                let (c0, c1) = (
                    r * chunks.len() / n_groups,
                    (r + 1) * chunks.len() / n_groups,
                );
                (chunks[c0].0, chunks[c1 - 1].1)
            })
            .filter(|&(b0, b1)| b1 > b0)
            .collect()
    }
}

/// Writes the im2col matrix of `imgs` (consecutive images, each `C_in·H·W`) into `col`, laid out
/// `(K, n_img·P)` row-major, column index `(image, oy, ox)`. Padding reads as zero.
fn im2col(g: &Geom, imgs: &[f32], n_img: usize, col: &mut [f32]) {
    let (p, ncols) = (g.p(), n_img * g.p());
    let img_len = g.in_len();
    for c in 0..g.c_in {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (c * g.kh + ky) * g.kw + kx;
                let dst_row = &mut col[row * ncols..(row + 1) * ncols];
                for i in 0..n_img {
                    let plane = &imgs[i * img_len + c * g.h * g.w..][..g.h * g.w];
                    let dst = &mut dst_row[i * p..(i + 1) * p];
                    fill_im2col_row(g, plane, ky, kx, dst);
                }
            }
        }
    }
}

/// One `(c, ky, kx)` row of im2col for one image plane.
#[inline]
fn fill_im2col_row(g: &Geom, plane: &[f32], ky: usize, kx: usize, dst: &mut [f32]) {
    let (ox_lo, ox_hi) = valid_range(kx, g.pad, g.stride, g.w, g.wo);
    for oy in 0..g.ho {
        let d = &mut dst[oy * g.wo..(oy + 1) * g.wo];
        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
        if iy < 0 || iy >= g.h as isize || ox_lo >= ox_hi {
            d.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        d[..ox_lo].fill(0.0);
        d[ox_hi..].fill(0.0);
        let ix0 = ox_lo * g.stride + kx - g.pad;
        if g.stride == 1 {
            d[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + (ox_hi - ox_lo)]);
        } else {
            for (j, v) in d[ox_lo..ox_hi].iter_mut().enumerate() {
                *v = src[ix0 + j * g.stride];
            }
        }
    }
}

/// Output positions `[lo, hi)` along one axis whose input index `o·stride + k − pad` lies in
/// `[0, len)`.
#[inline]
fn valid_range(k: usize, pad: usize, stride: usize, len: usize, out_len: usize) -> (usize, usize) {
    // o·s + k ≥ pad  ⇔  o ≥ ceil((pad − k)/s)
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    // o·s + k − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − k)/s
    let hi = if len + pad > k {
        ((len - 1 + pad - k) / stride + 1).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Adds the columns of `col` (layout as in [`im2col`]) back into the images `imgs` (the adjoint of
/// `im2col`). Each image's accumulation order is fixed: rows in `(c, ky, kx)` order, then pixels.
fn col2im(g: &Geom, col: &[f32], n_img: usize, imgs: &mut [f32]) {
    let (p, ncols) = (g.p(), n_img * g.p());
    let img_len = g.in_len();
    for i in 0..n_img {
        let img = &mut imgs[i * img_len..(i + 1) * img_len];
        for c in 0..g.c_in {
            let plane = &mut img[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = (c * g.kh + ky) * g.kw + kx;
                    let src = &col[row * ncols + i * p..row * ncols + (i + 1) * p];
                    let (ox_lo, ox_hi) = valid_range(kx, g.pad, g.stride, g.w, g.wo);
                    if ox_lo >= ox_hi {
                        continue;
                    }
                    for oy in 0..g.ho {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let s = &src[oy * g.wo + ox_lo..oy * g.wo + ox_hi];
                        let ix0 = ox_lo * g.stride + kx - g.pad;
                        if g.stride == 1 {
                            for (d, v) in dst[ix0..ix0 + s.len()].iter_mut().zip(s) {
                                *d += v;
                            }
                        } else {
                            for (j, v) in s.iter().enumerate() {
                                dst[ix0 + j * g.stride] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)` with explicit (row, col) strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the largest index each operand is read/written at must be inside its slice, so the
    // raw-pointer GEMM below cannot go out of bounds.
    let last = |r: usize, c: usize, rs: usize, cs: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(last(m, n, dst_rs, dst_cs) < dst.len());
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * dst_rs + c * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(last(m, k, lhs_rs, lhs_cs) < lhs.len());
    assert!(last(k, n, rhs_rs, rhs_cs) < rhs.len());
    // SAFETY: all three operands were bounds-checked above; dst does not alias lhs/rhs (distinct
    // borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Copies `src[b0..b1]` (NCHW-like, `(n, rows, p)`) into `(rows, n_img·p)` row-major.
fn gather_rows(src: &[f32], rows: usize, p: usize, b0: usize, b1: usize, dst: &mut [f32]) {
    let ncols = (b1 - b0) * p;
    for (i, b) in (b0..b1).enumerate() {
        for r in 0..rows {
            dst[r * ncols + i * p..r * ncols + (i + 1) * p]
                .copy_from_slice(&src[(b * rows + r) * p..][..p]);
        }
    }
}

/// im2col + GEMM forward: `x` is `(n, C_in, H, W)` contiguous, `w` is `(C_out, C_in, kh, kw)`
/// contiguous. The path for shapes the direct kernels do not take, and their reference.
pub fn gemm_forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let mut out = vec![0f32; g.n * g.out_len()];
    let g_img = g.images_per_chunk();
    out.par_chunks_mut(g_img * g.out_len())
        .enumerate()
        .for_each(|(ci, out_chunk)| {
            let b0 = ci * g_img;
            let n_img = out_chunk.len() / g.out_len();
            let ncols = n_img * p;
            let mut col = Scratch::take(k * ncols);
            im2col(
                g,
                &x[b0 * g.in_len()..(b0 + n_img) * g.in_len()],
                n_img,
                &mut col,
            );
            if n_img == 1 {
                matmul(
                    co,
                    p,
                    k,
                    out_chunk,
                    (p, 1),
                    false,
                    w,
                    (k, 1),
                    &col,
                    (ncols, 1),
                );
            } else {
                let mut tmp = Scratch::take(co * ncols);
                matmul(
                    co,
                    ncols,
                    k,
                    &mut tmp,
                    (ncols, 1),
                    false,
                    w,
                    (k, 1),
                    &col,
                    (ncols, 1),
                );
                for i in 0..n_img {
                    for c in 0..co {
                        out_chunk[(i * co + c) * p..][..p]
                            .copy_from_slice(&tmp[c * ncols + i * p..][..p]);
                    }
                }
            }
        });
    out
}

/// im2col + GEMM input gradient: `dy` is `(n, C_out, H_out, W_out)` contiguous; returns
/// `(n, C_in, H, W)`.
pub fn gemm_input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let mut dx = vec![0f32; g.n * g.in_len()];
    let g_img = g.images_per_chunk();
    dx.par_chunks_mut(g_img * g.in_len())
        .enumerate()
        .for_each(|(ci, dx_chunk)| {
            let b0 = ci * g_img;
            let n_img = dx_chunk.len() / g.in_len();
            let ncols = n_img * p;
            let gathered;
            let dy_chunk: &[f32] = if n_img == 1 {
                &dy[b0 * g.out_len()..(b0 + 1) * g.out_len()]
            } else {
                let mut t = Scratch::take(co * ncols);
                gather_rows(dy, co, p, b0, b0 + n_img, &mut t);
                gathered = t;
                &gathered
            };
            let mut dcol = Scratch::take(k * ncols);
            // dcol (K × ncols) = Wᵀ (K × C_out) · dY (C_out × ncols); Wᵀ is W read with swapped strides.
            matmul(
                k,
                ncols,
                co,
                &mut dcol,
                (ncols, 1),
                false,
                w,
                (1, k),
                dy_chunk,
                (ncols, 1),
            );
            col2im(g, &dcol, n_img, dx_chunk);
        });
    dx
}

/// im2col + GEMM weight gradient: `x` is the forward input, `dy` the output gradient; returns
/// `(C_out, C_in, kh, kw)`.
pub fn gemm_weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p, co) = (g.k(), g.p(), g.c_out);
    let chunks = g.chunks();
    let n_groups = g.weight_grad_groups();
    let partials: Vec<Vec<f32>> = (0..n_groups)
        .into_par_iter()
        .map(|r| {
            let (c0, c1) = (
                r * chunks.len() / n_groups,
                (r + 1) * chunks.len() / n_groups,
            );
            let mut acc = vec![0f32; co * k];
            for (j, &(b0, b1)) in chunks[c0..c1].iter().enumerate() {
                let n_img = b1 - b0;
                let ncols = n_img * p;
                let mut col = Scratch::take(k * ncols);
                im2col(g, &x[b0 * g.in_len()..b1 * g.in_len()], n_img, &mut col);
                let gathered;
                let dy_chunk: &[f32] = if n_img == 1 {
                    &dy[b0 * g.out_len()..b1 * g.out_len()]
                } else {
                    let mut t = Scratch::take(co * ncols);
                    gather_rows(dy, co, p, b0, b1, &mut t);
                    gathered = t;
                    &gathered
                };
                // acc (C_out × K) += dY (C_out × ncols) · colᵀ (ncols × K)
                {
                    matmul(
                        co,
                        k,
                        ncols,
                        &mut acc,
                        (k, 1),
                        j > 0,
                        dy_chunk,
                        (ncols, 1),
                        &col,
                        (1, ncols),
                    );
                }
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; co * k]);
    for part in it {
        for (d, v) in dw.iter_mut().zip(&part) {
            *d += v;
        }
    }
    dw
}

/// Which path a convolution takes; one place so the op, the benches and the tests agree.
///
/// Measured (`benches/conv.rs`, `kernel/…`, one thread, 2-core EPYC Zen 3, machine shared):
/// the direct kernels win 1.5–4× on 3×3 convolutions with up to 64 channels (the study's
/// width ×0.125 everywhere, full width's layer1) — forward, weight gradient, and the input
/// gradient on maps of 8×8 and more, stride 2 included since it runs as `s²` phase
/// convolutions without the dilated gradient's zeros (8→16 ch at 32 px: 1.4 vs 2.0 ms; 16→32
/// at 16 px: 1.9 vs 2.7 ms; 32→64 at 8 px: a tie) — and the 1×1 stride-2 forward (0.5 vs
/// 1.3 ms, 0.24 vs 0.53 ms, 0.26 vs 0.29 ms at 8→16, 16→32, 32→64; the phase-skipping fill
/// copies a quarter of the input). They lose to im2col + GEMM (whose cache blocking they lack)
/// at 128+ channels, on the 1×1 input and weight gradients (0.4 vs 0.2–1.1 ms: the GEMM's K is
/// the channel count and nothing is copied), on the 4×4 input gradient, and on the 3-channel
/// stem's weight gradient. Those keep the GEMM.
fn direct_forward(g: &Geom) -> bool {
    g.c_in <= 64 && g.c_out <= 64
}

/// See [`direct_forward`].
fn direct_weight_grad(g: &Geom) -> bool {
    direct_forward(g) && g.kh * g.kw > 1 && g.c_in >= 8
}

/// See [`direct_forward`].
fn direct_input_grad(g: &Geom) -> bool {
    direct_forward(g)
        && g.kh * g.kw > 1
        && g.h * g.w >= 64
        && crate::direct::input_grad_supported(g)
}

/// Forward convolution: `x (n, C_in, H, W)`, `w (C_out, C_in, kh, kw)`, both contiguous.
pub fn conv2d_forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if direct_forward(g) {
        crate::direct::forward(crate::direct::Isa::detect(), g, x, w)
    } else {
        gemm_forward(g, x, w)
    }
}

/// Input gradient: `dy (n, C_out, H_out, W_out)` contiguous → `(n, C_in, H, W)`.
pub fn conv2d_input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if direct_input_grad(g) {
        if let Some(dx) = crate::direct::input_grad(crate::direct::Isa::detect(), g, dy, w) {
            return dx;
        }
    }
    gemm_input_grad(g, dy, w)
}

/// Weight gradient: `x` the forward input, `dy` the output gradient → `(C_out, C_in, kh, kw)`.
pub fn conv2d_weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if direct_weight_grad(g) {
        crate::direct::weight_grad(crate::direct::Isa::detect(), g, x, dy)
    } else {
        gemm_weight_grad(g, x, dy)
    }
}

/// Borrows an f32 CPU storage as a contiguous slice, copying only when the layout is strided.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => bail!("kernels: {what} must be f32"),
    };
    Ok(match l.contiguous_offsets() {
        Some((a, b)) => Cow::Borrowed(&v[a..b]),
        None => Cow::Owned(gather_strided(v, l)),
    })
}

/// Copies a strided view into a fresh row-major vector (odometer over the dims).
fn gather_strided(v: &[f32], l: &Layout) -> Vec<f32> {
    let (dims, strides) = (l.dims(), l.stride());
    let n = dims.iter().product::<usize>();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..n {
        let off: usize =
            l.start_offset() + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.push(v[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("kernels::conv2d: {what} must be 4-D, got shape {d:?}"),
    }
}

/// One of the three convolution products as a candle op: how it reads its two operands'
/// layouts, the shape it returns and the kernel it runs on each device. [`conv_custom_op!`]
/// turns an implementor into the `CustomOp2` (one definition of the boilerplate, issue #28).
trait ConvProduct {
    /// The op's name in candle's graph.
    const NAME: &'static str;
    /// The two operands, for error messages (and the CPU copy of a strided view).
    const OPERANDS: [&'static str; 2];
    /// The forward convolution's geometry, checked against both operands' shapes.
    fn geom(&self, l1: &Layout, l2: &Layout) -> Result<Geom>;
    /// The result's shape.
    fn out_dims(g: &Geom) -> (usize, usize, usize, usize);
    /// The CPU kernel on contiguous operands.
    fn cpu(g: &Geom, a: &[f32], b: &[f32]) -> Vec<f32>;
    /// The cuDNN kernel (feature `cudnn`; operands contiguous, see [`super::conv2d`]).
    #[cfg(feature = "cudnn")]
    fn cuda(
        g: &Geom,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<candle_core::CudaStorage>;
}

/// `impl CustomOp2` for a [`ConvProduct`]: name, CPU and cuDNN forwards; `bwd = path` adds a
/// backward (`fn(&Self, &Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>,
/// Option<Tensor>)>`), without it candle's default (no double backward) stays. A macro, not a
/// blanket impl: `CustomOp2` is candle's trait, so the orphan rule wants one impl per type.
macro_rules! conv_custom_op {
    ($t:ty $(, bwd = $bwd:path)?) => {
        impl CustomOp2 for $t {
            fn name(&self) -> &'static str {
                <$t as ConvProduct>::NAME
            }

            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let g = self.geom(l1, l2)?;
                let [n1, n2] = <$t as ConvProduct>::OPERANDS;
                let a = contiguous_f32(s1, l1, n1)?;
                let b = contiguous_f32(s2, l2, n2)?;
                let out = <$t as ConvProduct>::cpu(&g, &a, &b);
                let dims = <$t as ConvProduct>::out_dims(&g);
                Ok((CpuStorage::F32(out), Shape::from(dims)))
            }

            #[cfg(feature = "cudnn")]
            fn cuda_fwd(
                &self,
                s1: &candle_core::CudaStorage,
                l1: &Layout,
                s2: &candle_core::CudaStorage,
                l2: &Layout,
            ) -> Result<(candle_core::CudaStorage, Shape)> {
                let g = self.geom(l1, l2)?;
                let out = <$t as ConvProduct>::cuda(&g, s1, l1, s2, l2)?;
                Ok((out, Shape::from(<$t as ConvProduct>::out_dims(&g))))
            }

            $(
                fn bwd(
                    &self,
                    a: &Tensor,
                    b: &Tensor,
                    res: &Tensor,
                    grad: &Tensor,
                ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                    $bwd(self, a, b, res, grad)
                }
            )?
        }
    };
}

/// The autograd-aware conv2d op (`apply_op2(x, w)`).
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

impl ConvProduct for Conv2dOp {
    const NAME: &'static str = "fast-conv2d";
    const OPERANDS: [&'static str; 2] = ["input", "weight"];

    fn geom(&self, l1: &Layout, l2: &Layout) -> Result<Geom> {
        Geom::new(
            dims4(l1, "input")?,
            dims4(l2, "weight")?,
            self.stride,
            self.padding,
        )
    }

    fn out_dims(g: &Geom) -> (usize, usize, usize, usize) {
        (g.n, g.c_out, g.ho, g.wo)
    }

    fn cpu(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
        conv2d_forward(g, x, w)
    }

    #[cfg(feature = "cudnn")]
    fn cuda(
        g: &Geom,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<candle_core::CudaStorage> {
        super::cuda::cudnn::conv_forward(g, s1, l1, s2, l2)
    }
}

conv_custom_op!(Conv2dOp, bwd = Conv2dOp::backward);

impl Conv2dOp {
    /// Gradients as further custom ops (no double backward: they use `apply_op2_no_bwd`). A
    /// gradient is only computed for an argument that autograd tracks (e.g. not for the images).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        // cuDNN reads dense NCHW; the CPU kernels read any layout (no copy there).
        #[cfg(feature = "cudnn")]
        let grad = &if grad.device().is_cuda() {
            grad.contiguous()?
        } else {
            grad.clone()
        };
        let dx = if x.track_op() {
            let op = Conv2dInputGrad {
                stride: self.stride,
                padding: self.padding,
                h,
                w: wd,
            };
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let (_, _, kh, kw) = w.dims4()?;
            let op = Conv2dWeightGrad {
                stride: self.stride,
                padding: self.padding,
                kh,
                kw,
            };
            Some(x.apply_op2_no_bwd(grad, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `apply_op2_no_bwd(grad_out, w)` → gradient w.r.t. the conv input of spatial size `h × w`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dInputGrad {
    pub stride: usize,
    pub padding: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvProduct for Conv2dInputGrad {
    const NAME: &'static str = "fast-conv2d-input-grad";
    const OPERANDS: [&'static str; 2] = ["output gradient", "weight"];

    /// The forward conv's geometry from the output gradient's and the weight's layouts.
    fn geom(&self, l1: &Layout, l2: &Layout) -> Result<Geom> {
        let (n, c_out, ho, wo) = dims4(l1, "output gradient")?;
        let wdims = dims4(l2, "weight")?;
        let g = Geom::new(
            (n, wdims.1, self.h, self.w),
            wdims,
            self.stride,
            self.padding,
        )?;
        if (g.c_out, g.ho, g.wo) != (c_out, ho, wo) {
            bail!(
                "kernels::conv2d input grad: gradient shape {:?} does not match geometry {g:?}",
                l1.dims()
            );
        }
        Ok(g)
    }

    fn out_dims(g: &Geom) -> (usize, usize, usize, usize) {
        (g.n, g.c_in, g.h, g.w)
    }

    fn cpu(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
        conv2d_input_grad(g, dy, w)
    }

    /// cuDNN backward-data.
    #[cfg(feature = "cudnn")]
    fn cuda(
        g: &Geom,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<candle_core::CudaStorage> {
        super::cuda::cudnn::conv_input_grad(g, s1, l1, s2, l2)
    }
}

conv_custom_op!(Conv2dInputGrad);

/// `apply_op2_no_bwd(x, grad_out)` → gradient w.r.t. the `kh × kw` conv weight.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dWeightGrad {
    pub stride: usize,
    pub padding: usize,
    pub kh: usize,
    pub kw: usize,
}

impl ConvProduct for Conv2dWeightGrad {
    const NAME: &'static str = "fast-conv2d-weight-grad";
    const OPERANDS: [&'static str; 2] = ["input", "output gradient"];

    /// The forward conv's geometry from the input's and the output gradient's layouts.
    fn geom(&self, l1: &Layout, l2: &Layout) -> Result<Geom> {
        let xd = dims4(l1, "input")?;
        let (n, c_out, ho, wo) = dims4(l2, "output gradient")?;
        let g = Geom::new(
            xd,
            (c_out, xd.1, self.kh, self.kw),
            self.stride,
            self.padding,
        )?;
        if (g.n, g.ho, g.wo) != (n, ho, wo) {
            bail!(
                "kernels::conv2d weight grad: gradient shape {:?} does not match geometry {g:?}",
                l2.dims()
            );
        }
        Ok(g)
    }

    fn out_dims(g: &Geom) -> (usize, usize, usize, usize) {
        (g.c_out, g.c_in, g.kh, g.kw)
    }

    fn cpu(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
        conv2d_weight_grad(g, x, dy)
    }

    /// cuDNN backward-filter.
    #[cfg(feature = "cudnn")]
    fn cuda(
        g: &Geom,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<candle_core::CudaStorage> {
        super::cuda::cudnn::conv_weight_grad(g, s1, l1, s2, l2)
    }
}

conv_custom_op!(Conv2dWeightGrad);

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive direct convolution, the definition.
    fn naive(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; g.n * g.c_out * g.p()];
        for b in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut s = 0f64;
                        for c in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * g.c_in + c) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = w[((o * g.c_in + c) * g.kh + ky) * g.kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((b * g.c_out + o) * g.ho + oy) * g.wo + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn hand_computed_3x3_padding_1() {
        // 1 image, 1 channel 2x2 [[1,2],[3,4]], all-ones 3x3 kernel, padding 1: every output sees
        // the whole image → 10 everywhere.
        let g = Geom::new((1, 1, 2, 2), (1, 1, 3, 3), 1, 1).unwrap();
        let y = conv2d_forward(&g, &[1., 2., 3., 4.], &[1.; 9]);
        assert_eq!(y, vec![10.; 4]);
        // stride 2 → 1x1 output, top-left window covers only pixel (0,0),(0,1),(1,0),(1,1) with
        // weights at positions (1,1),(1,2),(2,1),(2,2).
        let g = Geom::new((1, 1, 2, 2), (1, 1, 3, 3), 2, 1).unwrap();
        let w = [0., 0., 0., 0., 1., 10., 0., 100., 1000.];
        assert_eq!(
            conv2d_forward(&g, &[1., 2., 3., 4.], &w),
            vec![1. + 20. + 300. + 4000.]
        );
    }

    #[test]
    fn matches_naive_with_multi_image_chunks() {
        // P = 4 → 64 images per chunk: exercises the gather/scatter paths.
        for &(n, stride, pad, k) in &[(70, 1, 1, 3), (5, 2, 0, 1), (3, 2, 2, 5)] {
            let g = Geom::new((n, 3, 4, 3), (4, 3, k, k), stride, pad).unwrap();
            let x: Vec<f32> = (0..n * 3 * 12)
                .map(|i| ((i * 37 % 101) as f32 - 50.) / 25.)
                .collect();
            let w: Vec<f32> = (0..4 * 3 * k * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.) / 30.)
                .collect();
            let y = conv2d_forward(&g, &x, &w);
            let r = naive(&g, &x, &w);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() <= 1e-4 * (1. + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn adjoint_identities() {
        // <conv(x, w), dy> = <x, input_grad(dy, w)> = <w, weight_grad(x, dy)>.
        for &(n, stride, pad, k, h, wd) in
            &[(3, 2, 1, 3, 7, 5), (70, 1, 0, 1, 2, 2), (2, 1, 3, 5, 4, 6)]
        {
            let g = Geom::new((n, 2, h, wd), (3, 2, k, k), stride, pad).unwrap();
            let x: Vec<f32> = (0..n * 2 * h * wd)
                .map(|i| ((i * 37 % 101) as f32 - 50.) / 25.)
                .collect();
            let w: Vec<f32> = (0..3 * 2 * k * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.) / 30.)
                .collect();
            let dy: Vec<f32> = (0..n * 3 * g.p())
                .map(|i| ((i * 29 % 89) as f32 - 44.) / 20.)
                .collect();
            let dot = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
            };
            let lhs = dot(&naive(&g, &x, &w), &dy);
            let via_x = dot(&x, &conv2d_input_grad(&g, &dy, &w));
            let via_w = dot(&w, &conv2d_weight_grad(&g, &x, &dy));
            assert!(
                (lhs - via_x).abs() <= 1e-4 * (1. + lhs.abs()),
                "{lhs} vs {via_x}"
            );
            assert!(
                (lhs - via_w).abs() <= 1e-4 * (1. + lhs.abs()),
                "{lhs} vs {via_w}"
            );
        }
    }

    #[test]
    fn weight_grad_bitwise_independent_of_thread_count() {
        let g = Geom::new((37, 4, 6, 6), (5, 4, 3, 3), 1, 1).unwrap();
        let x: Vec<f32> = (0..37 * 4 * 36)
            .map(|i| ((i * 37 % 101) as f32 - 50.) / 25.)
            .collect();
        let dy: Vec<f32> = (0..37 * 5 * 36)
            .map(|i| ((i * 29 % 89) as f32 - 44.) / 20.)
            .collect();
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| conv2d_weight_grad(&g, &x, &dy))
        };
        assert!(g.weight_grad_groups() > 1);
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Geom::new((1, 3, 4, 4), (2, 4, 3, 3), 1, 0).is_err());
        assert!(Geom::new((1, 3, 2, 2), (2, 3, 5, 5), 1, 1).is_err());
        assert!(Geom::new((1, 3, 4, 4), (2, 3, 3, 3), 0, 0).is_err());
    }
}
