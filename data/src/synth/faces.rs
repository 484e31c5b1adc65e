//! Synthetic CelebA / MAFL: identities with persistent traits under varying nuisances.
//!
//! An identity is a set of traits drawn once from `stream(seed, [SYNTH_FACES, 0, identity])`:
//! face outline (width, height, squareness of brow and jaw), skin tone, hair colour and style,
//! eye spacing/height/size and iris colour, eyebrow shape and colour, nose length and width, mouth
//! height, width and lip colour, and accessories (glasses, earrings, hat, beard, a mole). Each
//! image draws, from its own stream, a pose (in-plane rotation ±25°, scale ±15 %, translation
//! ±10 % of the width), an expression (mouth width and opening, eyebrow raise, eye opening),
//! lighting (directional gradient, brightness), clothing colour and background. Identity is thus
//! recoverable from pose-invariant cues (colours, accessories), which a supervised network can
//! use while discarding pose — the landmarks need exactly the pose.
//!
//! Geometry: the face is designed in a canonical frame whose unit is half the image width, with
//! the origin at the centre of the MAFL crop square ([`crate::mafl_crop_window`]) and y
//! down; the pose maps it into pixels. The five landmarks are canonical points (eye centres, the
//! nose tip = bottom of the nose, the two ends of the mouth) mapped by the same transform, so
//! they are exact — pixel `(i, j)` covers `[i, i+1) × [j, j+1)`.
//!
//! Output (`DIR`), in the CelebA formats: `img_align_celeba/NNNNNN.png` (W = size,
//! H = round(size·218/178)), `identity_CelebA.txt`, `list_landmarks_align_celeba.txt` (integers,
//! rounded to nearest, like the real file), `synth_landmarks_exact.txt` (same format, 2
//! decimals), `list_eval_partition.txt` (by file number, like the real one: first 80 % train,
//! next 10 % val, last 10 % test) and `MAFL/training.txt` (20 % of all images) and
//! `MAFL/testing.txt` (5 %), drawn from every partition as in real MAFL. File numbers are a
//! random permutation of (identity, image) so names do not reveal identities.
use super::draw::{hsv, mix, scale_rgb, Affine, Canvas, Layer, Paint, Rgb, Shape};
use super::{create_dir, permutation, split_counts, write_image_file, write_list_file};
use crate::celeba::{
    mafl_crop_window, CELEBA_IMAGE_DIR, IDENTITY_FILE, LANDMARK_COLUMNS, LANDMARK_FILE, MAFL_DIR,
    MAFL_TEST_FILE, MAFL_TRAIN_FILE, PARTITION_FILE, SYNTH_EXACT_LANDMARK_FILE,
};
use crate::rng::{purpose::SYNTH_FACES, stream, Rng};
use crate::{DataError, Landmarks};
use rand::Rng as _;
use rayon::prelude::*;
use std::f32::consts::PI;
use std::path::Path;

const SS: u32 = 3;
const TAG_IDENTITY: u64 = 0;
const TAG_IMAGE: u64 = 1;
const TAG_ORDER: u64 = 2;
const TAG_MAFL: u64 = 3;
/// Partition fractions (train / val / test) by file number.
pub const PARTITION_FRACTIONS: [f64; 3] = [0.8, 0.1, 0.1];
/// MAFL testing and training fractions of all images.
pub const MAFL_FRACTIONS: [f64; 2] = [0.05, 0.20];
/// Layer tags (debugging hook, see [`face_layers`]).
pub const TAG_LEFT_EYE: u32 = 1;
pub const TAG_RIGHT_EYE: u32 = 2;
pub const TAG_MOUTH: u32 = 3;

/// `host-trainer synth faces` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct FacesConfig {
    pub identities: usize,
    pub per_identity: usize,
    pub size: u32,
    pub seed: u64,
}

impl Default for FacesConfig {
    fn default() -> Self {
        FacesConfig {
            identities: 200,
            per_identity: 20,
            size: 48,
            seed: 0,
        }
    }
}

