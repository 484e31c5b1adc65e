//! x86-64 AVX-512 VNNI conv kernel (`std` feature: runtime CPU detection).
//!
//! `vpdpbusd` multiplies 4 unsigned bytes by 4 signed bytes and adds the 4 products to an `i32`
//! lane without saturation (unlike `vpmaddubsw`, whose `i16` pair sums saturate). The column is
//! made unsigned by flipping its sign bit, `u = x' + 128`, so `Σ u·w = Σ x'·w + 128·Σ w`: the
//! packed bias absorbs `−128·Σ w` on top of the zero-point fold. Everything wraps modulo 2³²,
//! so the result equals the portable path's (see [`super::super::prepared`]).
//!
//! Layout, made once at load ([`Packed::new`]): output channels in blocks of 16 (one `zmm` of
//! `i32` accumulators), the reduction padded to a multiple of 4 with zero weights; block `b`,
//! group `q` of 4 taps is 64 bytes `[lane 0: w[16b][4q..4q+4], lane 1: …]`. The kernel keeps
//! 4 pixels × 32 channels (8 `zmm`) of accumulators, broadcasts 4 column bytes per pixel and
//! issues 8 `vpdpbusd` per 2 weight loads; the requantisation runs 16 lanes at a time.

use alloc::vec::Vec;
use core::arch::x86_64::*;
use core::ops::Range;

use super::super::conv2d::ConvI8;
use super::super::prepared::ChanQ;
use super::super::Window;

/// Largest padded reduction the kernel takes (3×3×512, ResNet-18's last stage): its stack
/// buffer is `PIXELS · MAX_K` bytes (18 KiB). Larger ones run the portable path.
pub const MAX_K: usize = 4608;
/// Output pixels per block.
const PIXELS: usize = 4;

/// Whether this CPU runs the VNNI kernel.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU runs the AVX2 kernel (used where VNNI is missing).
pub fn avx2_available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Weights and per-channel requantisation constants laid out for the kernel.
#[derive(Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Packed {
    /// For the AVX2 kernel (signed columns, `bias'` unchanged) instead of the VNNI one.
    avx2: bool,
    /// AVX2 on a window [`band_fits`]: the row-band kernel, each kernel row's `kw·in_c` taps
    /// padded to `row_kp`, a multiple of 4, with zero weights.
    band: bool,
    row_kp: usize,
    /// Reduction padded to a multiple of 4 (band: `kh·row_kp`).
    kp: usize,
    /// Output-channel blocks of 16.
    blocks: usize,
    /// VNNI: `blocks · kp · 16` bytes, see the module docs (empty for AVX2).
    w: Vec<i8>,
    /// AVX2: the same layout sign-extended to `i16` once at load (empty for VNNI), so the
    /// inner loop spends no shuffle port on `vpmovsxbw`.
    w16: Vec<i16>,
    /// `bias' − 128·Σ w` (VNNI) or `bias'` (AVX2) per (padded) channel.
    bias: Vec<i32>,
    mult: Vec<i32>,
    /// `max(shift, 0)` and `max(−shift, 0)`.
    lshift: Vec<i32>,
    rshift: Vec<i32>,
    /// AVX2, where every channel shifts right (`left = 0`, `right ≥ 1`, nearly every conv):
    /// the one-multiply-add requantisation's constants ([`RightShift8`]), else `None`.
    right: Option<RightShift8>,
}

/// Per-channel constants of [`mbqm8_right`], padded to whole blocks: the 64-bit addends
/// `2³⁰ + 2^(30+e)` of even and odd channels (`[c0, c2, c4, c6]`, `[c1, c3, c5, c7]` per 8),
/// and `e − 1`.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct RightShift8 {
    c_even: Vec<i64>,
    c_odd: Vec<i64>,
    e1: Vec<i32>,
}

impl RightShift8 {
    /// `None` unless every channel has `left = 0` and `right ≥ 1`.
    fn new(lshift: &[i32], rshift: &[i32]) -> Option<RightShift8> {
        if lshift
            .iter()
            .zip(rshift)
            .any(|(&l, &r)| l != 0 || !(1..=31).contains(&r))
        {
            return None;
        }
        let c = |r: &i32| right_addend(*r as u32);
        Some(RightShift8 {
            c_even: rshift.iter().step_by(2).map(c).collect(),
            c_odd: rshift.iter().skip(1).step_by(2).map(c).collect(),
            e1: rshift.iter().map(|&r| r - 1).collect(),
        })
    }

    fn heap_bytes(&self) -> usize {
        8 * (self.c_even.capacity() + self.c_odd.capacity()) + 4 * self.e1.capacity()
    }
}

/// `2³⁰ + 2^(30+e)` for `e ∈ 1..=31`: [`RightShift`](super::super::requant::RightShift)'s
/// addend before its sign term.
pub(crate) fn right_addend(e: u32) -> i64 {
    (1i64 << 30) + (1i64 << (30 + e))
}

