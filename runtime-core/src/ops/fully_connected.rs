//! Fully connected layer: `y[o] = bias[o] + Σ_i x[i]·W[o][i]` over the input flattened in NHWC
//! order (h, w, c) — the exporter permutes PyTorch's NCHW-flattened weights accordingly.
//!
//! int8 follows TFLite's per-channel FullyConnected: `(x − in_zp)·w`, bias, per-output
//! `MultiplyByQuantizedMultiplier`, `+ out_zp`, clamp to the fused activation range.

use super::conv2d::{dot_f32, dot_i8};
use super::requant::multiply_by_quantized_multiplier;
use super::{check, requant_lens_ok, F32Le, I32Le, KernelError};

/// Parameters of an int8 fully connected layer.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FcI8<'a> {
    pub in_len: usize,
    pub out_len: usize,
    /// `[out_len][in_len]`, values in [−127, 127].
    pub weights: &'a [i8],
    pub bias: I32Le<'a>,
    pub mult: I32Le<'a>,
    pub shift: I32Le<'a>,
    pub in_zp: i32,
    pub out_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// Parameters of an f32 fully connected layer.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FcF32<'a> {
    pub in_len: usize,
    pub out_len: usize,
    pub weights: F32Le<'a>,
    pub bias: F32Le<'a>,
    pub relu: bool,
}

/// int8 fully connected.
pub fn fully_connected_i8(p: &FcI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check(input.len() == p.in_len && output.len() == p.out_len)?;
    check(p.weights.len() == p.in_len * p.out_len)?;
    check(requant_lens_ok(p.out_len, p.bias, p.mult, p.shift))?;
    for (o, y) in output.iter_mut().enumerate() {
        let acc = dot_i8(input, &p.weights[o * p.in_len..][..p.in_len], p.in_zp) + p.bias.get(o);
        let v = multiply_by_quantized_multiplier(acc, p.mult.get(o), p.shift.get(o))
            .saturating_add(p.out_zp);
        *y = v.clamp(p.act_min, p.act_max) as i8;
    }
    Ok(())
}

/// f32 fully connected.
pub fn fully_connected_f32(
    p: &FcF32,
    input: &[f32],
    output: &mut [f32],
) -> Result<(), KernelError> {
    check(input.len() == p.in_len && output.len() == p.out_len)?;
    check(p.weights.len() == p.in_len * p.out_len && p.bias.len() == p.out_len)?;
    for (o, y) in output.iter_mut().enumerate() {
        let v = dot_f32(input, p.weights, o * p.in_len) + p.bias.get(o);
        *y = if p.relu { v.max(0.0) } else { v };
    }
    Ok(())
}
