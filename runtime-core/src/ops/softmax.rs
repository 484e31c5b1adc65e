//! Softmax over the channels of each pixel (TFLite SOFTMAX on NHWC: the last axis).
//!
//! int8 is TFLite's exact integer method (`reference_ops::Softmax<int8_t, int8_t>`, which TFLite
//! Micro runs), built on gemmlowp's fixed-point `exp` and reciprocal. For each pixel, with
//! `d = x − max` over its channels (so `d ≤ 0`):
//!
//! 1. channels with `d < diff_min` give `−128` and are left out of the sum;
//! 2. the others are scaled to Q5.26 with `MBQM(d, mult, shift)` (`mult·2^shift ≈
//!    β·in_scale·2²⁶`, [`softmax_multiplier`]) and exponentiated with gemmlowp's
//!    `exp_on_negative_values` (a Q0.31 result);
//! 3. `sum` is the Q12.19 sum of those exponentials, `1/sum` gemmlowp's Newton–Raphson
//!    reciprocal (`GetReciprocal`: `one_over_one_plus_x_for_x_in_0_1` after normalising `sum`
//!    to [1, 2));
//! 4. `y = clamp(RDBP(SRDHM(1/sum, exp), 23 + bits) − 128, −128, 127)`: the probability in units
//!    of 1/256, which is why the output must have scale 1/256 and zero point −128 (TFLite
//!    requires the same).
//!
//! Every step is gemmlowp's `int32` arithmetic (SRDHM, rounding shifts, saturating shifts by a
//! power of two) written out below, one function per gemmlowp function, so it can be read
//! against `fixedpoint.h`. Where TFLite would have undefined behaviour or abort (a sum that
//! overflows int32, or a reciprocal exponent above 31, both only with thousands of channels at
//! the maximum), this kernel wraps, resp. gives the limit 0, and never panics; the loader keeps
//! the channel count at most [`MAX_SOFTMAX_DEPTH`] so neither can happen in a loaded model.

use super::requant::{
    multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul as srdhm,
};
use super::{check, KernelError};

/// Integer bits of the scaled input difference (Q5.26), TFLite's `kScaledDiffIntegerBits`.
pub const SCALED_DIFF_INTEGER_BITS: i32 = 5;
/// Integer bits of the sum of exponentials (Q12.19), TFLite's `kAccumulationIntegerBits`.
pub const ACCUMULATION_INTEGER_BITS: i32 = 12;
/// Most channels a loaded softmax has: every exponential is at most 2¹⁹ in Q12.19, so the
/// sum of up to 4095 of them fits in an `i32` and the output exponent stays ≤ 31.
pub const MAX_SOFTMAX_DEPTH: usize = 4095;

/// Channels whose exponentials [`softmax_i8`] keeps between its two passes (256 bytes of
/// stack); deeper softmaxes compute each one twice.
const SOFTMAX_KEPT: usize = 64;

/// Parameters of an int8 softmax over `depth` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SoftmaxI8 {
    pub depth: usize,
    /// `(mult, shift)` of `β·in_scale·2²⁶` ([`softmax_multiplier`]); `shift ≥ 0`.
    pub mult: i32,
    pub shift: i32,
    /// The smallest difference to the maximum that is not flushed to −128
    /// ([`softmax_diff_min`] of `shift`).
    pub diff_min: i32,
}

/// TFLite's `PreprocessSoftmaxScaling(beta, in_scale, 5)`: `QuantizeMultiplierGreaterThanOne`
/// of `min(β·in_scale·2²⁶, 2³¹ − 1)`, computed in f64 from the f32 values as TFLite does.
/// `None` where TFLite refuses (the real multiplier is not above 1, i.e. `β·in_scale ≤ 2⁻²⁶`) or
/// where the shift would exceed 30 (`β·in_scale` ≥ about 16, an input scale no softmax has),
/// which this runtime does not represent.
pub fn softmax_multiplier(beta: f32, in_scale: f32) -> Option<(i32, i32)> {
    let real = (beta as f64 * in_scale as f64 * (1i64 << (31 - SCALED_DIFF_INTEGER_BITS)) as f64)
        .min(((1i64 << 31) - 1) as f64);
    if real.partial_cmp(&1.0) != Some(core::cmp::Ordering::Greater) {
        return None;
    }
    // TFLite's own exponent (`quantize_multiplier` saturates at shift 30 where TFLite goes on
    // to 31, so the exponent is checked before it).
    let (q, e) = libm::frexp(real);
    let e = e + i32::from(libm::round(q * (1i64 << 31) as f64) == (1i64 << 31) as f64);
    (e <= 30).then(|| quantize_multiplier(real))
}

