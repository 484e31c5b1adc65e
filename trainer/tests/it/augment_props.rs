//! Properties of the augmentations: RandomResizedCrop bounds and fallback, flip involution, and
//! landmark maps that agree with what the image transform does to a bright dot.
use image::{Rgb, RgbImage};
use trainer::augment::geometry::{self, center_fallback, rrc_params, CropRect};
use trainer::augment::{augment, eval_transform, view_rng, AugmentConfig, Planar};
use trainer::data::Landmarks;
use trainer::rng;

const RATIO: (f32, f32) = (3.0 / 4.0, 4.0 / 3.0);

/// An accepted crop satisfies torchvision's acceptance test and lies inside the image; the
/// rounding of `w = round(√(a·r))`, `h = round(√(a/r))` can move area and ratio only by what
/// half a pixel on each side allows, which is the bound checked here.
#[test]
fn rrc_crops_respect_area_and_ratio_bounds() {
    let scale = (0.2f64, 1.0f64);
    let mut r = rng::stream(5, &[1]);
    for (wi, hi) in [
        (32usize, 32usize),
        (84, 84),
        (178, 218),
        (300, 40),
        (7, 9),
        (1000, 640),
    ] {
        let mut fallbacks = 0;
        for _ in 0..2000 {
            let c = rrc_params(wi, hi, (0.2, 1.0), RATIO, &mut r);
            assert!(
                c.w > 0 && c.h > 0 && c.j + c.w <= wi && c.i + c.h <= hi,
                "{c:?} in {wi}×{hi}"
            );
            if c == center_fallback(wi, hi, RATIO) {
                fallbacks += 1;
                continue;
            }
            let (w, h) = (c.w as f64, c.h as f64);
            let area = (wi * hi) as f64;
            // Unrounded w0, h0 with w0·h0 = a, w0/h0 = r; |w − w0|, |h − h0| ≤ 0.5.
            let lo_area = scale.0 * area;
            let hi_area = scale.1 * area;
            let (w_lo, w_hi, h_lo, h_hi) = (w - 0.5, w + 0.5, h - 0.5, h + 0.5);
            assert!(
                w_hi * h_hi >= lo_area && w_lo.max(0.0) * h_lo.max(0.0) <= hi_area,
                "{c:?}"
            );
            let (rlo, rhi) = (RATIO.0 as f64, RATIO.1 as f64);
            assert!(w_hi / h_lo.max(1e-9) >= rlo && w_lo / h_hi <= rhi, "{c:?}");
        }
        if (wi, hi) == (300, 40) {
            // Area ≥ 0.2·12000 with ratio ≤ 4/3 needs h ≥ √(2400·0.75) = 42 > 40: never fits.
            assert_eq!(fallbacks, 2000);
        } else {
            assert!(fallbacks < 2000 / 20, "{wi}×{hi}: {fallbacks} fallbacks");
        }
    }
}

/// The crop distribution is not degenerate: positions cover the image and areas span the range.
#[test]
fn rrc_draws_spread_over_positions_and_scales() {
    let mut r = rng::stream(6, &[2]);
    let crops: Vec<CropRect> = (0..3000)
        .map(|_| rrc_params(200, 200, (0.08, 1.0), RATIO, &mut r))
        .collect();
    let areas: Vec<f64> = crops.iter().map(|c| (c.w * c.h) as f64 / 40000.0).collect();
    let small = areas.iter().filter(|&&a| a < 0.2).count();
    let big = areas.iter().filter(|&&a| a > 0.8).count();
    assert!(small > 300 && big > 100, "small {small} big {big}");
    // Area uniform in [0.08, 1]·A, thinned by the rejections of too-wide/too-tall crops near
    // full size: a Monte-Carlo run of torchvision's algorithm gives a mean of 0.481.
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    assert!((0.45..0.51).contains(&mean), "mean area fraction {mean}");
    assert!(crops.iter().any(|c| c.j == 0) && crops.iter().any(|c| c.j + c.w == 200));
}

/// An impossible ratio range (no crop can satisfy it) always takes the centre-crop fallback,
/// with the image's ratio clamped into the range.
#[test]
fn rrc_impossible_ratio_falls_back_to_centre_crop() {
    let mut r = rng::stream(7, &[3]);
    // A 100×10 strip cannot hold a crop of aspect 1/10 with area ≥ 50 % of the image.
    for _ in 0..50 {
        let c = rrc_params(100, 10, (0.5, 1.0), (0.1, 0.1), &mut r);
        // in_ratio 10 > max 0.1 → h = 10, w = round(10·0.1) = 1, centred.
        assert_eq!(
            c,
            CropRect {
                i: 0,
                j: 49,
                h: 10,
                w: 1
            }
        );
    }
}

