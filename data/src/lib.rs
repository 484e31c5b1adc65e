//! data: what host-trainer and runtime-cli share, so that the deployment side reads the same
//! files the same way without compiling candle.
//!
//! * Readers for the real formats (mini-ImageNet CSV, ImageFolder, CelebA, MAFL) and the embedded
//!   synthetic generators ([`synth`]) that write the same formats.
//! * [`geometry`] (crop, PIL-exact bilinear resize, flip, landmark maps) and [`planar`] (the float
//!   CHW image): the resize both the trainer's eval transform and runtime-cli's preprocessing use.
//! * [`rng`]: the seeded purpose-keyed random streams; [`fsutil`]: atomic writes.
//!
//! One reader per format, all producing the same [`LabelledImages`] list, so the batch loader has
//! a single thing to consume: `len()` and `load(i) -> (image, label, Option<landmarks>)`.
//! Readers validate the text files eagerly (every row, with file and line in the error); images
//! are decoded lazily by `load`, and [`LabelledImages::check_files`] stats them all up front for
//! callers that want to fail before a long run rather than in the middle of it.

pub mod celeba;
pub mod error;
pub mod fsutil;
pub mod geometry;
pub mod image_folder;
pub mod labelled;
pub mod landmarks;
pub mod mini_imagenet;
pub mod planar;
pub mod rng;
pub mod synth;
pub(crate) mod text;

pub use celeba::{mafl_crop, mafl_crop_window, CelebA, Partition, CELEBA_IMAGE_DIR, MAFL_DIR};
pub use error::DataError;
pub use image_folder::image_folder;
pub use labelled::LabelledImages;
pub use landmarks::{Landmarks, FLIP_PERMUTATION, LANDMARK_NAMES, NUM_LANDMARKS};
pub use mini_imagenet::{MiniImageNet, Split};

use std::path::Path;

/// Decode a PNG or JPEG file into 8-bit RGB (grey, alpha and 16-bit images are converted).
///
/// The format is sniffed from the bytes, not the extension, so the synthetic sets (PNG files)
/// and a real download (JPEG) go through the same path. Errors name the image.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    if reader.format().is_none() {
        return Err(DataError::Decode {
            path: path.into(),
            msg: "not a PNG or JPEG file".into(),
        });
    }
    let img = reader.decode().map_err(|e| DataError::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_rgb_decodes_png_and_jpeg_and_converts_grey() {
        let d = tempfile::tempdir().unwrap();
        let mut rgb = image::RgbImage::new(3, 2);
        rgb.put_pixel(1, 0, image::Rgb([200, 10, 30]));
        let p = d.path().join("a.png");
        rgb.save(&p).unwrap();
        assert_eq!(load_rgb(&p).unwrap(), rgb);
        // JPEG is lossy: check the size and that a flat grey stays (nearly) grey.
        let grey = image::GrayImage::from_pixel(8, 8, image::Luma([128]));
        let j = d.path().join("b.jpg");
        grey.save(&j).unwrap();
        let back = load_rgb(&j).unwrap();
        assert_eq!(back.dimensions(), (8, 8));
        let px = back.get_pixel(4, 4).0;
        assert!(px.iter().all(|&c| (c as i32 - 128).abs() <= 2), "{px:?}");
    }

    #[test]
    fn load_rgb_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.png");
        let e = load_rgb(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.png"), "{e}");
        let bad = d.path().join("bad.jpg");
        std::fs::write(&bad, b"this is not an image").unwrap();
        let e = load_rgb(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jpg") && e.contains("decode"), "{e}");
        // A PNG signature followed by garbage: recognised, then fails to decode.
        let trunc = d.path().join("trunc.png");
        std::fs::write(&trunc, b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDRgarbage").unwrap();
        let e = load_rgb(&trunc).unwrap_err().to_string();
        assert!(e.contains("trunc.png") && e.contains("decode"), "{e}");
    }
}
