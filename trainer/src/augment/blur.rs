//! Gaussian blur: separable kernel, reflect padding (torchvision's `gaussian_blur` on tensors).
//!
//! MoCo v2 blurs with PIL's `GaussianBlur(radius=σ)`, which PIL approximates by repeated box
//! blurs; we compute the true Gaussian. The kernel has radius `⌈3σ⌉` (torchvision needs an explicit
//! size; 3σ keeps 99.7 % of the mass), taps `exp(−x²/2σ²)` at integer offsets, normalised.
use rand::Rng as _;

use super::config::BlurCfg;
use super::geometry::uniform;
use super::planar::Planar;
use crate::rng::Rng;

/// Normalised 1-D Gaussian taps for offsets `−r..=r`, `r = max(1, ⌈3σ⌉)` (with a 1e-6 slack so
/// that an f32 σ of 1/3 gives r = 1, not 2).
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = ((3.0 * sigma as f64 - 1e-6).ceil() as usize).max(1);
    let raw: Vec<f64> = (0..=2 * r)
        .map(|k| {
            let x = k as f64 - r as f64;
            (-0.5 * (x / sigma as f64).powi(2)).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / sum) as f32).collect()
}

/// Index `i` reflected into `0..n` without repeating the edge (`torch` "reflect" padding),
/// repeated as often as needed so kernels wider than the image are still defined.
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// Blur every channel with a Gaussian of standard deviation `sigma` pixels.
///
/// Separable, both passes over whole rows so they vectorise: the reflected source indices are
/// tabulated once per image, each row is copied once into a padded row, and every output pixel
/// sums `k[t]·src[t]` for `t = 0..` in tap order starting from 0.0, the same additions in the same
/// order as the direct per-pixel loop, so the result is bit-identical to it (the test
/// `augment_props::blur_matches_the_direct_formula_bit_for_bit` checks this).
pub fn gaussian_blur(img: &mut Planar, sigma: f32) {
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    let (w, h) = (img.width, img.height);
    let n = w * h;
    if n == 0 {
        return;
    }
    // Source column of padded position p (= output x + tap t), and source row of output y, tap t.
    let xs: Vec<usize> = (0..w + k.len() - 1)
        .map(|p| reflect(p as isize - r, w))
        .collect();
    let ys: Vec<usize> = (0..h + k.len() - 1)
        .map(|p| reflect(p as isize - r, h))
        .collect();
    let mut padded = vec![0.0f32; xs.len()];
    let mut tmp = vec![0.0f32; n];
    for c in 0..3 {
        let plane = &mut img.data[c * n..(c + 1) * n];
        for (row, trow) in plane.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
            for (p, &sx) in padded.iter_mut().zip(&xs) {
                *p = row[sx];
            }
            trow.fill(0.0);
            for (t, &kt) in k.iter().enumerate() {
                for (o, &v) in trow.iter_mut().zip(&padded[t..t + w]) {
                    *o += kt * v;
                }
            }
        }
        for (y, out) in plane.chunks_exact_mut(w).enumerate() {
            out.fill(0.0);
            for (t, &kt) in k.iter().enumerate() {
                let sy = ys[y + t];
                for (o, &v) in out.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                    *o += kt * v;
                }
            }
        }
    }
}

/// The σ actually used at `out_size`: the configured range, rescaled from its reference size.
pub fn sigma_range(cfg: &BlurCfg, out_size: usize) -> (f32, f32) {
    let s = cfg
        .reference_size
        .map_or(1.0, |r| out_size as f32 / r as f32);
    (cfg.sigma.0 * s, cfg.sigma.1 * s)
}

/// `RandomApply([GaussianBlur(σ ~ U(range))], p)`.
pub fn random_blur(img: &mut Planar, cfg: &BlurCfg, out_size: usize, rng: &mut Rng) {
    if rng.gen::<f32>() < cfg.p {
        let (lo, hi) = sigma_range(cfg, out_size);
        gaussian_blur(img, uniform(rng, lo as f64, hi as f64) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch_padding() {
        // torch reflect pad of [a b c d] by 2: c b | a b c d | c b.
        let got: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect(-7, 1), 0);
    }

    #[test]
    fn kernel_hand_computed() {
        // σ = 1/3 → r = 1, taps ∝ [e^{-4.5}, 1, e^{-4.5}].
        let k = gaussian_kernel(1.0 / 3.0);
        let e = (-4.5f64).exp();
        let expect = [
            e / (1.0 + 2.0 * e),
            1.0 / (1.0 + 2.0 * e),
            e / (1.0 + 2.0 * e),
        ];
        assert_eq!(k.len(), 3);
        for (a, b) in k.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-7);
        }
    }

    #[test]
    fn constant_image_is_preserved() {
        let mut p = Planar {
            width: 5,
            height: 7,
            data: vec![0.37; 3 * 35],
        };
        gaussian_blur(&mut p, 1.7);
        assert!(p.data.iter().all(|v| (v - 0.37).abs() < 1e-6));
    }

    #[test]
    fn interior_delta_spreads_as_the_outer_product_and_keeps_its_sum() {
        let (w, h) = (21, 21);
        let mut p = Planar::zeros(w, h);
        p.data[10 * w + 10] = 1.0;
        let sigma = 1.2;
        gaussian_blur(&mut p, sigma);
        let k = gaussian_kernel(sigma);
        let r = k.len() / 2;
        let sum: f32 = p.data[..w * h].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        for dy in 0..k.len() {
            for dx in 0..k.len() {
                let v = p.get(0, 10 + dx - r, 10 + dy - r);
                assert!((v - k[dx] * k[dy]).abs() < 1e-6);
            }
        }
        assert!(
            p.data[w * h..].iter().all(|&v| v == 0.0),
            "other channels untouched"
        );
    }

    #[test]
    fn sigma_scales_with_output_size() {
        let cfg = BlurCfg {
            sigma: (0.1, 2.0),
            p: 0.5,
            reference_size: Some(224),
        };
        let (lo, hi) = sigma_range(&cfg, 112);
        assert!((lo - 0.05).abs() < 1e-7 && (hi - 1.0).abs() < 1e-7);
        let cfg = BlurCfg {
            reference_size: None,
            ..cfg
        };
        assert_eq!(sigma_range(&cfg, 112), (0.1, 2.0));
    }
}
