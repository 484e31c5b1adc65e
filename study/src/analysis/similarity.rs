//! How close a reconstruction is to its image, by two measures that need no downloaded weights
//! (the paper's Figure 6 uses LPIPS with an ImageNet-trained SqueezeNet, which cannot be fetched
//! here):
//!
//! * [`ssim`]: SSIM (Wang et al. 2004; 11×11 Gaussian window, σ 1.5, K₁ 0.01, K₂ 0.03, pixel
//!   range 1) per RGB channel, averaged. Besides the mean it reports the *worst quarter*: the mean
//!   of the lowest 25% of the local SSIM map, which is low when some region of the image was lost
//!   even if the rest is good — the paper's "supervised models lose information in many regions".
//! * [`RandomFeatureDistance`]: an LPIPS-style distance (Zhang et al. 2018, uniform layer weights)
//!   under a *fixed, randomly initialised* ResNet-18 that no method trained: every stage's map is
//!   unit-normalised along the channels at each position, and the squared differences are summed
//!   over channels, averaged over positions, then over the four stages. Independent of every
//!   backbone being compared, so it favours none of them.
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};

use trainer::model::{Arch, BnMode, ResNet, ResNetConfig};

/// SSIM of two images and the worst quarter of its local map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ssim {
    /// Mean of the local SSIM map (1 = identical).
    pub mean: f64,
    /// Mean of the lowest 25% of the local map (at least one window).
    pub worst_quarter: f64,
}

/// Standard SSIM constants for pixels in [0, 1].
const K1: f64 = 0.01;
const K2: f64 = 0.03;
const SIGMA: f64 = 1.5;
const WINDOW: usize = 11;

/// Normalised 1-D Gaussian of odd length `n`.
fn gaussian(n: usize) -> Vec<f64> {
    let c = (n / 2) as f64;
    let g: Vec<f64> = (0..n)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.into_iter().map(|v| v / s).collect()
}

/// SSIM of `a` and `b`, planar RGB (`[3, h, w]`, row-major) with values in [0, 1]. The window
/// is 11 px, or the largest odd size that fits a smaller image; only windows fully inside the
/// image are scored ("valid"), as in Wang et al.'s reference code.
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize) -> Result<Ssim> {
    if a.len() != 3 * h * w || b.len() != a.len() {
        bail!(
            "ssim: expected two [3, {h}, {w}] images, got {} and {} values",
            a.len(),
            b.len()
        );
    }
    let mut n = WINDOW.min(h).min(w);
    if n.is_multiple_of(2) {
        n -= 1;
    }
    if n == 0 {
        bail!("ssim: empty image");
    }
    let g = gaussian(n);
    let (c1, c2) = (K1 * K1, K2 * K2);
    let (oh, ow) = (h - n + 1, w - n + 1);
    let mut map = vec![0f64; oh * ow];
    for c in 0..3 {
        let (pa, pb) = (
            &a[c * h * w..(c + 1) * h * w],
            &b[c * h * w..(c + 1) * h * w],
        );
        for y in 0..oh {
            for x in 0..ow {
                let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for (dy, gy) in g.iter().enumerate() {
                    for (dx, gx) in g.iter().enumerate() {
                        let wgt = gy * gx;
                        let i = (y + dy) * w + x + dx;
                        let (va, vb) = (pa[i] as f64, pb[i] as f64);
                        ma += wgt * va;
                        mb += wgt * vb;
                        saa += wgt * va * va;
                        sbb += wgt * vb * vb;
                        sab += wgt * va * vb;
                    }
                }
                let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
                let s = ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                map[y * ow + x] += s / 3.0;
            }
        }
    }
    let mean = map.iter().sum::<f64>() / map.len() as f64;
    map.sort_by(f64::total_cmp);
    let q = (map.len() / 4).max(1);
    let worst_quarter = map[..q].iter().sum::<f64>() / q as f64;
    Ok(Ssim {
        mean,
        worst_quarter,
    })
}

/// Seed of the fixed random network (its name: "RANDFEAT").
pub const RANDOM_NET_SEED: u64 = 0x5241_4e44_4645_4154;

