//! Fixed-point requantisation: the gemmlowp / TFLite integer maths, in one place.
//!
//! Every int8 kernel ends with `MultiplyByQuantizedMultiplier`, so the rounding rules live here
//! and nowhere else. The MCU never touches floats on this path; only the exporter calls
//! [`quantize_multiplier`] (once per tensor/channel) to turn a real scale ratio into `(mult, shift)`.

/// gemmlowp `SaturatingRoundingDoublingHighMul`: `round(a·b / 2³¹)` with the single overflow case
/// (`a = b = i32::MIN`) saturated to `i32::MAX`. Rounding is half away from zero, as in gemmlowp.
#[inline(always)]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Integer division truncates toward zero, exactly as C++'s does.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp `RoundingDivideByPOT`: `x / 2^exponent` rounded half away from zero.
/// `exponent` must be in `0..=31` (the loader guarantees it).
///
/// Computed in `i32` (a Cortex-M4 has no 64-bit shifts): the mask `2^e − 1` is formed in `u32`,
/// where `e = 31` is well defined, and every other quantity fits: the remainder and threshold
/// are below 2³¹, and `(x >> e) + 1` cannot overflow for `e ≥ 1` (for `e = 0` the mask is 0,
/// so nothing is added). This is gemmlowp's own `int32` formulation.
#[inline(always)]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let e = exponent as u32 & 31;
    let mask = ((1u32 << e) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> e) + i32::from(remainder > threshold)
}

/// TFLite `MultiplyByQuantizedMultiplier(x, mult, shift)`: `x · mult · 2^shift / 2³¹`.
///
/// A positive `shift` is a left shift applied *before* the high multiply (as TFLite does); where
/// TFLite would overflow an `int32` (undefined behaviour in C++) we saturate instead, so the
/// result is defined for every input. Valid ranges: `mult ∈ [0, i32::MAX]`, `shift ∈ [-31, 30]`.
#[inline(always)]
pub fn multiply_by_quantized_multiplier(x: i32, mult: i32, shift: i32) -> i32 {
    let left = if shift > 0 { shift } else { 0 };
    let right = if shift > 0 { 0 } else { -shift };
    // Saturating `x << left` in i32: the shift overflowed iff shifting back loses bits.
    let shifted = if left == 0 {
        x
    } else {
        let l = left as u32 & 31;
        let y = x << l;
        if y >> l == x {
            y
        } else if x < 0 {
            i32::MIN
        } else {
            i32::MAX
        }
    };
    rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, mult), right)
}

/// [`multiply_by_quantized_multiplier`] with the shift split once into `left = max(shift, 0)` and
/// `right = max(−shift, 0)` and `mult ∈ [0, i32::MAX]` (the loader's range), for kernels that
/// precompute per-channel constants; the same result for every `x`.
///
/// With `mult ≥ 0` the product's sign is the shifted input's, or the product is 0, where both
/// of gemmlowp's nudges round to 0; and `i32::MIN · i32::MIN`, SRDHM's one saturating case,
/// cannot occur. So the nudge is chosen from a 32-bit compare.
#[inline(always)]
pub fn multiply_by_quantized_multiplier_split(x: i32, mult: i32, left: u32, right: u32) -> i32 {
    if left == 0 && right > 0 {
        return multiply_by_quantized_multiplier_right(x, mult, right);
    }
    let shifted = if left == 0 {
        x
    } else {
        let l = left & 31;
        let y = x << l;
        if y >> l == x {
            y
        } else if x < 0 {
            i32::MIN
        } else {
            i32::MAX
        }
    };
    let nudge: i64 = if shifted >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    let high = ((shifted as i64 * mult as i64 + nudge) / (1i64 << 31)) as i32;
    rounding_divide_by_pot(high, right as i32)
}

