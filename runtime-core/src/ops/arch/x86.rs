//! x86-64 conv kernels (`std` feature: runtime CPU detection): AVX-512 VNNI where the CPU has
//! it, else AVX2.
//!
//! `vpdpbusd` multiplies 4 unsigned bytes by 4 signed bytes and adds the 4 products to an `i32`
//! lane without saturation (unlike `vpmaddubsw`, whose `i16` pair sums saturate). The column is
//! made unsigned by flipping its sign bit, `u = x' + 128`; the packing folds the correction
//! into the bias ([`Layout::unsigned_cols`]).
//!
//! Weights are packed once at load in [`Packed`]'s layout with 16-channel blocks (one `zmm`,
//! or two `ymm`, of `i32` accumulators). The VNNI kernel reads the input from a row band of
//! unsigned bytes (no im2col copy, [`conv_vnni_band`]) and keeps 8 pixels × 16 or 32 channels,
//! or 4 pixels × 64, of accumulators: per 4 taps it broadcasts 4 bytes per pixel and issues
//! 8–16 `vpdpbusd` per 1–4 weight loads; the requantisation ([`Epilogue16`]) runs 16 lanes at
//! a time. Windows too wide for the band take the im2col kernel ([`conv_vnni`]). The AVX2
//! kernels are described at [`conv_avx2`] and [`conv_avx2_band`].

use alloc::vec::Vec;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use core::ops::Range;

use super::super::conv2d::ConvI8;
use super::super::prepared::{im2col, ChanQ};
use super::super::Window;
use super::packed::{Layout, Packed, MAX_K};

/// Output pixels per block.
const PIXELS: usize = 4;

/// The AVX-512 VNNI kernel's packing: 16-channel blocks of `i8`, unsigned columns.
const VNNI: Layout = Layout {
    kernel: "avx512vnni",
    lanes: 16,
    wide: false,
    unsigned_cols: true,
    row_band: false,
};

/// The AVX2 kernels' packing: 16-channel blocks of `i16`, signed columns (the row band where
/// the window fits it, [`band_fits`]).
const AVX2: Layout = Layout {
    kernel: "avx2",
    lanes: 16,
    wide: true,
    unsigned_cols: false,
    row_band: false,
};

