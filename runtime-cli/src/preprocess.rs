//! Image → model input, exactly as the host's evaluation pipeline does it, so a device result
//! compares number for number with `host-trainer eval`.
//!
//! * Few-shot / `infer` on feature models: the whole image is resized ("stretch") to the model's
//!   input `W×H`, then normalised with the model's own mean/std.
//! * Landmarks: the MAFL square crop ([`data::mafl_crop`]) first, then the same
//!   resize. Landmarks live in the continuous pixel-centre convention of
//!   [`data::Landmarks`] (pixel `i` covers `[i, i+1)`), so a resize by `k` maps
//!   `x → k·x` exactly and its inverse is `x → x/k`.
//!
//! The resize is the host's (`data::geometry::crop_resize`): PIL's bilinear
//! ("triangle") filter, antialiased when shrinking; exactly bilinear with half-pixel centres when
//! enlarging.
use data::geometry::crop_resize;
use data::geometry::CropRect;
use image::RgbImage;

/// Resizes a whole RGB8 image to `out_w × out_h`, giving planar (CHW) floats in [0, 1]: the
/// host's own resize (`augment::geometry::crop_resize` over the full image, what
/// `augment::eval_transform` does with the "stretch" geometry), so the arithmetic is the host's.
/// The image and the output must be non-empty (callers check with [`check_size`]).
pub fn resize_planar(img: &RgbImage, out_w: usize, out_h: usize) -> Vec<f32> {
    let full = CropRect {
        i: 0,
        j: 0,
        h: img.height() as usize,
        w: img.width() as usize,
    };
    crop_resize(img, full, out_w, out_h).data
}

/// Planar [0, 1] pixels → the model's HWC input, normalised as the host's `Planar::normalize`
/// does (`(v − mean)·(1/std)`, the same f32 operations).
pub fn normalise_hwc(planar: &[f32], w: usize, h: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let plane = w * h;
    let mut out = vec![0.0f32; 3 * plane];
    for c in 0..3 {
        let inv = 1.0 / std[c];
        for (i, &v) in planar[c * plane..(c + 1) * plane].iter().enumerate() {
            out[i * 3 + c] = (v - mean[c]) * inv;
        }
    }
    out
}

/// Pixels used as they are (no resize): planar values `p·(1/255)`, the same f32 operations the
/// resize path performs at scale 1 (so `--exact-size` and a same-size resize agree bit for bit).
pub fn exact_planar(img: &RgbImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (1.0 / 255.0) * p[c] as f32;
        }
    }
    out
}

/// Refuses an empty image (the resize needs at least one pixel to read).
pub fn check_size(img: &RgbImage) -> Result<(), String> {
    if img.width() == 0 || img.height() == 0 {
        return Err(format!("empty {}×{} image", img.width(), img.height()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(px: &[u8]) -> RgbImage {
        RgbImage::from_fn(px.len() as u32, 1, |x, _| image::Rgb([px[x as usize]; 3]))
    }

    #[test]
    fn same_size_is_the_identity() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 40) as u8, (y * 70) as u8, 9]));
        let p = resize_planar(&img, 5, 3);
        assert_eq!(p, exact_planar(&img));
    }

    #[test]
    fn enlarging_is_bilinear_with_half_pixel_centres() {
        // 2 → 4: output centres at 0.25, 0.75, 1.25, 1.75 input px; input centres at 0.5, 1.5.
        // Sample positions in input pixel index space: −0.25 (clamped to 0), 0.25, 0.75, 1.25 (→1).
        let p = resize_planar(&row(&[0, 200]), 4, 1);
        let want = [0.0, 50.0, 150.0, 200.0].map(|v: f32| v / 255.0);
        for (a, b) in p[..4].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", &p[..4]);
        }
    }

    #[test]
    fn shrinking_by_two_is_antialiased() {
        // 4 → 2 (scale 2): triangle of half-width 2 centred at 1.0 and 3.0; input centres at
        // 0.5, 1.5, 2.5, 3.5 get weights 0.75, 0.75, 0.25, (0) for output 0 → normalised 3/7, 3/7, 1/7.
        let p = resize_planar(&row(&[70, 140, 210, 0]), 2, 1);
        let o0 = (3.0 * 70.0 + 3.0 * 140.0 + 1.0 * 210.0) / 7.0 / 255.0;
        // Output 1: centre 3.0; inputs 1.5, 2.5, 3.5 → weights 0.25, 0.75, 0.75.
        let o1 = (1.0 * 140.0 + 3.0 * 210.0 + 3.0 * 0.0) / 7.0 / 255.0;
        assert!(
            (p[0] - o0).abs() < 1e-6 && (p[1] - o1).abs() < 1e-6,
            "{:?} vs {o0} {o1}",
            &p[..2]
        );
    }

    #[test]
    fn normalise_is_hwc_and_per_channel() {
        // 2×1 image, planar R = [0.5, 1], G = [0, 0.25], B = [1, 1].
        let planar = [0.5, 1.0, 0.0, 0.25, 1.0, 1.0];
        let x = normalise_hwc(&planar, 2, 1, &[0.5, 0.0, 1.0], &[0.5, 0.25, 2.0]);
        assert_eq!(x, vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    }
}