/// LPIPS-style distance under a fixed random ResNet-18 (width 0.25, small stem).
pub struct RandomFeatureDistance {
    net: ResNet,
}

impl RandomFeatureDistance {
    pub fn new(device: &Device) -> Result<Self> {
        let cfg = ResNetConfig {
            arch: Arch::Resnet18,
            width: 0.25,
            small_stem: true,
            num_classes: None,
        };
        Ok(Self {
            net: ResNet::new(&cfg, RANDOM_NET_SEED, device)?,
        })
    }

    /// Distance between two normalised images `[1, 3, H, W]` (0 = identical features).
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> Result<f64> {
        let (fa, fb) = (
            self.net.forward_stage_maps(a, BnMode::Eval)?,
            self.net.forward_stage_maps(b, BnMode::Eval)?,
        );
        let unit = |t: &Tensor| -> Result<Tensor> {
            let n = (t.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
            Ok(t.broadcast_div(&n)?)
        };
        let mut total = 0.0;
        for (x, y) in fa.iter().zip(&fb) {
            let d = (unit(x)? - unit(y)?)?.sqr()?.sum(1)?;
            total += d.flatten_all()?.mean(D::Minus1)?.to_scalar::<f32>()? as f64;
        }
        Ok(total / fa.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Vec<f32> {
        (0..3 * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn identical_images_score_one() {
        let a = ramp(16, 16);
        let s = ssim(&a, &a, 16, 16).unwrap();
        assert!((s.mean - 1.0).abs() < 1e-12 && (s.worst_quarter - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_constant_offset_matches_the_closed_form() {
        // b = a + 0.1 in every pixel: variances and covariance are unchanged, so the structure
        // and contrast terms are exactly 1 and each window's SSIM is the luminance term
        // (2·μa·μb + C1) / (μa² + μb² + C1); on a constant image every window is the same.
        let (h, w) = (13, 12);
        let a = vec![0.3f32; 3 * h * w];
        let b: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
        let (ma, mb) = (0.3f64, 0.4f64);
        let want = (2.0 * ma * mb + K1 * K1) / (ma * ma + mb * mb + K1 * K1);
        let s = ssim(&a, &b, h, w).unwrap();
        assert!((s.mean - want).abs() < 1e-6, "{} vs {want}", s.mean);
        assert!((s.worst_quarter - want).abs() < 1e-6);
    }

    #[test]
    fn a_lost_region_shows_in_the_worst_quarter() {
        // Destroy the left third: the mean drops somewhat, the worst quarter drops a lot more.
        let (h, w) = (24, 24);
        let a = ramp(h, w);
        let mut b = a.clone();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w / 3 {
                    b[c * h * w + y * w + x] = 0.5;
                }
            }
        }
        let s = ssim(&a, &b, h, w).unwrap();
        assert!(s.mean < 1.0 && s.worst_quarter < s.mean - 0.2, "{s:?}");
        // Symmetric.
        let t = ssim(&b, &a, h, w).unwrap();
        assert!((s.mean - t.mean).abs() < 1e-12);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(ssim(&[0.0; 12], &[0.0; 12], 2, 3).is_err());
    }

    #[test]
    fn random_feature_distance_is_zero_on_itself_and_grows_with_noise() {
        let dev = Device::Cpu;
        let d = RandomFeatureDistance::new(&dev).unwrap();
        let a = Tensor::randn(0f32, 1.0, (1, 3, 16, 16), &dev).unwrap();
        let small = (&a + Tensor::randn(0f32, 0.05, (1, 3, 16, 16), &dev).unwrap()).unwrap();
        let large = (&a + Tensor::randn(0f32, 1.0, (1, 3, 16, 16), &dev).unwrap()).unwrap();
        let d0 = d.distance(&a, &a).unwrap();
        let (ds, dl) = (
            d.distance(&a, &small).unwrap(),
            d.distance(&a, &large).unwrap(),
        );
        assert!(d0.abs() < 1e-9, "{d0}");
        assert!(0.0 < ds && ds < dl, "{ds} {dl}");
    }
}
