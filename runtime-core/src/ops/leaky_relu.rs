//! LeakyReLU (TFLite LEAKY_RELU).
//!
//! int8 uses two fixed-point multipliers, as TFLite does: for `d = x − in_zp`,
//! `y = clamp(out_zp + MBQM(d, m_id, s_id))` if `d ≥ 0`, else `clamp(out_zp + MBQM(d, m_alpha, s_alpha))`,
//! with `m_id ≈ in_scale/out_scale` and `m_alpha ≈ alpha·in_scale/out_scale`.

use super::requant::multiply_by_quantized_multiplier;
use super::{check, KernelError};

/// Parameters of an int8 LeakyReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LeakyI8 {
    pub in_zp: i32,
    pub out_zp: i32,
    pub id_mult: i32,
    pub id_shift: i32,
    pub alpha_mult: i32,
    pub alpha_shift: i32,
}

/// int8 LeakyReLU.
pub fn leaky_relu_i8(p: &LeakyI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(input.len() == output.len())?;
    for (y, &x) in output.iter_mut().zip(input) {
        let d = x as i32 - p.in_zp;
        let r = if d >= 0 {
            multiply_by_quantized_multiplier(d, p.id_mult, p.id_shift)
        } else {
            multiply_by_quantized_multiplier(d, p.alpha_mult, p.alpha_shift)
        };
        *y = r.saturating_add(p.out_zp).clamp(-128, 127) as i8;
    }
    Ok(())
}

/// f32 LeakyReLU: `x` if `x ≥ 0`, else `alpha·x`.
pub fn leaky_relu_f32(alpha: f32, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    check(input.len() == output.len())?;
    for (y, &x) in output.iter_mut().zip(input) {
        *y = if x >= 0.0 { x } else { alpha * x };
    }
    Ok(())
}