/// Sizes only: a model's `Debug` output should not list megabytes of packed weights.
impl core::fmt::Debug for Packed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Packed")
            .field("kernel", &self.backend())
            .field("kp", &self.kp)
            .field("blocks", &self.blocks)
            .field("heap_bytes", &self.heap_bytes())
            .field("right_shift_requant", &self.right.is_some())
            .finish()
    }
}

impl Packed {
    /// Packs `p` (with its folded bias) for the best kernel this CPU has (AVX-512 VNNI, else
    /// AVX2) if the op fits it: `None` leaves the op to the portable path.
    pub fn new(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
        if available() {
            Self::new_for(p, chan, false)
        } else if avx2_available() {
            Self::new_for(p, chan, true)
        } else {
            None
        }
    }

    /// Packs for the AVX2 kernel, if the CPU has AVX2 (for tests on VNNI machines).
    pub fn new_avx2(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
        if avx2_available() {
            Self::new_for(p, chan, true)
        } else {
            None
        }
    }

    /// Output channel blocks of 16 (the threaded driver tiles over them).
    #[cfg(feature = "threads")]
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// The kernel this packing is for.
    pub fn backend(&self) -> &'static str {
        if self.avx2 {
            "avx2"
        } else {
            "avx512vnni"
        }
    }

    fn new_for(p: &ConvI8, chan: &[ChanQ], avx2: bool) -> Option<Packed> {
        let w = &p.win;
        let k = w.kh * w.kw * w.in_c;
        let band = avx2 && band_fits(w);
        let row_k = w.kw * w.in_c;
        let row_kp = row_k.div_ceil(4) * 4;
        let kp = if band {
            w.kh * row_kp
        } else {
            k.div_ceil(4) * 4
        };
        let oc = p.out_c;
        let lens = p.weights.len() == oc * k && chan.len() == oc;
        if kp > MAX_K || oc == 0 || !lens {
            return None;
        }
        // The caller checked the loader's ranges (mult ≥ 0, so the SRDHM overflow case
        // i32::MIN² cannot occur; shifts within TFLite's range).
        let blocks = oc.div_ceil(16);
        let ocp = blocks * 16;
        let mut pw = alloc::vec![0i8; blocks * kp * 16];
        for c in 0..oc {
            let (b, lane) = (c / 16, c % 16);
            for (kk, &v) in p.weights[c * k..][..k].iter().enumerate() {
                // Band: tap `kk` of kernel row `kk / row_k` sits at `row_kp` per row.
                let kk = if band {
                    kk / row_k * row_kp + kk % row_k
                } else {
                    kk
                };
                pw[(b * kp + (kk / 4) * 4) * 16 + lane * 4 + kk % 4] = v;
            }
        }
        let pad = |f: &dyn Fn(usize) -> i32| -> Vec<i32> {
            (0..ocp).map(|c| if c < oc { f(c) } else { 0 }).collect()
        };
        let wsum = |c: usize| {
            p.weights[c * k..][..k]
                .iter()
                .fold(0i32, |a, &v| a.wrapping_add(v as i32))
        };
        let flip = if avx2 { 0 } else { 128 };
        // Padding channels shift right by 1, so that they never veto the right-shift
        // requantisation (their outputs are computed and dropped).
        let lshift = pad(&|c| chan[c].left as i32);
        let rshift: Vec<i32> = (0..ocp)
            .map(|c| if c < oc { chan[c].right as i32 } else { 1 })
            .collect();
        let (w, w16) = if avx2 {
            (Vec::new(), pw.iter().map(|&v| v as i16).collect())
        } else {
            (pw, Vec::new())
        };
        Some(Packed {
            avx2,
            band,
            row_kp,
            kp,
            blocks,
            bias: pad(&|c| chan[c].bias.wrapping_sub(wsum(c).wrapping_mul(flip))),
            mult: pad(&|c| chan[c].mult),
            right: if avx2 {
                RightShift8::new(&lshift, &rshift)
            } else {
                None
            },
            lshift,
            rshift,
            w,
            w16,
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.w.capacity()
            + 2 * self.w16.capacity()
            + self.right.as_ref().map_or(0, |r| r.heap_bytes())
            + 4 * (self.bias.capacity()
                + self.mult.capacity()
                + self.lshift.capacity()
                + self.rshift.capacity())
    }
}

/// Runs the conv; `false` if it cannot (then the caller runs another path). The caller checked
/// the slice lengths against `p`.
pub(crate) fn conv(p: &ConvI8, pk: &Packed, input: &[i8], output: &mut [i8]) -> bool {
    let n_px = p.win.out_h * p.win.out_w;
    if !supports(p, pk) || output.len() != n_px * p.out_c {
        return false;
    }
    // SAFETY: `supports`; `output` holds the whole conv's output (checked), and this is the
    // only tile.
    unsafe { conv_tile(p, pk, input, output.as_mut_ptr(), 0..n_px, 0..pk.blocks) };
    true
}

/// Whether [`conv_tile`] can run `p` with `pk`.
pub(crate) fn supports(p: &ConvI8, pk: &Packed) -> bool {
    pk.kp <= MAX_K && pk.blocks == p.out_c.div_ceil(16)
}

/// One tile of the conv: output pixels `pixels` (row-major `oy·out_w + ox`) × output channel
/// blocks `blocks` (16 channels each; the last one may be partial), written into the conv's
/// output at `out`. Every output byte is computed on its own, so any tiling gives the same
/// bytes; the threaded driver runs disjoint tiles at once.
///
/// # Safety
/// [`supports`]`(p, pk)`; `out` is valid for writes of the whole output
/// (`out_h·out_w·out_c` bytes) and no other thread reads or writes this tile's bytes meanwhile;
/// `pixels` within `0..out_h·out_w`, `blocks` within `0..pk.blocks`; `input` holds the conv's
/// input (the caller checked the lengths).
pub(crate) unsafe fn conv_tile(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    out: *mut i8,
    pixels: Range<usize>,
    blocks: Range<usize>,
) {
    // SAFETY: `pk` exists only if `available()` (VNNI) or `avx2_available()` (AVX2) said the
    // CPU has the kernel's features; the rest is the caller's promise.
    unsafe {
        if pk.band {
            conv_avx2_band(p, pk, input, out, pixels, blocks)
        } else if pk.avx2 {
            conv_avx2(p, pk, input, out, pixels, blocks)
        } else {
            conv_vnni(p, pk, input, out, pixels, blocks)
        }
    }
}

/// Column of pixel `(oy, ox)` as bytes `x' ^ flip` (padded taps: the zero point), zero beyond
/// `k` up to `kp`: `flip = 0x80` gives VNNI's unsigned bytes, `0` the signed ones.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn im2col_u8(
    w: &Window,
    input: &[i8],
    oy: usize,
    ox: usize,
    zp: i8,
    dst: &mut [u8],
    k: usize,
    flip: u8,
) {
    let (iy0, ky_s, ky_e) = w.rows(oy);
    let (ix0, kx_s, kx_e) = w.cols(ox);
    let ic = w.in_c;
    let row = w.kw * ic;
    let full = ky_s == 0 && ky_e == w.kh && kx_s == 0 && kx_e == w.kw;
    if !full {
        dst[..k].fill(zp as u8 ^ flip);
    }
    dst[k..].fill(0);
    let n = (kx_e - kx_s) * ic;
    for ky in ky_s..ky_e {
        let iy = (iy0 + ky as isize) as usize;
        let src = ((iy * w.in_w) as isize + ix0 + kx_s as isize) as usize * ic;
        for (d, &s) in dst[ky * row + kx_s * ic..][..n]
            .iter_mut()
            .zip(&input[src..][..n])
        {
            *d = s as u8 ^ flip;
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn conv_vnni(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    out: *mut i8,
    pixels: Range<usize>,
    blocks: Range<usize>,
) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let kp = pk.kp;
    let zp = p.in_zp.clamp(-128, 127) as i8;
    let mut cols = [0u8; PIXELS * MAX_K];
    let end = pixels.end;
    let mut px = pixels.start;
    while px < end {
        let n = (end - px).min(PIXELS);
        for s in 0..PIXELS {
            // Missing pixels of the last block repeat the last one (computed, not written).
            let q = px + s.min(n - 1);
            let dst = &mut cols[s * kp..][..kp];
            im2col_u8(w, input, q / w.out_w, q % w.out_w, zp, dst, k, 0x80);
        }
        let mut b = blocks.start;
        while b < blocks.end {
            if b + 1 < blocks.end {
                let acc = block::<2>(&cols, kp, pk, b);
                store(p, pk, out, px, n, b, &acc[0]);
                store(p, pk, out, px, n, b + 1, &acc[1]);
                b += 2;
            } else {
                let acc = block::<1>(&cols, kp, pk, b);
                store(p, pk, out, px, n, b, &acc[0]);
                b += 1;
            }
        }
        px += n;
    }
}

/// Accumulators `[block j][pixel s]` for channel blocks `b..b + NB` of the current 4 pixels.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn block<const NB: usize>(
    cols: &[u8],
    kp: usize,
    pk: &Packed,
    b: usize,
) -> [[__m512i; PIXELS]; NB] {
    let mut acc = [[_mm512_setzero_si512(); PIXELS]; NB];
    for (j, a) in acc.iter_mut().enumerate() {
        let bias = _mm512_loadu_si512(pk.bias.as_ptr().add((b + j) * 16) as *const _);
        *a = [bias; PIXELS];
    }
    let wp = pk.w.as_ptr();
    let cp = cols.as_ptr();
    for q in 0..kp / 4 {
        let mut wv = [_mm512_setzero_si512(); NB];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(wp.add(((b + j) * kp + 4 * q) * 16) as *const _);
        }
        for s in 0..PIXELS {
            let x = _mm512_set1_epi32((cp.add(s * kp + 4 * q) as *const i32).read_unaligned());
            for (a, &v) in acc.iter_mut().zip(&wv) {
                a[s] = _mm512_dpbusd_epi32(a[s], x, v);
            }
        }
    }
    acc
}

