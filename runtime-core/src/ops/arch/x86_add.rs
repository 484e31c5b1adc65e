//! x86-64 residual add (`std` feature: runtime CPU detection): AVX-512 where the CPU has it
//! (16 lanes per requantisation), else AVX2 (8), 16 elements per step.
//!
//! The same three `MultiplyByQuantizedMultiplier`s as [`add_i8`](super::super::add::add_i8)'s
//! scalar loop, 8 lanes at a time: each input's term `MBQM((x − zp)·2²⁰, m, sh)`, their
//! saturating sum, and the output's `MBQM`. Each uses the one-multiply-add form where the shift
//! is a right shift ([`mbqm8_right`]) and the general split form otherwise ([`mbqm8`]); both
//! equal the scalar formula for every input with `mult ≥ 0` (the loader's rule), which the
//! tests check against the scalar loop.

use core::arch::x86_64::*;

use super::super::add::{add_i8_scalar, AddI8, ADD_LEFT_SHIFT};
use super::super::requant::{SHIFT_MAX, SHIFT_MIN};
use super::x86::{
    bytes16, mbqm16, mbqm16_right, mbqm16_shift0, mbqm8, mbqm8_right, mbqm8_shift0, right_addend,
    Epilogue,
};

/// Runs the add if this CPU has AVX2 and `p`'s multipliers and shifts are in the loader's
/// ranges; `false` leaves it to the scalar loop. The caller checked the lengths.
pub(crate) fn add(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) -> bool {
    let ok = |m: i32, s: i32| m >= 0 && (SHIFT_MIN..=SHIFT_MAX).contains(&s);
    let fits = ok(p.a_mult, p.a_shift) && ok(p.b_mult, p.b_shift) && ok(p.out_mult, p.out_shift);
    if !fits {
        return false;
    }
    if super::x86::available() {
        // SAFETY: `available` detected the AVX-512 features the VNNI kernels (and this loop,
        // which shares their requantisation) are compiled for.
        unsafe { add_avx512(p, a, b, out) };
        return true;
    }
    if !std::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: AVX2 detected just above.
    unsafe { add_avx2(p, a, b, out) };
    true
}

/// [`add`] on the AVX2 loop even where the AVX-512 one would run (for tests).
pub(crate) fn add_avx2_only(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) -> bool {
    let ok = |m: i32, s: i32| m >= 0 && (SHIFT_MIN..=SHIFT_MAX).contains(&s);
    let fits = ok(p.a_mult, p.a_shift) && ok(p.b_mult, p.b_shift) && ok(p.out_mult, p.out_shift);
    if !fits || !std::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: AVX2 detected just above.
    unsafe { add_avx2(p, a, b, out) };
    true
}

/// One requantisation `MBQM(x, mult, shift)` with the same constants in every lane.
#[derive(Clone, Copy)]
struct Rq8 {
    mult: __m256i,
    /// Shift 0 ([`mbqm8_shift0`]): the larger-scale input's term, whose multiplier is ½
    /// (TFLite's `QuantizeMultiplier(0.5)` is `(2³⁰, 0)`).
    zero: bool,
    /// Right-shift form: `2³⁰ + 2^(30+e)` and `e − 1` ([`mbqm8_right`]).
    right: Option<(__m256i, __m256i)>,
    /// General form: `max(shift, 0)`, `max(−shift, 0)`.
    ls: __m256i,
    rs: __m256i,
}

impl Rq8 {
    #[target_feature(enable = "avx2")]
    unsafe fn new(mult: i32, shift: i32) -> Rq8 {
        let right = (shift < 0).then(|| {
            let e = (-shift) as u32;
            (
                _mm256_set1_epi64x(right_addend(e)),
                _mm256_set1_epi32(e as i32 - 1),
            )
        });
        Rq8 {
            mult: _mm256_set1_epi32(mult),
            zero: shift == 0,
            right,
            ls: _mm256_set1_epi32(shift.max(0)),
            rs: _mm256_set1_epi32((-shift).max(0)),
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn apply(&self, x: __m256i) -> __m256i {
        match self.right {
            Some((c, e1)) => mbqm8_right(x, self.mult, c, c, e1),
            None if self.zero => mbqm8_shift0(x, self.mult),
            None => mbqm8(x, self.mult, self.ls, self.rs),
        }
    }
}

/// `a + b` with `i32` saturation, per lane.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn adds_epi32(a: __m256i, b: __m256i) -> __m256i {
    let s = _mm256_add_epi32(a, b);
    // Overflow iff both operands' signs differ from the sum's.
    let ovf = _mm256_and_si256(_mm256_xor_si256(a, s), _mm256_xor_si256(b, s));
    let sat = _mm256_xor_si256(_mm256_srai_epi32::<31>(a), _mm256_set1_epi32(i32::MAX));
    _mm256_blendv_epi8(s, sat, _mm256_srai_epi32::<31>(ovf))
}

#[target_feature(enable = "avx2")]
unsafe fn add_avx2(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) {
    let (ra, rb, ro) = (
        Rq8::new(p.a_mult, p.a_shift),
        Rq8::new(p.b_mult, p.b_shift),
        Rq8::new(p.out_mult, p.out_shift),
    );
    let (za, zb) = (_mm256_set1_epi32(p.a_zp), _mm256_set1_epi32(p.b_zp));
    let ep = Epilogue::new(p.act_min, p.act_max, p.out_zp);
    // No overflow to saturate where both input shifts are ≤ 0 (see `add_avx512`).
    let plain = p.a_shift <= 0 && p.b_shift <= 0;
    let n = out.len().min(a.len()).min(b.len());
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        let va = _mm_loadu_si128(a[i..i + 16].as_ptr() as *const __m128i);
        let vb = _mm_loadu_si128(b[i..i + 16].as_ptr() as *const __m128i);
        let mut r = [_mm256_setzero_si256(); 2];
        for (h, rh) in r.iter_mut().enumerate() {
            let (xa, xb) = if h == 0 {
                (va, vb)
            } else {
                (_mm_srli_si128::<8>(va), _mm_srli_si128::<8>(vb))
            };
            let xa = _mm256_sub_epi32(_mm256_cvtepi8_epi32(xa), za);
            let xb = _mm256_sub_epi32(_mm256_cvtepi8_epi32(xb), zb);
            // |x − zp| ≤ 255: the shift by 20 cannot overflow.
            let ta = ra.apply(_mm256_slli_epi32::<ADD_LEFT_SHIFT>(xa));
            let tb = rb.apply(_mm256_slli_epi32::<ADD_LEFT_SHIFT>(xb));
            let sum = if plain {
                _mm256_add_epi32(ta, tb)
            } else {
                adds_epi32(ta, tb)
            };
            *rh = ep.clamp(ro.apply(sum));
        }
        _mm_storeu_si128(out[i..i + 16].as_mut_ptr() as *mut __m128i, bytes16(r));
    }
    // The three tails have the same length, so the scalar loop cannot report a mismatch.
    let _ = add_i8_scalar(p, &a[whole..n], &b[whole..n], &mut out[whole..n]);
}

