//! Synthetic mini-ImageNet: procedurally drawn object categories.
//!
//! A class is a combination of four factors — shape family (10), texture (6), palette (10) and
//! part structure (5). Classes are drawn from the 300 combinations satisfying
//! `palette = (shape + texture + parts) mod 10`: any two such combinations differ in at least two
//! factors, so every class — and in particular every novel (test) class — combines factor
//! values in a way no base class does, while the factor values themselves are shared across the
//! splits. Instances vary position, scale, rotation, aspect/shear, per-vertex deformation,
//! colour (jitter within the palette), texture phase/scale, background, clutter (distractor
//! shapes behind the object) and occlusion (a distractor in front of it).
//!
//! **Alignment** (`--alignment A`, a controlled experiment for the paper's §3–4 argument).
//! Base (train) classes are always defined by the four *object* factors above, while the scene
//! around the object — the backdrop pattern, the backdrop hue and the family of the clutter
//! shapes — varies freely within each of them: base labels teach a supervised model to ignore
//! it. The novel (val and test) classes are split by `A`: a fraction `A` of them are defined by
//! object factors as the base classes are (scene free), the other `1 − A` by a *scene*
//! combination ([`SceneSpec`]: backdrop × hue × clutter family), their object drawn at random per
//! image from all admissible factor combinations. `A = 1` is the aligned task (identical output
//! to the generator before the knob); `A = 0` is the misaligned one, whose labels are exactly
//! what the base labels call nuisance. Which novel classes are scene-defined is spread evenly
//! over the split (class `j` when ⌊(j+1)(1−A)⌋ > ⌊j(1−A)⌋). The train split — images and lists —
//! does not depend on `A`, so one pretraining serves every alignment. The knob and its values
//! were fixed before any result was seen; nothing here is tuned to the paper's expectation.
//!
//! Output (`DIR`): `images/<class><8-digit instance>.png` (as in the real
//! `n0153282900000005.jpg`), `train.csv` / `val.csv` / `test.csv` with header `filename,label`
//! and class names `s0000`, `s0001`, ... Classes are split 64 % / 16 % / 20 % in class order
//! (100 → 64/16/20).
use super::draw::{hsv, mix, Affine, Canvas, Layer, Paint, Rgb, Shape};
use super::{create_dir, permutation, split_counts, write_image_file, write_list_file};
use crate::mini_imagenet::IMAGE_DIR;
use crate::rng::{purpose::SYNTH_OBJECTS, stream, Rng};
use crate::{DataError, Split};
use rand::Rng as _;
use rayon::prelude::*;
use std::f32::consts::PI;
use std::path::Path;

pub const NUM_SHAPES: usize = 10;
pub const NUM_TEXTURES: usize = 6;
pub const NUM_PALETTES: usize = 10;
pub const NUM_PARTS: usize = 5;
/// The number of admissible classes (see the module docs).
pub const MAX_CLASSES: usize = NUM_SHAPES * NUM_TEXTURES * NUM_PARTS;
/// Train / val / test class fractions (mini-ImageNet's 64/16/20).
pub const SPLIT_FRACTIONS: [f64; 3] = [0.64, 0.16, 0.20];
/// Supersampling grid per pixel.
const SS: u32 = 3;
// Sub-purposes under `SYNTH_OBJECTS`.
const TAG_CLASSES: u64 = 0;
const TAG_IMAGE: u64 = 1;
const TAG_SCENES: u64 = 2;

/// `host-trainer synth objects` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectsConfig {
    pub classes: usize,
    pub per_class: usize,
    pub size: u32,
    pub seed: u64,
    /// Fraction of the novel classes defined by object factors (see the module docs); 1 = all.
    pub alignment: f64,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        ObjectsConfig {
            classes: 100,
            per_class: 60,
            size: 32,
            seed: 0,
            alignment: 1.0,
        }
    }
}

/// The factor values defining one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassSpec {
    pub shape: usize,
    pub texture: usize,
    pub palette: usize,
    pub parts: usize,
}

impl ClassSpec {
    /// Number of factors in which two classes differ.
    pub fn distance(&self, o: &ClassSpec) -> usize {
        (self.shape != o.shape) as usize
            + (self.texture != o.texture) as usize
            + (self.palette != o.palette) as usize
            + (self.parts != o.parts) as usize
    }
}

