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

/// int8 LeakyReLU, element by element (the reference; the model runs [`leaky_relu_i8_lut`]).
pub fn leaky_relu_i8(p: &LeakyI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(input.len() == output.len())?;
    for (y, &x) in output.iter_mut().zip(input) {
        *y = leaky_i8_one(p, x);
    }
    Ok(())
}

/// [`leaky_i8_one`] of every int8 value, indexed by the value's byte (`x as u8`): made once by
/// the model loader, so that inference is one lookup an element. The direct loop's sign branch
/// mispredicts on real activations (~10 cycles an element, a third of the landmark model's
/// time); the table gives the same bytes by construction.
pub fn leaky_lut(p: &LeakyI8) -> [i8; 256] {
    let mut lut = [0i8; 256];
    for (i, t) in lut.iter_mut().enumerate() {
        *t = leaky_i8_one(p, i as u8 as i8);
    }
    lut
}

/// int8 LeakyReLU through a table from [`leaky_lut`].
pub fn leaky_relu_i8_lut(
    lut: &[i8; 256],
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    check(input.len() == output.len())?;
    // x86-64 with AVX-512 VBMI: 64 lookups a step (ten times the scalar loop's rate).
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if super::arch::x86_lut::map_bytes(lut, input, output) {
        return Ok(());
    }
    for (y, &x) in output.iter_mut().zip(input) {
        *y = lut[x as u8 as usize];
    }
    Ok(())
}

/// One element of the int8 LeakyReLU (TFLite's formula, the module docs).
#[inline]
pub fn leaky_i8_one(p: &LeakyI8, x: i8) -> i8 {
    let d = x as i32 - p.in_zp;
    let r = if d >= 0 {
        multiply_by_quantized_multiplier(d, p.id_mult, p.id_shift)
    } else {
        multiply_by_quantized_multiplier(d, p.alpha_mult, p.alpha_shift)
    };
    r.saturating_add(p.out_zp).clamp(-128, 127) as i8
}

/// f32 LeakyReLU: `x` if `x ≥ 0`, else `alpha·x`.
pub fn leaky_relu_f32(alpha: f32, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    check(input.len() == output.len())?;
    for (y, &x) in output.iter_mut().zip(input) {
        *y = if x >= 0.0 { x } else { alpha * x };
    }
    Ok(())
}