/// TFLite's `diff_min = −CalculateInputRadius(5, shift)`: `−⌊31·2²⁶ / 2^shift⌋`, the most
/// negative difference whose scaled value still fits Q5.26.
pub fn softmax_diff_min(shift: i32) -> i32 {
    let radius = ((1i64 << SCALED_DIFF_INTEGER_BITS) - 1) << (31 - SCALED_DIFF_INTEGER_BITS);
    -((radius >> shift.clamp(0, 62)) as i32)
}

/// gemmlowp `SaturatingRoundingMultiplyByPOT<exponent>`: `x·2^exponent`, saturating for a
/// positive exponent, rounding half away from zero for a negative one.
fn mul_pot(x: i32, exponent: i32) -> i32 {
    if exponent == 0 {
        x
    } else if exponent > 0 {
        let threshold = (1i32 << (31 - exponent)) - 1;
        if x > threshold {
            i32::MAX
        } else if x < -threshold {
            i32::MIN
        } else {
            x << exponent
        }
    } else {
        rounding_divide_by_pot(x, -exponent)
    }
}

/// gemmlowp `RoundingHalfSum` on int32: `(a + b)/2` rounded half away from zero.
fn rounding_half_sum(a: i32, b: i32) -> i32 {
    let sum = a as i64 + b as i64;
    let sign = if sum >= 0 { 1 } else { -1 };
    ((sum + sign) / 2) as i32
}

/// gemmlowp `exp_on_interval_between_negative_one_quarter_and_0_excl` (Q0.31 in and out): the
/// Taylor expansion of `exp` around −1/8 to the 4th order.
fn exp_on_interval_between_negative_one_quarter_and_0_excl(a: i32) -> i32 {
    const EXP_MINUS_ONE_EIGHTH: i32 = 1_895_147_668; // exp(−1/8) in Q0.31
    const ONE_THIRD: i32 = 715_827_883; // 1/3 in Q0.31
    let x = a.wrapping_add(1 << 28); // a + 1/8
    let x2 = srdhm(x, x);
    let x3 = srdhm(x2, x);
    let x4 = srdhm(x2, x2);
    let x4_over_4 = mul_pot(x4, -2);
    let poly = mul_pot(
        srdhm(x4_over_4.wrapping_add(x3), ONE_THIRD).wrapping_add(x2),
        -1,
    );
    EXP_MINUS_ONE_EIGHTH.wrapping_add(srdhm(EXP_MINUS_ONE_EIGHTH, x.wrapping_add(poly)))
}

/// gemmlowp `exp_on_negative_values` for a Q5.26 input `a ≤ 0`; the result is Q0.31. `exp` of
/// `a mod 1/4` by the polynomial, then one factor `exp(−2^k)` for each bit `k` of the rest.
pub fn exp_on_negative_values(a: i32) -> i32 {
    const FRACTIONAL_BITS: i32 = 31 - SCALED_DIFF_INTEGER_BITS;
    const ONE_QUARTER: i32 = 1 << (FRACTIONAL_BITS - 2);
    let a_mod_quarter_minus_one_quarter = (a & (ONE_QUARTER - 1)).wrapping_sub(ONE_QUARTER);
    let mut result = exp_on_interval_between_negative_one_quarter_and_0_excl(mul_pot(
        a_mod_quarter_minus_one_quarter,
        SCALED_DIFF_INTEGER_BITS,
    ));
    let remainder = a_mod_quarter_minus_one_quarter.wrapping_sub(a);
    // exp(−2^k) in Q0.31, k = −2 ..= 4 (all below the 5 integer bits).
    const BARREL: [(i32, i32); 7] = [
        (-2, 1_672_461_947),
        (-1, 1_302_514_674),
        (0, 790_015_084),
        (1, 290_630_308),
        (2, 39_332_535),
        (3, 720_401),
        (4, 242),
    ];
    for (k, multiplier) in BARREL {
        if remainder & (1 << (FRACTIONAL_BITS + k)) != 0 {
            result = srdhm(result, multiplier);
        }
    }
    if a == 0 {
        i32::MAX // One in Q0.31
    } else {
        result
    }
}