/// Backdrop patterns (gradient, noise, stripes, checks), backdrop hues and clutter families of a
/// scene-defined class.
pub const NUM_BACKDROPS: usize = 4;
pub const NUM_HUES: usize = 10;
pub const NUM_CLUTTER: usize = NUM_SHAPES;

/// The scene factors defining a misaligned novel class. `hue` is a check digit of the other two
/// (`(backdrop + clutter) mod NUM_HUES`), so two scene classes differ in at least two factors,
/// as object classes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SceneSpec {
    pub backdrop: usize,
    pub hue: usize,
    pub clutter: usize,
}

/// What defines a class: its object (base classes, aligned novel classes) or its scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassDef {
    Object(ClassSpec),
    Scene(SceneSpec),
}

/// Whether novel class `j` (0-based within the novel classes) is scene-defined at `alignment`.
pub fn is_scene_class(j: usize, alignment: f64) -> bool {
    let m = (1.0 - alignment).clamp(0.0, 1.0);
    ((j + 1) as f64 * m + 1e-9).floor() > (j as f64 * m + 1e-9).floor()
}

/// The definitions of classes `0..n` at `alignment`: the object classes of [`class_specs`], with
/// the novel ones that [`is_scene_class`] picks replaced by distinct scene combinations.
pub fn class_defs(seed: u64, n: usize, alignment: f64) -> Result<Vec<ClassDef>, DataError> {
    if !(0.0..=1.0).contains(&alignment) {
        return Err(DataError::Config(format!(
            "--alignment {alignment}: must be in [0, 1]"
        )));
    }
    let specs = class_specs(seed, n)?;
    let n_train = split_counts(n, SPLIT_FRACTIONS)[0];
    let mut pool = Vec::with_capacity(NUM_BACKDROPS * NUM_CLUTTER);
    for backdrop in 0..NUM_BACKDROPS {
        for clutter in 0..NUM_CLUTTER {
            pool.push(SceneSpec {
                backdrop,
                hue: (backdrop + clutter) % NUM_HUES,
                clutter,
            });
        }
    }
    let order = permutation(pool.len(), &mut stream(seed, &[SYNTH_OBJECTS, TAG_SCENES]));
    let mut next_scene = order.into_iter().map(|i| pool[i]);
    let mut out = Vec::with_capacity(n);
    for (c, spec) in specs.into_iter().enumerate() {
        if c >= n_train && is_scene_class(c - n_train, alignment) {
            let scene = next_scene.next().ok_or_else(|| {
                DataError::Config(format!(
                    "--classes {n} --alignment {alignment}: more than {} scene-defined classes",
                    NUM_BACKDROPS * NUM_CLUTTER
                ))
            })?;
            out.push(ClassDef::Scene(scene));
        } else {
            out.push(ClassDef::Object(spec));
        }
    }
    Ok(out)
}

pub fn class_name(class: usize) -> String {
    format!("s{class:04}")
}

pub fn image_file_name(class: usize, instance: usize) -> String {
    format!("{}{instance:08}.png", class_name(class))
}

/// Class counts of the three splits; an error if any would be empty.
pub fn class_split(classes: usize) -> Result<[usize; 3], DataError> {
    let c = split_counts(classes, SPLIT_FRACTIONS);
    if c.contains(&0) {
        return Err(DataError::Config(format!(
            "--classes {classes} splits into {}/{}/{} (64%/16%/20%): every split needs at least one class",
            c[0], c[1], c[2]
        )));
    }
    Ok(c)
}