/// Whether this CPU runs the VNNI kernel.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU runs the AVX2 kernel (used where VNNI is missing).
pub fn avx2_available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Packs `p` (with its folded bias) for the best kernel this CPU has (AVX-512 VNNI, else
/// AVX2) if the op fits it: `None` leaves the op to the portable path.
pub(crate) fn pack(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
    if available() {
        let row_band = vnni_band_fits(&p.win);
        Packed::new(p, chan, Layout { row_band, ..VNNI })
    } else {
        pack_avx2(p, chan)
    }
}

/// Packs for the AVX2 kernel, if the CPU has AVX2 (for tests on VNNI machines).
pub(crate) fn pack_avx2(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
    if !avx2_available() {
        return None;
    }
    let row_band = band_fits(&p.win);
    Packed::new(p, chan, Layout { row_band, ..AVX2 })
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
    /// The addends with the output zero point folded in, `c + out_zp·2^(31+e)`, so that the
    /// requantisation's floor lands on `y + out_zp` at no extra instruction (the AVX-512
    /// epilogue's); empty unless every `e ≤ ZP_FOLD_MAX_E`.
    zc_even: Vec<i64>,
    zc_odd: Vec<i64>,
}

/// Largest right shift whose addend can take the zero point: with `e ≤ 23`,
/// `|x·mult| < 2⁶²`, `c < 2⁵⁴` and `|zp·2^(31+e)| ≤ 2⁶¹` keep the sum inside `i64`.
const ZP_FOLD_MAX_E: i32 = 23;

impl RightShift8 {
    /// `None` unless every channel has `left = 0` and `right ≥ 1`.
    pub(super) fn new(lshift: &[i32], rshift: &[i32], out_zp: i32) -> Option<RightShift8> {
        if lshift
            .iter()
            .zip(rshift)
            .any(|(&l, &r)| l != 0 || !(1..=31).contains(&r))
        {
            return None;
        }
        let c = |r: &i32| right_addend(*r as u32);
        let fold = rshift.iter().all(|&r| r <= ZP_FOLD_MAX_E) && (-128..=127).contains(&out_zp);
        let zc = |r: &i32| right_addend(*r as u32) + ((out_zp as i64) << (31 + r));
        let (zc_even, zc_odd) = if fold {
            (
                rshift.iter().step_by(2).map(zc).collect(),
                rshift.iter().skip(1).step_by(2).map(zc).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Some(RightShift8 {
            c_even: rshift.iter().step_by(2).map(c).collect(),
            c_odd: rshift.iter().skip(1).step_by(2).map(c).collect(),
            e1: rshift.iter().map(|&r| r - 1).collect(),
            zc_even,
            zc_odd,
        })
    }

    pub(super) fn heap_bytes(&self) -> usize {
        8 * (self.c_even.capacity()
            + self.c_odd.capacity()
            + self.zc_even.capacity()
            + self.zc_odd.capacity())
            + 4 * self.e1.capacity()
    }
}

/// `2³⁰ + 2^(30+e)` for `e ∈ 1..=31`: [`RightShift`](super::super::requant::RightShift)'s
/// addend before its sign term.
pub(crate) fn right_addend(e: u32) -> i64 {
    (1i64 << 30) + (1i64 << (30 + e))
}

/// Runs the conv; `false` if it cannot (then the caller runs another path). The caller checked
/// the slice lengths against `p`.
pub(crate) fn conv(p: &ConvI8, pk: &Packed, input: &[i8], output: &mut [i8]) -> bool {
    let n_px = p.win.out_h * p.win.out_w;
    if !pk.fits(p) || output.len() != n_px * p.out_c {
        return false;
    }
    // SAFETY: `pk.fits(p)`; `output` holds the whole conv's output (checked), and this is the
    // only tile.
    unsafe { conv_tile(p, pk, input, output.as_mut_ptr(), 0..n_px, 0..pk.blocks) };
    true
}

/// One tile of the conv: output pixels `pixels` (row-major `oy·out_w + ox`) × output channel
/// blocks `blocks` (16 channels each; the last one may be partial), written into the conv's
/// output at `out`. Every output byte is computed on its own, so any tiling gives the same
/// bytes; the threaded driver runs disjoint tiles at once.
///
/// # Safety
/// `pk.fits(p)`; `out` is valid for writes of the whole output
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
        if pk.layout.unsigned_cols {
            if !pk.layout.row_band {
                conv_vnni(p, pk, input, out, pixels, blocks)
            } else if p.win.out_h * p.win.out_w == 1 {
                // A fully connected layer (or any one-pixel conv).
                conv_vnni_band::<1, 1>(p, pk, input, out, pixels, blocks)
            } else if pk.blocks == 1 && p.out_c <= 8 {
                conv_vnni_band::<16, 1>(p, pk, input, out, pixels, blocks)
            } else if p.win.out_h * p.win.out_w <= 4 {
                // Too few pixels for 8 per group: 4, with up to 64 channels.
                if pk.blocks.is_multiple_of(4) {
                    conv_vnni_band::<4, 4>(p, pk, input, out, pixels, blocks)
                } else if pk.blocks.is_multiple_of(2) {
                    conv_vnni_band::<4, 2>(p, pk, input, out, pixels, blocks)
                } else {
                    conv_vnni_band::<4, 1>(p, pk, input, out, pixels, blocks)
                }
            } else if pk.blocks.is_multiple_of(4) {
                conv_vnni_band::<4, 4>(p, pk, input, out, pixels, blocks)
            } else if pk.blocks.is_multiple_of(2) {
                conv_vnni_band::<8, 2>(p, pk, input, out, pixels, blocks)
            } else {
                conv_vnni_band::<8, 1>(p, pk, input, out, pixels, blocks)
            }
        } else if pk.layout.row_band {
            match quads(p.out_c, pk.blocks) {
                1 => conv_avx2_band::<1>(p, pk, input, out, pixels, blocks),
                2 => conv_avx2_band::<2>(p, pk, input, out, pixels, blocks),
                _ => conv_avx2_band::<4>(p, pk, input, out, pixels, blocks),
            }
        } else if pk.layout.wide {
            match quads(p.out_c, pk.blocks) {
                1 => conv_avx2::<1>(p, pk, input, out, pixels, blocks),
                2 => conv_avx2::<2>(p, pk, input, out, pixels, blocks),
                _ => conv_avx2::<4>(p, pk, input, out, pixels, blocks),
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
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
            let dst = &mut cols[s * kp..][..k];
            im2col(w, input, q / w.out_w, q % w.out_w, zp, dst);
        }
        let mut b = blocks.start;
        while b < blocks.end {
            if b + 1 < blocks.end {
                let acc = block::<2>(&cols, kp, pk, b);
                for (j, a) in acc.iter().enumerate() {
                    let ep = Epilogue16::new(p, pk, b + j);
                    for (s, &y) in a.iter().enumerate().take(n) {
                        ep.store(y, out.add((px + s) * p.out_c + (b + j) * 16));
                    }
                }
                b += 2;
            } else {
                let acc = block::<1>(&cols, kp, pk, b);
                let ep = Epilogue16::new(p, pk, b);
                for (s, &y) in acc[0].iter().enumerate().take(n) {
                    ep.store(y, out.add((px + s) * p.out_c + b * 16));
                }
                b += 1;
            }
        }
        px += n;
    }
}

/// Accumulators `[block j][pixel s]` for channel blocks `b..b + NB` of the current 4 pixels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
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

/// The VNNI kernels' requantisation of one 16-channel block: its constants, loaded once for
/// all the pixels of a block, and the store of one pixel's 16 (or fewer) channels.
struct Epilogue16 {
    mult: __m512i,
    /// The odd channels' multipliers in the low halves of the 64-bit lanes.
    mult_odd: __m512i,
    /// [`RightShift8`]'s constants (`c_even`, `c_odd`, `e − 1`) where every channel shifts
    /// right, else `None` and the general path's left and right shifts `ls`, `rs`.
    right: Option<(__m512i, __m512i, __m512i)>,
    ls: __m512i,
    rs: __m512i,
    /// `right`'s addends hold the output zero point ([`RightShift8`]'s `zc_*`): the
    /// requantised value is already `y + out_zp`, clamped to `[act_min, act_max]` as is.
    folded: bool,
    /// `act_max = 127` (every activation but ReLU6-like caps): with `folded`, the narrowing's
    /// signed saturation is the upper clamp.
    saturate_hi: bool,
    /// The clamp: `[act_min, act_max] − out_zp`, or `[act_min, act_max]` where `folded`.
    lo: __m512i,
    hi: __m512i,
    zp: __m512i,
    /// The block's channels within `out_c` (all 16 but in a last, partial block).
    mask: __mmask16,
}

impl Epilogue16 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn new(p: &ConvI8, pk: &Packed, b: usize) -> Epilogue16 {
        let c0 = b * 16;
        let lanes = (p.out_c - c0).min(16);
        let ld = |v: &[i32]| _mm512_loadu_si512(v[c0..c0 + 16].as_ptr() as *const _);
        let ld64 = |v: &[i64]| _mm512_loadu_si512(v[c0 / 2..c0 / 2 + 8].as_ptr() as *const _);
        let folded = pk.right.as_ref().is_some_and(|rq| !rq.zc_even.is_empty());
        let right = pk.right.as_ref().map(|rq| {
            if folded {
                (ld64(&rq.zc_even), ld64(&rq.zc_odd), ld(&rq.e1))
            } else {
                (ld64(&rq.c_even), ld64(&rq.c_odd), ld(&rq.e1))
            }
        });
        let mult = ld(&pk.mult);
        let shift = if folded { 0 } else { p.out_zp };
        Epilogue16 {
            mult,
            mult_odd: _mm512_srli_epi64::<32>(mult),
            right,
            ls: ld(&pk.lshift),
            rs: ld(&pk.rshift),
            folded,
            saturate_hi: p.act_max == 127 && p.act_min >= -128,
            lo: _mm512_set1_epi32(p.act_min - shift),
            hi: _mm512_set1_epi32(p.act_max - shift),
            zp: _mm512_set1_epi32(p.out_zp),
            mask: if lanes == 16 {
                0xffff
            } else {
                (1u16 << lanes) - 1
            },
        }
    }

    /// The constants of a conv of at most 8 channels for [`block_band_vnni_pairs`]'s
    /// registers: channels 0..8 in both halves. (The same fields as [`Epilogue16::new`],
    /// written out again: a constructor shared by the two, as a function or a macro, measured
    /// the 1×1 convs that build an epilogue per pixel group 12–28 % slower on Zen 4.)
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn new_pairs(p: &ConvI8, pk: &Packed) -> Epilogue16 {
        let ld =
            |v: &[i32]| _mm512_broadcast_i64x4(_mm256_loadu_si256(v[..8].as_ptr() as *const _));
        let ld64 =
            |v: &[i64]| _mm512_broadcast_i64x4(_mm256_loadu_si256(v[..4].as_ptr() as *const _));
        let folded = pk.right.as_ref().is_some_and(|rq| !rq.zc_even.is_empty());
        let right = pk.right.as_ref().map(|rq| {
            if folded {
                (ld64(&rq.zc_even), ld64(&rq.zc_odd), ld(&rq.e1))
            } else {
                (ld64(&rq.c_even), ld64(&rq.c_odd), ld(&rq.e1))
            }
        });
        let half = (1u16 << p.out_c.min(8)) - 1;
        let mult = ld(&pk.mult);
        let shift = if folded { 0 } else { p.out_zp };
        Epilogue16 {
            mult,
            mult_odd: _mm512_srli_epi64::<32>(mult),
            right,
            ls: ld(&pk.lshift),
            rs: ld(&pk.rshift),
            folded,
            saturate_hi: p.act_max == 127 && p.act_min >= -128,
            lo: _mm512_set1_epi32(p.act_min - shift),
            hi: _mm512_set1_epi32(p.act_max - shift),
            zp: _mm512_set1_epi32(p.out_zp),
            mask: half | half << 8,
        }
    }

    /// [`Epilogue16::store`] of a register of two pixels' `oc ≤ 8` channels: the first pixel's
    /// at `dst`, the second's (if `both`) at `dst + oc`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn store_pair(&self, acc: __m512i, dst: *mut i8, oc: usize, both: bool) {
        let v = self.requantise(acc);
        if both && oc == 8 {
            _mm_storeu_si128(dst as *mut __m128i, v);
            return;
        }
        let first = self.mask & 0xff;
        _mm_mask_storeu_epi8(dst, first, v);
        if both {
            // The second pixel's bytes sit at 8..8 + oc of `v`: a masked store at `dst + oc − 8`
            // writes (and touches) only those, at `dst + oc..`.
            _mm_mask_storeu_epi8(dst.wrapping_add(oc).wrapping_sub(8), first << 8, v);
        }
    }

    /// The 16 output bytes of `acc`: requantised, clamped, narrowed.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn requantise(&self, acc: __m512i) -> __m128i {
        let y = match self.right {
            Some((c_even, c_odd, e1)) => {
                mbqm16_right(acc, self.mult, self.mult_odd, c_even, c_odd, e1)
            }
            None => mbqm16(acc, self.mult, self.ls, self.rs),
        };
        if self.folded {
            // `y + out_zp` already, exactly (the floor of a sum below 2⁶³ over 2^(31+e)).
            let y = _mm512_max_epi32(y, self.lo);
            if self.saturate_hi {
                return _mm512_cvtsepi32_epi8(y);
            }
            return _mm512_cvtepi32_epi8(_mm512_min_epi32(y, self.hi));
        }
        let y = _mm512_add_epi32(
            _mm512_min_epi32(_mm512_max_epi32(y, self.lo), self.hi),
            self.zp,
        );
        // In [−128, 127] already: the truncating narrowing is exact.
        _mm512_cvtepi32_epi8(y)
    }

    /// Requantises the accumulators `acc` (bias included), clamps, and writes the block's
    /// channels at `dst`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn store(&self, acc: __m512i, dst: *mut i8) {
        let v = self.requantise(acc);
        if self.mask == 0xffff {
            _mm_storeu_si128(dst as *mut __m128i, v);
        } else {
            _mm_mask_storeu_epi8(dst, self.mask, v);
        }
    }
}