/// [`multiply_by_quantized_multiplier_split`] for `left = 0`, `right ∈ 1..=31` and `mult ≥ 0`
/// (every requantisation that scales down, i.e. nearly all of them): both of gemmlowp's roundings
/// in one 64-bit multiply-add and one shift, `((x·mult + C) >> 32) >> (right − 1)` with
/// `C = 2³⁰ + 2^(30+right) − [x < 0]·2³¹` (on a Cortex-M4: `smlal` and an `asr`).
///
/// Why it is exact. With `P = x·mult + 2³⁰`, SRDHM is `h = ⌊P / 2³¹⌋` (for `mult ≥ 0`,
/// gemmlowp's sign-chosen nudge and truncation give the floor on both signs), and
/// `RoundingDivideByPOT(h, e) = ⌊(h + 2^(e−1) − [h < 0]) / 2^e⌋` (half away from zero). Nested
/// floors of divisions by positive integers merge, `⌊(⌊P/a⌋ + c)/b⌋ = ⌊(P + c·a)/(a·b)⌋`, so the
/// result is `⌊(P + 2^(30+e) − [h < 0]·2³¹) / 2^(31+e)⌋`. `[h < 0]` is `[P < 0]`; using `[x < 0]`
/// instead differs only when `−2³⁰ ≤ x·mult < 0`, where `h = 0` and the numerator lies in
/// `[0, 2^(31+e))` either way, so both give 0. `|x·mult| < 2⁶²` and `C < 2⁶²` keep the sum
/// inside `i64`, and its top word fits `i32`.
#[inline(always)]
pub fn multiply_by_quantized_multiplier_right(x: i32, mult: i32, right: u32) -> i32 {
    RightShift::new(mult, right).apply(x)
}

/// [`multiply_by_quantized_multiplier_right`] with its per-channel constants computed once, for
/// kernels that requantise several outputs of one channel in a row.
#[derive(Debug, Clone, Copy)]
pub struct RightShift {
    /// `2³⁰ + 2^(30+e)`: its top word `2^e / 4`, its low word `2³⁰` plus `2³¹` when `e = 1`.
    c: i64,
    mult: i32,
    /// `e − 1`.
    e1: u32,
}

impl RightShift {
    /// The constants for `mult ≥ 0` and `right ∈ 1..=31` (clamped into that range).
    #[inline(always)]
    pub fn new(mult: i32, right: u32) -> Self {
        let e = right.clamp(1, 31);
        let hi = (1u32 << e) >> 2;
        let lo = (1u32 << 30) | (u32::from(e == 1) << 31);
        RightShift {
            c: (((hi as u64) << 32) | lo as u64) as i64,
            mult,
            e1: e - 1,
        }
    }

    /// `MultiplyByQuantizedMultiplier(x, mult, −right)`, exactly.
    #[inline(always)]
    pub fn apply(self, x: i32) -> i32 {
        let c = self.c + (((x >> 31) as i64) << 31);
        (((x as i64 * self.mult as i64 + c) >> 32) as i32) >> self.e1
    }
}

/// Smallest and largest shift the loader accepts (TFLite's range after `QuantizeMultiplier`).
pub const SHIFT_MIN: i32 = -31;
/// See [`SHIFT_MIN`].
pub const SHIFT_MAX: i32 = 30;

/// TFLite `QuantizeMultiplier`: represent a real multiplier `m ≥ 0` as `mult · 2^shift / 2³¹` with
/// `mult ∈ [2³⁰, 2³¹)` (or `0`). The exporter calls this, so host and device agree by construction.
///
/// `m` must be finite and non-negative; anything else (or a multiplier too small to represent,
/// `m < 2⁻³²`) yields `(0, 0)`, which makes the kernel output the zero point. Multipliers too
/// large for `shift ≤ 30` saturate to `(i32::MAX, 30)`, as TFLite does.
pub fn quantize_multiplier(m: f64) -> (i32, i32) {
    if !(m.is_finite() && m > 0.0) {
        return (0, 0);
    }
    let (q, mut shift) = libm::frexp(m);
    // round() is half away from zero, like std::round in TFLite.
    let mut q_fixed = libm::round(q * (1i64 << 31) as f64) as i64;
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < SHIFT_MIN {
        return (0, 0);
    }
    if shift > SHIFT_MAX {
        return (i32::MAX, SHIFT_MAX);
    }
    (q_fixed as i32, shift)
}

