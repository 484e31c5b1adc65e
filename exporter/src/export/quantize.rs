//! TFLite int8 quantisation parameters (DESIGN.md "Quantisation: the TFLite int8 rules").
//!
//! * Weights: symmetric per output channel, `scale[c] = max|w[c]|/127`, `q = round(w/scale)` in
//!   [−127, 127] (−128 unused, so `−q` never overflows — TFLite's rule).
//! * Activations: per tensor, asymmetric, from a calibrated real range that is first widened to
//!   contain 0 (so zero — ReLU's floor and the conv padding value — is exact), TFLite's
//!   `ChooseQuantizationParams` with the zero-point nudge.
//! * Biases: int32 at scale `in_scale·w_scale[c]`, clamped to the runtime's ±2³⁰.
//!
//! The fixed-point multipliers `in_scale·w_scale[c]/out_scale` (and those of add, mean, leaky)
//! are derived by runtime-core's `ModelBuilder` with `runtime_core::quantize_multiplier`, so
//! host and device share one implementation of that rounding.
use runtime_core::Quant;

/// Largest |bias| the runtime accepts (keeps the i32 accumulator exact).
pub const MAX_ABS_BIAS: i64 = 1 << 30;

/// Per-output-channel symmetric int8 weights. `w` holds `out_c` equal rows (out channel
/// outermost). An all-zero row gets scale 1 (any positive scale represents it exactly).
pub fn quantize_per_channel(w: &[f32], out_c: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / out_c.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out_c);
    for row in w.chunks(per.max(1)).take(out_c) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        q.extend(
            row.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(s);
    }
    (q, scales)
}

/// int32 biases at scale `in_scale·w_scale[c]`, rounded half away from zero; returns them and
/// how many had to be clamped to ±2³⁰.
pub fn quantize_bias(b: &[f32], in_scale: f32, w_scale: &[f32]) -> (Vec<i32>, usize) {
    let mut clamped = 0;
    let q = b
        .iter()
        .zip(w_scale)
        .map(|(&v, &ws)| {
            let r = (v as f64 / (in_scale as f64 * ws as f64)).round();
            if r.abs() > MAX_ABS_BIAS as f64 {
                clamped += 1;
            }
            r.clamp(-(MAX_ABS_BIAS as f64), MAX_ABS_BIAS as f64) as i32
        })
        .collect();
    (q, clamped)
}

/// Activation quantisation for a real range `[lo, hi]` (TFLite `ChooseQuantizationParams`,
/// int8 `[−128, 127]`): the range is widened to contain 0, `scale = (hi − lo)/255`, and the
/// zero point is the rounded, clamped `qmin − lo/scale` (or `qmax − hi/scale`, whichever has
/// the smaller rounding error). A degenerate range (all values 0) gets a tiny positive range so
/// the scale stays valid.
pub fn activation_quant(lo: f32, hi: f32) -> Quant {
    let (qmin, qmax) = (-128f64, 127f64);
    let mut lo = (lo as f64).min(0.0);
    let mut hi = (hi as f64).max(0.0);
    if !(lo.is_finite() && hi.is_finite()) {
        // Cannot happen with finite weights and inputs; keep the result valid anyway.
        (lo, hi) = (-1.0, 1.0);
    }
    if hi - lo < 1e-8 {
        hi = lo + 1e-8;
    }
    let scale = (hi - lo) / (qmax - qmin);
    let zp_from_min = qmin - lo / scale;
    let zp_from_max = qmax - hi / scale;
    let err_min = qmin.abs() + (lo / scale).abs();
    let err_max = qmax.abs() + (hi / scale).abs();
    let zp = if err_min < err_max {
        zp_from_min
    } else {
        zp_from_max
    };
    Quant {
        scale: scale as f32,
        zp: zp.round().clamp(qmin, qmax) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_per_channel_by_hand() {
        // Row 0: max 254 → scale 2; 0.9/2 = 0.45 → 0, 3/2 = 1.5 → 2, −5/2 → −3 (half away), −254 → −127.
        // Row 1: all zeros → scale 1, zeros.
        let (q, s) = quantize_per_channel(&[0.9, 3.0, -5.0, -254.0, 0.0, 0.0, 0.0, 0.0], 2);
        assert_eq!(s, vec![2.0, 1.0]);
        assert_eq!(q, vec![0, 2, -3, -127, 0, 0, 0, 0]);
    }

    #[test]
    fn bias_scale_and_clamp() {
        // 0.75 / (0.25·0.5) = 6; −0.3125/(0.25·0.5) = −2.5 → −3 (half away from zero).
        let (q, n) = quantize_bias(&[0.75, -0.3125, 1e9], 0.25, &[0.5, 0.5, 0.5]);
        assert_eq!(&q[..2], &[6, -3]);
        assert_eq!(q[2], 1 << 30);
        assert_eq!(n, 1);
    }

    #[test]
    fn activation_params_by_hand() {
        // Post-ReLU range [0, 2.55]: scale 0.01, zero at −128 exactly.
        let q = activation_quant(0.0, 2.55);
        assert!((q.scale - 0.01).abs() < 1e-7 && q.zp == -128, "{q:?}");
        // Symmetric-ish [−1.28, 1.27]: scale 0.01, zp 0.
        let q = activation_quant(-1.28, 1.27);
        assert!((q.scale - 0.01).abs() < 1e-7 && q.zp == 0, "{q:?}");
        // A range not containing 0 is widened: [0.5, 2.55] → [0, 2.55].
        assert_eq!(activation_quant(0.5, 2.55), activation_quant(0.0, 2.55));
        // All-negative [−2.55, −1] → [−2.55, 0]: zp 127.
        let q = activation_quant(-2.55, -1.0);
        assert!((q.scale - 0.01).abs() < 1e-7 && q.zp == 127, "{q:?}");
        // Degenerate: valid scale.
        let q = activation_quant(0.0, 0.0);
        assert!(q.scale > 0.0 && q.scale.is_finite());
        // Real 0 maps to an integer exactly, and the range ends map inside [−128, 127].
        for (lo, hi) in [(-0.37f32, 5.1f32), (-3.0, 0.2), (-1e-3, 1e3)] {
            let q = activation_quant(lo, hi);
            let ql = (lo / q.scale).round() as i32 + q.zp;
            let qh = (hi / q.scale).round() as i32 + q.zp;
            assert!(
                (-129..=128).contains(&ql) && (-129..=128).contains(&qh),
                "{lo} {hi} {q:?}"
            );
        }
    }
}
