//! Residual add (TFLite quantized ADD).
//!
//! int8: each input is offset by its zero point, shifted left by [`ADD_LEFT_SHIFT`] (20) for
//! headroom, rescaled by its own multiplier to the common scale `2·max(s_a, s_b)`, summed, and the
//! sum is requantised to the output scale:
//! `a' = MBQM((a − zp_a)·2²⁰, m_a, sh_a)`, `b'` likewise,
//! `y = clamp(MBQM(a' + b', m_out, sh_out) + zp_out, act)`.
//! The exporter computes `m_a = s_a / (2·max)`, `m_b = s_b / (2·max)`, `m_out = 2·max / (2²⁰·s_out)`.

use super::requant::multiply_by_quantized_multiplier;
use super::{check, KernelError};

/// TFLite's `left_shift` for int8 ADD.
pub const ADD_LEFT_SHIFT: i32 = 20;

/// Parameters of an int8 add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddI8 {
    pub a_zp: i32,
    pub a_mult: i32,
    pub a_shift: i32,
    pub b_zp: i32,
    pub b_mult: i32,
    pub b_shift: i32,
    pub out_zp: i32,
    pub out_mult: i32,
    pub out_shift: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// int8 elementwise add of two same-shape tensors.
pub fn add_i8(p: &AddI8, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    for ((y, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
        let s1 = (x1 as i32 - p.a_zp) << ADD_LEFT_SHIFT;
        let s2 = (x2 as i32 - p.b_zp) << ADD_LEFT_SHIFT;
        let r1 = multiply_by_quantized_multiplier(s1, p.a_mult, p.a_shift);
        let r2 = multiply_by_quantized_multiplier(s2, p.b_mult, p.b_shift);
        // |r1|,|r2| ≤ 255·2²⁰ when multipliers ≤ 1 (shift ≤ 0); saturate for larger ones.
        let sum = r1.saturating_add(r2);
        let v =
            multiply_by_quantized_multiplier(sum, p.out_mult, p.out_shift).saturating_add(p.out_zp);
        *y = v.clamp(p.act_min, p.act_max) as i8;
    }
    Ok(())
}

/// f32 elementwise add, optional fused ReLU.
pub fn add_f32(a: &[f32], b: &[f32], output: &mut [f32], relu: bool) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    for ((y, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
        let v = x1 + x2;
        *y = if relu { v.max(0.0) } else { v };
    }
    Ok(())
}
