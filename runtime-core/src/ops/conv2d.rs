//! 2-D convolution, NHWC activations, OHWI weights, any kernel/stride/padding, fused ReLU.
//!
//! int8 (TFLite `reference_integer_ops::ConvPerChannel`):
//! `acc = bias[c] + Σ (x − in_zp)·w` over taps inside the image (padding contributes nothing,
//! i.e. it holds the input zero point), then
//! `y = clamp(MultiplyByQuantizedMultiplier(acc, mult[c], shift[c]) + out_zp, act_min, act_max)`.
//! The loader bounds `kh·kw·in_c ≤ 32768` and `|bias| ≤ 2³⁰`, so the i32 accumulator cannot overflow.

use super::requant::multiply_by_quantized_multiplier;
use super::{check, requant_lens_ok, window_lens_ok, F32Le, I32Le, KernelError, Window};

/// Parameters of an int8 convolution (borrowed from the model file).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConvI8<'a> {
    pub win: Window,
    pub out_c: usize,
    /// OHWI, `out_c·kh·kw·in_c` values in [−127, 127].
    pub weights: &'a [i8],
    pub bias: I32Le<'a>,
    pub mult: I32Le<'a>,
    pub shift: I32Le<'a>,
    pub in_zp: i32,
    pub out_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// Parameters of an f32 convolution.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConvF32<'a> {
    pub win: Window,
    pub out_c: usize,
    pub weights: F32Le<'a>,
    pub bias: F32Le<'a>,
    pub relu: bool,
}

/// int8 convolution; see the module docs for the formula.
pub fn conv2d_i8(p: &ConvI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    let w = &p.win;
    check(window_lens_ok(
        w,
        p.out_c,
        w.in_c,
        input.len(),
        output.len(),
        p.weights.len(),
    ))?;
    check(requant_lens_ok(p.out_c, p.bias, p.mult, p.shift))?;
    let (ic, kw) = (w.in_c, w.kw);
    for oy in 0..w.out_h {
        let (iy0, ky_s, ky_e) = w.rows(oy);
        for ox in 0..w.out_w {
            let (ix0, kx_s, kx_e) = w.cols(ox);
            let out_px = &mut output[(oy * w.out_w + ox) * p.out_c..][..p.out_c];
            for (oc, o) in out_px.iter_mut().enumerate() {
                let w_oc = &p.weights[oc * w.kh * kw * ic..];
                let mut acc: i32 = 0;
                for ky in ky_s..ky_e {
                    let iy = (iy0 + ky as isize) as usize;
                    let row_x = (iy * w.in_w) as isize + ix0;
                    let xs =
                        &input[((row_x + kx_s as isize) as usize) * ic..][..(kx_e - kx_s) * ic];
                    let ws = &w_oc[(ky * kw + kx_s) * ic..][..(kx_e - kx_s) * ic];
                    acc += dot_i8(xs, ws, p.in_zp);
                }
                acc += p.bias.get(oc);
                let y = multiply_by_quantized_multiplier(acc, p.mult.get(oc), p.shift.get(oc))
                    .saturating_add(p.out_zp);
                *o = y.clamp(p.act_min, p.act_max) as i8;
            }
        }
    }
    Ok(())
}

/// `Σ (x − zp)·w`, written so the compiler vectorises it.
#[inline(always)]
pub(crate) fn dot_i8(xs: &[i8], ws: &[i8], zp: i32) -> i32 {
    xs.iter()
        .zip(ws)
        .map(|(&x, &w)| (x as i32 - zp) * w as i32)
        .sum()
}

/// f32 convolution: `y = bias[c] + Σ x·w`, then `max(y, 0)` if `relu`.
pub fn conv2d_f32(p: &ConvF32, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    let w = &p.win;
    check(window_lens_ok(
        w,
        p.out_c,
        w.in_c,
        input.len(),
        output.len(),
        p.weights.len(),
    ))?;
    check(p.bias.len() == p.out_c)?;
    let (ic, kw) = (w.in_c, w.kw);
    for oy in 0..w.out_h {
        let (iy0, ky_s, ky_e) = w.rows(oy);
        for ox in 0..w.out_w {
            let (ix0, kx_s, kx_e) = w.cols(ox);
            let out_px = &mut output[(oy * w.out_w + ox) * p.out_c..][..p.out_c];
            for (oc, o) in out_px.iter_mut().enumerate() {
                let w_base = oc * w.kh * kw * ic;
                let mut acc = 0.0f32;
                for ky in ky_s..ky_e {
                    let iy = (iy0 + ky as isize) as usize;
                    let row_x = (iy * w.in_w) as isize + ix0;
                    let n = (kx_e - kx_s) * ic;
                    let xs = &input[((row_x + kx_s as isize) as usize) * ic..][..n];
                    let wo = w_base + (ky * kw + kx_s) * ic;
                    acc += dot_f32(xs, p.weights, wo);
                }
                let y = acc + p.bias.get(oc);
                *o = if p.relu { y.max(0.0) } else { y };
            }
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dot_f32(xs: &[f32], w: F32Le, offset: usize) -> f32 {
    let wb = &w.0[offset * 4..][..xs.len() * 4];
    xs.iter()
        .zip(wb.chunks_exact(4))
        .map(|(&x, b)| x * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .sum()
}