/// gemmlowp `one_over_one_plus_x_for_x_in_0_1` (Q0.31 in and out): `1/(1 + a)` by three
/// Newton–Raphson steps from the 48/17 − 32/17·d estimate, in Q2.29.
fn one_over_one_plus_x_for_x_in_0_1(a: i32) -> i32 {
    const C48_OVER_17: i32 = 1_515_870_810; // Q2.29
    const NEG_C32_OVER_17: i32 = -1_010_580_540; // Q2.29
    const ONE_Q2: i32 = 1 << 29;
    let half_denominator = rounding_half_sum(a, i32::MAX);
    let mut x = C48_OVER_17.wrapping_add(srdhm(half_denominator, NEG_C32_OVER_17));
    for _ in 0..3 {
        let half_denominator_times_x = srdhm(half_denominator, x);
        let one_minus_half_denominator_times_x = ONE_Q2.wrapping_sub(half_denominator_times_x);
        x = x.wrapping_add(mul_pot(srdhm(x, one_minus_half_denominator_times_x), 2));
    }
    mul_pot(x, 1)
}

/// TFLite `GetReciprocal(x, 12, &bits)` for a Q12.19 `x > 0`: `1/x` as a Q0.31 value and the
/// number of bits `x` has above 1.0.
fn reciprocal(x: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros().min(31);
    let num_bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one as i32;
    let shifted_sum_minus_one = ((x as u32) << headroom_plus_one).wrapping_sub(1 << 31) as i32;
    (
        one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one),
        num_bits_over_unit,
    )
}

/// int8 softmax over the last axis: `input` and `output` hold pixels of `p.depth` channels.
pub fn softmax_i8(p: &SoftmaxI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(p.depth > 0 && input.len() == output.len() && input.len().is_multiple_of(p.depth))?;
    let scaled_exp =
        |d: i32| exp_on_negative_values(multiply_by_quantized_multiplier(d, p.mult, p.shift));
    // Each exponential is needed twice (the sum, then the output); up to `SOFTMAX_KEPT`
    // channels keep them from the first pass (a classifier's 10). A pixel reads back only the
    // entries it wrote.
    let mut kept = [0i32; SOFTMAX_KEPT];
    let keep = p.depth <= SOFTMAX_KEPT;
    for (x, y) in input
        .chunks_exact(p.depth)
        .zip(output.chunks_exact_mut(p.depth))
    {
        let max = x.iter().copied().max().unwrap_or(0) as i32;
        let mut sum: i32 = 0;
        for (i, &v) in x.iter().enumerate() {
            let d = v as i32 - max;
            if d >= p.diff_min {
                let e = scaled_exp(d);
                if keep {
                    kept[i] = e;
                }
                sum = sum.wrapping_add(rounding_divide_by_pot(e, ACCUMULATION_INTEGER_BITS));
            }
        }
        let (inv_sum, bits_over_unit) = reciprocal(sum);
        let exponent = bits_over_unit + 31 - 8;
        for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            let d = v as i32 - max;
            *o = if d >= p.diff_min {
                let e = if keep { kept[i] } else { scaled_exp(d) };
                let unsat = if (0..=31).contains(&exponent) {
                    rounding_divide_by_pot(srdhm(inv_sum, e), exponent)
                } else {
                    0
                };
                (unsat - 128).clamp(-128, 127) as i8
            } else {
                -128
            };
        }
    }
    Ok(())
}