/// 16 lanes of [`mbqm8_right`] (`left = 0`, `right = e ≥ 1`, `mult ≥ 0`): the same
/// `((x·mult + C) >> 32) >> (e − 1)` with the sign term on the product, `mult_odd` the odd
/// lanes' multipliers already moved to the low halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(crate) unsafe fn mbqm16_right(
    x: __m512i,
    mult: __m512i,
    mult_odd: __m512i,
    c_even: __m512i,
    c_odd: __m512i,
    e1: __m512i,
) -> __m512i {
    let zero = _mm512_setzero_si512();
    let sign = _mm512_set1_epi64(-(1i64 << 31));
    let t = |prod: __m512i, c: __m512i| {
        let neg = _mm512_cmplt_epi64_mask(prod, zero);
        let t = _mm512_add_epi64(prod, c);
        _mm512_mask_add_epi64(t, neg, t, sign)
    };
    let even = t(_mm512_mul_epi32(x, mult), c_even);
    let odd = t(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), mult_odd),
        c_odd,
    );
    let h = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(even), odd);
    _mm512_srav_epi32(h, e1)
}

/// 16 lanes of [`mbqm8_shift0`]: `MultiplyByQuantizedMultiplier(x, mult, 0)` for `mult ≥ 0`,
/// `⌊(x·mult + 2³⁰) / 2³¹⌋`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(crate) unsafe fn mbqm16_shift0(x: __m512i, mult: __m512i) -> __m512i {
    let half = _mm512_set1_epi64(1 << 30);
    let even = _mm512_add_epi64(_mm512_mul_epi32(x, mult), half);
    let odd = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), _mm512_srli_epi64::<32>(mult)),
        half,
    );
    _mm512_mask_blend_epi32(
        0xaaaa,
        _mm512_srli_epi64::<31>(even),
        _mm512_slli_epi64::<1>(odd),
    )
}

