//! aarch64 NEON conv kernels (edge Linux boards, Raspberry Pi class): `smull`/`sadalp` on every
//! aarch64 CPU, `sdot` where the CPU has FEAT_DotProd (Armv8.2-A+: Cortex-A55/A76, the Pi 5).
//!
//! NEON is part of the aarch64 baseline, so the `smull` kernel needs no detection and runs in
//! `no_std` builds too. The `sdot` kernel is chosen at run time (`std`:
//! `is_aarch64_feature_detected!("dotprod")`) or at build time (`-C target-feature=+dotprod`).
//!
//! Weights are packed once at load in [`Packed`]'s layout with 4-channel blocks (one
//! `int32x4_t` of accumulators): block `b`, group `q` of 4 taps is 16 bytes
//! `[w[4b][4q..4q+4], w[4b+1][4q..4q+4], …]`. The column's 4 taps of group `q` are broadcast to
//! all 4 lanes.
//!
//! * `sdot` adds the four `i8·i8` products of each 32-bit lane to its `i32`, wrapping, with no
//!   intermediate rounding or saturation: lane `c` of block `b` gains `Σ_t x[4q+t]·w[4b+c][4q+t]`.
//!   Signed × signed, so (unlike VNNI's `u8 × i8`) the column needs no sign flip and the bias no
//!   correction. `vdotq_s32` is still unstable in `core::arch` (`stdarch_neon_dotprod`, Rust
//!   1.95), so the one instruction is written with `asm!` (stable) inside a
//!   `#[target_feature(enable = "dotprod")]` function.
//! * Without `sdot`: `smull` (`vmull_s8`, and `smull2` for the upper half) gives the 16 products
//!   as `i16`, exact (`|x·w| ≤ 128·128 = 2¹⁴`), and `sadalp` (`vpadalq_s16`) adds adjacent pairs
//!   into `i32` lanes at once, wrapping. Products are never summed in `i16` (`smlal` of two
//!   `(−128)·(−128)` would overflow it), so the kernel is exact for every `i8` weight, −128
//!   included. The lanes then hold `[c0 taps 0–1, c0 taps 2–3, c1 …]` and `[c2 …, c3 …]`; one
//!   `addp` (`vpaddq_s32`) at the end gives the 4 channel sums.
//!
//! Both sum the same products as the portable loop in another order, wrapping modulo 2³², so the
//! accumulators are equal (see [`super::super::prepared`]). The requantisation runs 4 lanes at a
//! time with gemmlowp's NEON formulation ([`mbqm4`]), equal to
//! [`multiply_by_quantized_multiplier_split`](super::super::requant::multiply_by_quantized_multiplier_split)
//! for every input; the tests compare both kernels with the reference bit for bit.

use core::arch::aarch64::*;
#[cfg(any(feature = "std", target_feature = "dotprod"))]
use core::arch::asm;
use core::ops::Range;

use super::super::conv2d::ConvI8;
use super::super::prepared::{im2col, ChanQ};
use super::packed::{Layout, Packed, MAX_K};

/// Output pixels per block (the columns broadcast against each weight load).
const PIXELS: usize = 4;
/// Output channels per block (`i32` lanes of one register).
const LANES: usize = 4;

/// The `sdot` kernel's packing: 4-channel blocks of `i8`, signed columns.
const SDOT: Layout = Layout {
    kernel: "neon-sdot",
    lanes: LANES,
    wide: false,
    unsigned_cols: false,
    row_band: false,
};

/// The `smull`/`sadalp` kernel's packing: the same layout as [`SDOT`].
const SMULL: Layout = Layout {
    kernel: "neon-smull",
    ..SDOT
};

/// Whether this CPU runs the `sdot` kernel: built with `+dotprod`, or (`std`) detected at run
/// time. Without `std` and without the build flag, `false` (the `smull` kernel runs).
pub fn sdot_available() -> bool {
    #[cfg(target_feature = "dotprod")]
    {
        true
    }
    #[cfg(all(not(target_feature = "dotprod"), feature = "std"))]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(all(not(target_feature = "dotprod"), not(feature = "std")))]
    {
        false
    }
}