/// Requantises and writes channel block `b` of pixels `px..px + n` into the output at `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn store(
    p: &ConvI8,
    pk: &Packed,
    out: *mut i8,
    px: usize,
    n: usize,
    b: usize,
    acc: &[__m512i; PIXELS],
) {
    let oc = p.out_c;
    let c0 = b * 16;
    let lanes = (oc - c0).min(16);
    let mask: __mmask16 = if lanes == 16 {
        0xffff
    } else {
        (1u16 << lanes) - 1
    };
    let mult = _mm512_loadu_si512(pk.mult.as_ptr().add(c0) as *const _);
    let ls = _mm512_loadu_si512(pk.lshift.as_ptr().add(c0) as *const _);
    let rs = _mm512_loadu_si512(pk.rshift.as_ptr().add(c0) as *const _);
    let lo = _mm512_set1_epi32(p.act_min - p.out_zp);
    let hi = _mm512_set1_epi32(p.act_max - p.out_zp);
    let zp = _mm512_set1_epi32(p.out_zp);
    for (s, &a) in acc.iter().enumerate().take(n) {
        let y = mbqm16(a, mult, ls, rs);
        let y = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(y, lo), hi), zp);
        let dst = out.add((px + s) * oc + c0);
        _mm512_mask_cvtepi32_storeu_epi8(dst, mask, y);
    }
}

