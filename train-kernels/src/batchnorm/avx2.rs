//! AVX2 versions of batch-norm's two reductions: the forward's statistics
//! ([`super::stats_lanes`]) and the backward's `(Σg, Σg·x̂)` ([`super::grad_sums`]), eight
//! channels at a time.
//!
//! Why: each channel's sum is one f64 chain over its pixels in a fixed order (the fixtures and
//! the bit-identity with the unfused ops depend on that order), so the portable code cannot be
//! vectorised over pixels; run as scalar code it cost 13 % of the study's MoCo step (perf,
//! `bench-step --width 0.125`, 2 replicas: the backward's sums 8.4 %, the statistics 4.5 %).
//! Here a vector holds *eight channels* at one pixel: eight pixels of eight channel planes are
//! loaded and transposed in registers (8 × 8), then each pixel step is one vector addition per
//! chain (f64: two vectors of four channels). Every lane does what the portable loop does for
//! its channel, operation for operation (no FMA: the portable code rounds the product and the
//! sum separately, and so do these), so the results are the same bits; `tests` in
//! [`super`] check that on random shapes.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{tail_grad, ADD_RELU, IDENTITY, WIDE};

/// Transposes eight rows of eight floats: row `l` of the input is channel `l` at eight
/// consecutive pixels; row `k` of the output is pixel `k` of the eight channels.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// The eight channels of an f32 vector as two f64 vectors (channels 0–3, 4–7); exact.
#[inline(always)]
unsafe fn widen(v: __m256) -> (__m256d, __m256d) {
    (
        _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
    )
}

/// Two f64 vectors (channels 0–3, 4–7) as an array.
#[inline(always)]
unsafe fn to_array(lo: __m256d, hi: __m256d) -> [f64; WIDE] {
    let mut a = [0f64; WIDE];
    _mm256_storeu_pd(a.as_mut_ptr(), lo);
    _mm256_storeu_pd(a.as_mut_ptr().add(4), hi);
    a
}

/// The planes of channels `ch..ch + 8` of image `b` in an `(n, c, hw)` tensor (bounds-checked).
#[inline(always)]
fn planes(x: &[f32], b: usize, c: usize, hw: usize, ch: usize) -> [&[f32]; WIDE] {
    std::array::from_fn(|l| &x[(b * c + ch + l) * hw..][..hw])
}

/// Eight pixels `j..j + 8` of eight planes, transposed: element `k` is pixel `j + k` of the
/// eight channels.
#[inline(always)]
unsafe fn load_t(p: &[&[f32]; WIDE], j: usize) -> [__m256; 8] {
    transpose8(std::array::from_fn(|l| {
        _mm256_loadu_ps(p[l][j..j + 8].as_ptr())
    }))
}

/// [`super::stats_lanes`]`::<8>`: the mean and biased variance of channels `ch..ch + 8` over
/// `images`, two-pass, each channel's chains exactly the portable ones (per image a sum from
/// `Iterator::sum`'s start value in pixel order, added into the total in image order).
///
/// # Safety
/// The CPU must have AVX2.
// The remainder loops index eight planes side by side, as the portable code does.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn stats(
    x: &[f32],
    c: usize,
    hw: usize,
    images: Range<usize>,
    ch: usize,
    m: f64,
) -> [(f64, f64); WIDE] {
    let init: f64 = std::iter::empty::<f64>().sum();
    let vinit = _mm256_set1_pd(init);
    let full = hw / 8 * 8;
    // Pass 1: the sums, then the means.
    // The totals stay in registers (`total[l] += s[l]` lane by lane); the pixels past the last
    // whole vector, if any, go through an array.
    let (mut tot_lo, mut tot_hi) = (vinit, vinit);
    for b in images.clone() {
        let p = planes(x, b, c, hw, ch);
        let (mut lo, mut hi) = (vinit, vinit);
        for j in (0..full).step_by(8) {
            for v in load_t(&p, j) {
                let (a, b) = widen(v);
                lo = _mm256_add_pd(lo, a);
                hi = _mm256_add_pd(hi, b);
            }
        }
        if full < hw {
            let mut s = to_array(lo, hi);
            for j in full..hw {
                for l in 0..WIDE {
                    s[l] += p[l][j] as f64;
                }
            }
            (lo, hi) = (
                _mm256_loadu_pd(s.as_ptr()),
                _mm256_loadu_pd(s.as_ptr().add(4)),
            );
        }
        tot_lo = _mm256_add_pd(tot_lo, lo);
        tot_hi = _mm256_add_pd(tot_hi, hi);
    }
    let total = to_array(tot_lo, tot_hi);
    let mean: [f64; WIDE] = std::array::from_fn(|l| total[l] / m);
    // Pass 2: the centred sums of squares (`powi(2)` is the product `d·d`).
    let (mlo, mhi) = (
        _mm256_loadu_pd(mean.as_ptr()),
        _mm256_loadu_pd(mean.as_ptr().add(4)),
    );
    let (mut tot_lo, mut tot_hi) = (vinit, vinit);
    for b in images {
        let p = planes(x, b, c, hw, ch);
        let (mut lo, mut hi) = (vinit, vinit);
        for j in (0..full).step_by(8) {
            for v in load_t(&p, j) {
                let (a, b) = widen(v);
                let (da, db) = (_mm256_sub_pd(a, mlo), _mm256_sub_pd(b, mhi));
                lo = _mm256_add_pd(lo, _mm256_mul_pd(da, da));
                hi = _mm256_add_pd(hi, _mm256_mul_pd(db, db));
            }
        }
        if full < hw {
            let mut s = to_array(lo, hi);
            for j in full..hw {
                for l in 0..WIDE {
                    s[l] += (p[l][j] as f64 - mean[l]).powi(2);
                }
            }
            (lo, hi) = (
                _mm256_loadu_pd(s.as_ptr()),
                _mm256_loadu_pd(s.as_ptr().add(4)),
            );
        }
        tot_lo = _mm256_add_pd(tot_lo, lo);
        tot_hi = _mm256_add_pd(tot_hi, hi);
    }
    let total = to_array(tot_lo, tot_hi);
    std::array::from_fn(|l| (mean[l], total[l] / m))
}

