//! Global average pool (MEAN over H and W), NHWC `h×w×c → c`.
//!
//! int8: `y[c] = clamp(MBQM(Σ (x − in_zp), mult, shift) + out_zp)`, where the exporter folds the
//! integer divide into the multiplier: `mult·2^shift ≈ in_scale / (out_scale · h·w)`. The sum is
//! exact (h·w ≤ 2²² is enforced by the loader) and MBQM rounds half away from zero, so this is the
//! average rounded half away from zero, without any float or division on the device.

use super::requant::multiply_by_quantized_multiplier;
use super::{check, KernelError};

/// Parameters of an int8 global average pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MeanI8 {
    pub hw: usize,
    pub c: usize,
    pub in_zp: i32,
    pub out_zp: i32,
    pub mult: i32,
    pub shift: i32,
}

/// int8 global average pool.
pub fn mean_i8(p: &MeanI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(input.len() == p.hw * p.c && output.len() == p.c)?;
    for (ch, y) in output.iter_mut().enumerate() {
        let mut acc: i32 = 0;
        for px in 0..p.hw {
            acc += input[px * p.c + ch] as i32 - p.in_zp;
        }
        let v = multiply_by_quantized_multiplier(acc, p.mult, p.shift).saturating_add(p.out_zp);
        *y = v.clamp(-128, 127) as i8;
    }
    Ok(())
}

/// f32 global average pool.
pub fn mean_f32(hw: usize, c: usize, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    check(input.len() == hw * c && output.len() == c && hw > 0)?;
    output.fill(0.0);
    for px in input.chunks_exact(c) {
        for (o, &x) in output.iter_mut().zip(px) {
            *o += x;
        }
    }
    let inv = 1.0 / hw as f32;
    for o in output.iter_mut() {
        *o *= inv;
    }
    Ok(())
}