/// Image height for width `size`: CelebA's 178 × 218 aspect.
pub fn image_height(size: u32) -> u32 {
    ((size as f64) * 218.0 / 178.0).round() as u32
}

/// The persistent traits of one identity (canonical units: half the image width).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub face_cy: f32,
    pub face_w: f32,
    pub face_h: f32,
    pub brow_power: f32,
    pub jaw_power: f32,
    pub skin: Rgb,
    pub hair: Rgb,
    /// 0 short, 1 long, 2 bald, 3 fringe, 4 tall/tilted.
    pub hair_style: u32,
    pub eye_dx: f32,
    pub eye_y: f32,
    pub eye_rx: f32,
    pub eye_ry: f32,
    pub iris: Rgb,
    pub brow_gap: f32,
    pub brow_len: f32,
    pub brow_thick: f32,
    pub brow_tilt: f32,
    pub nose_y: f32,
    pub nose_w: f32,
    pub mouth_y: f32,
    pub mouth_hw: f32,
    pub lip: Rgb,
    pub glasses: Option<Rgb>,
    pub earrings: Option<Rgb>,
    pub hat: Option<Rgb>,
    pub beard: bool,
    pub mole: Option<[f32; 2]>,
}

pub fn identity_traits(seed: u64, identity: usize) -> Identity {
    let r = &mut stream(seed, &[SYNTH_FACES, TAG_IDENTITY, identity as u64]);
    const SKINS: [Rgb; 6] = [
        [0.98, 0.84, 0.72],
        [0.93, 0.76, 0.62],
        [0.84, 0.64, 0.48],
        [0.70, 0.50, 0.36],
        [0.52, 0.36, 0.25],
        [0.36, 0.24, 0.17],
    ];
    const HAIRS: [Rgb; 7] = [
        [0.08, 0.07, 0.06],
        [0.25, 0.16, 0.09],
        [0.45, 0.30, 0.16],
        [0.85, 0.72, 0.42],
        [0.65, 0.25, 0.10],
        [0.62, 0.62, 0.62],
        [0.20, 0.30, 0.60],
    ];
    const IRISES: [Rgb; 5] = [
        [0.35, 0.2, 0.1],
        [0.2, 0.45, 0.8],
        [0.25, 0.55, 0.3],
        [0.5, 0.55, 0.6],
        [0.1, 0.08, 0.06],
    ];
    let j = |r: &mut Rng, c: Rgb, a: f32| -> Rgb {
        [
            c[0] + r.gen_range(-a..a),
            c[1] + r.gen_range(-a..a),
            c[2] + r.gen_range(-a..a),
        ]
    };
    let skin = SKINS[r.gen_range(0..SKINS.len())];
    let skin = j(r, skin, 0.04);
    let hair = HAIRS[r.gen_range(0..HAIRS.len())];
    let hair = j(r, hair, 0.05);
    let iris = IRISES[r.gen_range(0..IRISES.len())];
    let iris = j(r, iris, 0.05);
    let eye_y = r.gen_range(-0.15..-0.06);
    let accessory = |r: &mut Rng, p: f64| -> Option<Rgb> {
        r.gen_bool(p).then(|| {
            hsv(
                r.gen_range(0.0..360.0),
                r.gen_range(0.3..0.9),
                r.gen_range(0.2..0.95),
            )
        })
    };
    Identity {
        face_cy: r.gen_range(0.0..0.08),
        face_w: r.gen_range(0.5..0.62),
        face_h: r.gen_range(0.68..0.8),
        brow_power: r.gen_range(1.8..3.0),
        jaw_power: r.gen_range(1.4..2.6),
        skin,
        hair,
        hair_style: r.gen_range(0..5),
        eye_dx: r.gen_range(0.19..0.25),
        eye_y,
        eye_rx: r.gen_range(0.085..0.11),
        eye_ry: r.gen_range(0.05..0.07),
        iris,
        brow_gap: r.gen_range(0.1..0.15),
        brow_len: r.gen_range(0.09..0.14),
        brow_thick: r.gen_range(0.018..0.04),
        brow_tilt: r.gen_range(-0.25..0.25),
        nose_y: r.gen_range(0.12..0.21),
        nose_w: r.gen_range(0.06..0.1),
        mouth_y: r.gen_range(0.33..0.41),
        mouth_hw: r.gen_range(0.13..0.19),
        lip: mix(skin, j(r, [0.75, 0.25, 0.3], 0.08), r.gen_range(0.4..0.8)),
        glasses: accessory(r, 0.25),
        earrings: accessory(r, 0.2),
        hat: accessory(r, 0.15),
        beard: r.gen_bool(0.2),
        mole: r
            .gen_bool(0.3)
            .then(|| [r.gen_range(-0.35..0.35), r.gen_range(0.05..0.3)]),
    }
}