/// Packs `p` (with its folded bias) for the best kernel this CPU has (`sdot`, else `smull`) if
/// the op fits it: `None` leaves the op to the portable path.
pub(crate) fn pack(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
    Packed::new(p, chan, if sdot_available() { SDOT } else { SMULL })
}

/// Packs for the `smull`/`sadalp` kernel even where `sdot` is available (for tests).
pub(crate) fn pack_smull(p: &ConvI8, chan: &[ChanQ]) -> Option<Packed> {
    Packed::new(p, chan, SMULL)
}

/// Runs the conv; `false` if it cannot (then the caller runs another path). The caller checked
/// the slice lengths against `p` and the requantisation ranges ([`super::super::prepared`]).
pub(crate) fn conv(p: &ConvI8, pk: &Packed, input: &[i8], output: &mut [i8]) -> bool {
    conv_pixels(p, pk, input, output, 0..p.win.out_h * p.win.out_w)
}

/// Output pixels `pixels` (row-major `oy·out_w + ox`) of the conv into `output`, which holds
/// exactly those pixels' `pixels.len()·out_c` bytes: one tile of a conv split over threads
/// (every output byte is computed on its own, so any tiling gives the same bytes). `false` if it
/// cannot (then the caller runs another path). The caller checked `input`'s length against `p`
/// and the requantisation ranges ([`super::super::prepared`]).
pub(crate) fn conv_pixels(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    output: &mut [i8],
    pixels: Range<usize>,
) -> bool {
    let n_px = p.win.out_h * p.win.out_w;
    if !pk.fits(p) || pixels.end > n_px || output.len() != pixels.len() * p.out_c {
        return false;
    }
    if pk.layout == SDOT {
        #[cfg(any(feature = "std", target_feature = "dotprod"))]
        // SAFETY: `SDOT` packings are made only where `sdot_available()` said the CPU has
        // FEAT_DotProd.
        unsafe {
            conv_sdot(p, pk, input, output, pixels)
        };
        #[cfg(not(any(feature = "std", target_feature = "dotprod")))]
        return false;
    } else {
        // SAFETY: this module is built only where `target_feature = "neon"` (the aarch64
        // baseline), so the CPU has NEON.
        unsafe { conv_smull(p, pk, input, output, pixels) };
    }
    true
}

#[target_feature(enable = "neon")]
unsafe fn conv_smull(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    output: &mut [i8],
    pixels: Range<usize>,
) {
    drive::<false>(p, pk, input, output, pixels)
}

#[cfg(any(feature = "std", target_feature = "dotprod"))]
#[target_feature(enable = "neon,dotprod")]
unsafe fn conv_sdot(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    output: &mut [i8],
    pixels: Range<usize>,
) {
    drive::<true>(p, pk, input, output, pixels)
}