fn test_image(w: u32, h: u32, seed: u64) -> RgbImage {
    use rand::Rng as _;
    let mut r = rng::stream(seed, &[77]);
    RgbImage::from_fn(w, h, |_, _| Rgb([r.gen(), r.gen(), r.gen()]))
}

#[test]
fn flip_twice_is_identity_for_image_and_landmarks() {
    let img = test_image(23, 17, 1);
    let mut p = Planar::from_rgb8(&img);
    let orig = p.clone();
    geometry::hflip(&mut p);
    assert_ne!(p, orig);
    // Flipping mirrors: pixel x goes to W−1−x.
    assert_eq!(p.get(1, 0, 3), orig.get(1, 22, 3));
    geometry::hflip(&mut p);
    assert_eq!(p, orig);
    let lm: Landmarks = [
        [3.5, 4.0],
        [18.25, 4.5],
        [11.0, 9.0],
        [5.0, 14.0],
        [17.0, 13.5],
    ];
    let once = geometry::hflip_landmarks(&lm, 23);
    // The left eye after the flip is the mirrored right eye.
    assert_eq!(once[0], [23.0 - 18.25, 4.5]);
    assert_eq!(once[3], [23.0 - 17.0, 13.5]);
    assert_eq!(geometry::hflip_landmarks(&once, 23), lm);
}

/// The brightest output pixel of channel `c`, and its value.
fn argmax(pixels: &[f32], c: usize, size: usize) -> ((usize, usize), f32) {
    let plane = &pixels[c * size * size..(c + 1) * size * size];
    let k = (0..plane.len()).fold(0, |best, k| if plane[k] > plane[best] { k } else { best });
    ((k % size, k / size), plane[k])
}

/// Draw a red dot at the left eye and a green dot at the right eye, run the pipeline's geometric
/// steps (crop + resize + flip), and check (a) the landmarks against an independent computation
/// of the map and (b) that each dot's brightest output pixel lies within a pixel of the landmark
/// that names it — after a flip the red (old left) eye is the new *right* eye.
#[test]
fn landmark_maps_follow_the_image_for_crop_and_flip() {
    use rand::Rng as _;
    let (w, h, out) = (60usize, 48usize, 32usize);
    let cfg = AugmentConfig {
        hflip: true,
        rrc: Some((0.3, 1.0)),
        ..AugmentConfig::none(out)
    };
    let mut checked = [0usize; 2];
    for case in 0..300u64 {
        let (px, py) = (3 + (case * 7 % 25) as usize, 4 + (case * 11 % 40) as usize);
        let (qx, qy) = (px + 6 + (case % 20) as usize, 3 + (case * 5 % 42) as usize);
        let mut img = RgbImage::new(w as u32, h as u32);
        img.put_pixel(px as u32, py as u32, Rgb([255, 0, 0]));
        img.put_pixel(qx as u32, qy as u32, Rgb([0, 255, 0]));
        let red = [px as f32 + 0.5, py as f32 + 0.5];
        let green = [qx as f32 + 0.5, qy as f32 + 0.5];
        let lm: Landmarks = [red, green, [30.0, 24.0], [20.0, 40.0], [40.0, 40.0]];
        let a = augment(&img, Some(&lm), &cfg, &mut view_rng(9, 0, case, 0)).unwrap();
        let got = a.landmarks.unwrap();

        // Independent expectation: replay the documented draw order (crop, then flip).
        let mut r = view_rng(9, 0, case, 0);
        let c = rrc_params(w, h, (0.3, 1.0), RATIO, &mut r);
        let flip = r.gen::<f32>() < 0.5;
        let s = out as f32;
        let map = |p: [f32; 2]| {
            let x = (p[0] - c.j as f32) * s / c.w as f32;
            let y = (p[1] - c.i as f32) * s / c.h as f32;
            if flip {
                [s - x, y]
            } else {
                [x, y]
            }
        };
        let (red_at, green_at) = if flip { (1, 0) } else { (0, 1) };
        for (k, p) in [(red_at, red), (green_at, green)] {
            let e = map(p);
            assert!(
                (got[k][0] - e[0]).abs() < 1e-4 && (got[k][1] - e[1]).abs() < 1e-4,
                "case {case}"
            );
        }

        for (channel, k) in [(0, red_at), (1, green_at)] {
            let [ox, oy] = got[k];
            if !(1.0..s - 1.0).contains(&ox) || !(1.0..s - 1.0).contains(&oy) {
                continue; // the dot was cropped away or sits on the border
            }
            let ((mx, my), _) = argmax(&a.pixels, channel, out);
            let (cx, cy) = (mx as f32 + 0.5, my as f32 + 0.5);
            assert!(
                (cx - ox).abs() <= 1.0 && (cy - oy).abs() <= 1.0,
                "case {case} channel {channel} flip {flip}: brightest ({cx},{cy}) vs landmark ({ox},{oy})"
            );
            checked[usize::from(flip)] += 1;
        }
    }
    assert!(checked[0] > 100 && checked[1] > 100, "checked {checked:?}");
}