/// [`super::grad_sums`]`::<T, 8>`: `(Σg, Σg·x̂)` of channels `ch..ch + 8` over `images`, `g`
/// the gradient at the batch-norm output through the tail ([`tail_grad`]), each channel one
/// chain from 0 in (image, pixel) order. `coefs`, `mu`, `is`: the channels' `(μ, s, β)` in
/// f32, mean and `1/σ` in f64, as the portable code takes them from the op's statistics.
///
/// The tail's gradient is computed on the planes as they are (eight pixels of one channel per
/// vector, the same f32 operations as [`tail_grad`]: `(x − μ)·s + β`, `+ r`, `≥ 0`, `0 + g·m`),
/// then the gradient and `x` are transposed for the f64 chains.
///
/// # Safety
/// The CPU must have AVX2.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn grad_sums<const T: u8>(
    x: &[f32],
    res: &[f32],
    dy: &[f32],
    coefs: &[(f32, f32, f32); WIDE],
    mu: &[f64; WIDE],
    is: &[f64; WIDE],
    c: usize,
    hw: usize,
    images: Range<usize>,
    ch: usize,
) -> [(f64, f64); WIDE] {
    let full = hw / 8 * 8;
    let (zero, one) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
    let splat = |f: fn(&(f32, f32, f32)) -> f32| -> [__m256; WIDE] {
        std::array::from_fn(|l| _mm256_set1_ps(f(&coefs[l])))
    };
    let (vmu, vscale, vshift) = (splat(|c| c.0), splat(|c| c.1), splat(|c| c.2));
    let (mu_lo, mu_hi) = (
        _mm256_loadu_pd(mu.as_ptr()),
        _mm256_loadu_pd(mu.as_ptr().add(4)),
    );
    let (is_lo, is_hi) = (
        _mm256_loadu_pd(is.as_ptr()),
        _mm256_loadu_pd(is.as_ptr().add(4)),
    );
    let z = _mm256_setzero_pd();
    let (mut dy_lo, mut dy_hi, mut dyx_lo, mut dyx_hi) = (z, z, z, z);
    for b in images {
        let px = planes(x, b, c, hw, ch);
        let pg = planes(dy, b, c, hw, ch);
        let pr = if T == ADD_RELU {
            planes(res, b, c, hw, ch)
        } else {
            [&[][..]; WIDE]
        };
        for j in (0..full).step_by(8) {
            let xs: [__m256; WIDE] =
                std::array::from_fn(|l| _mm256_loadu_ps(px[l][j..j + 8].as_ptr()));
            let gs: [__m256; WIDE] = std::array::from_fn(|l| {
                let g = _mm256_loadu_ps(pg[l][j..j + 8].as_ptr());
                if T == IDENTITY {
                    return g;
                }
                let d = _mm256_sub_ps(xs[l], vmu[l]);
                let mut pre = _mm256_add_ps(_mm256_mul_ps(d, vscale[l]), vshift[l]);
                if T == ADD_RELU {
                    pre = _mm256_add_ps(pre, _mm256_loadu_ps(pr[l][j..j + 8].as_ptr()));
                }
                let mask = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(pre, zero), one);
                _mm256_add_ps(zero, _mm256_mul_ps(g, mask))
            });
            let (xt, gt) = (transpose8(xs), transpose8(gs));
            for k in 0..8 {
                let (g_lo, g_hi) = widen(gt[k]);
                let (x_lo, x_hi) = widen(xt[k]);
                dy_lo = _mm256_add_pd(dy_lo, g_lo);
                dy_hi = _mm256_add_pd(dy_hi, g_hi);
                let t_lo = _mm256_mul_pd(_mm256_mul_pd(g_lo, _mm256_sub_pd(x_lo, mu_lo)), is_lo);
                let t_hi = _mm256_mul_pd(_mm256_mul_pd(g_hi, _mm256_sub_pd(x_hi, mu_hi)), is_hi);
                dyx_lo = _mm256_add_pd(dyx_lo, t_lo);
                dyx_hi = _mm256_add_pd(dyx_hi, t_hi);
            }
        }
        if full < hw {
            let (mut s_dy, mut s_dyx) = (to_array(dy_lo, dy_hi), to_array(dyx_lo, dyx_hi));
            for j in full..hw {
                for l in 0..WIDE {
                    let r = if T == ADD_RELU { pr[l][j] } else { 0f32 };
                    let gr = tail_grad::<T>(pg[l][j], px[l][j], r, coefs[l]) as f64;
                    s_dy[l] += gr;
                    s_dyx[l] += gr * (px[l][j] as f64 - mu[l]) * is[l];
                }
            }
            (dy_lo, dy_hi) = (
                _mm256_loadu_pd(s_dy.as_ptr()),
                _mm256_loadu_pd(s_dy.as_ptr().add(4)),
            );
            (dyx_lo, dyx_hi) = (
                _mm256_loadu_pd(s_dyx.as_ptr()),
                _mm256_loadu_pd(s_dyx.as_ptr().add(4)),
            );
        }
    }
    let (s_dy, s_dyx) = (to_array(dy_lo, dy_hi), to_array(dyx_lo, dyx_hi));
    std::array::from_fn(|l| (s_dy[l], s_dyx[l]))
}