/// Per-image nuisances.
#[derive(Debug, Clone, PartialEq)]
pub struct Variation {
    /// Radians, positive = clockwise on screen.
    pub angle: f32,
    pub scale: f32,
    /// Pixels.
    pub shift: [f32; 2],
    pub mouth_width: f32,
    pub mouth_open: f32,
    pub brow_raise: f32,
    pub eye_open: f32,
    pub light_dir: f32,
    pub light_strength: f32,
    pub brightness: f32,
    pub clothing: Rgb,
    pub background: Paint,
}

pub fn image_variation(seed: u64, identity: usize, k: usize, size: u32) -> Variation {
    let r = &mut stream(seed, &[SYNTH_FACES, TAG_IMAGE, identity as u64, k as u64]);
    let s = size as f32;
    let c = |r: &mut Rng| {
        hsv(
            r.gen_range(0.0..360.0),
            r.gen_range(0.1..0.7),
            r.gen_range(0.2..0.95),
        )
    };
    let (a, b) = (c(r), c(r));
    let background = match r.gen_range(0..5) {
        0 => Paint::Gradient {
            a,
            b,
            angle: r.gen_range(0.0..2.0 * PI),
        },
        1 => Paint::Noise {
            a,
            b,
            scale: r.gen_range(0.15..0.5),
            seed: r.gen(),
        },
        2 => Paint::Stripes {
            a,
            b: mix(a, b, 0.5),
            period: r.gen_range(0.1..0.4),
            angle: r.gen_range(0.0..PI),
        },
        3 => Paint::Checks {
            a,
            b: mix(a, b, 0.5),
            period: r.gen_range(0.1..0.3),
        },
        _ => Paint::Dots {
            a,
            b,
            period: r.gen_range(0.1..0.3),
            radius: r.gen_range(0.15..0.35),
        },
    };
    Variation {
        angle: r.gen_range(-25.0..25.0f32).to_radians(),
        scale: r.gen_range(0.85..1.15),
        shift: [r.gen_range(-0.1..0.1) * s, r.gen_range(-0.1..0.1) * s],
        mouth_width: r.gen_range(0.85..1.2),
        mouth_open: if r.gen_bool(0.4) {
            r.gen_range(0.3..1.0)
        } else {
            0.0
        },
        brow_raise: r.gen_range(-0.02..0.05),
        eye_open: r.gen_range(0.6..1.1),
        light_dir: r.gen_range(0.0..2.0 * PI),
        light_strength: r.gen_range(0.0..0.35),
        brightness: r.gen_range(0.75..1.2),
        clothing: c(r),
        background,
    }
}

/// Canonical frame → pixels for an image of width `size` under a pose.
pub fn canon_to_px(size: u32, angle: f32, scale: f32, shift: [f32; 2]) -> Affine {
    let w = size as f32;
    let (_, y0, side) = mafl_crop_window(size, image_height(size));
    let k = scale * w / 2.0;
    Affine::place(
        k,
        k,
        angle,
        w / 2.0 + shift[0],
        y0 as f32 + side as f32 / 2.0 + shift[1],
    )
}