/// 16 lanes of [`multiply_by_quantized_multiplier`](super::super::requant::multiply_by_quantized_multiplier)
/// for `mult ≥ 0`: saturating left shift, SRDHM in 64-bit halves, rounding right shift.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn mbqm16(x: __m512i, mult: __m512i, ls: __m512i, rs: __m512i) -> __m512i {
    // Left shift, saturating where it overflows (the reference clamps the i64 shift).
    let y = _mm512_sllv_epi32(x, ls);
    let ovf = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(y, ls), x);
    let neg = _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
    let sat = _mm512_mask_blend_epi32(
        neg,
        _mm512_set1_epi32(i32::MAX),
        _mm512_set1_epi32(i32::MIN),
    );
    let a = _mm512_mask_blend_epi32(ovf, y, sat);
    let even = half(_mm512_mul_epi32(a, mult));
    let odd = half(_mm512_mul_epi32(
        _mm512_srli_epi64::<32>(a),
        _mm512_srli_epi64::<32>(mult),
    ));
    let h = _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd));
    // RoundingDivideByPOT(h, rs).
    let one = _mm512_set1_epi32(1);
    let mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, rs), one);
    let rem = _mm512_and_si512(h, mask);
    let hneg = _mm512_cmplt_epi32_mask(h, _mm512_setzero_si512());
    let thr = _mm512_mask_add_epi32(
        _mm512_srli_epi32::<1>(mask),
        hneg,
        _mm512_srli_epi32::<1>(mask),
        one,
    );
    let up = _mm512_cmpgt_epi32_mask(rem, thr);
    _mm512_mask_add_epi32(_mm512_srav_epi32(h, rs), up, _mm512_srav_epi32(h, rs), one)
}

/// SRDHM on 64-bit products `ab`: `(ab + nudge) / 2³¹` truncated toward zero, nudge `2³⁰` or
/// `1 − 2³⁰` by the sign of `ab`; the result sits in the low 32 bits of each lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn half(ab: __m512i) -> __m512i {
    let neg = _mm512_cmplt_epi64_mask(ab, _mm512_setzero_si512());
    let nudge = _mm512_mask_blend_epi64(
        neg,
        _mm512_set1_epi64(1 << 30),
        _mm512_set1_epi64(1 - (1 << 30)),
    );
    let t = _mm512_add_epi64(ab, nudge);
    let tneg = _mm512_cmplt_epi64_mask(t, _mm512_setzero_si512());
    let t = _mm512_mask_add_epi64(t, tneg, t, _mm512_set1_epi64((1 << 31) - 1));
    _mm512_srai_epi64::<31>(t)
}

// ---------------------------------------------------------------- AVX2

/// Output pixels per block of the AVX2 kernel (8 `ymm` accumulators for 16 channels × 2).
const PIXELS_AVX2: usize = 2;