/// The factor combinations of classes `0..n` (train classes first, then val, then test).
pub fn class_specs(seed: u64, n: usize) -> Result<Vec<ClassSpec>, DataError> {
    if n > MAX_CLASSES {
        return Err(DataError::Config(format!(
            "--classes {n}: at most {MAX_CLASSES} distinct classes"
        )));
    }
    // The palette is a check digit of the other three factors modulo NUM_PALETTES (the largest
    // range): changing any single factor changes the palette too, so classes differ in >= 2.
    let mut pool = Vec::with_capacity(MAX_CLASSES);
    for shape in 0..NUM_SHAPES {
        for texture in 0..NUM_TEXTURES {
            for parts in 0..NUM_PARTS {
                let palette = (shape + texture + parts) % NUM_PALETTES;
                pool.push(ClassSpec {
                    shape,
                    texture,
                    palette,
                    parts,
                });
            }
        }
    }
    let order: Vec<ClassSpec> =
        permutation(pool.len(), &mut stream(seed, &[SYNTH_OBJECTS, TAG_CLASSES]))
            .into_iter()
            .map(|i| pool[i])
            .collect();
    // Base (train) classes are picked so that, room permitting, they cover every factor value:
    // first the classes (in shuffled order) that add an uncovered value, then the rest in order.
    let n_train = split_counts(n, SPLIT_FRACTIONS)[0];
    let mut covered = [[false; 10]; 4];
    let mut taken = vec![false; order.len()];
    let mut out = Vec::with_capacity(n);
    for (k, c) in order.iter().enumerate() {
        if out.len() == n_train {
            break;
        }
        let f = [c.shape, c.texture, c.palette, c.parts];
        if (0..4).any(|j| !covered[j][f[j]]) {
            (0..4).for_each(|j| covered[j][f[j]] = true);
            taken[k] = true;
            out.push(*c);
        }
    }
    for (k, c) in order.iter().enumerate() {
        if out.len() == n {
            break;
        }
        if !taken[k] {
            out.push(*c);
        }
    }
    Ok(out)
}

/// Palettes: (primary, secondary, accent).
const PALETTES: [[Rgb; 3]; NUM_PALETTES] = [
    [[0.85, 0.15, 0.10], [0.95, 0.85, 0.20], [0.10, 0.10, 0.10]],
    [[0.15, 0.30, 0.85], [0.95, 0.95, 0.95], [0.95, 0.55, 0.10]],
    [[0.15, 0.65, 0.20], [0.45, 0.30, 0.15], [0.95, 0.90, 0.30]],
    [[0.55, 0.20, 0.70], [0.95, 0.60, 0.75], [0.20, 0.70, 0.30]],
    [[0.95, 0.50, 0.10], [0.10, 0.15, 0.40], [0.95, 0.95, 0.95]],
    [[0.20, 0.80, 0.85], [0.80, 0.20, 0.60], [0.15, 0.15, 0.20]],
    [[0.12, 0.12, 0.12], [0.92, 0.92, 0.92], [0.85, 0.10, 0.10]],
    [[0.50, 0.33, 0.18], [0.90, 0.82, 0.60], [0.10, 0.40, 0.15]],
    [[0.95, 0.50, 0.60], [0.60, 0.80, 0.95], [0.45, 0.15, 0.55]],
    [[0.95, 0.90, 0.15], [0.10, 0.50, 0.50], [0.80, 0.15, 0.15]],
];

/// The outline of a shape family in local coordinates (roughly the unit disc).
pub fn family_outline(shape: usize) -> Vec<[f32; 2]> {
    let polar = |n: usize, r: &dyn Fn(usize) -> f32, a0: f32| -> Vec<[f32; 2]> {
        (0..n)
            .map(|k| {
                let a = a0 + 2.0 * PI * k as f32 / n as f32;
                [r(k) * a.cos(), r(k) * a.sin()]
            })
            .collect()
    };
    match shape % NUM_SHAPES {
        0 => polar(40, &|_| 1.0, 0.0),
        1 => polar(3, &|_| 1.0, -PI / 2.0),
        2 => polar(4, &|_| 1.0, PI / 4.0),
        3 => polar(6, &|_| 1.0, 0.0),
        4 => polar(10, &|k| if k % 2 == 0 { 1.0 } else { 0.45 }, -PI / 2.0),
        5 => {
            let (w, l) = (0.33, 1.0);
            vec![
                [-w, -l],
                [w, -l],
                [w, -w],
                [l, -w],
                [l, w],
                [w, w],
                [w, l],
                [-w, l],
                [-w, w],
                [-l, w],
                [-l, -w],
                [-w, -w],
            ]
        }
        6 => vec![
            [-1.0, -0.3],
            [0.1, -0.3],
            [0.1, -0.75],
            [1.0, 0.0],
            [0.1, 0.75],
            [0.1, 0.3],
            [-1.0, 0.3],
        ],
        7 => vec![
            [-0.64, -0.8],
            [-0.16, -0.8],
            [-0.16, 0.32],
            [0.64, 0.32],
            [0.64, 0.8],
            [-0.64, 0.8],
        ],
        8 => {
            // Crescent: outer unit arc through +x, back along an inner arc of the circle
            // centred (-0.2, 0) through the same end points.
            let n = 24;
            let a_end = 0.8 * PI;
            let (ex, ey) = (a_end.cos(), a_end.sin());
            let (c, r) = (-0.2f32, ((ex + 0.2).powi(2) + ey * ey).sqrt());
            let phi = ey.atan2(ex - c);
            let mut v: Vec<[f32; 2]> = (0..=n)
                .map(|k| {
                    let a = -a_end + 2.0 * a_end * k as f32 / n as f32;
                    [a.cos(), a.sin()]
                })
                .collect();
            v.extend((1..n).map(|k| {
                let a = phi - 2.0 * phi * k as f32 / n as f32;
                [c + r * a.cos(), r * a.sin()]
            }));
            v
        }
        _ => (0..40)
            .map(|k| {
                let t = 2.0 * PI * k as f32 / 40.0;
                let x = 16.0 * t.sin().powi(3);
                let y = -(13.0 * t.cos()
                    - 5.0 * (2.0 * t).cos()
                    - 2.0 * (3.0 * t).cos()
                    - (4.0 * t).cos());
                [x / 17.0, (y - 2.5) / 16.0]
            })
            .collect(),
    }
}