/// The canonical landmark points (before the pose).
pub fn canonical_landmarks(id: &Identity, v: &Variation) -> Landmarks {
    let hw = id.mouth_hw * v.mouth_width;
    [
        [-id.eye_dx, id.eye_y],
        [id.eye_dx, id.eye_y],
        [0.0, id.nose_y],
        [-hw, id.mouth_y],
        [hw, id.mouth_y],
    ]
}

fn superellipse(w: f32, h: f32, p_top: f32, p_bot: f32) -> Vec<[f32; 2]> {
    (0..48)
        .map(|k| {
            let t = 2.0 * PI * k as f32 / 48.0;
            let (s, c) = t.sin_cos();
            let p = if s < 0.0 { p_top } else { p_bot };
            let e = 2.0 / p;
            [
                w * c.signum() * c.abs().powf(e),
                h * s.signum() * s.abs().powf(e),
            ]
        })
        .collect()
}

/// The layers of one face image and its exact landmarks (pixel coordinates).
///
/// Eye layers carry [`TAG_LEFT_EYE`] / [`TAG_RIGHT_EYE`] and the lips [`TAG_MOUTH`]
/// (see [`Canvas::tags_at_centres`]), so tests can check the landmarks against the drawing.
pub fn face_layers(size: u32, id: &Identity, v: &Variation) -> (Vec<Layer>, Landmarks) {
    let (w, h) = (size as f32, image_height(size) as f32);
    let m = canon_to_px(size, v.angle, v.scale, v.shift);
    let mut layers: Vec<Layer> = Vec::with_capacity(32);
    let mut add = |shape: Shape, paint: Paint, local: Affine, tag: u32| {
        layers.extend(Layer::new(shape, paint, m.after(&local)).map(|l| l.tagged(tag)));
    };
    let at = |sx: f32, sy: f32, angle: f32, x: f32, y: f32| Affine::place(sx, sy, angle, x, y);
    let solid = Paint::Solid;
    let dark = |c: Rgb, k: f32| scale_rgb(c, k);

    let face_top = id.face_cy - id.face_h;
    let brow_y = id.eye_y - id.brow_gap - v.brow_raise;
    let cap_y = id.eye_y - id.brow_gap - 0.09;
    let cap_h = cap_y - face_top + 0.13;

    // Body and back hair.
    add(
        Shape::Disc,
        solid(v.clothing),
        at(0.95, 0.45, 0.0, 0.0, 1.35),
        0,
    );
    add(
        Shape::Rect,
        solid(dark(id.skin, 0.85)),
        at(
            id.face_w * 0.42,
            0.35,
            0.0,
            0.0,
            id.face_cy + id.face_h * 0.8 + 0.1,
        ),
        0,
    );
    match id.hair_style {
        1 => add(
            Shape::Disc,
            solid(id.hair),
            at(
                id.face_w * 1.3,
                id.face_h * 1.25,
                0.0,
                0.0,
                id.face_cy + 0.1,
            ),
            0,
        ),
        2 => {}
        _ => add(
            Shape::Disc,
            solid(id.hair),
            at(
                id.face_w * 1.1,
                id.face_h * 1.05,
                0.0,
                0.0,
                id.face_cy - 0.08,
            ),
            0,
        ),
    }
    // Ears (and earrings) behind the face outline.
    for sx in [-1.0f32, 1.0] {
        add(
            Shape::Disc,
            solid(id.skin),
            at(0.08, 0.12, 0.0, sx * id.face_w * 0.97, id.eye_y + 0.1),
            0,
        );
        if let Some(c) = id.earrings {
            add(
                Shape::Disc,
                solid(c),
                at(0.035, 0.035, 0.0, sx * id.face_w * 0.97, id.eye_y + 0.23),
                0,
            );
        }
    }
    add(
        Shape::Polygon(superellipse(
            id.face_w,
            id.face_h,
            id.brow_power,
            id.jaw_power,
        )),
        solid(id.skin),
        at(1.0, 1.0, 0.0, 0.0, id.face_cy),
        0,
    );
    if id.beard {
        let top = id.nose_y + 0.05;
        let bottom = id.face_cy + id.face_h + 0.04;
        add(
            Shape::Disc,
            solid(id.hair),
            at(
                id.face_w * 0.88,
                (bottom - top) / 2.0,
                0.0,
                0.0,
                (top + bottom) / 2.0 + 0.02,
            ),
            0,
        );
    }
    // Hair cap over the forehead (never down to the eyebrows), optional hat.
    match id.hair_style {
        2 => {
            for sx in [-1.0f32, 1.0] {
                add(
                    Shape::Disc,
                    solid(id.hair),
                    at(0.09, 0.16, 0.0, sx * id.face_w * 0.95, id.eye_y - 0.08),
                    0,
                );
            }
        }
        3 => add(
            Shape::HalfDisc,
            solid(id.hair),
            at(id.face_w * 1.08, cap_h + 0.05, 0.0, 0.0, cap_y + 0.05),
            0,
        ),
        4 => add(
            Shape::HalfDisc,
            solid(id.hair),
            at(id.face_w * 1.1, cap_h * 1.35, 0.12, 0.0, cap_y),
            0,
        ),
        _ => add(
            Shape::HalfDisc,
            solid(id.hair),
            at(id.face_w * 1.08, cap_h, 0.0, 0.0, cap_y),
            0,
        ),
    }
    if let Some(c) = id.hat {
        add(
            Shape::Rect,
            solid(c),
            at(
                id.face_w * 1.0,
                cap_h * 0.45,
                0.0,
                0.0,
                cap_y - cap_h * 0.75,
            ),
            0,
        );
        add(
            Shape::Rect,
            solid(dark(c, 0.8)),
            at(id.face_w * 1.35, 0.045, 0.0, 0.0, cap_y - cap_h * 0.3),
            0,
        );
    }
    // Eyebrows, eyes.
    let hw = id.mouth_hw * v.mouth_width;
    for (sx, tag) in [(-1.0f32, TAG_LEFT_EYE), (1.0, TAG_RIGHT_EYE)] {
        let ex = sx * id.eye_dx;
        add(
            Shape::Rect,
            solid(dark(id.hair, 0.8)),
            at(id.brow_len, id.brow_thick, -sx * id.brow_tilt, ex, brow_y),
            0,
        );
        let ry = id.eye_ry * v.eye_open;
        add(
            Shape::Disc,
            solid([0.95, 0.95, 0.93]),
            at(id.eye_rx, ry, 0.0, ex, id.eye_y),
            tag,
        );
        let ir = (0.6 * id.eye_rx).min(0.95 * ry);
        add(
            Shape::Disc,
            solid(id.iris),
            at(ir, ir, 0.0, ex, id.eye_y),
            tag,
        );
        add(
            Shape::Disc,
            solid([0.03, 0.03, 0.03]),
            at(ir * 0.45, ir * 0.45, 0.0, ex, id.eye_y),
            tag,
        );
    }
    // Nose: a wedge from the bridge to the tip line, nostrils just above the tip.
    let nose = vec![
        [0.0, id.eye_y + 0.06],
        [id.nose_w, id.nose_y],
        [-id.nose_w, id.nose_y],
    ];
    add(
        Shape::Polygon(nose),
        solid(dark(id.skin, 0.86)),
        Affine::IDENTITY,
        0,
    );
    for sx in [-1.0f32, 1.0] {
        add(
            Shape::Disc,
            solid(dark(id.skin, 0.45)),
            at(0.018, 0.014, 0.0, sx * id.nose_w * 0.45, id.nose_y - 0.016),
            0,
        );
    }
    // Mouth: the lip ellipse ends exactly at the two mouth-corner landmarks.
    add(
        Shape::Disc,
        solid(id.lip),
        at(hw, 0.035, 0.0, 0.0, id.mouth_y),
        TAG_MOUTH,
    );
    if v.mouth_open > 0.0 {
        add(
            Shape::Disc,
            solid([0.25, 0.05, 0.06]),
            at(hw * 0.75, 0.03 * v.mouth_open, 0.0, 0.0, id.mouth_y),
            TAG_MOUTH,
        );
    }
    if let Some([mx, my]) = id.mole {
        add(
            Shape::Disc,
            solid(dark(id.skin, 0.35)),
            at(0.02, 0.02, 0.0, mx, my),
            0,
        );
    }
    if let Some(c) = id.glasses {
        for sx in [-1.0f32, 1.0] {
            add(
                Shape::Ring { inner: 0.82 },
                solid(c),
                at(
                    id.eye_rx * 1.75,
                    id.eye_rx * 1.5,
                    0.0,
                    sx * id.eye_dx,
                    id.eye_y,
                ),
                0,
            );
        }
        let gap = id.eye_dx - id.eye_rx * 1.75;
        if gap > 0.0 {
            add(
                Shape::Rect,
                solid(c),
                at(gap, 0.015, 0.0, 0.0, id.eye_y - 0.02),
                0,
            );
        }
    }
    let _ = add; // the closure borrows `layers` mutably: end that borrow here
                 // The background goes below everything, in pixel coordinates.
    let bg = Layer::new(
        Shape::Rect,
        v.background.clone(),
        Affine::place(w / 2.0, h / 2.0, 0.0, w / 2.0, h / 2.0),
    );
    layers.splice(0..0, bg);
    let lm = canonical_landmarks(id, v).map(|p| m.apply(p));
    (layers, lm)
}

