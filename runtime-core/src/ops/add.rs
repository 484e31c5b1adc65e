//! Residual add (TFLite quantized ADD).
//!
//! int8: each input is offset by its zero point, shifted left by [`ADD_LEFT_SHIFT`] (20) for
//! headroom, rescaled by its own multiplier to the common scale `2·max(s_a, s_b)`, summed, and the
//! sum is requantised to the output scale:
//! `a' = MBQM((a − zp_a)·2²⁰, m_a, sh_a)`, `b'` likewise,
//! `y = clamp(MBQM(a' + b', m_out, sh_out) + zp_out, act)`.
//! The exporter computes `m_a = s_a / (2·max)`, `m_b = s_b / (2·max)`, `m_out = 2·max / (2²⁰·s_out)`.

use super::add_lut::AddLut;
use super::requant::{multiply_by_quantized_multiplier, RightShift};
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

/// From this many elements on, [`add_i8`] tabulates each input's rescaling first.
pub const ADD_TABLE_MIN_LEN: usize = 1024;

/// int8 elementwise add of two same-shape tensors: on an x86-64 CPU with AVX2 (`std`), 16
/// elements at a time ([`super::arch::x86_add`]), else [`add_i8_scalar`]; the same bytes.
pub fn add_i8(p: &AddI8, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if output.len() >= 16 && super::arch::x86_add::add(p, a, b, output) {
        return Ok(());
    }
    add_i8_scalar(p, a, b, output)
}

/// [`add_i8`] by the add's lookup tables where the loader built them (`lut`, [`AddLut`]: on
/// AVX-512 VBMI CPUs, for adds whose tables check out), else [`add_i8`]; the same bytes.
pub fn add_i8_lut(
    p: &AddI8,
    lut: Option<&AddLut>,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if let Some(lut) = lut {
        if super::arch::x86_add::add_lut(lut, a, b, output) {
            return Ok(());
        }
    }
    let _ = lut;
    add_i8(p, a, b, output)
}

/// [`add_i8`] on the x86-64 AVX2 loop even where the AVX-512 one would run, so that tests
/// check both on AVX-512 machines: `Ok(false)` (nothing written) where this build (no `std`,
/// not x86-64) or CPU has no AVX2 or `p` is outside the SIMD loop's ranges.
pub fn add_i8_avx2(p: &AddI8, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<bool, KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        Ok(super::arch::x86_add::add_avx2_only(p, a, b, output))
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        let _ = p;
        Ok(false)
    }
}

/// The scalar int8 add (TFLite's loop), on every target; the oracle of the SIMD one.
///
/// Each input's rescaled term `MBQM((x − zp)·2²⁰, m, sh)` depends on one int8 value only, so for
/// tensors of [`ADD_TABLE_MIN_LEN`] elements or more both are tabulated once (2 × 256 values,
/// 2 KiB of stack) and looked up: the same numbers, a third of the per-element work.
pub fn add_i8_scalar(p: &AddI8, a: &[i8], b: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    let term = |x: i32, zp: i32, m: i32, sh: i32| {
        multiply_by_quantized_multiplier((x - zp) << ADD_LEFT_SHIFT, m, sh)
    };
    let out = |r1: i32, r2: i32| {
        // |r1|,|r2| ≤ 255·2²⁰ when multipliers ≤ 1 (shift ≤ 0); saturate for larger ones.
        let sum = r1.saturating_add(r2);
        let v =
            multiply_by_quantized_multiplier(sum, p.out_mult, p.out_shift).saturating_add(p.out_zp);
        v.clamp(p.act_min, p.act_max) as i8
    };
    if output.len() >= ADD_TABLE_MIN_LEN {
        let (mut ta, mut tb) = ([0i32; 256], [0i32; 256]);
        for v in -128i32..=127 {
            ta[v as u8 as usize] = term(v, p.a_zp, p.a_mult, p.a_shift);
            tb[v as u8 as usize] = term(v, p.b_zp, p.b_mult, p.b_shift);
        }
        #[cfg(rt_dsp)]
        if super::arch::cortex_m::add_tabulated(p, &ta, &tb, a, b, output) {
            return Ok(());
        }
        if (-31..0).contains(&p.out_shift) && p.out_mult >= 0 {
            // The usual output scaling (down, by a non-negative multiplier) in one multiply-add
            // and a shift ([`RightShift`], proven equal to `multiply_by_quantized_multiplier`
            // there), its constants formed once: a Cortex-M4 spends about 20 instructions an
            // element here, 50 with the general formula.
            let r = RightShift::new(p.out_mult, p.out_shift.unsigned_abs());
            for ((y, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
                let sum = ta[x1 as u8 as usize].saturating_add(tb[x2 as u8 as usize]);
                let v = r.apply(sum).saturating_add(p.out_zp);
                *y = v.clamp(p.act_min, p.act_max) as i8;
            }
        } else {
            for ((y, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
                *y = out(ta[x1 as u8 as usize], tb[x2 as u8 as usize]);
            }
        }
    } else {
        for ((y, &x1), &x2) in output.iter_mut().zip(a).zip(b) {
            *y = out(
                term(x1 as i32, p.a_zp, p.a_mult, p.a_shift),
                term(x2 as i32, p.b_zp, p.b_mult, p.b_shift),
            );
        }
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