fn jitter_colour(r: &mut Rng, c: Rgb) -> Rgb {
    let k = r.gen_range(0.85..1.15f32);
    [
        (c[0] + r.gen_range(-0.06..0.06f32)) * k,
        (c[1] + r.gen_range(-0.06..0.06f32)) * k,
        (c[2] + r.gen_range(-0.06..0.06f32)) * k,
    ]
}

fn texture_paint(r: &mut Rng, texture: usize, a: Rgb, b: Rgb) -> Paint {
    let period = r.gen_range(0.35..0.55f32);
    match texture % NUM_TEXTURES {
        0 => Paint::Solid(a),
        1 => Paint::Stripes {
            a,
            b,
            period,
            angle: r.gen_range(0.0..PI),
        },
        2 => Paint::Checks {
            a,
            b,
            period: period * 0.6,
        },
        3 => Paint::Dots {
            a,
            b,
            period: period * 0.9,
            radius: r.gen_range(0.22..0.32),
        },
        4 => Paint::Noise {
            a,
            b,
            scale: period * 0.9,
            seed: r.gen(),
        },
        _ => Paint::Rings {
            a,
            b,
            period: period * 0.8,
        },
    }
}

fn random_colour(r: &mut Rng, sat: std::ops::Range<f32>, val: std::ops::Range<f32>) -> Rgb {
    hsv(r.gen_range(0.0..360.0), r.gen_range(sat), r.gen_range(val))
}

/// A random shape of random family, colour and texture: clutter and occluders.
fn distractor(r: &mut Rng, radius: f32, cx: f32, cy: f32, family: Option<usize>) -> Option<Layer> {
    let drawn = r.gen_range(0..NUM_SHAPES);
    let fam = family.unwrap_or(drawn);
    let a = random_colour(r, 0.2..0.8, 0.3..0.95);
    let b = random_colour(r, 0.2..0.8, 0.3..0.95);
    let tex = if r.gen_bool(0.5) {
        0
    } else {
        r.gen_range(1..NUM_TEXTURES)
    };
    let paint = texture_paint(r, tex, a, b);
    let asp = r.gen_range(-0.3..0.3f32).exp();
    let place = Affine::place(
        radius * asp,
        radius / asp,
        r.gen_range(0.0..2.0 * PI),
        cx,
        cy,
    );
    Layer::new(Shape::Polygon(family_outline(fam)), paint, place)
}

