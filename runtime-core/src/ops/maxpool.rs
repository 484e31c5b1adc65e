//! Max pool (TFLite MAX_POOL_2D): the maximum over the window's taps that fall inside the
//! image (padding is ignored, never a candidate). int8 keeps the input scale and zero point, so
//! no requantisation happens; the result is only clamped to the fused activation range.

use super::{check, KernelError, Window};

/// int8 max pool over `win` (channels `win.in_c` are pooled independently).
pub fn maxpool_i8(
    win: &Window,
    act_min: i32,
    act_max: i32,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    pool(
        win,
        input,
        output,
        i8::MIN,
        |a, b| a.max(b),
        |v| (v as i32).clamp(act_min, act_max) as i8,
    )
}

/// f32 max pool over `win`.
pub fn maxpool_f32(win: &Window, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
    pool(win, input, output, f32::NEG_INFINITY, f32::max, |v| v)
}

fn pool<T: Copy>(
    w: &Window,
    input: &[T],
    output: &mut [T],
    lowest: T,
    max: impl Fn(T, T) -> T,
    finish: impl Fn(T) -> T,
) -> Result<(), KernelError> {
    let c = w.in_c;
    check(input.len() == w.in_h * w.in_w * c && output.len() == w.out_h * w.out_w * c)?;
    for oy in 0..w.out_h {
        let (iy0, ky_s, ky_e) = w.rows(oy);
        for ox in 0..w.out_w {
            let (ix0, kx_s, kx_e) = w.cols(ox);
            let out_px = &mut output[(oy * w.out_w + ox) * c..][..c];
            out_px.fill(lowest);
            for ky in ky_s..ky_e {
                let iy = (iy0 + ky as isize) as usize;
                for kx in kx_s..kx_e {
                    let ix = (ix0 + kx as isize) as usize;
                    let in_px = &input[(iy * w.in_w + ix) * c..][..c];
                    for (o, &x) in out_px.iter_mut().zip(in_px) {
                        *o = max(*o, x);
                    }
                }
            }
            for o in out_px.iter_mut() {
                *o = finish(*o);
            }
        }
    }
    Ok(())
}
