//! Photometric transforms on [0, 1] float images, following
//! `torchvision.transforms.functional_tensor`: brightness, contrast and saturation are blends
//! `clamp(f·img + (1−f)·other, 0, 1)` with black, the grey image's mean and the grey image; hue is
//! an RGB→HSV shift→RGB. Grey uses ITU-R 601-2 luma (PIL's 0.299, 0.587, 0.114; torchvision's
//! tensor path uses 0.2989 for red, a difference below 1e-4 of a grey level).
use rand::seq::SliceRandom as _;
use rand::Rng as _;

use super::config::ColorJitterCfg;
use super::geometry::uniform;
use super::planar::Planar;
use crate::rng::Rng;

const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

fn luma(r: f32, g: f32, b: f32) -> f32 {
    LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
}

/// `clamp(f·a + (1−f)·b, 0, 1)`, torchvision's `_blend`.
fn blend(a: f32, b: f32, f: f32) -> f32 {
    (f * a + (1.0 - f) * b).clamp(0.0, 1.0)
}

/// Blend with black.
pub fn adjust_brightness(img: &mut Planar, f: f32) {
    img.data.iter_mut().for_each(|v| *v = blend(*v, 0.0, f));
}

/// Blend with the mean of the grey image (one scalar for the whole image).
pub fn adjust_contrast(img: &mut Planar, f: f32) {
    let n = img.plane_len();
    let (r, g, b) = img.planes_mut();
    let sum: f64 = (0..n).map(|k| luma(r[k], g[k], b[k]) as f64).sum();
    let mean = (sum / n.max(1) as f64) as f32;
    img.data.iter_mut().for_each(|v| *v = blend(*v, mean, f));
}

/// Blend each pixel with its own grey value.
pub fn adjust_saturation(img: &mut Planar, f: f32) {
    let (r, g, b) = img.planes_mut();
    for k in 0..r.len() {
        let y = luma(r[k], g[k], b[k]);
        r[k] = blend(r[k], y, f);
        g[k] = blend(g[k], y, f);
        b[k] = blend(b[k], y, f);
    }
}

/// `x.rem_euclid(1.0)`, bit for bit, without the `fmodf` call on the ranges hue takes
/// (`[−1, 2)`; `rem_euclid` is `x % 1`, plus 1 when negative, and on these ranges `x % 1` is `x`
/// or `x − 1`, both exact by Sterbenz' lemma). Other values take `rem_euclid` itself.
#[inline]
pub fn wrap_turn(x: f32) -> f32 {
    if (0.0..1.0).contains(&x) {
        x
    } else if (1.0..2.0).contains(&x) {
        x - 1.0
    } else if x > -1.0 && x < 0.0 {
        x + 1.0
    } else {
        x.rem_euclid(1.0)
    }
}

/// `x.floor()`, bit for bit, as an integer conversion for `+0 ≤ x < 2²³` (truncation is the floor
/// there, and every integer below 2²³ is an f32), which the x86-64 baseline does without the
/// `floorf` call; other values take `floor` itself.
#[inline]
pub fn floor_small(x: f32) -> f32 {
    // `is_sign_positive` sends −0.0 (whose floor is −0.0, not +0.0) to `floor`.
    if x.is_sign_positive() && x < 8_388_608.0 {
        (x as u32) as f32
    } else {
        x.floor()
    }
}

/// torchvision `_rgb2hsv` for one pixel: `(h ∈ [0,1), s, v)`.
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = wrap_turn(h / 6.0 + 1.0);
    (h, s, maxc)
}

/// torchvision `_hsv2rgb` for one pixel.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let i = floor_small(h6);
    let f = h6 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    // torchvision's six sectors (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q) as index tables
    // into [v, t, p, q]: loads instead of a jump table whose target changes pixel by pixel.
    const R: [usize; 6] = [0, 3, 2, 2, 1, 0];
    const G: [usize; 6] = [1, 0, 0, 3, 2, 2];
    const B: [usize; 6] = [2, 2, 1, 0, 0, 3];
    let sector = (i as i64).rem_euclid(6) as usize;
    let vals = [v, t, p, q];
    (vals[R[sector]], vals[G[sector]], vals[B[sector]])
}

