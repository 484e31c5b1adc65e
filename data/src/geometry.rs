//! Geometric transforms: RandomResizedCrop parameters, crop + resize, horizontal flip, and the
//! matching landmark maps.
//!
//! Coordinates follow the pixel-centre convention of [`crate::Landmarks`]: pixel `(i, j)`
//! covers `[i, i+1) × [j, j+1)`, so its centre is `i + 0.5`. Resampling is defined in the same
//! continuous coordinates (output pixel centre `x_o + 0.5` samples the crop at `(x_o + 0.5)·w/W_o`),
//! which is what makes the landmark map `x' = (x − j)·W_o/w` exact rather than off by half a pixel.
use rand::Rng as _;

use crate::planar::Planar;
use crate::rng::Rng;
use crate::{Landmarks, FLIP_PERMUTATION};

/// A crop rectangle in integer pixels, named as torchvision's `get_params` returns it:
/// top row `i`, left column `j`, height `h`, width `w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropRect {
    pub i: usize,
    pub j: usize,
    pub h: usize,
    pub w: usize,
}

/// Python's `round` (ties to even), which torchvision's `int(round(...))` uses.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// `RandomResizedCrop.get_params` exactly: 10 attempts with area `U(scale)·H·W` and
/// `exp(U(log ratio))` aspect, `w = round(√(area·r))`, `h = round(√(area/r))`, accepted when
/// `0 < w ≤ W` and `0 < h ≤ H`, position uniform; otherwise a centre crop with the image's
/// aspect ratio clamped to `ratio`. `width`, `height` must be positive.
pub fn rrc_params(
    width: usize,
    height: usize,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut Rng,
) -> CropRect {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0 as f64, scale.1 as f64);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= width && 0 < h && h <= height {
            let i = rng.gen_range(0..=height - h);
            let j = rng.gen_range(0..=width - w);
            return CropRect { i, j, h, w };
        }
    }
    center_fallback(width, height, ratio)
}

/// torchvision's fallback after 10 failed attempts: the largest centred crop whose aspect ratio
/// is the image's clamped to `ratio`.
pub fn center_fallback(width: usize, height: usize, ratio: (f32, f32)) -> CropRect {
    let in_ratio = width as f64 / height as f64;
    let (rmin, rmax) = (ratio.0 as f64, ratio.1 as f64);
    let (w, h) = if in_ratio < rmin {
        (width, py_round(width as f64 / rmin).clamp(1, height))
    } else if in_ratio > rmax {
        (py_round(height as f64 * rmax).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropRect {
        i: (height - h) / 2,
        j: (width - w) / 2,
        h,
        w,
    }
}

/// `torch.empty(1).uniform_(a, b)`: `a + (b − a)·U[0, 1)`; also fine for `a == b`.
pub fn uniform(rng: &mut Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.gen::<f64>()
}

/// The centred square of side `fraction · min(H, W)` (at least one pixel).
pub fn center_square(width: usize, height: usize, fraction: f32) -> CropRect {
    let side = py_round(width.min(height) as f64 * fraction as f64).clamp(1, width.min(height));
    CropRect {
        i: (height - side) / 2,
        j: (width - side) / 2,
        h: side,
        w: side,
    }
}

/// Resampling taps of one axis: output `o` reads `len[o]` inputs from `start[o]` with
/// `weights[o*ksize ..]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    ksize: usize,
}

/// PIL's bilinear ("triangle") filter, antialiased: when shrinking by `scale > 1` the triangle
/// is widened by `scale`, so every input pixel contributes (as PIL's `Image.resize` and
/// torchvision's `antialias=True` do; plain `F.interpolate` bilinear would alias when a large
/// crop is shrunk to 32 px). When enlarging it is exactly torch's `align_corners=False` bilinear
/// with edge clamping. Input positions are relative to the crop start.
fn taps(in_len: usize, out_len: usize) -> Taps {
    let scale = in_len as f64 / out_len as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1, widened
    let ksize = support.ceil() as usize * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(out_len),
        len: Vec::with_capacity(out_len),
        weights: vec![0.0; out_len * ksize],
        ksize,
    };
    for o in 0..out_len {
        let center = (o as f64 + 0.5) * scale;
        // PIL truncates towards zero here; `max(0)` makes that a floor.
        let xmin = ((center - support + 0.5).floor().max(0.0) as usize).min(in_len - 1);
        let xmax = ((center + support + 0.5).floor() as usize).clamp(xmin + 1, in_len);
        let n = (xmax - xmin).min(ksize);
        let tri = |k: usize| {
            let x = ((xmin + k) as f64 - center + 0.5) / filterscale;
            (1.0 - x.abs()).max(0.0)
        };
        let sum: f64 = (0..n).map(tri).sum();
        let w = &mut t.weights[o * ksize..o * ksize + n];
        if sum > 0.0 {
            for (k, wk) in w.iter_mut().enumerate() {
                *wk = (tri(k) / sum) as f32;
            }
        } else {
            // Cannot happen for a centre inside the input; kept as a guard: nearest pixel.
            w[0] = 1.0;
        }
        t.start.push(xmin);
        t.len.push(n);
    }
    t
}