/// The AVX2 kernel: the packed weights as `i16` (sign-extended once at load; 4 channels × 4
/// taps per `ymm`), the column as `i16` too (sign-extended by the im2col copy), its 4 taps
/// broadcast straight from memory, `vpmaddwd` (exact: each pair sum is at most 2·128·128) and
/// `vpaddd`: per 128 MACs 8 multiply-adds, 8 adds and 6 loads, nothing on the shuffle port. The
/// two partial sums per channel are added once at the end (`vphaddd`). No `vpmaddubsw`, whose
/// `i16` saturation would not be exact.
#[target_feature(enable = "avx2")]
unsafe fn conv_avx2(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    out: *mut i8,
    pixels: Range<usize>,
    blocks: Range<usize>,
) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let kp = pk.kp;
    let zp = p.in_zp.clamp(-128, 127) as i16;
    let mut cols = [0i16; PIXELS_AVX2 * MAX_K];
    let end = pixels.end;
    let oc = p.out_c;
    let ep = Epilogue {
        lo: _mm256_set1_epi32(p.act_min - p.out_zp),
        hi: _mm256_set1_epi32(p.act_max - p.out_zp),
        zp: _mm256_set1_epi32(p.out_zp),
    };
    let mut px = pixels.start;
    // Pixel `px`'s coordinates, advanced with it (no division per pixel).
    let (mut oy, mut ox) = (px / w.out_w, px % w.out_w);
    while px < end {
        let n = (end - px).min(PIXELS_AVX2);
        let (mut qy, mut qx) = (oy, ox);
        for s in 0..PIXELS_AVX2 {
            // Missing pixels of the last block repeat the last one (computed, not written).
            let dst = &mut cols[s * kp..][..kp];
            im2col_i16(w, input, qy, qx, zp, dst, k);
            if s + 1 < n {
                qx += 1;
                if qx == w.out_w {
                    (qy, qx) = (qy + 1, 0);
                }
            }
        }
        for b in blocks.clone() {
            let acc = block_avx2(&cols, kp, pk, b);
            let c0 = b * 16;
            store_pixels(pk, &ep, &acc, n, c0, oc, out.add(px * oc + c0));
        }
        px += n;
        ox += n;
        while ox >= w.out_w {
            ox -= w.out_w;
            oy += 1;
        }
    }
}

/// Most `i16` values the AVX2 kernel's row band holds (32 KiB of stack): `kh` rows of the
/// padded input, `(pad_left + in_w + pad_right)·in_c` values each.
const BAND_MAX: usize = 16 * 1024;
/// Values after the band that a kernel row padded to `row_kp` may read past the last row (read,
/// multiplied by zero weights).
const BAND_SLACK: usize = 4;
/// Tallest kernel the row band takes.
const BAND_MAX_KH: usize = 8;

/// Whether [`conv_avx2_band`] runs this window: the band within its buffer.
fn band_fits(w: &Window) -> bool {
    let [_, pl, _, pr] = w.pads();
    w.kh <= BAND_MAX_KH && w.kh * (pl + w.in_w + pr) * w.in_c <= BAND_MAX
}

/// The AVX2 kernel without an im2col copy (XNNPACK's indirect GEMM, with rows instead of
/// taps): a ring of `kh` rows of the zero-padded input, sign-extended to `i16` once each
/// (padding holds the input zero point), so that kernel row `ky` of output pixel `(oy, ox)`
/// is the `kw·in_c` contiguous values at column `ox·stride_w` of ring row `oy·stride_h + ky`.
/// The GEMM loop ([`block_band`]) walks the `kh` row pointers; the packed weights follow
/// OHWI's `(ky, kx, c)` order with each kernel row padded to `row_kp` taps by zero weights (the
/// values read past a row, its neighbours' or the slack's, count nothing). Each input row is converted
/// once per conv when the kernel is at least as tall as the stride (3×3 stride 1 and 2):
/// im2col copied every value `kh·kw/stride²` times.
#[target_feature(enable = "avx2")]
unsafe fn conv_avx2_band(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    out: *mut i8,
    pixels: Range<usize>,
    blocks: Range<usize>,
) {
    let w = &p.win;
    let [pt, pl, _, pr] = w.pads();
    let ic = w.in_c;
    let row_len = (pl + w.in_w + pr) * ic;
    let row_k = pk.row_kp;
    let zp = p.in_zp.clamp(-128, 127) as i16;
    let mut band = [0i16; BAND_MAX + BAND_SLACK];
    // The padded-input row each ring slot holds (none yet).
    let mut held = [usize::MAX; BAND_MAX_KH];
    let oc = p.out_c;
    let ep = Epilogue {
        lo: _mm256_set1_epi32(p.act_min - p.out_zp),
        hi: _mm256_set1_epi32(p.act_max - p.out_zp),
        zp: _mm256_set1_epi32(p.out_zp),
    };
    let mut px = pixels.start;
    while px < pixels.end {
        let (oy, ox0) = (px / w.out_w, px % w.out_w);
        let ox_end = (ox0 + pixels.end - px).min(w.out_w);
        let mut rows = [0usize; BAND_MAX_KH];
        for (ky, r) in rows.iter_mut().enumerate().take(w.kh) {
            let prow = oy * w.stride_h + ky;
            let slot = prow % w.kh;
            if held[slot] != prow {
                let dst = &mut band[slot * row_len..][..row_len];
                let iy = prow.wrapping_sub(pt);
                if iy < w.in_h {
                    dst[..pl * ic].fill(zp);
                    let src = &input[iy * w.in_w * ic..][..w.in_w * ic];
                    for (d, &v) in dst[pl * ic..][..w.in_w * ic].iter_mut().zip(src) {
                        *d = v as i16;
                    }
                    dst[(pl + w.in_w) * ic..].fill(zp);
                } else {
                    dst.fill(zp);
                }
                held[slot] = prow;
            }
            *r = slot * row_len;
        }
        let mut ox = ox0;
        while ox < ox_end {
            let n = (ox_end - ox).min(PIXELS_AVX2);
            // A lone last pixel is computed twice and written once.
            let offs = [ox * w.stride_w * ic, (ox + n - 1) * w.stride_w * ic];
            let q = oy * w.out_w + ox;
            for b in blocks.clone() {
                let acc = block_band(&band, &rows[..w.kh], offs, row_k, pk, b);
                let c0 = b * 16;
                store_pixels(pk, &ep, &acc, n, c0, oc, out.add(q * oc + c0));
            }
            ox += n;
        }
        px = oy * w.out_w + ox_end;
    }
}

