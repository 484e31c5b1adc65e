//! Landmark prediction on aligned face images, shared by `eval mafl` and `infer` so both give the
//! same points for the same image.
//!
//! Frames: the model sees the MAFL square crop resized to its input `W×H` and outputs `x/W, y/H`
//! ([`runtime_core::heads::landmarks`]). We scale back to the **cropped** image's pixels
//! (`x·side/W`), where `eval mafl` compares with the ground truth moved by the same crop; `infer`
//! adds the crop offset to report points on the image as given. The IOD-normalised error is
//! invariant to translation and uniform scale, so it is the same in any of these frames.
use anyhow::{anyhow, Result};
use data::{mafl_crop_window, Landmarks, NUM_LANDMARKS};
use image::RgbImage;
use runtime_core::heads::landmarks::{decode, Point};

use crate::engine::Runner;

/// Predicts landmarks on an image that is already the MAFL crop; points in its pixels.
pub fn predict_on_crop(runner: &mut Runner, crop: &RgbImage) -> Result<Landmarks> {
    let (w, h) = runner.input_wh();
    let x = runner.normalised_input(crop);
    let out = runner.run_normalised(&x)?;
    let pts = decode(out, w, h).ok_or_else(|| {
        anyhow!(
            "landmark model gives {} outputs, expected {}",
            out.len(),
            2 * NUM_LANDMARKS
        )
    })?;
    let (sx, sy) = (
        crop.width() as f32 / w as f32,
        crop.height() as f32 / h as f32,
    );
    Ok(pts.map(|p| [p.x * sx, p.y * sy]))
}

/// Predicts landmarks on a whole aligned face image (cropped here as MAFL evaluation does);
/// points in the given image's pixels.
pub fn predict_on_aligned(runner: &mut Runner, img: &RgbImage) -> Result<Landmarks> {
    let (crop, x0, y0) = aligned_crop(img);
    let l = predict_on_crop(runner, &crop)?;
    Ok(l.map(|[x, y]| [x + x0 as f32, y + y0 as f32]))
}

/// The MAFL square crop of a whole aligned face image, what [`predict_on_aligned`] gives the
/// model (through [`predict_on_crop`]), and its offset `(x0, y0)` in the image.
pub fn aligned_crop(img: &RgbImage) -> (RgbImage, u32, u32) {
    let (x0, y0, side) = mafl_crop_window(img.width(), img.height());
    let crop = image::imageops::crop_imm(img, x0, y0, side, side).to_image();
    (crop, x0, y0)
}

/// Landmarks as runtime-core points (for [`runtime_core::metrics::IodError`]).
pub fn points(l: &Landmarks) -> [Point; NUM_LANDMARKS] {
    l.map(|[x, y]| Point { x, y })
}
