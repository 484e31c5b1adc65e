//! Contact sheets, so a person can look at the generated data (`--preview FILE.png`).
//!
//! The sheets re-render samples with the same pure functions that produced the files, so they
//! show exactly what is on disk without reading it back.
use super::draw::png_bytes;
use super::faces::{render_face, FacesConfig};
use super::objects::{class_defs, render_object, ObjectsConfig};
use crate::{DataError, Landmarks};
use image::{Rgb, RgbImage};
use std::path::Path;

const GRID: usize = 8;
const GAP: u32 = 2;
/// Landmark dot colours in [`crate::LANDMARK_NAMES`] order.
const DOT_COLOURS: [[u8; 3]; 5] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 80, 255],
    [255, 230, 0],
    [255, 0, 255],
];

/// Nearest-neighbour upscale so that tiles are large enough to see.
fn upscale(img: &RgbImage, k: u32) -> RgbImage {
    RgbImage::from_fn(img.width() * k, img.height() * k, |x, y| {
        *img.get_pixel(x / k, y / k)
    })
}

fn zoom_for(w: u32) -> u32 {
    (96 / w.max(1)).max(1)
}

fn sheet(tiles: &[Vec<RgbImage>]) -> RgbImage {
    let (tw, th) = tiles
        .first()
        .and_then(|r| r.first())
        .map_or((1, 1), |t| t.dimensions());
    let cols = tiles.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let rows = tiles.len() as u32;
    let mut out = RgbImage::from_pixel(
        cols * (tw + GAP) + GAP,
        rows * (th + GAP) + GAP,
        Rgb([255, 255, 255]),
    );
    for (r, row) in tiles.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            image::imageops::replace(
                &mut out,
                t,
                (GAP + c as u32 * (tw + GAP)) as i64,
                (GAP + r as u32 * (th + GAP)) as i64,
            );
        }
    }
    out
}

fn save(path: &Path, img: &RgbImage) -> Result<(), DataError> {
    let bytes = png_bytes(img).map_err(|e| DataError::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|e| DataError::io(path, e))
}

/// Draw a filled dot of radius `r` pixels centred on a continuous point.
pub fn draw_dot(img: &mut RgbImage, p: [f32; 2], r: f32, colour: [u8; 3]) {
    let (x0, x1) = (
        (p[0] - r).floor().max(0.0) as u32,
        (p[0] + r).ceil().max(0.0) as u32,
    );
    let (y0, y1) = (
        (p[1] - r).floor().max(0.0) as u32,
        (p[1] + r).ceil().max(0.0) as u32,
    );
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            let (dx, dy) = (x as f32 + 0.5 - p[0], y as f32 + 0.5 - p[1]);
            if dx * dx + dy * dy <= r * r {
                img.put_pixel(x, y, Rgb(colour));
            }
        }
    }
}

/// Objects: one row per class (8 classes spread over train, val and test), 8 instances each.
pub fn objects_preview(cfg: &ObjectsConfig, path: &Path) -> Result<(), DataError> {
    let specs = class_defs(cfg.seed, cfg.classes, cfg.alignment)?;
    let k = zoom_for(cfg.size);
    let rows = GRID.min(specs.len());
    let tiles: Vec<Vec<RgbImage>> = (0..rows)
        .map(|r| {
            let c = r * specs.len() / rows;
            (0..GRID.min(cfg.per_class))
                .map(|i| upscale(&render_object(cfg.seed, c, &specs[c], i, cfg.size), k))
                .collect()
        })
        .collect();
    save(path, &sheet(&tiles))
}

/// Faces: one row per identity, 8 images each, landmarks drawn as coloured dots (red left eye,
/// green right eye, blue nose, yellow left and magenta right mouth corner).
pub fn faces_preview(cfg: &FacesConfig, path: &Path) -> Result<(), DataError> {
    let k = zoom_for(cfg.size);
    let rows = GRID.min(cfg.identities);
    let tiles: Vec<Vec<RgbImage>> = (0..rows)
        .map(|r| {
            let ident = r * cfg.identities / rows;
            (0..GRID.min(cfg.per_identity))
                .map(|i| {
                    let (img, lm): (RgbImage, Landmarks) =
                        render_face(cfg.seed, ident, i, cfg.size);
                    let mut big = upscale(&img, k);
                    for (p, c) in lm.iter().zip(DOT_COLOURS) {
                        draw_dot(
                            &mut big,
                            [p[0] * k as f32, p[1] * k as f32],
                            1.0 + k as f32 * 0.6,
                            c,
                        );
                    }
                    big
                })
                .collect()
        })
        .collect();
    save(path, &sheet(&tiles))
}