/// Render instance `instance` of class `class` (defined by `def`) at `size × size`.
pub fn render_object(
    seed: u64,
    class: usize,
    def: &ClassDef,
    instance: usize,
    size: u32,
) -> image::RgbImage {
    let r = &mut stream(
        seed,
        &[SYNTH_OBJECTS, TAG_IMAGE, class as u64, instance as u64],
    );
    let s = size as f32;
    let mut layers: Vec<Layer> = Vec::with_capacity(16);
    // A scene-defined class fixes the scene and draws its object; an object-defined class draws
    // its scene (with exactly the draws of the generator before scene classes existed).
    let scene = match def {
        ClassDef::Scene(sc) => Some(*sc),
        ClassDef::Object(_) => None,
    };

    // Background: a dull gradient, noise or low-contrast pattern over the whole picture; a scene
    // class's backdrop has its hue (both colours within ±12° of it) and its pattern.
    let mut bg_a = random_colour(r, 0.05..0.4, 0.3..0.9);
    let mut bg_b = mix(
        bg_a,
        random_colour(r, 0.05..0.4, 0.3..0.9),
        r.gen_range(0.3..1.0),
    );
    // (i32, as before the knob: the type decides how many random bits the draw takes.)
    let drawn_kind: i32 = r.gen_range(0..4);
    let kind = scene.map_or(drawn_kind, |sc| sc.backdrop as i32);
    if let Some(sc) = scene {
        let h = 360.0 * sc.hue as f32 / NUM_HUES as f32;
        bg_a = hsv(
            h + r.gen_range(-12.0..12.0),
            r.gen_range(0.35..0.6),
            r.gen_range(0.45..0.9),
        );
        bg_b = hsv(
            h + r.gen_range(-12.0..12.0),
            r.gen_range(0.35..0.6),
            r.gen_range(0.3..0.7),
        );
    }
    let bg = match kind {
        0 => Paint::Gradient {
            a: bg_a,
            b: bg_b,
            angle: r.gen_range(0.0..2.0 * PI),
        },
        1 => Paint::Noise {
            a: bg_a,
            b: bg_b,
            scale: r.gen_range(0.2..0.6),
            seed: r.gen(),
        },
        2 => Paint::Stripes {
            a: bg_a,
            b: mix(bg_a, bg_b, 0.4),
            period: r.gen_range(0.15..0.4),
            angle: r.gen_range(0.0..PI),
        },
        _ => Paint::Checks {
            a: bg_a,
            b: mix(bg_a, bg_b, 0.4),
            period: r.gen_range(0.1..0.3),
        },
    };
    layers.extend(Layer::new(
        Shape::Rect,
        bg,
        Affine::place(s / 2.0, s / 2.0, 0.0, s / 2.0, s / 2.0),
    ));

    // Clutter behind the object (a scene class: 2–3 shapes of its family).
    let clutter = scene.map(|sc| sc.clutter);
    let n_clutter = if scene.is_some() {
        r.gen_range(2..=3)
    } else {
        r.gen_range(0..=3)
    };
    for _ in 0..n_clutter {
        let rad = s * r.gen_range(0.07..0.16);
        let (x, y) = (r.gen_range(0.0..s), r.gen_range(0.0..s));
        layers.extend(distractor(r, rad, x, y, clutter));
    }
    let spec = match def {
        ClassDef::Object(spec) => *spec,
        ClassDef::Scene(_) => {
            let (shape, texture, parts) = (
                r.gen_range(0..NUM_SHAPES),
                r.gen_range(0..NUM_TEXTURES),
                r.gen_range(0..NUM_PARTS),
            );
            ClassSpec {
                shape,
                texture,
                palette: (shape + texture + parts) % NUM_PALETTES,
                parts,
            }
        }
    };

    // The object: placement, deformation, colours.
    let radius = s * r.gen_range(0.22..0.34);
    let cx = s * (0.5 + r.gen_range(-0.14..0.14));
    let cy = s * (0.5 + r.gen_range(-0.14..0.14));
    let asp = r.gen_range(-0.2..0.2f32).exp();
    let shear = Affine {
        b: r.gen_range(-0.25..0.25),
        ..Affine::IDENTITY
    };
    let place =
        Affine::place(radius * asp, radius / asp, r.gen_range(-0.6..0.6), cx, cy).after(&shear);
    let pal = PALETTES[spec.palette % NUM_PALETTES];
    let (ca, cb, cc) = (
        jitter_colour(r, pal[0]),
        jitter_colour(r, pal[1]),
        jitter_colour(r, pal[2]),
    );
    let outline: Vec<[f32; 2]> = family_outline(spec.shape)
        .into_iter()
        .map(|p| {
            let k = 1.0 + r.gen_range(-0.07..0.07f32);
            [p[0] * k, p[1] * k]
        })
        .collect();
    let body_paint = texture_paint(r, spec.texture, ca, cb);
    let part =
        |shape: Shape, paint: Paint, local: Affine| Layer::new(shape, paint, place.after(&local));

    // Parts behind the body.
    match spec.parts % NUM_PARTS {
        1 => {
            for sx in [-1.0, 1.0] {
                layers.extend(part(
                    Shape::Disc,
                    Paint::Solid(cc),
                    Affine::place(0.3, 0.3, 0.0, 0.55 * sx, -0.85),
                ));
            }
        }
        2 => layers.extend(part(
            Shape::Rect,
            Paint::Solid(cc),
            Affine::place(0.14, 0.4, 0.0, 0.0, 1.2),
        )),
        4 => layers.extend(part(
            Shape::Ring { inner: 0.82 },
            Paint::Solid(cc),
            Affine::place(1.3, 1.3, 0.0, 0.0, 0.0),
        )),
        _ => {}
    }
    layers.extend(Layer::new(Shape::Polygon(outline), body_paint, place));
    if spec.parts % NUM_PARTS == 3 {
        layers.extend(part(
            Shape::Disc,
            Paint::Solid(cc),
            Affine::place(0.26, 0.26, 0.0, 0.1, -0.1),
        ));
    }

    // Occlusion: sometimes a distractor in front, overlapping the object.
    if r.gen_bool(0.35) {
        let a = r.gen_range(0.0..2.0 * PI);
        let d = radius * r.gen_range(0.6..1.1);
        let rad = s * r.gen_range(0.1..0.18);
        layers.extend(distractor(r, rad, cx + d * a.cos(), cy + d * a.sin(), None));
    }
    Canvas::render(size, size, [0.5; 3], &layers, SS).to_rgb8()
}