/// Clamp bounds of a fused activation on an int8 output with zero point `out_zp`
/// (TFLite `CalculateActivationRangeQuantized`): ReLU clips at the zero point.
#[inline]
pub fn activation_range_i8(relu: bool, out_zp: i32) -> (i32, i32) {
    if relu {
        (out_zp.max(-128), 127)
    } else {
        (-128, 127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srdhm_hand_cases() {
        // 2^30 * 2^30 / 2^31 = 2^29 exactly.
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
        // 3 * 2^30 / 2^31 = 1.5 -> 2. gemmlowp's negative nudge is 1 - 2^30, so an exact
        // negative tie -1.5 goes to -1 (a known gemmlowp quirk we must reproduce), -1.75 -> -2.
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        assert_eq!(saturating_rounding_doubling_high_mul(-7, 1 << 29), -2);
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
    }

    #[test]
    fn rdbp_hand_cases() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3); // 2.5 -> 3
        assert_eq!(rounding_divide_by_pot(-5, 1), -3); // -2.5 -> -3
        assert_eq!(rounding_divide_by_pot(7, 2), 2); // 1.75 -> 2
        assert_eq!(rounding_divide_by_pot(-6, 2), -2); // -1.5 -> -2
        assert_eq!(rounding_divide_by_pot(-5, 2), -1); // -1.25 -> -1
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
    }

    #[test]
    fn quantize_multiplier_known_values() {
        // 0.5 = 2^30 / 2^31 * 2^0.
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        assert_eq!(quantize_multiplier(0.25), (1 << 30, -1));
        // 0.75 = 0.75 * 2^0 -> round(0.75 * 2^31) = 1610612736.
        assert_eq!(quantize_multiplier(0.75), (1_610_612_736, 0));
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(-1.0), (0, 0));
        assert_eq!(quantize_multiplier(f64::NAN), (0, 0));
        // Applying the pair reproduces x·m to within rounding.
        for &m in &[0.000123, 0.0731, 0.3, 0.99999, 1.7, 12.5] {
            let (q, s) = quantize_multiplier(m);
            for &x in &[-100_000i32, -777, 0, 5, 12345, 1 << 20] {
                let got = multiply_by_quantized_multiplier(x, q, s) as f64;
                assert!((got - x as f64 * m).abs() <= 1.0, "m={m} x={x} got={got}");
            }
        }
    }

    /// The one-multiply form against gemmlowp's two steps, on every rounding tie of small
    /// quotients (`mult = 2³⁰` halves exactly, `3·2²⁸` makes quarters), on odd multipliers and
    /// on the extremes of `x`.
    #[test]
    fn right_shift_form_matches_gemmlowp() {
        let mults = [
            0,
            1,
            7,
            3 << 28,
            1 << 30,
            1_518_500_250,
            i32::MAX - 1,
            i32::MAX,
        ];
        let mut xs: alloc::vec::Vec<i32> = (-4100..=4100).collect();
        for b in [
            i32::MIN,
            i32::MAX,
            1 << 30,
            -(1 << 30),
            123_456_789,
            -987_654_321,
        ] {
            xs.extend((-40..=40).map(|d| b.saturating_add(d)));
        }
        for e in 1..=31u32 {
            for &m in &mults {
                for &x in &xs {
                    let want = rounding_divide_by_pot(
                        saturating_rounding_doubling_high_mul(x, m),
                        e as i32,
                    );
                    assert_eq!(
                        multiply_by_quantized_multiplier_right(x, m, e),
                        want,
                        "x={x} m={m} e={e}"
                    );
                }
            }
        }
    }

    #[test]
    fn mbqm_hand_cases() {
        // x=100, m=0.5 -> 50; x=3, m=0.5 -> 1.5 -> 2; x=-3 -> -1 (SRDHM tie quirk, see above).
        let (q, s) = quantize_multiplier(0.5);
        assert_eq!(multiply_by_quantized_multiplier(100, q, s), 50);
        assert_eq!(multiply_by_quantized_multiplier(3, q, s), 2);
        assert_eq!(multiply_by_quantized_multiplier(-3, q, s), -1);
        // m=0.25 as (2^30, -1): the tie is resolved by RoundingDivideByPOT, away from zero:
        // -6 * 0.25 = -1.5 -> SRDHM gives -3, RDBP(-3, 1) = -2.
        let (q, s) = quantize_multiplier(0.25);
        assert_eq!(multiply_by_quantized_multiplier(-6, q, s), -2);
        // Left shift saturates instead of overflowing.
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MAX, 1 << 30, 30),
            (i32::MAX >> 1) + 1
        );
    }
}
