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
use super::super::add_lut::AddLut;
use super::super::requant::{SHIFT_MAX, SHIFT_MIN};
use super::x86::{
    bytes16, mbqm16, mbqm16_right, mbqm16_shift0, mbqm8, mbqm8_right, mbqm8_shift0, right_addend,
    Epilogue,
};
use super::x86_lut::{look, table};

/// Runs the add if this CPU has AVX2 and `p`'s multipliers and shifts are in the loader's
/// ranges; `false` leaves it to the scalar loop. The caller checked the lengths.
pub(crate) fn add(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) -> bool {
    if !fits(p) {
        return false;
    }
    if super::x86::available() {
        let vbmi = std::is_x86_feature_detected!("avx512vbmi");
        // SAFETY: `available` detected the AVX-512 features the VNNI kernels (and this loop,
        // which shares their requantisation) are compiled for, `vbmi` VBMI's.
        unsafe { add_avx512(p, a, b, out, vbmi) };
        return true;
    }
    if !std::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: AVX2 detected just above.
    unsafe { add_avx2(p, a, b, out) };
    true
}

/// Whether `p`'s multipliers and shifts are in the loader's ranges, which the SIMD loops'
/// requantisations assume.
fn fits(p: &AddI8) -> bool {
    let ok = |m: i32, s: i32| m >= 0 && (SHIFT_MIN..=SHIFT_MAX).contains(&s);
    ok(p.a_mult, p.a_shift) && ok(p.b_mult, p.b_shift) && ok(p.out_mult, p.out_shift)
}

/// [`add`] on the AVX2 loop even where the AVX-512 one would run (for tests).
pub(crate) fn add_avx2_only(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8]) -> bool {
    if !fits(p) || !std::is_x86_feature_detected!("avx2") {
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

/// Shortest add (or add task) that [`add_64_vbmi`] takes.
pub const VBMI_MIN_LEN: usize = 4096;

/// [`add_avx2`] with 16 lanes per requantisation; with `vbmi` (the CPU has AVX-512 VBMI), whole
/// runs of 64 elements by [`add_64_vbmi`] first.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn add_avx512(p: &AddI8, a: &[i8], b: &[i8], out: &mut [i8], vbmi: bool) {
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
    let mut start = 0;
    // The two tables cost about as much as 1 500 elements of the 16-lane loop: from 4 096 on.
    if vbmi && n >= VBMI_MIN_LEN {
        start = n / 64 * 64;
        // SAFETY: the caller detected VBMI; the slices hold `start ≤ n` elements.
        add_64_vbmi(
            p,
            &ra,
            &rb,
            &ro,
            plain,
            &a[..start],
            &b[..start],
            &mut out[..start],
        );
    }
    for i in (start..whole).step_by(16) {
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

/// Byte planes of an input's 256 terms: `planes[k][u]` is byte `k` (little-endian) of the term
/// `MBQM((x − zp)·2²⁰, m, sh)` of the input byte `x = u as i8`, computed 16 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn term_planes(rq: &Rq16, zp: i32) -> [[u8; 256]; 4] {
    // Gathers byte k of each of a register's 16 dwords into its k-th 16 bytes.
    let transpose = _mm512_set_epi8(
        63, 59, 55, 51, 47, 43, 39, 35, 31, 27, 23, 19, 15, 11, 7, 3, 62, 58, 54, 50, 46, 42, 38,
        34, 30, 26, 22, 18, 14, 10, 6, 2, 61, 57, 53, 49, 45, 41, 37, 33, 29, 25, 21, 17, 13, 9, 5,
        1, 60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0,
    );
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut planes = [[0u8; 256]; 4];
    let mut tmp = [0u8; 64];
    for c in 0..16 {
        let u = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * c as i32));
        // `u as i8`, sign-extended.
        let x = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(u));
        let v = _mm512_sub_epi32(x, _mm512_set1_epi32(zp));
        // |x − zp| ≤ 255: the shift by 20 cannot overflow.
        let t = rq.apply(_mm512_slli_epi32::<{ ADD_LEFT_SHIFT as u32 }>(v));
        _mm512_storeu_si512(
            tmp.as_mut_ptr() as *mut _,
            _mm512_permutexvar_epi8(transpose, t),
        );
        for (k, plane) in planes.iter_mut().enumerate() {
            plane[16 * c..16 * c + 16].copy_from_slice(&tmp[16 * k..16 * k + 16]);
        }
    }
    planes
}