/// The blocked loop both kernels share: im2col of 4 pixels (padded taps: the input zero point;
/// the tail up to `kp` stays 0 and meets zero weights), then channel blocks 4 at a time
/// (`sdot`: 16 accumulators) or 2 at a time (`smull`: 16 accumulators, two per block), then the
/// requantisation, over the output pixels `pixels` (`output` holds exactly theirs). Inlined
/// into the two `#[target_feature]` entry points.
#[inline(always)]
unsafe fn drive<const SDOT: bool>(
    p: &ConvI8,
    pk: &Packed,
    input: &[i8],
    output: &mut [i8],
    pixels: Range<usize>,
) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let kp = pk.kp;
    let zp = p.in_zp.clamp(-128, 127) as i8;
    let mut cols = [0i8; PIXELS * MAX_K];
    let end = pixels.end;
    let mut px = pixels.start;
    while px < end {
        let n = (end - px).min(PIXELS);
        for s in 0..PIXELS {
            // Missing pixels of the last block repeat the last one (computed, not written).
            let q = px + s.min(n - 1);
            im2col(
                w,
                input,
                q / w.out_w,
                q % w.out_w,
                zp,
                &mut cols[s * kp..][..k],
            );
        }
        let mut b = 0;
        while b < pk.blocks {
            if SDOT && b + 4 <= pk.blocks {
                #[cfg(any(feature = "std", target_feature = "dotprod"))]
                for (j, a) in block_sdot::<4>(&cols, kp, pk, b).iter().enumerate() {
                    store(p, pk, output, px - pixels.start, n, b + j, a);
                }
                b += 4;
            } else if !SDOT && b + 2 <= pk.blocks {
                for (j, a) in block_smull::<2>(&cols, kp, pk, b).iter().enumerate() {
                    store(p, pk, output, px - pixels.start, n, b + j, a);
                }
                b += 2;
            } else {
                #[cfg(any(feature = "std", target_feature = "dotprod"))]
                let acc = if SDOT {
                    block_sdot::<1>(&cols, kp, pk, b)
                } else {
                    block_smull::<1>(&cols, kp, pk, b)
                };
                #[cfg(not(any(feature = "std", target_feature = "dotprod")))]
                let acc = block_smull::<1>(&cols, kp, pk, b);
                store(p, pk, output, px - pixels.start, n, b, &acc[0]);
                b += 1;
            }
        }
        px += n;
    }
}

/// Column bytes `4q..4q + 4` of pixel slot `s`, broadcast to the 4 lanes.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn col4(cols: &[i8], kp: usize, s: usize, q: usize) -> int8x16_t {
    let x = (cols.as_ptr().add(s * kp + 4 * q) as *const i32).read_unaligned();
    vreinterpretq_s8_s32(vdupq_n_s32(x))
}

/// Channel sums `[block j][pixel s]` (without bias) for blocks `b..b + NB` of the current
/// pixels, by `smull`/`smull2` + `sadalp` (see the module docs).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn block_smull<const NB: usize>(
    cols: &[i8],
    kp: usize,
    pk: &Packed,
    b: usize,
) -> [[int32x4_t; PIXELS]; NB] {
    // `lo`: channels 0–1 of the block (two partial sums each), `hi`: channels 2–3.
    let mut lo = [[vdupq_n_s32(0); PIXELS]; NB];
    let mut hi = [[vdupq_n_s32(0); PIXELS]; NB];
    let wp = pk.w.as_ptr();
    for q in 0..kp / 4 {
        let mut wv = [vdupq_n_s8(0); NB];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = vld1q_s8(wp.add(((b + j) * kp + 4 * q) * LANES));
        }
        for s in 0..PIXELS {
            let x = col4(cols, kp, s, q);
            let xl = vget_low_s8(x);
            for j in 0..NB {
                lo[j][s] = vpadalq_s16(lo[j][s], vmull_s8(xl, vget_low_s8(wv[j])));
                hi[j][s] = vpadalq_s16(hi[j][s], vmull_high_s8(x, wv[j]));
            }
        }
    }
    let mut acc = [[vdupq_n_s32(0); PIXELS]; NB];
    for j in 0..NB {
        for s in 0..PIXELS {
            acc[j][s] = vpaddq_s32(lo[j][s], hi[j][s]);
        }
    }
    acc
}