/// Bytes of the VNNI row band (on the stack): the padded input rows of a run of output rows,
/// as unsigned bytes.
const VNNI_BAND: usize = 64 * 1024;
/// Bytes after the band's rows that a kernel row padded to a multiple of 4 taps may read
/// (multiplied by zero weights).
const VNNI_SLACK: usize = 4;

/// Whether [`conv_vnni_band`] runs this window: the `kh` padded rows of one output row fit
/// the band.
fn vnni_band_fits(w: &Window) -> bool {
    let [_, pl, _, pr] = w.pads();
    w.kh * (pl + w.in_w + pr) * w.in_c <= VNNI_BAND
}

/// The VNNI kernel without an im2col copy (XNNPACK's indirect GEMM, with rows instead of
/// taps): the zero-padded input rows that a run of output rows reads are converted once to
/// unsigned bytes (`x ^ 0x80`; padding holds the input zero point) in a stack band, so that
/// kernel row `ky` of output pixel `(oy, ox)` is the `kw·in_c` contiguous bytes at column
/// `ox·stride_w` of band row `oy·stride_h + ky`. `P` pixels (a group runs on past a row's
/// end) × `NB` 16-channel blocks of accumulators ([`block_band_vnni`]); the packed weights pad
/// each kernel row to a multiple of 4 taps ([`Layout::row_band`]). Runs of output rows as
/// tall as the band holds (one run for every model here).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn conv_vnni_band<const P: usize, const NB: usize>(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    out: *mut i8,
    pixels: Range<usize>,
    blocks: Range<usize>,
) {
    let w = &p.win;
    if pixels.is_empty() {
        return;
    }
    let [pt, pl, _, pr] = w.pads();
    let ic = w.in_c;
    let row_len = (pl + w.in_w + pr) * ic;
    let row_k = pk.kp / w.kh;
    let fill = (p.in_zp.clamp(-128, 127) as i8 as u8) ^ 0x80;
    // Output rows per run: their input rows, `(rows − 1)·stride + kh`, within the band.
    let run_rows = (VNNI_BAND / row_len - w.kh) / w.stride_h + 1;
    let mut band_buf = [MaybeUninit::<u8>::uninit(); VNNI_BAND + VNNI_SLACK];
    let band = band_buf.as_mut_ptr() as *mut u8;
    let oc = p.out_c;
    // Where one group of `NB` blocks covers the tile's channels (every tile of the models
    // here) and its reduction has a step for each of a group's outputs (not the 1×1 convs of
    // few input channels), a group's requantisation runs during the next group's multiply-adds
    // ([`block_band_vnni_pipelined`]).
    let pipelined = P != 1 && P != 16 && blocks.len() == NB && w.kh * (row_k / 4) >= P * NB;
    let eps: Option<[Epilogue16; NB]> =
        pipelined.then(|| core::array::from_fn(|j| Epilogue16::new(p, pk, blocks.start + j)));
    let mut pending = Pending::<P, NB> {
        acc: [[_mm512_setzero_si512(); P]; NB],
        dst: out,
        n: 0,
    };
    let last_oy = (pixels.end - 1) / w.out_w;
    let mut oy0 = pixels.start / w.out_w;
    while oy0 <= last_oy {
        let oy1 = (oy0 + run_rows).min(last_oy + 1);
        let r0 = oy0 * w.stride_h;
        let n_rows = (oy1 - 1) * w.stride_h + w.kh - r0;
        for r in 0..n_rows {
            // SAFETY: `n_rows·row_len ≤ VNNI_BAND` (`run_rows`); each row that is read is
            // written whole before.
            let dst = core::slice::from_raw_parts_mut(band.add(r * row_len), row_len);
            if r % w.stride_h >= w.kh {
                // A row between two output rows' windows (stride above the kernel height: the
                // 1×1 stride-2 shortcuts): no output row reads it, except that a kernel row
                // padded to 4 taps may read the first bytes past the row above (times zero).
                dst[..VNNI_SLACK.min(row_len)].fill(0);
                continue;
            }
            let iy = (r0 + r).wrapping_sub(pt);
            if iy < w.in_h {
                dst[..pl * ic].fill(fill);
                let src = &input[iy * w.in_w * ic..][..w.in_w * ic];
                for (d, &v) in dst[pl * ic..][..w.in_w * ic].iter_mut().zip(src) {
                    *d = v as u8 ^ 0x80;
                }
                dst[(pl + w.in_w) * ic..].fill(fill);
            } else {
                dst.fill(fill);
            }
        }
        // The slack's bytes are read (times zero weights): give them defined values.
        core::ptr::write_bytes(band.add(n_rows * row_len), 0, VNNI_SLACK);
        let start = pixels.start.max(oy0 * w.out_w);
        let end = pixels.end.min(oy1 * w.out_w);
        let (mut oy, mut ox) = (start / w.out_w, start % w.out_w);
        let mut px = start;
        while px < end {
            let n = (end - px).min(P);
            // The band offsets of the group's pixels; missing pixels of the last group repeat
            // the last one (computed, not written).
            let mut offs = [0usize; P];
            let (mut qy, mut qx) = (oy, ox);
            for (s, o) in offs.iter_mut().enumerate() {
                *o = (qy * w.stride_h - r0) * row_len + qx * w.stride_w * ic;
                if s + 1 < n {
                    qx += 1;
                    if qx == w.out_w {
                        (qy, qx) = (qy + 1, 0);
                    }
                }
            }
            if P == 1 {
                // One pixel: its reduction split over 4 accumulators instead
                // ([`block_band_vnni_single`]).
                for b in blocks.clone() {
                    let acc = block_band_vnni_single(band, offs[0], row_len, w.kh, row_k, pk, b);
                    Epilogue16::new(p, pk, b).store(acc, out.add(px * oc + b * 16));
                }
            } else if P == 16 {
                // At most 8 channels: a 256-bit register per pixel, paired for the epilogue
                // ([`block_band_vnni_pairs`]).
                if let (false, Ok(offs)) = (blocks.is_empty(), <&[usize; 16]>::try_from(&offs[..]))
                {
                    let acc = block_band_vnni_pairs(band, offs, row_len, w.kh, row_k, pk);
                    let ep = Epilogue16::new_pairs(p, pk);
                    for (t, &y) in acc.iter().enumerate().take(n.div_ceil(2)) {
                        ep.store_pair(y, out.add((px + 2 * t) * oc), oc, 2 * t + 1 < n);
                    }
                }
            } else if let Some(eps) = &eps {
                let acc = block_band_vnni_pipelined::<P, NB>(
                    band,
                    &offs,
                    row_len,
                    w.kh,
                    row_k,
                    pk,
                    blocks.start,
                    eps,
                    &pending,
                    oc,
                );
                pending = Pending {
                    acc,
                    dst: out.add(px * oc + blocks.start * 16),
                    n,
                };
            } else {
                let mut b = blocks.start;
                while b < blocks.end {
                    if b + NB <= blocks.end {
                        let acc =
                            block_band_vnni::<P, NB>(band, &offs, row_len, w.kh, row_k, pk, b);
                        for (j, a) in acc.iter().enumerate() {
                            let ep = Epilogue16::new(p, pk, b + j);
                            for (s, &y) in a.iter().enumerate().take(n) {
                                ep.store(y, out.add((px + s) * oc + (b + j) * 16));
                            }
                        }
                        b += NB;
                    } else {
                        let acc = block_band_vnni::<P, 1>(band, &offs, row_len, w.kh, row_k, pk, b);
                        let ep = Epilogue16::new(p, pk, b);
                        for (s, &y) in acc[0].iter().enumerate().take(n) {
                            ep.store(y, out.add((px + s) * oc + b * 16));
                        }
                        b += 1;
                    }
                }
            }
            px += n;
            ox += n;
            while ox >= w.out_w {
                ox -= w.out_w;
                oy += 1;
            }
        }
        oy0 = oy1;
    }
    // The last group's outputs.
    if let Some(eps) = &eps {
        pending.flush(eps, oc);
    }
}