/// f32 softmax over the last axis: `exp(β·(x − max)) / Σ`.
pub fn softmax_f32(
    depth: usize,
    beta: f32,
    input: &[f32],
    output: &mut [f32],
) -> Result<(), KernelError> {
    check(depth > 0 && input.len() == output.len() && input.len().is_multiple_of(depth))?;
    for (x, y) in input
        .chunks_exact(depth)
        .zip(output.chunks_exact_mut(depth))
    {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = libm::expf((v - max) * beta);
            sum += *o;
        }
        for o in y.iter_mut() {
            *o /= sum;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(beta: f32, in_scale: f32, depth: usize) -> SoftmaxI8 {
        let (mult, shift) = softmax_multiplier(beta, in_scale).unwrap();
        SoftmaxI8 {
            depth,
            mult,
            shift,
            diff_min: softmax_diff_min(shift),
        }
    }

    #[test]
    fn multiplier_and_radius_by_hand() {
        // β·s·2²⁶ = 0.125·2²⁶ = 2²³ = 0.5·2²⁴: (2³⁰, 24); radius ⌊31·2²⁶/2²⁴⌋ = 124.
        assert_eq!(softmax_multiplier(1.0, 0.125), Some((1 << 30, 24)));
        assert_eq!(softmax_diff_min(24), -124);
        // 2⁻²⁶ exactly is not above 1: TFLite's CHECK fails, we refuse.
        assert_eq!(softmax_multiplier(1.0, 1.0 / (1u64 << 26) as f32), None);
        // β·s = 32: the multiplier saturates at 2³¹ − 1 with shift 31, beyond our range.
        assert_eq!(softmax_multiplier(1.0, 32.0), None);
    }

    #[test]
    fn exp_matches_the_real_exponential() {
        // Q5.26 inputs from 0 down to −20; Q0.31 outputs within 3·10⁻⁷ of exp: the 4th-order
        // Taylor polynomial around −1/8 is off by at most (1/8)⁵/120 ≈ 2.5·10⁻⁷ on (−1/4, 0].
        assert_eq!(exp_on_negative_values(0), i32::MAX);
        for k in 0..=2000 {
            let a = -(k as i64 * (20 << 26) / 2000) as i32;
            let got = exp_on_negative_values(a) as f64 / 2f64.powi(31);
            let want = (a as f64 / 2f64.powi(26)).exp();
            assert!((got - want).abs() < 3e-7, "a = {a}: {got} vs {want}");
        }
    }

    #[test]
    fn reciprocal_matches_one_over_x() {
        // Q12.19 sums 1 .. 4096; 1/x = raw·2^−31 · 2^−bits.
        for k in 1..=4000 {
            let x = (k as f64 * 1.0237 * (1 << 19) as f64) as i32;
            let (r, bits) = reciprocal(x);
            let got = r as f64 / 2f64.powi(31) / 2f64.powi(bits);
            let want = (1 << 19) as f64 / x as f64;
            assert!((got / want - 1.0).abs() < 1e-8, "x = {x}: {got} vs {want}");
        }
    }

    #[test]
    fn hand_computed_outputs() {
        // Two equal logits: each 1/2 = 128/256 → q = 128 − 128 = 0.
        let p = params(1.0, 0.1, 2);
        let mut y = [0i8; 2];
        softmax_i8(&p, &[5, 5], &mut y).unwrap();
        assert_eq!(y, [0, 0]);
        // One logit far above the rest (difference 255·0.1 = 25.5: exp(−25.5) ≈ 8e−12): all
        // the mass, 256/256, saturates at 127; the rest round to 0 → −128.
        let p = params(1.0, 0.1, 3);
        let mut y = [0i8; 3];
        softmax_i8(&p, &[127, -128, -128], &mut y).unwrap();
        assert_eq!(y, [127, -128, -128]);
        // Logits 0 and −ln 3 (a real difference of −1.0986 at scale 1/64 ≈ −70.3 → −70):
        // p = 1/(1 + e^(−70/64)) = 0.74909, 0.25091 → 191.77, 64.23 → 192 − 128 = 64, −64.
        let p = params(1.0, 1.0 / 64.0, 2);
        softmax_i8(&p, &[20, -50], &mut y[..2]).unwrap();
        assert_eq!(y[..2], [64, -64]);
    }

    /// The kept exponentials (up to `SOFTMAX_KEPT` channels) give the bytes of the formula
    /// evaluated in both passes, as deeper softmaxes still do: depths on both sides, any β.
    #[test]
    fn kept_exponentials_give_the_same_bytes() {
        let mut rng = crate::heads::rng::SplitMix64::new(17);
        for (case, depth) in [1, 2, 10, 63, 64, 65, 130]
            .into_iter()
            .cycle()
            .take(70)
            .enumerate()
        {
            let beta = [0.5, 1.0, 2.0][case % 3];
            let p = params(beta, 0.05 + 0.01 * (case % 7) as f32, depth);
            let x: alloc::vec::Vec<i8> = (0..2 * depth).map(|_| rng.next_u64() as i8).collect();
            let mut got = alloc::vec![0i8; x.len()];
            softmax_i8(&p, &x, &mut got).unwrap();
            let e = |d: i32| {
                exp_on_negative_values(multiply_by_quantized_multiplier(d, p.mult, p.shift))
            };
            for (xs, ys) in x.chunks(depth).zip(got.chunks(depth)) {
                let max = *xs.iter().max().unwrap() as i32;
                let sum = xs
                    .iter()
                    .map(|&v| v as i32 - max)
                    .filter(|&d| d >= p.diff_min)
                    .fold(0i32, |s, d| {
                        s.wrapping_add(rounding_divide_by_pot(e(d), ACCUMULATION_INTEGER_BITS))
                    });
                let (inv, bits) = reciprocal(sum);
                let exponent = bits + 31 - 8;
                for (&v, &y) in xs.iter().zip(ys) {
                    let d = v as i32 - max;
                    let want = if d < p.diff_min {
                        -128
                    } else if (0..=31).contains(&exponent) {
                        (rounding_divide_by_pot(srdhm(inv, e(d)), exponent) - 128).clamp(-128, 127)
                    } else {
                        -128
                    };
                    assert_eq!(y as i32, want, "depth {depth} case {case}");
                }
            }
        }
    }

    #[test]
    fn below_diff_min_is_flushed() {
        // in_scale 8: β·s·2²⁶ = 2²⁹ → shift 30, radius ⌊31·2²⁶/2³⁰⌋ = 1: a difference of −2
        // is below diff_min = −1 and gives −128 without entering the sum.
        let p = params(1.0, 8.0, 3);
        assert_eq!((p.shift, p.diff_min), (30, -1));
        let mut y = [0i8; 3];
        softmax_i8(&p, &[3, 3, 1], &mut y).unwrap();
        assert_eq!(y, [0, 0, -128]);
    }

    #[test]
    fn close_to_the_real_softmax_everywhere() {
        // Pseudo-random 10-way logits: every output within 1 LSB of 256·softmax − 128.
        let mut s: u64 = 7;
        for _ in 0..300 {
            let scale = 0.02 + (s % 1000) as f32 * 0.0003;
            let p = params(1.0, scale, 10);
            let x: [i8; 10] = core::array::from_fn(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as i8
            });
            let mut y = [0i8; 10];
            softmax_i8(&p, &x, &mut y).unwrap();
            let max = *x.iter().max().unwrap() as f64;
            let e: [f64; 10] = core::array::from_fn(|i| ((x[i] as f64 - max) * scale as f64).exp());
            let sum: f64 = e.iter().sum();
            for i in 0..10 {
                let want = (e[i] / sum * 256.0 - 128.0).clamp(-128.0, 127.0);
                assert!(
                    (y[i] as f64 - want).abs() <= 1.0,
                    "{x:?} {i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }

    #[test]
    fn f32_sums_to_one() {
        let mut y = [0f32; 3];
        softmax_f32(3, 1.0, &[1.0, 2.0, 3.0], &mut y).unwrap();
        let e = [(-2f32).exp(), (-1f32).exp(), 1.0];
        let s: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((y[i] - e[i] / s).abs() < 1e-6);
        }
        assert_eq!(softmax_f32(2, 1.0, &[0.0; 3], &mut y), Err(KernelError));
    }
}