/// Accumulators `[pixel][4 channels ×2 partial sums]` for channel block `b` of the two pixels
/// whose kernel rows start at `rows[ky] + offs[s]` in `band`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_band(
    band: &[i16],
    rows: &[usize],
    offs: [usize; PIXELS_AVX2],
    row_k: usize,
    pk: &Packed,
    b: usize,
) -> [[__m256i; 4]; PIXELS_AVX2] {
    let kp = pk.kp;
    let mut acc = [[_mm256_setzero_si256(); 4]; PIXELS_AVX2];
    let mut wp = pk.w16[b * kp * 16..][..kp * 16].as_ptr();
    for &r in rows {
        let x0 = band[r + offs[0]..][..row_k].as_ptr();
        let x1 = band[r + offs[1]..][..row_k].as_ptr();
        for q in 0..row_k / 4 {
            let mut wv = [_mm256_setzero_si256(); 4];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(wp.add(16 * c) as *const __m256i);
            }
            wp = wp.add(64);
            for (a, xp) in acc.iter_mut().zip([x0, x1]) {
                let x = _mm256_set1_epi64x((xp.add(4 * q) as *const i64).read_unaligned());
                for (ac, &v) in a.iter_mut().zip(&wv) {
                    *ac = _mm256_add_epi32(*ac, _mm256_madd_epi16(v, x));
                }
            }
        }
    }
    acc
}

/// Column of pixel `(oy, ox)` as `i16` (padded taps: the zero point), zero beyond `k` up to
/// `dst.len()`.
#[inline(always)]
fn im2col_i16(w: &Window, input: &[i8], oy: usize, ox: usize, zp: i16, dst: &mut [i16], k: usize) {
    let (iy0, ky_s, ky_e) = w.rows(oy);
    let (ix0, kx_s, kx_e) = w.cols(ox);
    let ic = w.in_c;
    let row = w.kw * ic;
    let full = ky_s == 0 && ky_e == w.kh && kx_s == 0 && kx_e == w.kw;
    if !full {
        dst[..k].fill(zp);
    }
    dst[k..].fill(0);
    let n = (kx_e - kx_s) * ic;
    for ky in ky_s..ky_e {
        let iy = (iy0 + ky as isize) as usize;
        let src = ((iy * w.in_w) as isize + ix0 + kx_s as isize) as usize * ic;
        for (d, &s) in dst[ky * row + kx_s * ic..][..n]
            .iter_mut()
            .zip(&input[src..][..n])
        {
            *d = s as i16;
        }
    }
}

/// The output clamp of the AVX2 epilogue: `[act_min − out_zp, act_max − out_zp]`, then `+ out_zp`
/// (the reference's `saturating_add(out_zp).clamp(act_min, act_max)`, without the overflow).
struct Epilogue {
    lo: __m256i,
    hi: __m256i,
    zp: __m256i,
}