/// Rotate the hue by `shift` turns (torchvision's `hue_factor`, in [−0.5, 0.5]).
pub fn adjust_hue(img: &mut Planar, shift: f32) {
    let (r, g, b) = img.planes_mut();
    for k in 0..r.len() {
        let (h, s, v) = rgb_to_hsv(r[k], g[k], b[k]);
        let h = wrap_turn(h + shift);
        let (rr, gg, bb) = hsv_to_rgb(h, s, v);
        r[k] = rr;
        g[k] = gg;
        b[k] = bb;
    }
}

/// Replace all three channels by the grey value (RandomGrayscale with 3 output channels).
pub fn grayscale(img: &mut Planar) {
    let (r, g, b) = img.planes_mut();
    for k in 0..r.len() {
        let y = luma(r[k], g[k], b[k]);
        r[k] = y;
        g[k] = y;
        b[k] = y;
    }
}

/// One draw of ColorJitter's parameters (`ColorJitter.get_params`): the order of the four
/// operations and each factor, `None` where that component is switched off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterParams {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue, in application order.
    pub order: [usize; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

impl JitterParams {
    /// Draw the permutation first, then the factors, as torchvision does.
    pub fn sample(cfg: &ColorJitterCfg, rng: &mut Rng) -> Self {
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |x: f32| {
            (x > 0.0).then(|| uniform(rng, (1.0 - x as f64).max(0.0), 1.0 + x as f64) as f32)
        };
        let brightness = factor(cfg.b);
        let contrast = factor(cfg.c);
        let saturation = factor(cfg.s);
        let hue = (cfg.h > 0.0).then(|| uniform(rng, -cfg.h as f64, cfg.h as f64) as f32);
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    /// Apply the components in `order`.
    pub fn apply(&self, img: &mut Planar) {
        for op in self.order {
            match (
                op,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
            ) {
                (0, Some(f), ..) => adjust_brightness(img, f),
                (1, _, Some(f), ..) => adjust_contrast(img, f),
                (2, _, _, Some(f), _) => adjust_saturation(img, f),
                (3, .., Some(h)) => adjust_hue(img, h),
                _ => {}
            }
        }
    }
}

/// `RandomApply([ColorJitter], p)`: one uniform decides, then the parameters are drawn.
pub fn random_color_jitter(img: &mut Planar, cfg: &ColorJitterCfg, rng: &mut Rng) {
    if rng.gen::<f32>() < cfg.p {
        JitterParams::sample(cfg, rng).apply(img);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(r: f32, g: f32, b: f32) -> Planar {
        Planar {
            width: 1,
            height: 1,
            data: vec![r, g, b],
        }
    }

    #[test]
    fn hue_shift_hand_computed() {
        // Pure red shifted by 1/3 turn is pure green; by −1/3 pure blue.
        let mut p = pixel(1.0, 0.0, 0.0);
        adjust_hue(&mut p, 1.0 / 3.0);
        assert!(
            p.data
                .iter()
                .zip([0.0, 1.0, 0.0])
                .all(|(a, b)| (a - b).abs() < 1e-5),
            "{:?}",
            p.data
        );
        let mut p = pixel(1.0, 0.0, 0.0);
        adjust_hue(&mut p, -1.0 / 3.0);
        assert!(
            p.data
                .iter()
                .zip([0.0, 0.0, 1.0])
                .all(|(a, b)| (a - b).abs() < 1e-5),
            "{:?}",
            p.data
        );
        // (0.8, 0.4, 0.2): max r, so h = (bc − gc)/6 with bc = (0.8−0.2)/0.6 = 1,
        // gc = (0.8−0.4)/0.6 = 2/3 → h = 1/18 (orange); s = 0.6/0.8 = 0.75, v = 0.8.
        // Shift +0.1 → h = 0.15556, h·6 = 0.93333 (sector 0, f = 0.93333): (v, t, p) with
        // p = 0.8·0.25 = 0.2, t = 0.8·(1 − 0.75·0.066667) = 0.76.
        let (h, s, v) = rgb_to_hsv(0.8, 0.4, 0.2);
        assert!((h - 1.0 / 18.0).abs() < 1e-6 && (s - 0.75).abs() < 1e-6 && (v - 0.8).abs() < 1e-6);
        let mut p = pixel(0.8, 0.4, 0.2);
        adjust_hue(&mut p, 0.1);
        let expect = [0.8, 0.76, 0.2];
        assert!(
            p.data.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-5),
            "{:?}",
            p.data
        );
    }

    #[test]
    fn blends_match_formulas() {
        let mut p = Planar {
            width: 2,
            height: 1,
            data: vec![0.2, 0.6, 0.4, 0.8, 0.1, 0.3],
        };
        let orig = p.clone();
        adjust_brightness(&mut p, 1.5);
        for (a, b) in p.data.iter().zip(&orig.data) {
            assert!((a - (b * 1.5).min(1.0)).abs() < 1e-6);
        }
        let mut p = orig.clone();
        adjust_contrast(&mut p, 0.5);
        let y0 = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.1;
        let y1 = 0.299 * 0.6 + 0.587 * 0.8 + 0.114 * 0.3;
        let m = (y0 + y1) / 2.0;
        for (a, b) in p.data.iter().zip(&orig.data) {
            assert!((a - (0.5 * b + 0.5 * m)).abs() < 1e-6);
        }
        let mut p = orig.clone();
        adjust_saturation(&mut p, 0.0);
        assert!((p.get(0, 0, 0) - y0).abs() < 1e-6 && (p.get(2, 1, 0) - y1).abs() < 1e-6);
    }

    #[test]
    fn identity_factors_leave_image_unchanged() {
        let data: Vec<f32> = (0..48).map(|k| ((k * 37) % 101) as f32 / 100.0).collect();
        let orig = Planar {
            width: 4,
            height: 4,
            data,
        };
        let mut p = orig.clone();
        let params = JitterParams {
            order: [3, 1, 0, 2],
            brightness: Some(1.0),
            contrast: Some(1.0),
            saturation: Some(1.0),
            hue: Some(0.0),
        };
        params.apply(&mut p);
        for (a, b) in p.data.iter().zip(&orig.data) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn grayscale_channels_equal() {
        let data: Vec<f32> = (0..27).map(|k| ((k * 13) % 17) as f32 / 16.0).collect();
        let mut p = Planar {
            width: 3,
            height: 3,
            data,
        };
        grayscale(&mut p);
        let n = p.plane_len();
        assert_eq!(p.data[..n], p.data[n..2 * n]);
        assert_eq!(p.data[..n], p.data[2 * n..]);
    }

    #[test]
    fn factors_drawn_in_torchvision_ranges() {
        let cfg = ColorJitterCfg {
            b: 0.4,
            c: 1.5,
            s: 0.0,
            h: 0.1,
            p: 1.0,
        };
        let mut rng = crate::rng::stream(1, &[99]);
        for _ in 0..500 {
            let j = JitterParams::sample(&cfg, &mut rng);
            let b = j.brightness.unwrap();
            assert!((0.6..1.4).contains(&b));
            let c = j.contrast.unwrap();
            assert!(
                (0.0..2.5).contains(&c),
                "contrast lower bound clamps at 0: {c}"
            );
            assert!(j.saturation.is_none());
            assert!(j.hue.unwrap().abs() <= 0.1);
            let mut o = j.order;
            o.sort();
            assert_eq!(o, [0, 1, 2, 3]);
        }
    }
}