#[test]
fn eval_transform_is_deterministic_and_maps_landmarks() {
    let img = test_image(40, 30, 3);
    let lm: Landmarks = [
        [10.0, 5.0],
        [30.0, 5.0],
        [20.0, 15.0],
        [12.0, 25.0],
        [28.0, 25.0],
    ];
    let cfg = AugmentConfig::moco_v2(20);
    let a = eval_transform(&img, Some(&lm), &cfg).unwrap();
    let b = eval_transform(&img, Some(&lm), &cfg).unwrap();
    assert_eq!(a, b);
    // Stretch 40×30 → 20×20: x/2, y·2/3.
    let l = a.landmarks.unwrap();
    assert!(
        (l[1][0] - 15.0).abs() < 1e-5 && (l[1][1] - 5.0 * 20.0 / 30.0).abs() < 1e-5,
        "{l:?}"
    );
    // Pixel values: normalised mean of the 2×1.5 footprint lies within the input's range.
    let p = Planar::from_rgb8(&img);
    let (lo, hi) = p.data[..1200]
        .iter()
        .fold((1.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let m = cfg.mean[0];
    let s = cfg.std[0];
    assert!(a.pixels[..400]
        .iter()
        .all(|&v| v * s + m >= lo - 1e-5 && v * s + m <= hi + 1e-5));
}

/// A resize to the same size with the whole image as the crop is the identity (then normalise).
#[test]
fn identity_geometry_reproduces_pixels() {
    let img = test_image(16, 16, 4);
    let a = eval_transform(&img, None, &AugmentConfig::none(16)).unwrap();
    let p = Planar::from_rgb8(&img);
    for c in 0..3 {
        for k in 0..256 {
            let v = a.pixels[c * 256 + k] * AugmentConfig::none(16).std[c]
                + AugmentConfig::none(16).mean[c];
            assert!((v - p.data[c * 256 + k]).abs() < 1e-5);
        }
    }
}

#[test]
fn pipeline_output_is_a_function_of_the_stream() {
    let img = test_image(50, 40, 5);
    let cfg = AugmentConfig::moco_v2(24);
    let a = augment(&img, None, &cfg, &mut view_rng(1, 2, 3, 0)).unwrap();
    let b = augment(&img, None, &cfg, &mut view_rng(1, 2, 3, 0)).unwrap();
    let c = augment(&img, None, &cfg, &mut view_rng(1, 2, 3, 1)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c, "the two MoCo views differ");
    assert_eq!(a.pixels.len(), 3 * 24 * 24);
    assert!(a.pixels.iter().all(|v| v.is_finite()));
}

#[test]
fn empty_image_is_an_error_not_a_panic() {
    let img = RgbImage::new(0, 5);
    let e = augment(
        &img,
        None,
        &AugmentConfig::moco_v1(8),
        &mut view_rng(0, 0, 0, 0),
    )
    .unwrap_err();
    assert!(format!("{e}").contains("empty"));
}

/// The fast blur, hue and floor/wrap helpers against the direct formulas, bit for bit: the loader
/// must give the same pixels it gave before it was made cheaper (fixtures, resumed runs).
mod fast_paths_match_the_formulas {
    use proptest::prelude::*;
    use trainer::augment::blur::{gaussian_blur, gaussian_kernel, reflect};
    use trainer::augment::color::{adjust_hue, floor_small, wrap_turn};
    use trainer::augment::Planar;

    /// An image of `w × h` with values in [0, 1] drawn from `seed`.
    fn image(w: usize, h: usize, seed: u64) -> Planar {
        use rand::Rng as _;
        let mut r = trainer::rng::stream(seed, &[77]);
        Planar {
            width: w,
            height: h,
            data: (0..3 * w * h).map(|_| r.gen::<f32>()).collect(),
        }
    }

    /// The blur as a per-pixel sum with reflected indices: horizontal pass then vertical, each
    /// output `Σ_t k[t]·src[reflect(x + t − r)]` accumulated from 0.0 in tap order.
    fn direct_blur(img: &Planar, sigma: f32) -> Vec<f32> {
        let k = gaussian_kernel(sigma);
        let r = (k.len() / 2) as isize;
        let (w, h) = (img.width, img.height);
        let n = w * h;
        let mut out = img.data.clone();
        for c in 0..3 {
            let src = &img.data[c * n..(c + 1) * n];
            let mut tmp = vec![0.0f32; n];
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0f32;
                    for (t, &kt) in k.iter().enumerate() {
                        acc += kt * src[y * w + reflect(x as isize + t as isize - r, w)];
                    }
                    tmp[y * w + x] = acc;
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0f32;
                    for (t, &kt) in k.iter().enumerate() {
                        acc += kt * tmp[reflect(y as isize + t as isize - r, h) * w + x];
                    }
                    out[c * n + y * w + x] = acc;
                }
            }
        }
        out
    }

    /// torchvision's `_rgb2hsv` → shift → `_hsv2rgb`, with `rem_euclid` and `floor` as written.
    fn direct_hue(r: f32, g: f32, b: f32, shift: f32) -> [f32; 3] {
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
        let h = (h / 6.0 + 1.0).rem_euclid(1.0);
        let h = (h + shift).rem_euclid(1.0);
        let v = maxc;
        let h6 = h * 6.0;
        let i = h6.floor();
        let f = h6 - i;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        match (i as i64).rem_euclid(6) {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn blur_matches_the_direct_formula_bit_for_bit(
            w in 1usize..40, h in 1usize..40, sigma in 0.05f32..4.0, seed in 0u64..1000,
        ) {
            let img = image(w, h, seed);
            let mut fast = img.clone();
            gaussian_blur(&mut fast, sigma);
            prop_assert_eq!(bits(&fast.data), bits(&direct_blur(&img, sigma)));
        }

        #[test]
        fn hue_matches_the_direct_formula_bit_for_bit(
            w in 1usize..20, h in 1usize..20, shift in -0.5f32..=0.5, seed in 0u64..1000,
            grey_every in 2usize..7,
        ) {
            let mut img = image(w, h, seed);
            // Grey pixels (max = min) and saturated ones take the formula's other branches.
            let n = w * h;
            for k in (0..n).step_by(grey_every) {
                let v = img.data[k];
                img.data[n + k] = v;
                img.data[2 * n + k] = if k % 2 == 0 { v } else { 0.0 };
            }
            let mut fast = img.clone();
            adjust_hue(&mut fast, shift);
            for k in 0..n {
                let want = direct_hue(img.data[k], img.data[n + k], img.data[2 * n + k], shift);
                let got = [fast.data[k], fast.data[n + k], fast.data[2 * n + k]];
                prop_assert_eq!(bits(&got), bits(&want), "pixel {}", k);
            }
        }

        #[test]
        fn wrap_and_floor_helpers_match_std_on_any_float(x in any::<f32>()) {
            prop_assert_eq!(wrap_turn(x).to_bits(), x.rem_euclid(1.0).to_bits());
            prop_assert_eq!(floor_small(x).to_bits(), x.floor().to_bits());
        }

        #[test]
        fn wrap_and_floor_helpers_match_std_near_their_ranges(x in -3.0f32..9.0) {
            prop_assert_eq!(wrap_turn(x).to_bits(), x.rem_euclid(1.0).to_bits());
            prop_assert_eq!(floor_small(x).to_bits(), x.floor().to_bits());
        }
    }

    #[test]
    fn helpers_at_the_edges() {
        for x in [
            -0.0f32,
            0.0,
            1.0,
            2.0,
            -1.0,
            -2.0,
            0.999_999_94,
            1.999_999_9,
            -1e-30,
            8_388_607.5,
            8_388_608.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(wrap_turn(x).to_bits(), x.rem_euclid(1.0).to_bits(), "{x}");
            assert_eq!(floor_small(x).to_bits(), x.floor().to_bits(), "{x}");
        }
    }
}
