//! Torchvision-exact augmentations and the parallel batch loader.
//!
//! One view of one image goes through [`augment`]: RandomResizedCrop (or a fixed
//! [`FixedGeometry`]) → ColorJitter → RandomGrayscale (swapped for MoCo v1) → GaussianBlur →
//! RandomHorizontalFlip → Normalize, each a switch of [`AugmentConfig`], so the paper's Table 1
//! ablation is a configuration. Landmarks ride along with the geometric steps.
//!
//! Randomness: every draw for image `index`, `epoch`, view `v` comes from
//! [`view_rng`] = `rng::stream(seed, [AUGMENT, epoch, index, v])`, so a sample's augmentation does
//! not depend on thread count, batch composition or the order images are processed in.
//!
//! Submodules: [`config`] (switches, presets, `--aug` parser), [`geometry`] (crop, resize, flip,
//! landmark maps), [`color`] (jitter, grayscale), [`blur`], [`planar`] (the float CHW image),
//! [`loader`] (rayon batch loader with prefetch), [`cache`] (decode each image once per run).

pub mod blur;
pub mod cache;
pub mod color;
pub mod config;
pub mod loader;
/// Crop/resize/flip and the float image live in the shared `data` crate (runtime-cli resizes
/// with the same code).
pub use data::{geometry, planar};

use anyhow::{bail, Result};
use rand::Rng as _;

pub use cache::DecodedCache;
pub use config::{
    AugmentConfig, BlurCfg, ColorJitterCfg, FixedGeometry, IMAGENET_MEAN, IMAGENET_STD,
    RRC_SCALE_SUPERVISED, RRC_SCALE_UNSUPERVISED,
};
pub use geometry::CropRect;
pub use loader::{epoch_order, Batch, ImageSource, Loader, LoaderSpec};
pub use planar::Planar;

use crate::data::Landmarks;
use crate::rng::{self, Rng};

/// One augmented view: normalised `3 × S × S` pixels (CHW) and, for landmark data, the
/// landmarks in output pixel coordinates (pixel-centre convention).
#[derive(Clone, Debug, PartialEq)]
pub struct Augmented {
    pub pixels: Vec<f32>,
    pub landmarks: Option<Landmarks>,
}

/// The random stream of view `view` of dataset image `index` in `epoch`.
pub fn view_rng(seed: u64, epoch: u64, index: u64, view: u64) -> Rng {
    rng::stream(seed, &[rng::purpose::AUGMENT, epoch, index, view])
}

/// The crop of the fixed (non-random) geometry.
fn fixed_rect(width: usize, height: usize, fixed: FixedGeometry) -> CropRect {
    match fixed {
        FixedGeometry::Stretch => CropRect {
            i: 0,
            j: 0,
            h: height,
            w: width,
        },
        FixedGeometry::CenterCrop { fraction } => geometry::center_square(width, height, fraction),
    }
}

fn check_image(img: &image::RgbImage) -> Result<(usize, usize)> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        bail!("cannot augment an empty {w}×{h} image");
    }
    Ok((w, h))
}

/// Crop + resize to `out_size`, mapping landmarks the same way.
fn crop_to_output(
    img: &image::RgbImage,
    landmarks: Option<&Landmarks>,
    rect: CropRect,
    out: usize,
) -> (Planar, Option<Landmarks>) {
    let p = geometry::crop_resize(img, rect, out, out);
    let lm = landmarks.map(|l| geometry::crop_resize_landmarks(l, rect, out, out));
    (p, lm)
}

/// Apply the full random pipeline of `cfg` to one image, drawing from `rng`.
///
/// Draw order (torchvision's): crop parameters, jitter (apply?, permutation, factors), grayscale,
/// blur (apply?, σ), flip. Switched-off steps draw nothing.
pub fn augment(
    img: &image::RgbImage,
    landmarks: Option<&Landmarks>,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Result<Augmented> {
    let (w, h) = check_image(img)?;
    cfg.validate()?;
    let rect = match cfg.rrc {
        Some(scale) => geometry::rrc_params(w, h, scale, cfg.rrc_ratio, rng),
        None => fixed_rect(w, h, cfg.fixed),
    };
    let (mut p, mut lm) = crop_to_output(img, landmarks, rect, cfg.out_size);
    let gray = |p: &mut Planar, rng: &mut Rng| {
        if cfg.grayscale_p > 0.0 && rng.gen::<f32>() < cfg.grayscale_p {
            color::grayscale(p);
        }
    };
    if cfg.gray_before_jitter {
        gray(&mut p, rng);
    }
    if let Some(j) = &cfg.color_jitter {
        color::random_color_jitter(&mut p, j, rng);
    }
    if !cfg.gray_before_jitter {
        gray(&mut p, rng);
    }
    if let Some(b) = &cfg.blur {
        blur::random_blur(&mut p, b, cfg.out_size, rng);
    }
    if cfg.hflip && rng.gen::<f32>() < 0.5 {
        geometry::hflip(&mut p);
        lm = lm.map(|l| geometry::hflip_landmarks(&l, cfg.out_size));
    }
    p.normalize(cfg.mean, cfg.std);
    Ok(Augmented {
        pixels: p.data,
        landmarks: lm,
    })
}

/// The deterministic evaluation transform matching `cfg`: its fixed geometry, resize to
/// `out_size`, normalise. No randomness, whatever switches `cfg` has on.
pub fn eval_transform(
    img: &image::RgbImage,
    landmarks: Option<&Landmarks>,
    cfg: &AugmentConfig,
) -> Result<Augmented> {
    let (w, h) = check_image(img)?;
    cfg.validate()?;
    let (mut p, lm) = crop_to_output(img, landmarks, fixed_rect(w, h, cfg.fixed), cfg.out_size);
    p.normalize(cfg.mean, cfg.std);
    Ok(Augmented {
        pixels: p.data,
        landmarks: lm,
    })
}