/// Accumulators `[block j][pixel s]` (bias included) for channel blocks `b..b + NB` of the `P`
/// pixels whose kernel row 0 starts at `band + offs[s]` (row `ky` at `+ ky·row_len`), each
/// kernel row `row_k` taps (a multiple of 4) of the packed weights. Per 4 taps: `NB` weight
/// loads, `P` broadcasts of 4 bytes, `P·NB` `vpdpbusd`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn block_band_vnni<const P: usize, const NB: usize>(
    band: *const u8,
    offs: &[usize; P],
    row_len: usize,
    kh: usize,
    row_k: usize,
    pk: &Packed,
    b: usize,
) -> [[__m512i; P]; NB] {
    let kp = pk.kp;
    let mut acc = [[_mm512_setzero_si512(); P]; NB];
    for (j, a) in acc.iter_mut().enumerate() {
        let bias = _mm512_loadu_si512(pk.bias[(b + j) * 16..][..16].as_ptr() as *const _);
        *a = [bias; P];
    }
    let wp = pk.w[b * kp * 16..(b + NB) * kp * 16].as_ptr();
    for ky in 0..kh {
        let xs: [*const u8; P] = core::array::from_fn(|s| band.add(offs[s] + ky * row_len));
        let wr = wp.add(ky * row_k * 16);
        for q in 0..row_k / 4 {
            let mut wv = [_mm512_setzero_si512(); NB];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wr.add(j * kp * 16 + q * 64) as *const _);
            }
            for s in 0..P {
                let x = _mm512_set1_epi32((xs[s].add(4 * q) as *const i32).read_unaligned());
                for (a, &v) in acc.iter_mut().zip(&wv) {
                    a[s] = _mm512_dpbusd_epi32(a[s], x, v);
                }
            }
        }
    }
    acc
}

/// A pixel group's accumulators whose requantisation and stores are still to do: `n` pixels,
/// pixel `s` of block `j` at `dst + s·oc + 16·j`.
struct Pending<const P: usize, const NB: usize> {
    acc: [[__m512i; P]; NB],
    dst: *mut i8,
    n: usize,
}

impl<const P: usize, const NB: usize> Pending<P, NB> {
    /// Requantises and stores all its outputs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn flush(&self, eps: &[Epilogue16; NB], oc: usize) {
        for t in 0..NB * self.n {
            let (j, s) = (t / self.n, t % self.n);
            eps[j].store(self.acc[j][s], self.dst.add(s * oc + 16 * j));
        }
    }
}

/// [`block_band_vnni`] for a group of `NB` blocks that are all the tile's channels, with the
/// previous group's outputs (`prev`) requantised and stored one per step of the reduction:
/// the epilogue's adds, compares and blends then issue beside the multiply-adds instead of
/// after them (on Zen 4 its ~14 instructions per 16 outputs took about 12 % of ResNet-8 when
/// run group after group). The caller runs it only where the reduction has a step for each of
/// the previous group's outputs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block_band_vnni_pipelined<const P: usize, const NB: usize>(
    band: *const u8,
    offs: &[usize; P],
    row_len: usize,
    kh: usize,
    row_k: usize,
    pk: &Packed,
    b: usize,
    eps: &[Epilogue16; NB],
    prev: &Pending<P, NB>,
    oc: usize,
) -> [[__m512i; P]; NB] {
    let kp = pk.kp;
    let mut acc = [[_mm512_setzero_si512(); P]; NB];
    for (j, a) in acc.iter_mut().enumerate() {
        let bias = _mm512_loadu_si512(pk.bias[(b + j) * 16..][..16].as_ptr() as *const _);
        *a = [bias; P];
    }
    let wp = pk.w[b * kp * 16..(b + NB) * kp * 16].as_ptr();
    // The next of the previous group's outputs to store: block `pj`, pixel `ps`.
    let (mut pj, mut ps) = (if prev.n == 0 { NB } else { 0 }, 0);
    for ky in 0..kh {
        let xs: [*const u8; P] = core::array::from_fn(|s| band.add(offs[s] + ky * row_len));
        let wr = wp.add(ky * row_k * 16);
        for q in 0..row_k / 4 {
            let mut wv = [_mm512_setzero_si512(); NB];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wr.add(j * kp * 16 + q * 64) as *const _);
            }
            for s in 0..P {
                let x = _mm512_set1_epi32((xs[s].add(4 * q) as *const i32).read_unaligned());
                for (a, &v) in acc.iter_mut().zip(&wv) {
                    a[s] = _mm512_dpbusd_epi32(a[s], x, v);
                }
            }
            if pj < NB {
                eps[pj].store(prev.acc[pj][ps], prev.dst.add(ps * oc + 16 * pj));
                ps += 1;
                if ps == prev.n {
                    (pj, ps) = (pj + 1, 0);
                }
            }
        }
    }
    // The caller's condition (a step for each output) left nothing of `prev` to do.
    debug_assert!(pj == NB);
    acc
}

