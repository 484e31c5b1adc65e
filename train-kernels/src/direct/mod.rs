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
//! (planes no tap reads, `py ≥ kh` or `px ≥ kw`, are not filled). Output `(oy, ox)` then reads tap
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
//!   kernel run once per input phase ([`InputGradPlan`]) on the zero-padded output gradient with
//!   the phase's taps of the transposed, flipped weights, so its chain runs over `(o, ky', kx')`
//!   (at stride 1: exactly the transposed convolution; at stride 2 no product with a dilation
//!   zero is computed).
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

use std::mem::MaybeUninit;

use crate::conv::{Geom, Scratch};
use crate::{assume_init, uninit};
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
    /// Zero padding before the first source row/column.
    pad: usize,
    /// Stride of the convolution run on the buffer.
    stride: usize,
    /// Kernel size: phase planes `(py, px)` with `py ≥ kh` or `px ≥ kw` are read by no tap and
    /// not filled (a 1×1 stride-2 convolution copies a quarter of its input, not all of it).
    kh: usize,
    kw: usize,
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
    fn new(
        c: usize,
        (src_h, src_w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: usize,
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
            stride,
            kh,
            kw,
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
            (g.ho, g.wo),
        )
    }

    /// The same buffer read as another convolution: `offs` into it, `ho × wo` outputs at row
    /// pitch `wq`. For the input gradient's phases ([`InputGradPlan`]).
    fn reread(&self, offs: Vec<usize>, (ho, wo): (usize, usize)) -> Flat {
        let qpad = (ho * self.wq).div_ceil(LANES) * LANES;
        let max_off = offs.iter().copied().max().unwrap_or(0);
        Flat {
            ho,
            wo,
            qpad,
            buf_len: self.buf_len.max(max_off + qpad),
            offs,
            ..self.clone()
        }
    }

    /// Writes the padded, phase-split copy of one image (`c` planes of `src_h × src_w`) into
    /// `buf[..c·s²·hq·wq]`, skipping phase planes no tap reads. The slack after it (and the
    /// skipped planes) are left as they are: only garbage positions read them.
    pub(crate) fn fill(&self, img: &[f32], buf: &mut [f32]) {
        let (s, hq, wq, pad) = (self.stride, self.hq, self.wq, self.pad);
        let plane = hq * wq;
        let src_len = self.src_h * self.src_w;
        // Per column phase: the buffer columns [lo, hi) that hold source columns.
        let col_range = |px: usize| -> (usize, usize) {
            let lo = pad.saturating_sub(px).div_ceil(s).min(wq);
            let hi = if self.src_w + pad > px {
                ((self.src_w - 1 + pad - px) / s + 1).min(wq)
            } else {
                0
            };
            (lo, hi.max(lo))
        };
        // Per row phase: the buffer rows [lo, hi) that hold source rows.
        let row_range = |py: usize| -> (usize, usize) {
            let lo = pad.saturating_sub(py).div_ceil(s).min(hq);
            let hi = if self.src_h + pad > py {
                ((self.src_h - 1 + pad - py) / s + 1).min(hq)
            } else {
                0
            };
            (lo, hi.max(lo))
        };
        for ci in 0..self.c {
            let src = &img[ci * src_len..(ci + 1) * src_len];
            let chan = &mut buf[ci * s * s * plane..(ci + 1) * s * s * plane];
            for py in 0..s.min(self.kh) {
                let (r0, r1) = row_range(py);
                for px in 0..s.min(self.kw) {
                    let (lo, hi) = col_range(px);
                    let pl = &mut chan[(py * s + px) * plane..(py * s + px + 1) * plane];
                    // One memset of the plane where it has padding: per-row fills of the one
                    // or two padding columns were a `memset` call each (2 % of the study's
                    // step with their call overhead), more than writing the plane twice.
                    if r0 > 0 || r1 < hq || lo > 0 || hi < wq {
                        pl.fill(0.0);
                    }
                    if hi == lo {
                        continue;
                    }
                    let b0 = lo * s + px - pad;
                    for i in r0..r1 {
                        // Inside the source by `row_range`.
                        let a = i * s + py - pad;
                        let srow = &src[a * self.src_w..(a + 1) * self.src_w];
                        let row = &mut pl[i * wq + lo..i * wq + hi];
                        if s == 1 {
                            row.copy_from_slice(&srow[b0..b0 + (hi - lo)]);
                        } else {
                            for (v, &x) in row.iter_mut().zip(srow[b0..].iter().step_by(s)) {
                                *v = x;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The input gradient as `s²` stride-1 convolutions, one per *phase* `(ry, rx)` of the input
/// (pixels `iy ≡ ry − pad`, `ix ≡ rx − pad` mod `s`), all reading one zero-padded copy of the
/// output gradient (no dilation: only the taps `ky ≡ ry`, `kx ≡ rx` mod `s` touch a phase, so
/// no product with an inserted zero is computed — the dilated formulation did 4× the work at
/// stride 2).
///
/// For input row `iy = a·s + ry − pad`: `dx = Σ_o Σ_j Σ_i dy[o][a − j][b − i] ·
/// w[o][c][j·s + ry][i·s + rx]` over the `J = ⌈(kh − ry)/s⌉` (`I` likewise) taps of the phase.
/// Tap `t` of the chain is `j = J − 1 − t`, so at stride 1 (one phase) the chain is the
/// transposed convolution's, `(o, ky', kx')` with flipped weights, exactly as before.
struct InputGradPlan {
    /// The padded output gradient: `c_out` planes, no phases.
    base: Flat,
    /// Every phase with at least one tap and one pixel.
    phases: Vec<Phase>,
    /// The largest buffer any phase reads.
    buf_len: usize,
}

/// One phase of an [`InputGradPlan`].
struct Phase {
    /// The padded gradient read as this phase's convolution.
    fl: Flat,
    /// Its taps of the transposed weights, packed for the forward kernel.
    wp: Vec<f32>,
    /// The input pixel of its first output: phase pixel `(a, b)` is input pixel
    /// `(a·s + ry − pad, b·s + rx − pad)`, its outputs step by the stride from here.
    at: (usize, usize),
}

impl InputGradPlan {
    /// `None` for kernels that are not square (one padding serves both axes).
    fn new(g: &Geom, w: &[f32]) -> Option<InputGradPlan> {
        if g.kh != g.kw {
            return None;
        }
        let (s, k, pad) = (g.stride, g.kh, g.pad);
        // Per phase r of one axis of length `len`: taps J, first a, end a (exclusive).
        let axis = |r: usize, len: usize| -> (usize, usize, usize) {
            let taps = if r < k { (k - 1 - r) / s + 1 } else { 0 };
            let a_lo = pad.saturating_sub(r).div_ceil(s);
            let a_hi = if len + pad > r {
                (len - 1 + pad - r) / s + 1
            } else {
                0
            };
            (taps, a_lo, a_hi.max(a_lo))
        };
        let live = |(t, lo, hi): (usize, usize, usize)| t > 0 && hi > lo;
        // Zero rows before the gradient so that the first tap of every phase reads row ≥ 0,
        // and the buffer's extent so that the last one stays inside.
        let (mut lead, mut rows, mut cols) = (0, 1, 1);
        for r in 0..s {
            for (ax, len) in [(axis(r, g.h), &mut rows), (axis(r, g.w), &mut cols)] {
                if live(ax) {
                    lead = lead.max((ax.0 - 1).saturating_sub(ax.1));
                    *len = (*len).max(ax.2);
                }
            }
        }
        let base = Flat::new(
            g.c_out,
            (g.ho, g.wo),
            (1, 1),
            1,
            lead,
            (rows + lead, cols + lead),
        );
        let (plane, wq) = (base.hq * base.wq, base.wq);
        let mut phases = Vec::new();
        for ry in 0..s {
            for rx in 0..s {
                let (ay, ax) = (axis(ry, g.h), axis(rx, g.w));
                if !live(ay) || !live(ax) {
                    continue;
                }
                let (jn, inn) = (ay.0, ax.0);
                let kt = g.c_out * jn * inn;
                let mut offs = Vec::with_capacity(kt);
                let mut wt = vec![0f32; g.c_in * kt];
                for o in 0..g.c_out {
                    for ty in 0..jn {
                        for tx in 0..inn {
                            let (j, i) = (jn - 1 - ty, inn - 1 - tx);
                            offs.push(o * plane + (ay.1 + lead - j) * wq + ax.1 + lead - i);
                            let (ky, kx) = (j * s + ry, i * s + rx);
                            let t = (o * jn + ty) * inn + tx;
                            for c in 0..g.c_in {
                                wt[c * kt + t] = w[((o * g.c_in + c) * k + ky) * k + kx];
                            }
                        }
                    }
                }
                let fl = base.reread(offs, (ay.2 - ay.1, ax.2 - ax.1));
                let wp = pack_weights(&wt, g.c_in, kt);
                phases.push(Phase {
                    fl,
                    wp,
                    at: (ay.1 * s + ry - pad, ax.1 * s + rx - pad),
                });
            }
        }
        let buf_len = phases
            .iter()
            .map(|p| p.fl.buf_len)
            .fold(base.buf_len, usize::max);
        Some(InputGradPlan {
            base,
            phases,
            buf_len,
        })
    }

    /// Whether [`Self::run`] writes every input pixel: each phase writes all pixels of its
    /// residue class `(a·s + r − pad)`, and a class has a phase when some tap has `k ≡ r`
    /// (mod `s`), i.e. for every class when the kernel is at least the stride.
    fn writes_every_pixel(g: &Geom) -> bool {
        g.kh >= g.stride && g.kw >= g.stride
    }

    /// One image: `dy` (`c_out` planes of `ho × wo`) → `dx` (`c_in` planes of `h × w`). Pixels
    /// no tap reaches (the odd ones of a 1×1 stride-2 conv) are not written: the caller zeroes
    /// `dx` first unless [`Self::writes_every_pixel`].
    fn run(&self, isa: Isa, g: &Geom, dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let mut buf = Scratch::take(self.buf_len);
        self.base.fill(dy, &mut buf);
        let rows = g.c_in.div_ceil(FWD_R) * FWD_R;
        let (s, plane) = (g.stride, g.h * g.w);
        for Phase { fl, wp, at } in &self.phases {
            let mut out = Scratch::take(rows * fl.qpad);
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::conv_planes(fl, &buf, wp, rows, &mut out),
                _ => portable::conv_planes(fl, &buf, wp, rows, &mut out),
            }
            let (iy0, ix0) = *at;
            for c in 0..g.c_in {
                let dplane = &mut dx[c * plane..(c + 1) * plane];
                for i in 0..fl.ho {
                    let src = &out[c * fl.qpad + i * fl.wq..][..fl.wo];
                    let drow = &mut dplane[(iy0 + i * s) * g.w..][..g.w];
                    if s == 1 {
                        drow[ix0..ix0 + fl.wo].write_copy_of_slice(src);
                    } else {
                        for (d, &v) in drow[ix0..].iter_mut().step_by(s).zip(src) {
                            d.write(v);
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

/// One image of a direct convolution: `out` is `c_out` planes of `ho × wo`, every element
/// written (the caller's buffer need not be initialised).
fn conv_image(
    isa: Isa,
    fl: &Flat,
    img: &[f32],
    wp: &[f32],
    c_out: usize,
    out: &mut [MaybeUninit<f32>],
) {
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
                .write_copy_of_slice(&flat_out[o * fl.qpad + oy * fl.wq..][..fl.wo]);
        }
    }
}

/// Forward convolution, any stride/padding/kernel: `x (n, C_in, H, W)`, `w (C_out, C_in, kh, kw)`.
pub fn forward(isa: Isa, g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let fl = Flat::forward(g);
    let wp = pack_weights(w, g.c_out, g.k());
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.p());
    // Not zeroed: `conv_image` writes every element (a memset of the whole output was 2.4 % of
    // the study's step).
    let mut y = uninit(g.n * out_len);
    if out_len == 0 {
        return assume_init(y);
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
    assume_init(y)
}

/// Whether [`input_grad`] handles `g` (square kernels; any stride and padding).
pub fn input_grad_supported(g: &Geom) -> bool {
    g.kh == g.kw
}

/// Input gradient: `dy (n, C_out, H_out, W_out)`, `w (C_out, C_in, kh, kw)` → `(n, C_in, H, W)`,
/// as the phase convolutions of [`InputGradPlan`]. `None` where [`input_grad_supported`] is
/// false.
pub fn input_grad(isa: Isa, g: &Geom, dy: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    let plan = InputGradPlan::new(g, w)?;
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.p());
    // Zeroed only where some pixels get no gradient (a zeroing memset of every input gradient
    // was 0.5 % of the study's step).
    let mut dx = if InputGradPlan::writes_every_pixel(g) {
        uninit(g.n * in_len)
    } else {
        vec![MaybeUninit::new(0f32); g.n * in_len]
    };
    if in_len == 0 {
        return Some(assume_init(dx));
    }
    let per = g.images_per_chunk();
    dx.par_chunks_mut(per * in_len)
        .enumerate()
        .for_each(|(ci, ch)| {
            for (i, di) in ch.chunks_mut(in_len).enumerate() {
                let b = ci * per + i;
                plan.run(isa, g, &dy[b * out_len..][..out_len], di);
            }
        });
    Some(assume_init(dx))
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
