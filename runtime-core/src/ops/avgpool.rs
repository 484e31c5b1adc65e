//! Average pool (TFLite AVERAGE_POOL_2D), NHWC.
//!
//! int8, as TFLite Micro's reference kernel (`reference_integer_ops::AveragePool`): the output
//! keeps the input's scale and zero point, so the average is taken on the stored int8 values
//! themselves. Over the `n` taps of the window that fall inside the image (padding is never
//! counted), `acc = Σ x`, then `y = acc > 0 ? (acc + n/2)/n : (acc − n/2)/n` with C's truncating
//! division (round half away from zero), clamped to the fused activation range. No
//! requantisation, no multiplier.
//!
//! The model loader guarantees every window has at least one in-image tap (padding smaller
//! than the window, see `Window`); the kernel still refuses `n = 0` rather than divide by it.

use super::{check, KernelError, Window};

/// Channels whose sums [`avgpool_i8`] keeps at once (a 256-byte stack array).
const POOL_CHANNELS: usize = 64;

/// int8 average pool over `win` (channels `win.in_c` pooled independently), clamped to
/// `[act_min, act_max]` (`[-128, 127]`, or `[max(zp, -128), 127]` with a fused ReLU).
pub fn avgpool_i8(
    win: &Window,
    act_min: i32,
    act_max: i32,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    let c = win.in_c;
    check(input.len() == win.in_h * win.in_w * c && output.len() == win.out_h * win.out_w * c)?;
    for oy in 0..win.out_h {
        let (iy0, ky_s, ky_e) = win.rows(oy);
        for ox in 0..win.out_w {
            let (ix0, kx_s, kx_e) = win.cols(ox);
            let n = ((ky_e - ky_s) * (kx_e - kx_s)) as i32;
            check(n > 0)?;
            let out_px = &mut output[(oy * win.out_w + ox) * c..][..c];
            // Channels in runs of `POOL_CHANNELS`, each tap adding a contiguous run of the
            // input to the sums (vectorised; a global pool is one pass over the input), where
            // a loop per channel would stride through it `c` bytes at a time.
            for c0 in (0..c).step_by(POOL_CHANNELS) {
                let cn = (c - c0).min(POOL_CHANNELS);
                let mut acc = [0i32; POOL_CHANNELS];
                for ky in ky_s..ky_e {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx_s..kx_e {
                        let ix = (ix0 + kx as isize) as usize;
                        let src = &input[(iy * win.in_w + ix) * c + c0..][..cn];
                        for (a, &x) in acc[..cn].iter_mut().zip(src) {
                            *a += x as i32;
                        }
                    }
                }
                for (o, &acc) in out_px[c0..c0 + cn].iter_mut().zip(&acc[..cn]) {
                    // Truncating division after adding half the count: half away from zero.
                    let avg = if acc > 0 {
                        (acc + n / 2) / n
                    } else {
                        (acc - n / 2) / n
                    };
                    *o = avg.clamp(act_min, act_max) as i8;
                }
            }
        }
    }
    Ok(())
}