/// [`block_band_vnni`] for one pixel (a fully connected layer: one long reduction): the taps'
/// groups of 4 dealt round-robin to 4 accumulators, so that 4 `vpdpbusd` chains run at once
/// instead of one waiting on each sum, added at the end (`i32` sums wrap alike in any order).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn block_band_vnni_single(
    band: *const u8,
    off: usize,
    row_len: usize,
    kh: usize,
    row_k: usize,
    pk: &Packed,
    b: usize,
) -> __m512i {
    let kp = pk.kp;
    let mut acc = [_mm512_setzero_si512(); 4];
    acc[0] = _mm512_loadu_si512(pk.bias[b * 16..][..16].as_ptr() as *const _);
    let wp = pk.w[b * kp * 16..(b + 1) * kp * 16].as_ptr();
    for ky in 0..kh {
        let x0 = band.add(off + ky * row_len);
        let wr = wp.add(ky * row_k * 16);
        let groups = row_k / 4;
        let mut q = 0;
        while q + 4 <= groups {
            for (j, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((x0.add(4 * (q + j)) as *const i32).read_unaligned());
                let wv = _mm512_loadu_si512(wr.add((q + j) * 64) as *const _);
                *a = _mm512_dpbusd_epi32(*a, x, wv);
            }
            q += 4;
        }
        while q < groups {
            let x = _mm512_set1_epi32((x0.add(4 * q) as *const i32).read_unaligned());
            let wv = _mm512_loadu_si512(wr.add(q * 64) as *const _);
            acc[0] = _mm512_dpbusd_epi32(acc[0], x, wv);
            q += 1;
        }
    }
    _mm512_add_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_add_epi32(acc[2], acc[3]),
    )
}

/// [`block_band_vnni`] for a conv of at most 8 output channels (one block whose upper 8 lanes
/// are padding), 16 pixels: each pixel's 8 channels in a 256-bit accumulator (`vpdpbusd ymm`,
/// two a cycle on Zen 4, as many MACs as one of 512 bits, with plain broadcasts), returned in
/// pairs, `[pixel 2t: channels 0..8 | pixel 2t + 1: 0..8]`, for [`Epilogue16::store_pair`]
/// (the study backbone's 4- and 8-channel convs, the landmark model's 8).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn block_band_vnni_pairs(
    band: *const u8,
    offs: &[usize; 16],
    row_len: usize,
    kh: usize,
    row_k: usize,
    pk: &Packed,
) -> [__m512i; 8] {
    let kp = pk.kp;
    let bias = _mm256_loadu_si256(pk.bias[..8].as_ptr() as *const _);
    let mut acc = [bias; 16];
    let wp = pk.w[..kp * 16].as_ptr();
    for ky in 0..kh {
        let xs: [*const u8; 16] = core::array::from_fn(|s| band.add(offs[s] + ky * row_len));
        let wr = wp.add(ky * row_k * 16);
        for q in 0..row_k / 4 {
            // Channels 0..8 of the 16-channel block's 4 taps.
            let wv = _mm256_loadu_si256(wr.add(q * 64) as *const _);
            for (s, a) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((xs[s].add(4 * q) as *const i32).read_unaligned());
                *a = _mm256_dpbusd_epi32(*a, x, wv);
            }
        }
    }
    core::array::from_fn(|t| {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(acc[2 * t]), acc[2 * t + 1])
    })
}