/// What `generate_objects` wrote: `(classes, images)` per split, in [`Split::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectsSummary {
    pub per_split: [(usize, usize); 3],
}

/// Generate the whole set under `out` (see the module docs for the layout).
pub fn generate_objects(cfg: &ObjectsConfig, out: &Path) -> Result<ObjectsSummary, DataError> {
    if cfg.size < 8 {
        return Err(DataError::Config(format!(
            "--size {}: objects need at least 8 pixels",
            cfg.size
        )));
    }
    if cfg.per_class == 0 {
        return Err(DataError::Config("--per-class must be at least 1".into()));
    }
    let counts = class_split(cfg.classes)?;
    let specs = class_defs(cfg.seed, cfg.classes, cfg.alignment)?;
    let img_dir = out.join(IMAGE_DIR);
    create_dir(&img_dir)?;
    let jobs: Vec<(usize, usize)> = (0..cfg.classes)
        .flat_map(|c| (0..cfg.per_class).map(move |i| (c, i)))
        .collect();
    jobs.par_iter().try_for_each(|&(c, i)| {
        let img = render_object(cfg.seed, c, &specs[c], i, cfg.size);
        let path = img_dir.join(image_file_name(c, i));
        let bytes = super::draw::png_bytes(&img).map_err(|e| DataError::Decode {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        write_image_file(&path, &bytes)
    })?;
    let mut first = 0;
    let mut per_split = [(0, 0); 3];
    for (k, split) in Split::ALL.iter().enumerate() {
        let mut csv = String::from("filename,label\n");
        for c in first..first + counts[k] {
            for i in 0..cfg.per_class {
                csv.push_str(&format!("{},{}\n", image_file_name(c, i), class_name(c)));
            }
        }
        write_list_file(&out.join(split.file_name()), &csv)?;
        per_split[k] = (counts[k], counts[k] * cfg.per_class);
        first += counts[k];
    }
    Ok(ObjectsSummary { per_split })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_distinct_in_at_least_two_factors() {
        let specs = class_specs(3, 100).unwrap();
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                assert!(a.distance(b) >= 2, "{a:?} {b:?}");
            }
        }
        // Deterministic in the seed, different across seeds.
        assert_eq!(specs, class_specs(3, 100).unwrap());
        assert_ne!(specs, class_specs(4, 100).unwrap());
        assert!(class_specs(0, MAX_CLASSES + 1).is_err());
    }

    #[test]
    fn novel_factor_values_are_seen_in_base_classes() {
        // The test classes' individual factor values all occur in train, only their
        // combinations are new (checked for several seeds: it holds by construction).
        for seed in 0..20 {
            let specs = class_specs(seed, 100).unwrap();
            let (train, test) = (&specs[..64], &specs[64..]);
            for t in test {
                assert!(train.iter().any(|b| b.shape == t.shape));
                assert!(train.iter().any(|b| b.texture == t.texture));
                assert!(train.iter().any(|b| b.palette == t.palette));
                assert!(train.iter().any(|b| b.parts == t.parts));
                assert!(!train.contains(t));
            }
        }
    }

    #[test]
    fn split_sizes_and_errors() {
        assert_eq!(class_split(100).unwrap(), [64, 16, 20]);
        assert_eq!(class_split(10).unwrap(), [6, 2, 2]);
        let e = class_split(3).unwrap_err().to_string();
        assert!(e.contains("--classes 3"), "{e}");
    }

    #[test]
    fn alignment_picks_scene_classes_evenly_and_leaves_base_classes_alone() {
        let count = |a: f64| (0..20).filter(|&j| is_scene_class(j, a)).count();
        assert_eq!(
            (count(1.0), count(0.5), count(0.0), count(0.75)),
            (0, 10, 20, 5)
        );
        // Every other class at 0.5.
        assert!((0..20).all(|j| is_scene_class(j, 0.5) == (j % 2 == 1)));
        let objects = class_defs(5, 100, 1.0).unwrap();
        for a in [0.0, 0.5] {
            let d = class_defs(5, 100, a).unwrap();
            // Base classes and the object-defined novel classes keep their definitions.
            assert_eq!(d[..64], objects[..64]);
            let mut scenes = Vec::new();
            for (c, (x, o)) in d.iter().zip(&objects).enumerate().skip(64) {
                match x {
                    ClassDef::Object(_) => assert_eq!(x, o, "class {c}"),
                    ClassDef::Scene(sc) => scenes.push(*sc),
                }
            }
            assert_eq!(scenes.len(), 36 - (36.0 * a) as usize);
            // Distinct in at least two of the three scene factors.
            for (i, p) in scenes.iter().enumerate() {
                assert_eq!(p.hue, (p.backdrop + p.clutter) % NUM_HUES);
                for q in &scenes[i + 1..] {
                    let diff = (p.backdrop != q.backdrop) as usize
                        + (p.hue != q.hue) as usize
                        + (p.clutter != q.clutter) as usize;
                    assert!(diff >= 2, "{p:?} {q:?}");
                }
            }
        }
        assert!(class_defs(5, 100, 1.5).is_err());
    }

    #[test]
    fn a_scene_class_fixes_the_scene_and_varies_the_object() {
        let sc = ClassDef::Scene(SceneSpec {
            backdrop: 2,
            hue: 7,
            clutter: 5,
        });
        let a = render_object(1, 80, &sc, 0, 32);
        let b = render_object(1, 80, &sc, 1, 32);
        assert_ne!(a, b);
        // The backdrop is saturated around hue 252° (7/10 of the circle): the corner pixels (scene,
        // rarely covered) are blue-violet far more often than in object-defined images.
        let bluish = |img: &image::RgbImage| {
            let p = img.get_pixel(0, 0).0;
            (p[2] as i32 > p[1] as i32 + 20) as usize
        };
        let scene_blue: usize = (0..40)
            .map(|i| bluish(&render_object(1, 80, &sc, i, 32)))
            .sum();
        let obj = class_defs(1, 100, 1.0).unwrap()[80];
        let obj_blue: usize = (0..40)
            .map(|i| bluish(&render_object(1, 80, &obj, i, 32)))
            .sum();
        assert!(
            scene_blue >= 30 && scene_blue > 2 * obj_blue,
            "{scene_blue} vs {obj_blue}"
        );
    }

    #[test]
    fn render_is_deterministic_and_instances_differ() {
        let spec = ClassDef::Object(class_specs(0, 1).unwrap()[0]);
        let a = render_object(0, 0, &spec, 0, 24);
        assert_eq!(a, render_object(0, 0, &spec, 0, 24));
        assert_ne!(a, render_object(0, 0, &spec, 1, 24));
        assert_eq!(a.dimensions(), (24, 24));
    }

    #[test]
    fn every_family_outline_is_a_nondegenerate_polygon_near_the_unit_disc() {
        for f in 0..NUM_SHAPES {
            let v = family_outline(f);
            assert!(v.len() >= 3);
            // Shoelace area: clearly positive, and inside the radius-1.1 disc.
            let area: f32 = (0..v.len())
                .map(|i| v[i][0] * v[(i + 1) % v.len()][1] - v[(i + 1) % v.len()][0] * v[i][1])
                .sum::<f32>()
                / 2.0;
            assert!(area.abs() > 0.3, "family {f} area {area}");
            assert!(v.iter().all(|p| p[0].hypot(p[1]) <= 1.1), "family {f}");
        }
    }
}
