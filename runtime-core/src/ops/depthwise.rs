//! Depthwise 2-D convolution (TFLite DEPTHWISE_CONV_2D), NHWC activations, any kernel, stride
//! and padding, depth multiplier `dm ≥ 1`, dilation 1, fused ReLU.
//!
//! Output channel `oc = ic·dm + m` (`m < dm`) sees only input channel `ic`. Weights are TFLite's
//! layout `[1, KH, KW, IC·dm]`: the tap `(ky, kx)` of output channel `oc` is
//! `weights[(ky·KW + kx)·OC + oc]`.
//!
//! int8 (TFLite `reference_integer_ops::DepthwiseConvPerChannel`):
//! `acc = bias[oc] + Σ_(ky,kx in image) (x[iy, ix, ic] − in_zp)·w[ky, kx, oc]` (padding holds the
//! input zero point, i.e. contributes nothing), then
//! `y = clamp(MultiplyByQuantizedMultiplier(acc, mult[oc], shift[oc]) + out_zp, act_min, act_max)`.
//! The loader bounds `kh·kw ≤ 32768` and `|bias| ≤ 2³⁰`, so the i32 accumulator cannot overflow.
//!
//! The kernel walks each output pixel's in-image taps once and accumulates a block of output
//! channels on the stack (`BLOCK` i32s: no heap, a fixed few hundred bytes of stack), so the
//! input row of a tap is read contiguously; with `dm = 1` (the MobileNet case) the block loop is
//! a plain elementwise multiply-add the compiler vectorises.

use super::requant::multiply_by_quantized_multiplier;
use super::{check, requant_lens_ok, window_lens_ok, F32Le, I32Le, KernelError, Window};

/// Output channels accumulated at once (the stack block).
const BLOCK: usize = 64;

/// Parameters of an int8 depthwise convolution (borrowed from the model file). `win.in_c` is
/// the input channel count; the output has `win.in_c · depth_mult` channels.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DwConvI8<'a> {
    pub win: Window,
    pub depth_mult: usize,
    /// `[1, KH, KW, OC]`, values in [−127, 127].
    pub weights: &'a [i8],
    pub bias: I32Le<'a>,
    pub mult: I32Le<'a>,
    pub shift: I32Le<'a>,
    pub in_zp: i32,
    pub out_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

impl DwConvI8<'_> {
    /// Output channels `in_c · depth_mult`.
    pub fn out_c(&self) -> usize {
        self.win.in_c * self.depth_mult
    }
}

/// Parameters of an f32 depthwise convolution.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DwConvF32<'a> {
    pub win: Window,
    pub depth_mult: usize,
    /// `[1, KH, KW, OC]`.
    pub weights: F32Le<'a>,
    pub bias: F32Le<'a>,
    pub relu: bool,
}

fn lens_ok(w: &Window, dm: usize, input: usize, output: usize, weights: usize) -> bool {
    dm >= 1 && window_lens_ok(w, w.in_c * dm, 1, input, output, weights)
}

/// int8 depthwise convolution; see the module docs for the formula.
pub fn depthwise_i8(p: &DwConvI8, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    let w = &p.win;
    let dm = p.depth_mult;
    check(lens_ok(w, dm, input.len(), output.len(), p.weights.len()))?;
    let oc_n = p.out_c();
    check(requant_lens_ok(oc_n, p.bias, p.mult, p.shift))?;
    let ic_n = w.in_c;
    let mut acc = [0i32; BLOCK];
    for oy in 0..w.out_h {
        let (iy0, ky_s, ky_e) = w.rows(oy);
        for ox in 0..w.out_w {
            let (ix0, kx_s, kx_e) = w.cols(ox);
            let out_px = &mut output[(oy * w.out_w + ox) * oc_n..][..oc_n];
            let mut c0 = 0;
            while c0 < oc_n {
                let n = BLOCK.min(oc_n - c0);
                let acc = &mut acc[..n];
                acc.fill(0);
                for ky in ky_s..ky_e {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx_s..kx_e {
                        let ix = (ix0 + kx as isize) as usize;
                        let x = &input[(iy * w.in_w + ix) * ic_n..][..ic_n];
                        let wt = &p.weights[(ky * w.kw + kx) * oc_n + c0..][..n];
                        if dm == 1 {
                            for ((a, &xv), &wv) in acc.iter_mut().zip(&x[c0..c0 + n]).zip(wt) {
                                *a += (xv as i32 - p.in_zp) * wv as i32;
                            }
                        } else {
                            for (j, (a, &wv)) in acc.iter_mut().zip(wt).enumerate() {
                                *a += (x[(c0 + j) / dm] as i32 - p.in_zp) * wv as i32;
                            }
                        }
                    }
                }
                for (j, (o, &a)) in out_px[c0..c0 + n].iter_mut().zip(acc.iter()).enumerate() {
                    let oc = c0 + j;
                    let y = multiply_by_quantized_multiplier(
                        a + p.bias.get(oc),
                        p.mult.get(oc),
                        p.shift.get(oc),
                    )
                    .saturating_add(p.out_zp);
                    *o = y.clamp(p.act_min, p.act_max) as i8;
                }
                c0 += n;
            }
        }
    }
    Ok(())
}

/// f32 depthwise convolution: `y = bias[oc] + Σ x[ic]·w[oc]`, then `max(y, 0)` if `relu`.
pub fn depthwise_f32(p: &DwConvF32, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    let w = &p.win;
    let dm = p.depth_mult;
    check(lens_ok(w, dm, input.len(), output.len(), p.weights.len()))?;
    let oc_n = w.in_c * dm;
    check(p.bias.len() == oc_n)?;
    for oy in 0..w.out_h {
        let (iy0, ky_s, ky_e) = w.rows(oy);
        for ox in 0..w.out_w {
            let (ix0, kx_s, kx_e) = w.cols(ox);
            let out_px = &mut output[(oy * w.out_w + ox) * oc_n..][..oc_n];
            for (oc, o) in out_px.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for ky in ky_s..ky_e {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx_s..kx_e {
                        let ix = (ix0 + kx as isize) as usize;
                        let xv = input[(iy * w.in_w + ix) * w.in_c + oc / dm];
                        acc += xv * p.weights.get((ky * w.kw + kx) * oc_n + oc);
                    }
                }
                let y = acc + p.bias.get(oc);
                *o = if p.relu { y.max(0.0) } else { y };
            }
        }
    }
    Ok(())
}