/// `acc + Σ_t a[4i+t]·b[4i+t]` per `i32` lane `i`: one `sdot` (FEAT_DotProd).
#[cfg(any(feature = "std", target_feature = "dotprod"))]
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Channel sums `[block j][pixel s]` (without bias) for blocks `b..b + NB`, by `sdot`.
#[cfg(any(feature = "std", target_feature = "dotprod"))]
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn block_sdot<const NB: usize>(
    cols: &[i8],
    kp: usize,
    pk: &Packed,
    b: usize,
) -> [[int32x4_t; PIXELS]; NB] {
    let mut acc = [[vdupq_n_s32(0); PIXELS]; NB];
    let wp = pk.w.as_ptr();
    for q in 0..kp / 4 {
        let mut wv = [vdupq_n_s8(0); NB];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = vld1q_s8(wp.add(((b + j) * kp + 4 * q) * LANES));
        }
        for s in 0..PIXELS {
            let x = col4(cols, kp, s, q);
            for (a, &v) in acc.iter_mut().zip(&wv) {
                a[s] = sdot(a[s], v, x);
            }
        }
    }
    acc
}

/// Adds the bias, requantises and writes channel block `b` of pixels `px..px + n`, counted from
/// `output`'s first pixel.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn store(
    p: &ConvI8,
    pk: &Packed,
    output: &mut [i8],
    px: usize,
    n: usize,
    b: usize,
    acc: &[int32x4_t; PIXELS],
) {
    let oc = p.out_c;
    let c0 = b * LANES;
    let lanes = (oc - c0).min(LANES);
    let bias = vld1q_s32(pk.bias.as_ptr().add(c0));
    let mult = vld1q_s32(pk.mult.as_ptr().add(c0));
    let ls = vld1q_s32(pk.lshift.as_ptr().add(c0));
    // `srshl` takes the negative count for a rounding right shift.
    let rs = vnegq_s32(vld1q_s32(pk.rshift.as_ptr().add(c0)));
    let zp = vdupq_n_s32(p.out_zp);
    let lo = vdupq_n_s32(p.act_min);
    let hi = vdupq_n_s32(p.act_max);
    for (s, &a) in acc.iter().enumerate().take(n) {
        let y = mbqm4(vaddq_s32(a, bias), mult, ls, rs);
        // The reference's `saturating_add(out_zp).clamp(act_min, act_max) as i8`; the two
        // narrowing moves truncate as `as i8` does.
        let y = vminq_s32(vmaxq_s32(vqaddq_s32(y, zp), lo), hi);
        let y8 = vmovn_s16(vcombine_s16(vmovn_s32(y), vdup_n_s16(0)));
        let mut v = [0i8; 8];
        vst1_s8(v.as_mut_ptr(), y8);
        output[(px + s) * oc + c0..][..lanes].copy_from_slice(&v[..lanes]);
    }
}

/// 4 lanes of `multiply_by_quantized_multiplier_split` for `mult ≥ 0`, gemmlowp's NEON way:
///
/// * `sqshl` by `max(shift, 0)`: the saturating left shift the reference does in `i32`.
/// * `sqrdmulh`: `⌊(a·m + 2³⁰) / 2³¹⌋`, saturated only for `i32::MIN · i32::MIN`. gemmlowp's
///   scalar SRDHM (nudge `2³⁰`, or `1 − 2³⁰` for a negative product, then a division truncating
///   toward zero) is the same number: for `ab = −t < 0`, `−⌊(t + 2³⁰ − 1) / 2³¹⌋ =
///   ⌊(2³⁰ − t) / 2³¹⌋`. So is the split form's (`shifted ≥ 0` decides the nudge when `m ≥ 0`).
/// * RoundingDivideByPOT: subtract 1 from negative `x` when the exponent is positive
///   (`(x & −e) >> 31`, saturating), then `srshl` by `−e`, which rounds half up in exact
///   arithmetic: together, half away from zero, the reference's `(x >> e) + (rem > thr)`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn mbqm4(x: int32x4_t, mult: int32x4_t, ls: int32x4_t, rs_neg: int32x4_t) -> int32x4_t {
    let a = vqshlq_s32(x, ls);
    let h = vqrdmulhq_s32(a, mult);
    let fixup = vshrq_n_s32::<31>(vandq_s32(h, rs_neg));
    vrshlq_s32(vqaddq_s32(h, fixup), rs_neg)
}