/// Adds the partial sums of the 16-channel block `c0..` of `n` consecutive pixels (`acc`, the
/// GEMM's accumulators), requantises, clamps and writes channels `c0..min(c0 + 16, oc)` of each
/// at `dst + s·oc`. The block's constants are loaded once for all pixels.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_pixels(
    pk: &Packed,
    ep: &Epilogue,
    acc: &[[__m256i; 4]; PIXELS_AVX2],
    n: usize,
    c0: usize,
    oc: usize,
    dst: *mut i8,
) {
    let h = [c0, c0 + 8];
    let bias = h.map(|c| load8(&pk.bias, c));
    let mult = h.map(|c| load8(&pk.mult, c));
    let lanes = (oc - c0).min(16);
    for (s, a) in acc.iter().enumerate().take(n) {
        let mut r = [_mm256_setzero_si256(); 2];
        for (j, rj) in r.iter_mut().enumerate() {
            let sum = _mm256_permute4x64_epi64::<0xd8>(_mm256_hadd_epi32(a[2 * j], a[2 * j + 1]));
            let acc8 = _mm256_add_epi32(sum, bias[j]);
            let c = h[j];
            let y = match &pk.right {
                Some(rq) => mbqm8_right(
                    acc8,
                    mult[j],
                    _mm256_loadu_si256(rq.c_even[c / 2..c / 2 + 4].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(rq.c_odd[c / 2..c / 2 + 4].as_ptr() as *const __m256i),
                    load8(&rq.e1, c),
                ),
                None => mbqm8(acc8, mult[j], load8(&pk.lshift, c), load8(&pk.rshift, c)),
            };
            *rj = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(y, ep.lo), ep.hi), ep.zp);
        }
        // The values are in [−128, 127] already: the saturating packs are exact.
        let v16 = _mm256_permute4x64_epi64::<0xd8>(_mm256_packs_epi32(r[0], r[1]));
        let v8 = _mm_packs_epi16(
            _mm256_castsi256_si128(v16),
            _mm256_extracti128_si256::<1>(v16),
        );
        let d = dst.add(s * oc);
        if lanes == 16 {
            _mm_storeu_si128(d as *mut __m128i, v8);
        } else {
            let mut t = [0i8; 16];
            _mm_storeu_si128(t.as_mut_ptr() as *mut __m128i, v8);
            core::ptr::copy_nonoverlapping(t.as_ptr(), d, lanes);
        }
    }
}

/// `v[c..c + 8]` (the per-channel vectors are padded to whole blocks of 16).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8(v: &[i32], c: usize) -> __m256i {
    _mm256_loadu_si256(v[c..c + 8].as_ptr() as *const __m256i)
}

/// Accumulators `[pixel][4 channels ×2 partial sums]` for channel block `b`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_avx2(
    cols: &[i16],
    kp: usize,
    pk: &Packed,
    b: usize,
) -> [[__m256i; 4]; PIXELS_AVX2] {
    let mut acc = [[_mm256_setzero_si256(); 4]; PIXELS_AVX2];
    let wp = pk.w16[b * kp * 16..][..kp * 16].as_ptr();
    let cp = cols[..PIXELS_AVX2 * kp].as_ptr();
    for q in 0..kp / 4 {
        let base = wp.add(q * 64);
        let mut wv = [_mm256_setzero_si256(); 4];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_si256(base.add(16 * c) as *const __m256i);
        }
        for (s, a) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_epi64x((cp.add(s * kp + 4 * q) as *const i64).read_unaligned());
            for (ac, &v) in a.iter_mut().zip(&wv) {
                *ac = _mm256_add_epi32(*ac, _mm256_madd_epi16(v, x));
            }
        }
    }
    acc
}

/// 8 lanes of [`RightShift::apply`](super::super::requant::RightShift::apply) (the
/// requantisation for `left = 0`, `right = e ≥ 1`, `mult ≥ 0`): `((x·mult + C) >> 32) >> (e − 1)`
/// with `C = 2³⁰ + 2^(30+e) − [x·mult < 0]·2³¹`, `c_even`/`c_odd` holding `2³⁰ + 2^(30+e)` of the
/// even/odd lanes as `i64`, `e1 = e − 1`. The sign term tests the product where the scalar
/// form tests `x`: they differ only for `x < 0 = mult`, where both numerators lie in
/// `[0, 2^(31+e))` and give 0.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn mbqm8_right(
    x: __m256i,
    mult: __m256i,
    c_even: __m256i,
    c_odd: __m256i,
    e1: __m256i,
) -> __m256i {
    let zero = _mm256_setzero_si256();
    let sign = _mm256_set1_epi64x(-(1i64 << 31));
    let t = |prod: __m256i, c: __m256i| {
        let neg = _mm256_and_si256(_mm256_cmpgt_epi64(zero, prod), sign);
        _mm256_add_epi64(_mm256_add_epi64(prod, c), neg)
    };
    let even = t(_mm256_mul_epi32(x, mult), c_even);
    let odd = t(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(mult)),
        c_odd,
    );
    let h = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
    _mm256_srav_epi32(h, e1)
}

/// 8 lanes of `MultiplyByQuantizedMultiplier(x, mult, 0)` for `mult ≥ 0`: gemmlowp's SRDHM
/// alone, which for `mult ≥ 0` is `⌊(x·mult + 2³⁰) / 2³¹⌋` (its sign-chosen nudge and
/// truncation toward zero give the floor on both signs; `i32::MIN²`, its saturating case,
/// cannot occur). Bits 31–62 of each 64-bit sum are the result.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn mbqm8_shift0(x: __m256i, mult: __m256i) -> __m256i {
    let half = _mm256_set1_epi64x(1 << 30);
    let even = _mm256_add_epi64(_mm256_mul_epi32(x, mult), half);
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(mult)),
        half,
    );
    _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<31>(even), _mm256_slli_epi64::<1>(odd))
}