/// 16 lanes of [`multiply_by_quantized_multiplier`](super::super::requant::multiply_by_quantized_multiplier)
/// for `mult ≥ 0`: saturating left shift, SRDHM in 64-bit halves, rounding right shift.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(crate) unsafe fn mbqm16(x: __m512i, mult: __m512i, ls: __m512i, rs: __m512i) -> __m512i {
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
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
unsafe fn conv_avx2<const NW: usize>(
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
    let mut cols = [0i16; PIXELS_AVX2 * MAX_K];
    let end = pixels.end;
    let oc = p.out_c;
    let ep = Epilogue::new(p.act_min, p.act_max, p.out_zp);
    let mut px = pixels.start;
    // Pixel `px`'s coordinates, advanced with it (no division per pixel).
    let (mut oy, mut ox) = (px / w.out_w, px % w.out_w);
    while px < end {
        let n = (end - px).min(PIXELS_AVX2);
        let (mut qy, mut qx) = (oy, ox);
        for s in 0..PIXELS_AVX2 {
            // Missing pixels of the last block repeat the last one (computed, not written).
            let dst = &mut cols[s * kp..][..k];
            im2col(w, input, qy, qx, zp, dst);
            if s + 1 < n {
                qx += 1;
                if qx == w.out_w {
                    (qy, qx) = (qy + 1, 0);
                }
            }
        }
        for b in blocks.clone() {
            let c0 = b * 16;
            let acc = block_avx2::<NW>(&cols, kp, pk, b);
            if NW == 1 {
                store_pixels_x4(pk, &ep, &acc, n, oc, out.add(px * oc));
            } else {
                store_pixels(pk, &ep, &acc, n, c0, oc, out.add(px * oc + c0));
            }
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
unsafe fn conv_avx2_band<const NW: usize>(
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
    // Each kernel row's taps padded on their own (`Layout::row_band`): `kp = kh · row_kp`.
    let row_k = pk.kp / w.kh;
    let zp = p.in_zp.clamp(-128, 127) as i16;
    // Only the `kh` ring rows and the slack are ever read: zero those, not the whole 32 KiB
    // (a full zero-fill per conv call was 6–10 % of a small model's inference). Every ring row
    // is written before it is read; the zeros give the slack (and unheld rows) defined values.
    let used = w.kh * row_len + BAND_SLACK;
    let mut band_buf = [MaybeUninit::<i16>::uninit(); BAND_MAX + BAND_SLACK];
    for v in &mut band_buf[..used] {
        v.write(0);
    }
    // SAFETY: the first `used ≤ BAND_MAX + BAND_SLACK` (`band_fits`) elements were just
    // initialised; `MaybeUninit<i16>` has `i16`'s layout.
    let band: &mut [i16] = core::slice::from_raw_parts_mut(band_buf.as_mut_ptr() as *mut i16, used);
    // The padded-input row each ring slot holds (none yet).
    let mut held = [usize::MAX; BAND_MAX_KH];
    let oc = p.out_c;
    let ep = Epilogue::new(p.act_min, p.act_max, p.out_zp);
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
                let c0 = b * 16;
                let acc = block_band::<NW>(band, &rows[..w.kh], offs, row_k, pk, b);
                if NW == 1 {
                    store_pixels_x4(pk, &ep, &acc, n, oc, out.add(q * oc));
                } else {
                    store_pixels(pk, &ep, &acc, n, c0, oc, out.add(q * oc + c0));
                }
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
unsafe fn block_band<const NW: usize>(
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
            let mut wv = [_mm256_setzero_si256(); NW];
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

/// How many of a 16-channel block's four 4-channel weight registers the AVX2 kernels use for a
/// conv of `oc` output channels in `blocks` blocks (1, 2 or 4; generic `NW` of [`conv_avx2`]
/// and [`conv_avx2_band`]). A conv of one block with at most 8 channels (the study backbone's 4-
/// and 8-channel convs, the landmark model's 8) has zero weights in the rest, never stored, so
/// it skips their loads and multiply-adds: they were 75 % and 50 % of those convs' GEMM work.
/// Wider convs keep 4 for every block (chosen per conv, not per block, so that each kernel
/// inlines one GEMM loop).
#[inline]
fn quads(oc: usize, blocks: usize) -> usize {
    match (blocks, oc) {
        (1, 0..=4) => 1,
        (1, 5..=8) => 2,
        _ => 4,
    }
}

/// The output clamp of the AVX2 epilogue: `[act_min − out_zp, act_max − out_zp]`, then `+ out_zp`
/// (the reference's `saturating_add(out_zp).clamp(act_min, act_max)`, without the overflow),
/// and the narrowing to bytes. Shared by the conv kernels and the residual add
/// ([`super::x86_add`]).
#[derive(Clone, Copy)]
pub(crate) struct Epilogue {
    lo: __m256i,
    hi: __m256i,
    zp: __m256i,
}

impl Epilogue {
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) unsafe fn new(act_min: i32, act_max: i32, out_zp: i32) -> Epilogue {
        Epilogue {
            lo: _mm256_set1_epi32(act_min - out_zp),
            hi: _mm256_set1_epi32(act_max - out_zp),
            zp: _mm256_set1_epi32(out_zp),
        }
    }

    /// 8 requantised values clamped and moved to the output zero point.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) unsafe fn clamp(&self, y: __m256i) -> __m256i {
        _mm256_add_epi32(
            _mm256_min_epi32(_mm256_max_epi32(y, self.lo), self.hi),
            self.zp,
        )
    }
}

/// The 16 output bytes of two vectors of 8 [`Epilogue::clamp`]ed values (`r[0]` the first 8).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn bytes16(r: [__m256i; 2]) -> __m128i {
    // The values are in [−128, 127] already: the saturating packs are exact.
    let v16 = _mm256_permute4x64_epi64::<0xd8>(_mm256_packs_epi32(r[0], r[1]));
    _mm_packs_epi16(
        _mm256_castsi256_si128(v16),
        _mm256_extracti128_si256::<1>(v16),
    )
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
    // A block of 8 channels or fewer (small convs' `out_c` of 4 or 8) leaves its upper half
    // unrequantised: those lanes are never stored.
    let halves = if lanes > 8 { 2 } else { 1 };
    for (s, a) in acc.iter().enumerate().take(n) {
        let mut r = [_mm256_setzero_si256(); 2];
        for (j, rj) in r.iter_mut().enumerate().take(halves) {
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
            *rj = ep.clamp(y);
        }
        store_lanes(bytes16(r), lanes, dst.add(s * oc));
    }
}

/// [`store_pixels`] for a conv of at most 4 output channels (one block, [`quads`] 1): the two
/// pixels' channels are requantised together in one vector, `[p0 c0..c3, p1 c0..c3]`, with the
/// channel constants repeated in both 128-bit halves, instead of in two vectors half empty. The
/// study backbone's 4-channel convs spent as long in the epilogue as in their GEMM.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_pixels_x4(
    pk: &Packed,
    ep: &Epilogue,
    acc: &[[__m256i; 4]; PIXELS_AVX2],
    n: usize,
    oc: usize,
    dst: *mut i8,
) {
    if n < 2 {
        return store_pixels(pk, ep, acc, n, 0, oc, dst);
    }
    // Channels 0..4 twice (`i32` lanes), or channels {0, 2} / {1, 3} twice (`i64` lanes).
    let dup32 =
        |v: &[i32]| _mm256_broadcastsi128_si256(_mm_loadu_si128(v[..4].as_ptr() as *const __m128i));
    let dup64 =
        |v: &[i64]| _mm256_broadcastsi128_si256(_mm_loadu_si128(v[..2].as_ptr() as *const __m128i));
    // hadd: [p0 c0 c1, p1 c0 c1 | p0 c2 c3, p1 c2 c3]; the permute orders it by pixel.
    let sum = _mm256_permute4x64_epi64::<0xd8>(_mm256_hadd_epi32(acc[0][0], acc[1][0]));
    let acc8 = _mm256_add_epi32(sum, dup32(&pk.bias));
    let mult = dup32(&pk.mult);
    let y = match &pk.right {
        Some(rq) => mbqm8_right(
            acc8,
            mult,
            dup64(&rq.c_even),
            dup64(&rq.c_odd),
            dup32(&rq.e1),
        ),
        None => mbqm8(acc8, mult, dup32(&pk.lshift), dup32(&pk.rshift)),
    };
    let v = bytes16([ep.clamp(y), _mm256_setzero_si256()]);
    if oc == 4 {
        _mm_storel_epi64(dst as *mut __m128i, v);
    } else {
        store_lanes(v, oc, dst);
        store_lanes(_mm_srli_si128::<4>(v), oc, dst.add(oc));
    }
}

/// Writes the first `lanes ≤ 16` bytes of `v` at `d` with whole stores of 16, 8, 4 bytes and
/// at most 3 single bytes (a variable-length `copy_nonoverlapping` here was a `memcpy` call
/// per pixel and block).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_lanes(v: __m128i, lanes: usize, d: *mut i8) {
    if lanes == 16 {
        _mm_storeu_si128(d as *mut __m128i, v);
        return;
    }
    let (mut v, mut off, mut rest) = (v, 0, lanes);
    if rest >= 8 {
        _mm_storel_epi64(d as *mut __m128i, v);
        v = _mm_srli_si128::<8>(v);
        (off, rest) = (8, rest - 8);
    }
    if rest >= 4 {
        core::ptr::write_unaligned(d.add(off) as *mut i32, _mm_cvtsi128_si32(v));
        v = _mm_srli_si128::<4>(v);
        (off, rest) = (off + 4, rest - 4);
    }
    let mut x = _mm_cvtsi128_si32(v) as u32;
    for i in 0..rest {
        *d.add(off + i) = x as u8 as i8;
        x >>= 8;
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
unsafe fn block_avx2<const NW: usize>(
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
        let mut wv = [_mm256_setzero_si256(); NW];
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

    /// One round's inputs `x` (every fourth round the edge values, else random of random
    /// magnitude), multipliers `m` (zero and `i32::MAX` included) and right shifts `e`
    /// (`1..=31`, each lane its own) for `N` lanes.
    fn lanes<const N: usize>(rng: &mut SplitMix64, round: usize) -> ([i32; N], [i32; N], [i32; N]) {
        let edges = [0, 1, -1, i32::MIN, i32::MAX, 1 << 30, -(1 << 30), 3, -3];
        let x = core::array::from_fn(|i| {
            if round.is_multiple_of(4) {
                edges[(i + round) % edges.len()]
            } else {
                (rng.next_u64() as i32) >> (rng.below(31))
            }
        });
        let m = core::array::from_fn(|i| match (round + i) % 5 {
            0 => 0,
            1 => i32::MAX,
            _ => (rng.next_u64() >> 33) as i32,
        });
        let e = core::array::from_fn(|i| 1 + ((round * N + i) % 31) as i32);
        (x, m, e)
    }

    /// [`mbqm8_right`] and [`mbqm8_shift0`] against the scalar `MultiplyByQuantizedMultiplier`
    /// on every right shift and shift 0,
    /// edge and random inputs and multipliers (zero included), each lane with its own constants.
    #[test]
    fn mbqm8_right_matches_scalar() {
        if !avx2_available() {
            return;
        }
        let mut rng = SplitMix64::new(7);
        for round in 0..4000 {
            let (x, m, e) = lanes::<8>(&mut rng, round);
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

    /// The 16-lane forms ([`mbqm16_right`], [`mbqm16_shift0`], [`mbqm16`]) against the scalar
    /// `MultiplyByQuantizedMultiplier`, as [`mbqm8_right_matches_scalar`] does for 8 lanes, plus
    /// left shifts for the general form.
    #[test]
    fn mbqm16_matches_scalar() {
        if !available() {
            return;
        }
        let mut rng = SplitMix64::new(11);
        for round in 0..4000 {
            let (x, m, e) = lanes::<16>(&mut rng, round);
            let even: [i64; 8] = core::array::from_fn(|j| right_addend(e[2 * j] as u32));
            let odd: [i64; 8] = core::array::from_fn(|j| right_addend(e[2 * j + 1] as u32));
            let e1 = e.map(|v| v - 1);
            // Shifts of the general form: −31..=30, left ones included.
            let sh: [i32; 16] = core::array::from_fn(|i| ((round * 16 + i) % 62) as i32 - 31);
            let (mut got, mut got0, mut got_gen) = ([0i32; 16], [0i32; 16], [0i32; 16]);
            // SAFETY: the AVX-512 features checked above; the arrays are 64 bytes each.
            unsafe {
                let ld = |p: *const i32| _mm512_loadu_si512(p as *const _);
                let mv = ld(m.as_ptr());
                let y = mbqm16_right(
                    ld(x.as_ptr()),
                    mv,
                    _mm512_srli_epi64::<32>(mv),
                    _mm512_loadu_si512(even.as_ptr() as *const _),
                    _mm512_loadu_si512(odd.as_ptr() as *const _),
                    ld(e1.as_ptr()),
                );
                _mm512_storeu_si512(got.as_mut_ptr() as *mut _, y);
                let y0 = mbqm16_shift0(ld(x.as_ptr()), mv);
                _mm512_storeu_si512(got0.as_mut_ptr() as *mut _, y0);
                let ls = sh.map(|v| v.max(0));
                let rs = sh.map(|v| (-v).max(0));
                let yg = mbqm16(ld(x.as_ptr()), mv, ld(ls.as_ptr()), ld(rs.as_ptr()));
                _mm512_storeu_si512(got_gen.as_mut_ptr() as *mut _, yg);
            }
            for i in 0..16 {
                let want = multiply_by_quantized_multiplier(x[i], m[i], -e[i]);
                assert_eq!(got[i], want, "x {} mult {} shift -{}", x[i], m[i], e[i]);
                let want0 = multiply_by_quantized_multiplier(x[i], m[i], 0);
                assert_eq!(got0[i], want0, "x {} mult {} shift 0", x[i], m[i]);
                let want_gen = multiply_by_quantized_multiplier(x[i], m[i], sh[i]);
                assert_eq!(
                    got_gen[i], want_gen,
                    "x {} mult {} shift {}",
                    x[i], m[i], sh[i]
                );
            }
        }
    }
}