/// The 64 terms of the input bytes `v` from their byte planes: four `i32` registers in the
/// order of [`_mm512_unpacklo_epi16`]/`hi` of `unpacklo_epi8`/`hi` (within each 128-bit lane:
/// register `r` holds the lane's elements `4r..4r + 4`), which [`add_64_vbmi`]'s packs undo.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
#[inline]
unsafe fn lookup64(t: &[[__m512i; 4]; 4], v: __m512i) -> [__m512i; 4] {
    let upper = _mm512_movepi8_mask(v);
    let p: [__m512i; 4] = core::array::from_fn(|k| {
        // Index bits 0–6 pick one of 128 bytes of a pair of registers; bit 7 picks the pair.
        let lo = _mm512_permutex2var_epi8(t[k][0], v, t[k][1]);
        let hi = _mm512_permutex2var_epi8(t[k][2], v, t[k][3]);
        _mm512_mask_blend_epi8(upper, lo, hi)
    });
    let w0 = _mm512_unpacklo_epi8(p[0], p[1]);
    let w1 = _mm512_unpackhi_epi8(p[0], p[1]);
    let w2 = _mm512_unpacklo_epi8(p[2], p[3]);
    let w3 = _mm512_unpackhi_epi8(p[2], p[3]);
    [
        _mm512_unpacklo_epi16(w0, w2),
        _mm512_unpackhi_epi16(w0, w2),
        _mm512_unpacklo_epi16(w1, w3),
        _mm512_unpackhi_epi16(w1, w3),
    ]
}

/// The add on whole runs of 64 elements (`a.len()`, a multiple of 64) with each input's terms
/// looked up instead of computed: both depend on one byte only, so their 256 values are
/// computed once per call ([`term_planes`]) and fetched 64 at a time with VBMI's two-register
/// byte permutes, one per byte of the term and half-table; the sum and the output
/// requantisation are [`add_avx512`]'s. The same numbers, a third of the work per element.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_64_vbmi(
    p: &AddI8,
    ra: &Rq16,
    rb: &Rq16,
    ro: &Rq16,
    plain: bool,
    a: &[i8],
    b: &[i8],
    out: &mut [i8],
) {
    let load = |planes: &[[u8; 256]; 4]| -> [[__m512i; 4]; 4] {
        core::array::from_fn(|k| {
            core::array::from_fn(|j| _mm512_loadu_si512(planes[k][64 * j..].as_ptr() as *const _))
        })
    };
    let ta = load(&term_planes(ra, p.a_zp));
    let tb = load(&term_planes(rb, p.b_zp));
    let lo = _mm512_set1_epi32(p.act_min - p.out_zp);
    let hi = _mm512_set1_epi32(p.act_max - p.out_zp);
    let zp = _mm512_set1_epi32(p.out_zp);
    let n = a.len().min(b.len()).min(out.len()) / 64 * 64;
    for i in (0..n).step_by(64) {
        let xa = lookup64(&ta, _mm512_loadu_si512(a[i..i + 64].as_ptr() as *const _));
        let xb = lookup64(&tb, _mm512_loadu_si512(b[i..i + 64].as_ptr() as *const _));
        let r: [__m512i; 4] = core::array::from_fn(|j| {
            let sum = if plain {
                _mm512_add_epi32(xa[j], xb[j])
            } else {
                adds_epi32_x16(xa[j], xb[j])
            };
            let y = ro.apply(sum);
            _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(y, lo), hi), zp)
        });
        // In [−128, 127] already: the saturating packs are exact, and within each 128-bit
        // lane they undo the unpacks' order.
        let v = _mm512_packs_epi16(
            _mm512_packs_epi32(r[0], r[1]),
            _mm512_packs_epi32(r[2], r[3]),
        );
        _mm512_storeu_si512(out[i..i + 64].as_mut_ptr() as *mut _, v);
    }
}