/// Render image `k` of `identity`: the 8-bit picture and its exact landmarks.
pub fn render_face(
    seed: u64,
    identity: usize,
    k: usize,
    size: u32,
) -> (image::RgbImage, Landmarks) {
    let id = identity_traits(seed, identity);
    let v = image_variation(seed, identity, k, size);
    let (layers, lm) = face_layers(size, &id, &v);
    let (w, h) = (size, image_height(size));
    let mut canvas = Canvas::render(w, h, [0.5; 3], &layers, SS);
    let (dx, dy) = (v.light_dir.cos(), v.light_dir.sin());
    let (cx, cy, half) = (w as f32 / 2.0, h as f32 / 2.0, w as f32 / 2.0);
    canvas.shade(|x, y| {
        (v.brightness * (1.0 + v.light_strength * ((x - cx) * dx + (y - cy) * dy) / half)).max(0.0)
    });
    (canvas.to_rgb8(), lm)
}

/// What `generate_faces` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct FacesSummary {
    pub images: usize,
    pub identities: usize,
    /// Images in the train / val / test partitions.
    pub partitions: [usize; 3],
    pub mafl_train: usize,
    pub mafl_test: usize,
    /// Train-partition images that are not in MAFL (the pretraining set).
    pub pretrain: usize,
}