/// [`Rq8`] with 16 lanes (AVX-512).
#[derive(Clone, Copy)]
struct Rq16 {
    mult: __m512i,
    mult_odd: __m512i,
    zero: bool,
    right: Option<(__m512i, __m512i)>,
    ls: __m512i,
    rs: __m512i,
}

impl Rq16 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn new(mult: i32, shift: i32) -> Rq16 {
        let right = (shift < 0).then(|| {
            let e = (-shift) as u32;
            (
                _mm512_set1_epi64(right_addend(e)),
                _mm512_set1_epi32(e as i32 - 1),
            )
        });
        Rq16 {
            mult: _mm512_set1_epi32(mult),
            mult_odd: _mm512_set1_epi64(mult as i64),
            zero: shift == 0,
            right,
            ls: _mm512_set1_epi32(shift.max(0)),
            rs: _mm512_set1_epi32((-shift).max(0)),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn apply(&self, x: __m512i) -> __m512i {
        match self.right {
            Some((c, e1)) => mbqm16_right(x, self.mult, self.mult_odd, c, c, e1),
            None if self.zero => mbqm16_shift0(x, self.mult),
            None => mbqm16(x, self.mult, self.ls, self.rs),
        }
    }
}

/// `a + b` with `i32` saturation, per lane (AVX-512).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn adds_epi32_x16(a: __m512i, b: __m512i) -> __m512i {
    let s = _mm512_add_epi32(a, b);
    // Overflow iff both operands' signs differ from the sum's.
    let ovf = _mm512_and_si512(_mm512_xor_si512(a, s), _mm512_xor_si512(b, s));
    let ovf = _mm512_cmplt_epi32_mask(ovf, _mm512_setzero_si512());
    let sat = _mm512_xor_si512(_mm512_srai_epi32::<31>(a), _mm512_set1_epi32(i32::MAX));
    _mm512_mask_blend_epi32(ovf, s, sat)
}

/// [`add_avx2`] with 16 lanes per requantisation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn add_avx512(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) {
    let (ra, rb, ro) = (
        Rq16::new(p.a_mult, p.a_shift),
        Rq16::new(p.b_mult, p.b_shift),
        Rq16::new(p.out_mult, p.out_shift),
    );
    let (za, zb) = (_mm512_set1_epi32(p.a_zp), _mm512_set1_epi32(p.b_zp));
    let lo = _mm512_set1_epi32(p.act_min - p.out_zp);
    let hi = _mm512_set1_epi32(p.act_max - p.out_zp);
    let zp = _mm512_set1_epi32(p.out_zp);
    // Each term is `MBQM(v·2²⁰, m, sh)` with `|v| ≤ 255`: for `sh ≤ 0` (a multiplier below
    // one, TFLite's input scaling) `|term| ≤ 2²⁸`, so their sum cannot overflow and needs no
    // saturation.
    let plain = p.a_shift <= 0 && p.b_shift <= 0;
    let n = out.len().min(a.len()).min(b.len());
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        let va = _mm_loadu_si128(a[i..i + 16].as_ptr() as *const __m128i);
        let vb = _mm_loadu_si128(b[i..i + 16].as_ptr() as *const __m128i);
        let xa = _mm512_sub_epi32(_mm512_cvtepi8_epi32(va), za);
        let xb = _mm512_sub_epi32(_mm512_cvtepi8_epi32(vb), zb);
        // |x − zp| ≤ 255: the shift by 20 cannot overflow.
        let ta = ra.apply(_mm512_slli_epi32::<{ ADD_LEFT_SHIFT as u32 }>(xa));
        let tb = rb.apply(_mm512_slli_epi32::<{ ADD_LEFT_SHIFT as u32 }>(xb));
        let sum = if plain {
            _mm512_add_epi32(ta, tb)
        } else {
            adds_epi32_x16(ta, tb)
        };
        let y = ro.apply(sum);
        let y = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(y, lo), hi), zp);
        // In [−128, 127] already: the truncating narrowing is exact.
        _mm_storeu_si128(
            out[i..i + 16].as_mut_ptr() as *mut __m128i,
            _mm512_cvtepi32_epi8(y),
        );
    }
    // The three tails have the same length, so the scalar loop cannot report a mismatch.
    let _ = add_i8_scalar(p, &a[whole..n], &b[whole..n], &mut out[whole..n]);
}
