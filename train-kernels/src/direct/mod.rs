//! Direct convolution (no im2col copy) on the CPU: forward, input gradient and weight gradient.
//!
//! Why: at the channel counts this project trains (8–64 at width ×0.125, up to 512 at full
//! width) the im2col + GEMM path spent about as long copying (im2col, GEMM packing, memset) as
//! multiplying, and the GEMM's microkernel is poorly filled when `C_out` is 8 or 16. Here each
//! input image is copied once into a zero-padded, phase-split buffer ([`Flat`]) and the products
//! are read straight out of it with a table of tap offsets.
//!
//! ## The buffer and its flat positions
//!
//! For stride `s`, each input channel is split into `s²` *phase planes* of `hq × wq`:
//! `plane[py][px][i][j] = X̃[i·s + py][j·s + px]`, where `X̃` is the input zero-padded by `pad`
//! (and, for the input gradient, dilated by the forward stride). Output `(oy, ox)` then reads tap
//! `(c, ky, kx)` at `offs[(c, ky, kx)] + oy·wq + ox`: every tap is a *shift* of the same flat
//! index `q = oy·wq + ox`, so a run of 8 consecutive `q` is one unaligned vector load, for any
//! stride. Columns `wo..wq` of each row are "garbage" positions that are computed and dropped.
//!
//! ## Fixed arithmetic order (bit-identical on every ISA)
//!
//! * **forward / input gradient**: each output element is one FMA chain over its taps in
//!   `(c, ky, kx)` order starting from `0.0`: `acc = fma(x, w, acc)`. Vectors run over
//!   positions, so a lane never mixes with another: the AVX2 kernel and the portable kernel
//!   (`f32::mul_add` in the same order) give the same bits. The input gradient is the forward
//!   kernel on the output gradient dilated by the stride and padded by `k − 1 − pad`, with the
//!   weights transposed and flipped, so its chain runs over `(o, ky', kx')`.
//! * **weight gradient**: per image, each `dW[o][c, ky, kx]` is one FMA chain over the output
//!   positions in row-major order starting from `0.0`; the per-image sums are added in image
//!   order into one partial per *reduction group* (runs of images fixed by the shape,
//!   [`super::conv::Geom::weight_grad_groups`]); the group partials are added in group order.
//!   Vectors run over output channels (8 per vector), so again no lane mixes with another.
//!
//! Nothing depends on the number of threads: images are split over rayon in chunks fixed by the
//! shape. The AVX2 + FMA kernels are chosen at run time ([`Isa::detect`]); on AVX-512 machines
//! they run unchanged (an AVX-512 variant would have to reproduce the same per-lane chains and
//! is left out, so results there equal the AVX2 results). Other CPUs (and aarch64) run the
//! portable kernels, which are also the tests' oracle.

use crate::conv::{Geom, Scratch};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;

/// Which kernels run. Every variant computes the same bits; only the speed differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust with `f32::mul_add` (any CPU; the reference).
    Portable,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2,
}

impl Isa {
    /// The fastest kernels this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Output channels per forward register tile (and the weight-packing block).
pub(crate) const FWD_R: usize = 4;
/// Output channels per vector in the weight gradient.
pub(crate) const LANES: usize = 8;

/// The padded, phase-split copy of one image and the tap offsets into it (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Flat {
    /// Source (unpadded) size of one channel plane.
    src_h: usize,
    src_w: usize,
    /// Zero padding before the first source row/column (in dilated coordinates).
    pad: usize,
    /// Source dilation: source pixel `(a, b)` sits at `(a·dil, b·dil)` before padding.
    dil: usize,
    /// Stride of the convolution run on the buffer.
    stride: usize,
    pub(crate) c: usize,
    hq: usize,
    pub(crate) wq: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    /// Flat positions computed per output plane (`ho·wq` rounded up to a whole vector).
    pub(crate) qpad: usize,
    /// Buffer offset of each tap, `(c, ky, kx)` order.
    pub(crate) offs: Vec<usize>,
    /// Buffer length: every read of every computed position (garbage ones too) is inside.
    pub(crate) buf_len: usize,
}