/// Crop `rect` from an RGB u8 image and resize it to `out_w × out_h`, giving floats in [0, 1].
/// Separable: a horizontal pass over the crop's rows, then a vertical pass.
pub fn crop_resize(img: &image::RgbImage, rect: CropRect, out_w: usize, out_h: usize) -> Planar {
    let src_w = img.width() as usize;
    let raw = img.as_raw();
    let tx = taps(rect.w, out_w);
    let ty = taps(rect.h, out_h);
    // Horizontal pass: rect.h rows × out_w, per channel (values 0..=255).
    let mut tmp = vec![0.0f32; 3 * rect.h * out_w];
    let plane_tmp = rect.h * out_w;
    for y in 0..rect.h {
        let row =
            &raw[((rect.i + y) * src_w + rect.j) * 3..((rect.i + y) * src_w + rect.j + rect.w) * 3];
        for o in 0..out_w {
            let (s, n) = (tx.start[o], tx.len[o]);
            let w = &tx.weights[o * tx.ksize..o * tx.ksize + n];
            let (mut r, mut g, mut b) = (0.0f32, 0.0f32, 0.0f32);
            for (k, &wk) in w.iter().enumerate() {
                let p = &row[(s + k) * 3..(s + k) * 3 + 3];
                r += wk * p[0] as f32;
                g += wk * p[1] as f32;
                b += wk * p[2] as f32;
            }
            tmp[y * out_w + o] = r;
            tmp[plane_tmp + y * out_w + o] = g;
            tmp[2 * plane_tmp + y * out_w + o] = b;
        }
    }
    // Vertical pass into the output planes, scaled to [0, 1].
    let mut out = Planar::zeros(out_w, out_h);
    let plane = out_w * out_h;
    for c in 0..3 {
        let src = &tmp[c * plane_tmp..(c + 1) * plane_tmp];
        let dst = &mut out.data[c * plane..(c + 1) * plane];
        for o in 0..out_h {
            let (s, n) = (ty.start[o], ty.len[o]);
            let w = &ty.weights[o * ty.ksize..o * ty.ksize + n];
            let drow = &mut dst[o * out_w..(o + 1) * out_w];
            for (k, &wk) in w.iter().enumerate() {
                let wk = wk * (1.0 / 255.0);
                let srow = &src[(s + k) * out_w..(s + k + 1) * out_w];
                for (d, &v) in drow.iter_mut().zip(srow) {
                    *d += wk * v;
                }
            }
            // Rounding in the weights can push a white pixel a hair above 1.
            drow.iter_mut().for_each(|d| *d = d.clamp(0.0, 1.0));
        }
    }
    out
}

/// Where landmarks go under crop + resize: `x' = (x − j)·W_o/w`, `y' = (y − i)·H_o/h`.
pub fn crop_resize_landmarks(
    lm: &Landmarks,
    rect: CropRect,
    out_w: usize,
    out_h: usize,
) -> Landmarks {
    let sx = out_w as f32 / rect.w as f32;
    let sy = out_h as f32 / rect.h as f32;
    lm.map(|[x, y]| [(x - rect.j as f32) * sx, (y - rect.i as f32) * sy])
}

/// Mirror an image left-right in place.
pub fn hflip(img: &mut Planar) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// Landmarks under a horizontal flip of an image `width` wide: `x' = W − x` (pixel centres map to
/// pixel centres), then left and right points swap names via [`FLIP_PERMUTATION`].
pub fn hflip_landmarks(lm: &Landmarks, width: usize) -> Landmarks {
    let w = width as f32;
    std::array::from_fn(|k| {
        let [x, y] = lm[FLIP_PERMUTATION[k]];
        [w - x, y]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_round_is_ties_to_even() {
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
        assert_eq!(py_round(3.4999), 3);
    }

    #[test]
    fn fallback_clamps_ratio() {
        // Very wide image: height kept, width = round(H·4/3).
        assert_eq!(
            center_fallback(100, 10, (0.75, 4.0 / 3.0)),
            CropRect {
                i: 0,
                j: 43,
                h: 10,
                w: 13
            }
        );
        // Very tall image: width kept, height = round(W/(3/4)).
        assert_eq!(
            center_fallback(9, 100, (0.75, 4.0 / 3.0)),
            CropRect {
                i: 44,
                j: 0,
                h: 12,
                w: 9
            }
        );
        // Ratio inside the range: whole image.
        assert_eq!(
            center_fallback(40, 36, (0.75, 4.0 / 3.0)),
            CropRect {
                i: 0,
                j: 0,
                h: 36,
                w: 40
            }
        );
    }

    #[test]
    fn taps_match_hand_computed_bilinear() {
        // Upsampling 2 → 4: torch bilinear (align_corners=False) gives source positions
        // -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped to 1 → pixel 1 only).
        let t = taps(2, 4);
        let dense = |o: usize| {
            let mut d = [0.0f32; 2];
            for k in 0..t.len[o] {
                d[t.start[o] + k] += t.weights[o * t.ksize + k];
            }
            d
        };
        let expect = [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]];
        for (o, e) in expect.iter().enumerate() {
            let d = dense(o);
            assert!(
                (d[0] - e[0]).abs() < 1e-6 && (d[1] - e[1]).abs() < 1e-6,
                "{o}: {d:?}"
            );
        }
        // Downsampling 4 → 2 with antialias: centre 1.0, triangle of half-width 2 over pixel
        // centres 0.5, 1.5, 2.5 → weights 0.75, 0.75, 0.25 (pixel 2 at distance 1.5) normalised.
        let t = taps(4, 2);
        let w: Vec<f32> = (0..t.len[0]).map(|k| t.weights[k]).collect();
        let expect = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75];
        assert_eq!(t.start[0], 0);
        assert_eq!(w.len(), 3);
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }
}