/// Whether [`add_lut`] runs on this CPU (AVX-512 with VBMI's byte permutes).
pub(crate) fn lut_available() -> bool {
    super::x86::available() && super::x86_lut::available()
}

/// The add by its lookup tables ([`AddLut`]'s decomposition), 64 elements a step, the tail
/// too (through a 64-byte copy), so that every element goes through the same instructions,
/// which [`AddLut::new`] checked on every input pair; `false` (nothing written) where the CPU
/// lacks [`lut_available`]'s features. The caller checked the lengths.
pub(crate) fn add_lut(lut: &AddLut, a: &[i8], b: &[i8], out: &mut [i8]) -> bool {
    if !lut_available() {
        return false;
    }
    let n = out.len().min(a.len()).min(b.len());
    let whole = n / 64 * 64;
    // SAFETY: the features were detected just above; the slices hold `whole ≤ n` elements.
    unsafe { add_lut_64(lut, &a[..whole], &b[..whole], &mut out[..whole]) };
    if whole < n {
        let t = n - whole;
        let (mut ta, mut tb, mut to) = ([0i8; 64], [0i8; 64], [0i8; 64]);
        ta[..t].copy_from_slice(&a[whole..n]);
        tb[..t].copy_from_slice(&b[whole..n]);
        // SAFETY: as above; the copies hold 64 elements.
        unsafe { add_lut_64(lut, &ta, &tb, &mut to) };
        out[whole..n].copy_from_slice(&to[..t]);
    }
    true
}

/// [`add_lut`]'s loop on whole runs of 64 elements. Each table column (256 bytes) sits in
/// four registers ([`look`]). The whole parts are widened to `i16` by interleaving their low and high bytes, which
/// orders each 128-bit lane's elements as `unpacklo`/`hi` do; the final saturating pack undoes
/// that order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn add_lut_64(lut: &AddLut, a: &[i8], b: &[i8], out: &mut [i8]) {
    let ta: [[__m512i; 4]; 7] = core::array::from_fn(|k| table(&lut.a[k]));
    let tb: [[__m512i; 4]; 4] = core::array::from_fn(|k| table(&lut.b[k]));
    let one = _mm512_set1_epi8(1);
    let zero = _mm512_setzero_si512();
    let lo = _mm512_set1_epi8(lut.act_min);
    let hi = _mm512_set1_epi8(lut.act_max);
    let n = a.len().min(b.len()).min(out.len()) / 64 * 64;
    for i in (0..n).step_by(64) {
        let va = _mm512_loadu_si512(a[i..i + 64].as_ptr() as *const _);
        let vb = _mm512_loadu_si512(b[i..i + 64].as_ptr() as *const _);
        let (ua, ub) = (_mm512_movepi8_mask(va), _mm512_movepi8_mask(vb));
        // σ = [π_b ≥ ρ_a] picks each element's column of `a`.
        let sigma = _mm512_cmpge_epu8_mask(look(&tb[3], vb, ub), look(&ta[6], va, ua));
        let pick = |k0: usize, k1: usize| {
            _mm512_mask_blend_epi8(sigma, look(&ta[k0], va, ua), look(&ta[k1], va, ua))
        };
        let (h_lo, h_hi, r) = (pick(0, 2), pick(1, 3), pick(4, 5));
        let carry = _mm512_maskz_mov_epi8(_mm512_cmplt_epu8_mask(look(&tb[2], vb, ub), r), one);
        let (g_lo, g_hi) = (look(&tb[0], vb, ub), look(&tb[1], vb, ub));
        let sum = |unpack: unsafe fn(__m512i, __m512i) -> __m512i| {
            let s = _mm512_adds_epi16(unpack(h_lo, h_hi), unpack(g_lo, g_hi));
            _mm512_adds_epi16(s, unpack(carry, zero))
        };
        let y = _mm512_packs_epi16(sum(_mm512_unpacklo_epi8), sum(_mm512_unpackhi_epi8));
        let y = _mm512_min_epi8(_mm512_max_epi8(y, lo), hi);
        _mm512_storeu_si512(out[i..i + 64].as_mut_ptr() as *mut _, y);
    }
}