impl Flat {
    #[allow(clippy::too_many_arguments)]
    fn new(
        c: usize,
        (src_h, src_w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: usize,
        dil: usize,
        (ho, wo): (usize, usize),
    ) -> Flat {
        let s = stride;
        let hq = ho + (kh - 1) / s;
        let wq = wo + (kw - 1) / s;
        let plane = hq * wq;
        let chan = s * s * plane;
        let mut offs = Vec::with_capacity(c * kh * kw);
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    offs.push(ci * chan + ((ky % s) * s + kx % s) * plane + (ky / s) * wq + kx / s);
                }
            }
        }
        let qpad = (ho * wq).div_ceil(LANES) * LANES;
        let max_off = offs.iter().copied().max().unwrap_or(0);
        Flat {
            src_h,
            src_w,
            pad,
            dil,
            stride,
            c,
            hq,
            wq,
            ho,
            wo,
            qpad,
            buf_len: (max_off + qpad).max(c * chan),
            offs,
        }
    }

    /// The buffer for a forward convolution (or weight gradient) of `g`.
    pub(crate) fn forward(g: &Geom) -> Flat {
        Flat::new(
            g.c_in,
            (g.h, g.w),
            (g.kh, g.kw),
            g.stride,
            g.pad,
            1,
            (g.ho, g.wo),
        )
    }

    /// The buffer for the input gradient of `g` (a stride-1 convolution of the dilated, padded
    /// output gradient); `None` when `pad > k − 1` (a negative padding) or the kernel is not
    /// square in its padding sense.
    pub(crate) fn input_grad(g: &Geom) -> Option<Flat> {
        if g.pad + 1 > g.kh || g.pad + 1 > g.kw || g.kh != g.kw {
            return None;
        }
        Some(Flat::new(
            g.c_out,
            (g.ho, g.wo),
            (g.kh, g.kw),
            1,
            g.kh - 1 - g.pad,
            g.stride,
            (g.h, g.w),
        ))
    }

    /// Writes the padded, dilated, phase-split copy of one image (`c` planes of
    /// `src_h × src_w`) into `buf[..c·s²·hq·wq]`. The slack after it is left as it is: only
    /// garbage positions read it.
    pub(crate) fn fill(&self, img: &[f32], buf: &mut [f32]) {
        let (s, hq, wq) = (self.stride, self.hq, self.wq);
        let plane = hq * wq;
        let src_len = self.src_h * self.src_w;
        // Source index along one axis for padded coordinate `a`, if any.
        let src_at = |a: usize, len: usize| -> Option<usize> {
            let a = a.checked_sub(self.pad)?;
            (a % self.dil == 0 && a / self.dil < len).then_some(a / self.dil)
        };
        // Strided / dilated case: per column phase, the source column of each buffer column (or
        // none), computed once instead of a division per element.
        let col_maps: Vec<Vec<Option<usize>>> = if s == 1 && self.dil == 1 {
            Vec::new()
        } else {
            (0..s)
                .map(|px| (0..wq).map(|j| src_at(j * s + px, self.src_w)).collect())
                .collect()
        };
        for ci in 0..self.c {
            let src = &img[ci * src_len..(ci + 1) * src_len];
            let chan = &mut buf[ci * s * s * plane..(ci + 1) * s * s * plane];
            if s == 1 && self.dil == 1 {
                // The common case: one plane, rows copied whole.
                for i in 0..hq {
                    let row = &mut chan[i * wq..(i + 1) * wq];
                    match src_at(i, self.src_h) {
                        None => row.fill(0.0),
                        Some(a) => {
                            let lo = self.pad.min(wq);
                            let n = self.src_w.min(wq - lo);
                            row[..lo].fill(0.0);
                            row[lo..lo + n]
                                .copy_from_slice(&src[a * self.src_w..a * self.src_w + n]);
                            row[lo + n..].fill(0.0);
                        }
                    }
                }
                continue;
            }
            for py in 0..s {
                for (px, cols) in col_maps.iter().enumerate() {
                    let pl = &mut chan[(py * s + px) * plane..(py * s + px + 1) * plane];
                    for i in 0..hq {
                        let row = &mut pl[i * wq..(i + 1) * wq];
                        match src_at(i * s + py, self.src_h) {
                            None => row.fill(0.0),
                            Some(a) => {
                                let srow = &src[a * self.src_w..(a + 1) * self.src_w];
                                for (v, c) in row.iter_mut().zip(cols) {
                                    *v = c.map_or(0.0, |b| srow[b]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs OIHW-like weights `w (c_out × k)` as `[o-block of FWD_R][tap][r]`, zero rows added up
/// to a whole block, so the forward kernel broadcasts consecutive floats.
fn pack_weights(w: &[f32], c_out: usize, k: usize) -> Vec<f32> {
    let blocks = c_out.div_ceil(FWD_R);
    let mut p = vec![0f32; blocks * k * FWD_R];
    for o in 0..c_out {
        let (b, r) = (o / FWD_R, o % FWD_R);
        for t in 0..k {
            p[(b * k + t) * FWD_R + r] = w[o * k + t];
        }
    }
    p
}

/// One image of a direct convolution: `out` is `c_out` planes of `ho × wo`.
#[allow(clippy::too_many_arguments)]
fn conv_image(isa: Isa, fl: &Flat, img: &[f32], wp: &[f32], c_out: usize, out: &mut [f32]) {
    let mut buf = Scratch::take(fl.buf_len);
    fl.fill(img, &mut buf);
    let rows = c_out.div_ceil(FWD_R) * FWD_R;
    let mut flat_out = Scratch::take(rows * fl.qpad);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::conv_planes(fl, &buf, wp, rows, &mut flat_out),
        _ => portable::conv_planes(fl, &buf, wp, rows, &mut flat_out),
    }
    let plane = fl.ho * fl.wo;
    for o in 0..c_out {
        for oy in 0..fl.ho {
            out[o * plane + oy * fl.wo..][..fl.wo]
                .copy_from_slice(&flat_out[o * fl.qpad + oy * fl.wq..][..fl.wo]);
        }
    }
}

/// Forward convolution, any stride/padding/kernel: `x (n, C_in, H, W)`, `w (C_out, C_in, kh, kw)`.
pub fn forward(isa: Isa, g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let fl = Flat::forward(g);
    let wp = pack_weights(w, g.c_out, g.k());
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.p());
    let mut y = vec![0f32; g.n * out_len];
    if out_len == 0 {
        return y;
    }
    let per = g.images_per_chunk();
    y.par_chunks_mut(per * out_len)
        .enumerate()
        .for_each(|(ci, ych)| {
            for (i, yi) in ych.chunks_mut(out_len).enumerate() {
                let b = ci * per + i;
                conv_image(isa, &fl, &x[b * in_len..][..in_len], &wp, g.c_out, yi);
            }
        });
    y
}

/// Whether [`input_grad`] handles `g` (padding at most `k − 1`, square kernel).
pub fn input_grad_supported(g: &Geom) -> bool {
    Flat::input_grad(g).is_some()
}

/// Input gradient: `dy (n, C_out, H_out, W_out)`, `w (C_out, C_in, kh, kw)` → `(n, C_in, H, W)`.
/// `None` where [`input_grad_supported`] is false.
pub fn input_grad(isa: Isa, g: &Geom, dy: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    let fl = Flat::input_grad(g)?;
    let (kh, kw) = (g.kh, g.kw);
    // Transposed, flipped weights: w'[c][o][ky][kx] = w[o][c][kh−1−ky][kw−1−kx].
    let kt = g.c_out * kh * kw;
    let mut wt = vec![0f32; g.c_in * kt];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for ky in 0..kh {
                for kx in 0..kw {
                    wt[c * kt + (o * kh + ky) * kw + kx] =
                        w[((o * g.c_in + c) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)];
                }
            }
        }
    }
    let wp = pack_weights(&wt, g.c_in, kt);
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.p());
    let mut dx = vec![0f32; g.n * in_len];
    if in_len == 0 {
        return Some(dx);
    }
    let per = g.images_per_chunk();
    dx.par_chunks_mut(per * in_len)
        .enumerate()
        .for_each(|(ci, ch)| {
            for (i, di) in ch.chunks_mut(in_len).enumerate() {
                let b = ci * per + i;
                conv_image(isa, &fl, &dy[b * out_len..][..out_len], &wp, g.c_in, di);
            }
        });
    Some(dx)
}

/// Weight gradient: `x (n, C_in, H, W)`, `dy (n, C_out, H_out, W_out)` → `(C_out, C_in, kh, kw)`.
pub fn weight_grad(isa: Isa, g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let fl = Flat::forward(g);
    let k = g.k();
    let co8 = g.c_out.div_ceil(LANES) * LANES;
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.p());
    let groups = g.weight_grad_group_images();
    // Each group: Σ over its images (in order) of the per-image sums, layout [tap][co8].
    let partials: Vec<Vec<f32>> = groups
        .par_iter()
        .map(|&(b0, b1)| {
            let mut acc = vec![0f32; k * co8];
            let mut buf = Scratch::take(fl.buf_len);
            let mut dyt = Scratch::take(g.p() * co8);
            for b in b0..b1 {
                fl.fill(&x[b * in_len..][..in_len], &mut buf);
                transpose_dy(&dy[b * out_len..][..out_len], g.c_out, g.p(), co8, &mut dyt);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => avx2::weight_grad_image(&fl, &buf, &dyt, co8, &mut acc),
                    _ => portable::weight_grad_image(&fl, &buf, &dyt, co8, &mut acc),
                }
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut sum = it.next().unwrap_or_else(|| vec![0f32; k * co8]);
    for part in it {
        for (d, v) in sum.iter_mut().zip(&part) {
            *d += v;
        }
    }
    let mut dw = vec![0f32; g.c_out * k];
    for o in 0..g.c_out {
        for t in 0..k {
            dw[o * k + t] = sum[t * co8 + o];
        }
    }
    dw
}

/// `dyt[q][o] = dy[o][q]` for one image, output channels padded with zeros to `co8`.
fn transpose_dy(dy: &[f32], c_out: usize, p: usize, co8: usize, dyt: &mut [f32]) {
    for q in 0..p {
        let row = &mut dyt[q * co8..(q + 1) * co8];
        for (o, v) in row[..c_out].iter_mut().enumerate() {
            *v = dy[o * p + q];
        }
        row[c_out..].fill(0.0);
    }
}