/// f32 average pool over `win` (the mean of the in-image taps), then `max(0, ·)` if `relu`.
pub fn avgpool_f32(
    win: &Window,
    relu: bool,
    input: &[f32],
    output: &mut [f32],
) -> Result<(), KernelError> {
    let c = win.in_c;
    check(input.len() == win.in_h * win.in_w * c && output.len() == win.out_h * win.out_w * c)?;
    for oy in 0..win.out_h {
        let (iy0, ky_s, ky_e) = win.rows(oy);
        for ox in 0..win.out_w {
            let (ix0, kx_s, kx_e) = win.cols(ox);
            let n = (ky_e - ky_s) * (kx_e - kx_s);
            check(n > 0)?;
            let out_px = &mut output[(oy * win.out_w + ox) * c..][..c];
            out_px.fill(0.0);
            for ky in ky_s..ky_e {
                let iy = (iy0 + ky as isize) as usize;
                for kx in kx_s..kx_e {
                    let ix = (ix0 + kx as isize) as usize;
                    for (o, &x) in out_px
                        .iter_mut()
                        .zip(&input[(iy * win.in_w + ix) * c..][..c])
                    {
                        *o += x;
                    }
                }
            }
            for o in out_px.iter_mut() {
                *o /= n as f32;
                if relu {
                    *o = o.max(0.0);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(in_h: usize, in_w: usize, k: usize, stride: usize, pad: usize) -> Window {
        let out = |n: usize| Window::out_dim(n, k, stride, pad, pad).unwrap();
        Window {
            in_h,
            in_w,
            in_c: 1,
            out_h: out(in_h),
            out_w: out(in_w),
            kh: k,
            kw: k,
            stride_h: stride,
            stride_w: stride,
            pad_top: pad,
            pad_left: pad,
        }
    }

    #[test]
    fn rounds_half_away_from_zero() {
        // 1×2 windows over a 1×2 input: sums 1+2 = 3 → 3/2 = 1.5 → 2; −1−2 → −1.5 → −2.
        let w = Window {
            in_h: 1,
            in_w: 2,
            in_c: 2,
            out_h: 1,
            out_w: 1,
            kh: 1,
            kw: 2,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
        };
        let mut y = [0i8; 2];
        avgpool_i8(&w, -128, 127, &[1, -1, 2, -2], &mut y).unwrap();
        assert_eq!(y, [2, -2]);
        // 1 + 1 + 2 = 4 over 3 → 1.33 → 1 (a 1×3 window): not a tie, the nearest.
        let w3 = Window {
            in_w: 3,
            kw: 3,
            in_c: 1,
            ..w
        };
        let mut y = [0i8; 1];
        avgpool_i8(&w3, -128, 127, &[1, 1, 2], &mut y).unwrap();
        assert_eq!(y, [1]);
        avgpool_i8(&w3, -128, 127, &[-1, -1, -2], &mut y).unwrap();
        assert_eq!(y, [-1]);
    }

    #[test]
    fn padding_is_not_counted() {
        // 2×2 input, 3×3 window, stride 1, pad 1: output 2×2, each window sees all 4 pixels
        // (the other 5 taps are padding and neither add nor count): the mean of 10, 20, 30, 41
        // = 101/4 = 25.25 → 25.
        let w = win(2, 2, 3, 1, 1);
        assert_eq!((w.out_h, w.out_w), (2, 2));
        let mut y = [0i8; 4];
        avgpool_i8(&w, -128, 127, &[10, 20, 30, 41], &mut y).unwrap();
        assert_eq!(y, [25; 4]);
        // 3×3 input, 2×2 window, stride 2, pad 0 and 1 extra bottom/right (TFLite SAME):
        // windows of 4, 2, 2 and 1 taps.
        let w = Window {
            out_h: 2,
            out_w: 2,
            ..win(3, 3, 2, 2, 0)
        };
        let x = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut y = [0i8; 4];
        avgpool_i8(&w, -128, 127, &x, &mut y).unwrap();
        // (1+2+4+5)/4 = 3; (3+6)/2 = 4.5 → 5; (7+8)/2 = 7.5 → 8; 9/1 = 9.
        assert_eq!(y, [3, 5, 8, 9]);
    }

    #[test]
    fn fused_relu_clamps_at_the_range() {
        let w = win(1, 2, 1, 1, 0);
        let mut y = [0i8; 2];
        avgpool_i8(&w, -5, 127, &[-100, 7], &mut y).unwrap();
        assert_eq!(y, [-5, 7]);
    }

    /// The channel-run loop against the formula written per channel (windows cut by padding,
    /// strides, channel counts on both sides of a run, both activation ranges).
    #[test]
    fn matches_the_per_channel_formula() {
        let mut rng = crate::heads::rng::SplitMix64::new(7);
        for case in 0..200 {
            let k = 1 + (rng.next_u64() % 4) as usize;
            let stride = 1 + (rng.next_u64() % 3) as usize;
            let pad = (rng.next_u64() % k as u64) as usize;
            let in_h = 1 + (rng.next_u64() % 6) as usize;
            let in_w = 1 + (rng.next_u64() % 6) as usize;
            let c = [1, 3, 16, 63, 64, 65, 130][case % 7];
            if Window::out_dim(in_h, k, stride, pad, pad).is_none()
                || Window::out_dim(in_w, k, stride, pad, pad).is_none()
            {
                continue;
            }
            let w = Window {
                in_c: c,
                ..win(in_h, in_w, k, stride, pad)
            };
            let (out_h, out_w) = (w.out_h, w.out_w);
            let x: alloc::vec::Vec<i8> =
                (0..in_h * in_w * c).map(|_| rng.next_u64() as i8).collect();
            let act_min = if case % 2 == 0 { -128 } else { -20 };
            let mut y = alloc::vec![0i8; out_h * out_w * c];
            avgpool_i8(&w, act_min, 127, &x, &mut y).unwrap();
            for oy in 0..out_h {
                let (iy0, ky_s, ky_e) = w.rows(oy);
                for ox in 0..out_w {
                    let (ix0, kx_s, kx_e) = w.cols(ox);
                    let n = ((ky_e - ky_s) * (kx_e - kx_s)) as i32;
                    for ch in 0..c {
                        let mut acc = 0i32;
                        for ky in ky_s..ky_e {
                            for kx in kx_s..kx_e {
                                let iy = (iy0 + ky as isize) as usize;
                                let ix = (ix0 + kx as isize) as usize;
                                acc += x[(iy * in_w + ix) * c + ch] as i32;
                            }
                        }
                        let avg = if acc > 0 {
                            (acc + n / 2) / n
                        } else {
                            (acc - n / 2) / n
                        };
                        let want = avg.clamp(act_min, 127) as i8;
                        assert_eq!(y[(oy * out_w + ox) * c + ch], want, "case {case} {w:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_an_error() {
        let w = win(2, 2, 2, 2, 0);
        let mut y = [0i8; 2];
        assert_eq!(avgpool_i8(&w, -128, 127, &[0; 4], &mut y), Err(KernelError));
    }

    #[test]
    fn f32_is_the_mean_of_in_image_taps() {
        let w = win(2, 2, 3, 1, 1);
        let mut y = [0f32; 4];
        avgpool_f32(&w, false, &[1.0, 2.0, 3.0, -10.0], &mut y).unwrap();
        assert_eq!(y, [-1.0; 4]);
        avgpool_f32(&w, true, &[1.0, 2.0, 3.0, -10.0], &mut y).unwrap();
        assert_eq!(y, [0.0; 4]);
    }
}