/// 8 lanes of the split requantisation (see [`mbqm16`]) with AVX2 only.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn mbqm8(x: __m256i, mult: __m256i, ls: __m256i, rs: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    let y = _mm256_sllv_epi32(x, ls);
    let fits = _mm256_cmpeq_epi32(_mm256_srav_epi32(y, ls), x);
    let neg = _mm256_cmpgt_epi32(zero, x);
    let sat = _mm256_blendv_epi8(
        _mm256_set1_epi32(i32::MAX),
        _mm256_set1_epi32(i32::MIN),
        neg,
    );
    let a = _mm256_blendv_epi8(sat, y, fits);
    let even = half8(_mm256_mul_epi32(a, mult));
    let odd = half8(_mm256_mul_epi32(
        _mm256_srli_epi64::<32>(a),
        _mm256_srli_epi64::<32>(mult),
    ));
    let h = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
    let one = _mm256_set1_epi32(1);
    let mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, rs), one);
    let rem = _mm256_and_si256(h, mask);
    let thr = _mm256_add_epi32(
        _mm256_srli_epi32::<1>(mask),
        _mm256_and_si256(_mm256_cmpgt_epi32(zero, h), one),
    );
    let up = _mm256_and_si256(_mm256_cmpgt_epi32(rem, thr), one);
    _mm256_add_epi32(_mm256_srav_epi32(h, rs), up)
}

/// SRDHM on 64-bit products (see [`half`]); the low 32 bits of each lane hold the result, so a
/// logical shift serves (AVX2 has no 64-bit arithmetic shift).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn half8(ab: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    let neg = _mm256_cmpgt_epi64(zero, ab);
    let nudge = _mm256_blendv_epi8(
        _mm256_set1_epi64x(1 << 30),
        _mm256_set1_epi64x(1 - (1 << 30)),
        neg,
    );
    let t = _mm256_add_epi64(ab, nudge);
    let tneg = _mm256_cmpgt_epi64(zero, t);
    let t = _mm256_add_epi64(t, _mm256_and_si256(tneg, _mm256_set1_epi64x((1 << 31) - 1)));
    _mm256_srli_epi64::<31>(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::rng::SplitMix64;
    use crate::ops::requant::multiply_by_quantized_multiplier;

    /// [`mbqm8_right`] and [`mbqm8_shift0`] against the scalar `MultiplyByQuantizedMultiplier`
    /// on every right shift and shift 0,
    /// edge and random inputs and multipliers (zero included), each lane with its own constants.
    #[test]
    fn mbqm8_right_matches_scalar() {
        if !avx2_available() {
            return;
        }
        let mut rng = SplitMix64::new(7);
        let edges = [0, 1, -1, i32::MIN, i32::MAX, 1 << 30, -(1 << 30), 3, -3];
        for round in 0..4000 {
            let x: [i32; 8] = core::array::from_fn(|i| {
                if round % 4 == 0 {
                    edges[(i + round) % edges.len()]
                } else {
                    (rng.next_u64() as i32) >> (rng.below(31))
                }
            });
            let m: [i32; 8] = core::array::from_fn(|i| match (round + i) % 5 {
                0 => 0,
                1 => i32::MAX,
                _ => (rng.next_u64() >> 33) as i32,
            });
            let e: [i32; 8] = core::array::from_fn(|i| 1 + ((round * 8 + i) % 31) as i32);
            let even: [i64; 4] = core::array::from_fn(|j| right_addend(e[2 * j] as u32));
            let odd: [i64; 4] = core::array::from_fn(|j| right_addend(e[2 * j + 1] as u32));
            let e1 = e.map(|v| v - 1);
            let mut got = [0i32; 8];
            // SAFETY: AVX2 checked above; the arrays are 32 bytes each.
            unsafe {
                let ld = |p: *const i32| _mm256_loadu_si256(p as *const __m256i);
                let y = mbqm8_right(
                    ld(x.as_ptr()),
                    ld(m.as_ptr()),
                    _mm256_loadu_si256(even.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(odd.as_ptr() as *const __m256i),
                    ld(e1.as_ptr()),
                );
                _mm256_storeu_si256(got.as_mut_ptr() as *mut __m256i, y);
            }
            let mut got0 = [0i32; 8];
            // SAFETY: as above.
            unsafe {
                let ld = |p: *const i32| _mm256_loadu_si256(p as *const __m256i);
                let y = mbqm8_shift0(ld(x.as_ptr()), ld(m.as_ptr()));
                _mm256_storeu_si256(got0.as_mut_ptr() as *mut __m256i, y);
            }
            for i in 0..8 {
                let want = multiply_by_quantized_multiplier(x[i], m[i], -e[i]);
                assert_eq!(got[i], want, "x {} mult {} shift -{}", x[i], m[i], e[i]);
                let want0 = multiply_by_quantized_multiplier(x[i], m[i], 0);
                assert_eq!(got0[i], want0, "x {} mult {} shift 0", x[i], m[i]);
            }
        }
    }
}