pub fn image_name(file_number: usize) -> String {
    format!("{file_number:06}.png")
}

fn landmark_text(names: &[String], lms: &[Landmarks], exact: bool) -> String {
    let mut s = format!("{}\n{}\n", names.len(), LANDMARK_COLUMNS.join(" "));
    for (n, lm) in names.iter().zip(lms) {
        s.push_str(n);
        for p in lm {
            if exact {
                s.push_str(&format!(" {:>8.2} {:>8.2}", p[0], p[1]));
            } else {
                // The real file's layout: x right-aligned in 6, y in 5 columns.
                s.push_str(&format!(
                    "{:>6}{:>5}",
                    p[0].round() as i64,
                    p[1].round() as i64
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// Generate the whole set under `out` (see the module docs for the layout).
pub fn generate_faces(cfg: &FacesConfig, out: &Path) -> Result<FacesSummary, DataError> {
    if cfg.size < 16 {
        return Err(DataError::Config(format!(
            "--size {}: faces need at least 16 pixels",
            cfg.size
        )));
    }
    let n = cfg.identities * cfg.per_identity;
    if n < 20 || cfg.identities == 0 {
        return Err(DataError::Config(format!(
            "--identities {} --per-identity {} gives {n} images; at least 20 are needed for the partitions and MAFL lists",
            cfg.identities, cfg.per_identity
        )));
    }
    let order = permutation(n, &mut stream(cfg.seed, &[SYNTH_FACES, TAG_ORDER]));
    let img_dir = out.join(CELEBA_IMAGE_DIR);
    create_dir(&img_dir)?;
    create_dir(&out.join(MAFL_DIR))?;
    // Position `p` in file order (file number p + 1) holds image order[p].
    let lms: Vec<Landmarks> = order
        .par_iter()
        .enumerate()
        .map(|(p, &g)| {
            let (img, lm) = render_face(
                cfg.seed,
                g / cfg.per_identity,
                g % cfg.per_identity,
                cfg.size,
            );
            let path = img_dir.join(image_name(p + 1));
            let bytes = super::draw::png_bytes(&img).map_err(|e| DataError::Decode {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            write_image_file(&path, &bytes)?;
            Ok(lm)
        })
        .collect::<Result<_, DataError>>()?;
    let names: Vec<String> = (1..=n).map(image_name).collect();

    let mut ids = String::new();
    for (name, &g) in names.iter().zip(&order) {
        ids.push_str(&format!("{name} {}\n", g / cfg.per_identity + 1));
    }
    let parts = split_counts(n, PARTITION_FRACTIONS);
    let mut partition = String::new();
    let mut code_of = Vec::with_capacity(n);
    for (p, name) in names.iter().enumerate() {
        let code = if p < parts[0] {
            0
        } else if p < parts[0] + parts[1] {
            1
        } else {
            2
        };
        code_of.push(code);
        partition.push_str(&format!("{name} {code}\n"));
    }
    let [n_test, n_train, _] = split_counts(n, [MAFL_FRACTIONS[0], MAFL_FRACTIONS[1], 1.0]);
    let mafl = permutation(n, &mut stream(cfg.seed, &[SYNTH_FACES, TAG_MAFL]));
    let mut test: Vec<usize> = mafl[..n_test].to_vec();
    let mut train: Vec<usize> = mafl[n_test..n_test + n_train].to_vec();
    test.sort_unstable();
    train.sort_unstable();
    let list = |v: &[usize]| {
        v.iter()
            .map(|&p| format!("{}\n", names[p]))
            .collect::<String>()
    };
    let in_mafl: std::collections::HashSet<usize> = test.iter().chain(&train).copied().collect();
    let pretrain = (0..n)
        .filter(|p| code_of[*p] == 0 && !in_mafl.contains(p))
        .count();

    write_list_file(&out.join(MAFL_DIR).join(MAFL_TRAIN_FILE), &list(&train))?;
    write_list_file(&out.join(MAFL_DIR).join(MAFL_TEST_FILE), &list(&test))?;
    write_list_file(
        &out.join(SYNTH_EXACT_LANDMARK_FILE),
        &landmark_text(&names, &lms, true),
    )?;
    write_list_file(
        &out.join(LANDMARK_FILE),
        &landmark_text(&names, &lms, false),
    )?;
    write_list_file(&out.join(PARTITION_FILE), &partition)?;
    write_list_file(&out.join(IDENTITY_FILE), &ids)?;
    Ok(FacesSummary {
        images: n,
        identities: cfg.identities,
        partitions: parts,
        mafl_train: train.len(),
        mafl_test: test.len(),
        pretrain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn height_follows_the_celeba_aspect() {
        assert_eq!(image_height(178), 218);
        assert_eq!(image_height(48), 59);
        assert_eq!(image_height(32), 39);
    }

    #[test]
    fn pose_transform_matches_a_hand_computed_rotation() {
        // W = 48, H = 59: crop y0 = 8, crop centre (24, 32); unit = 24 px.
        // Rotating (u, v) = (-0.2, -0.1) by +90°: (x, y) -> (-y, x) = (0.1, -0.2) -> (2.4, -4.8) px.
        let m = canon_to_px(48, PI / 2.0, 1.0, [0.0, 0.0]);
        let p = m.apply([-0.2, -0.1]);
        assert!(
            (p[0] - 26.4).abs() < 1e-4 && (p[1] - 27.2).abs() < 1e-4,
            "{p:?}"
        );
        // Scale 1.1, no rotation, shift (1, -2): (0.5, 0.5) -> 24 + 13.2 + 1, 32 + 13.2 - 2.
        let q = canon_to_px(48, 0.0, 1.1, [1.0, -2.0]).apply([0.5, 0.5]);
        assert!(
            (q[0] - 38.2).abs() < 1e-4 && (q[1] - 43.2).abs() < 1e-4,
            "{q:?}"
        );
    }

    #[test]
    fn eye_and_mouth_landmarks_sit_at_the_centre_of_the_drawn_features() {
        // Large render so the centroid of the tagged pixels is precise.
        let size = 128;
        for (ident, k) in [(0, 0), (1, 3), (2, 5), (7, 1)] {
            let id = identity_traits(11, ident);
            let v = image_variation(11, ident, k, size);
            let (layers, lm) = face_layers(size, &id, &v);
            let tags = Canvas::tags_at_centres(size, image_height(size), &layers);
            for (tag, want) in [(TAG_LEFT_EYE, lm[0]), (TAG_RIGHT_EYE, lm[1])] {
                let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
                for (i, &t) in tags.iter().enumerate() {
                    if t == tag {
                        sx += (i as u32 % size) as f32 + 0.5;
                        sy += (i as u32 / size) as f32 + 0.5;
                        n += 1.0;
                    }
                }
                assert!(n > 10.0, "eye barely visible");
                let (cx, cy) = (sx / n, sy / n);
                assert!(
                    (cx - want[0]).abs() < 0.35 && (cy - want[1]).abs() < 0.35,
                    "tag {tag}: {cx},{cy} vs {want:?}"
                );
            }
            // The mouth corners are the ends of the lip ellipse: their midpoint is its centroid
            // and their distance its length along the mouth axis.
            let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
            let mid = [(lm[3][0] + lm[4][0]) / 2.0, (lm[3][1] + lm[4][1]) / 2.0];
            let axis = [(lm[4][0] - lm[3][0]), (lm[4][1] - lm[3][1])];
            let half = axis[0].hypot(axis[1]) / 2.0;
            let mut extent: f32 = 0.0;
            for (i, &t) in tags.iter().enumerate() {
                if t == TAG_MOUTH {
                    let (x, y) = (
                        (i as u32 % size) as f32 + 0.5,
                        (i as u32 / size) as f32 + 0.5,
                    );
                    sx += x;
                    sy += y;
                    n += 1.0;
                    extent = extent.max(
                        ((x - mid[0]) * axis[0] + (y - mid[1]) * axis[1]).abs() / (2.0 * half),
                    );
                }
            }
            assert!((sx / n - mid[0]).abs() < 0.35 && (sy / n - mid[1]).abs() < 0.35);
            assert!(
                extent <= half + 0.01 && extent > half - 1.0,
                "{extent} vs {half}"
            );
        }
    }

    #[test]
    fn identity_traits_persist_and_poses_vary() {
        assert_eq!(identity_traits(5, 3), identity_traits(5, 3));
        assert_ne!(identity_traits(5, 3), identity_traits(5, 4));
        let a = image_variation(5, 3, 0, 48);
        let b = image_variation(5, 3, 1, 48);
        assert_ne!(a.angle, b.angle);
        for k in 0..50 {
            let v = image_variation(5, 1, k, 48);
            assert!(v.angle.abs() <= 25f32.to_radians() && (0.85..=1.15).contains(&v.scale));
            assert!(v.shift.iter().all(|s| s.abs() <= 4.8));
        }
    }

    #[test]
    fn rounded_landmark_file_uses_the_real_layout() {
        let t = landmark_text(
            &["000001.png".into()],
            &[[
                [69.2, 109.0],
                [106.0, 113.0],
                [77.0, 142.0],
                [73.0, 152.0],
                [108.0, 154.0],
            ]],
            false,
        );
        let want = "1\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n\
                    000001.png    69  109   106  113    77  142    73  152   108  154\n";
        assert_eq!(t, want);
    }
}
