//! Small deterministic rasteriser for the synthetic datasets.
//!
//! A picture is a stack of opaque [`Layer`]s (bottom first). Each layer is a [`Shape`] and a
//! [`Paint`] defined in the layer's own local coordinates, placed by an affine map into pixel
//! coordinates. Rendering supersamples every pixel on an `ss × ss` grid: for each sample the
//! top-most layer containing it gives the colour, and the pixel is the mean — i.e. box-filtered
//! coverage anti-aliasing. Everything is plain f32 arithmetic in a fixed order per image, so
//! an image is bit-identical whichever thread renders it (no crate does exactly this with that
//! guarantee, hence hand-written).
//!
//! Coordinates: pixel `(i, j)` covers `[i, i+1) × [j, j+1)`; x right, y down.

/// Linear RGB in [0, 1] (values outside are clamped when converted to 8 bits).
pub type Rgb = [f32; 3];

/// `p' = [a b; c d] p + [tx; ty]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub a: f32,
    pub b: f32,
    pub c: f32,
    pub d: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Affine {
    pub const IDENTITY: Affine = Affine {
        a: 1.0,
        b: 0.0,
        c: 0.0,
        d: 1.0,
        tx: 0.0,
        ty: 0.0,
    };

    /// Scale by `(sx, sy)`, then rotate by `angle` (radians; positive turns +x towards +y, i.e.
    /// clockwise on screen since y points down), then translate to `(tx, ty)`.
    pub fn place(sx: f32, sy: f32, angle: f32, tx: f32, ty: f32) -> Affine {
        let (s, c) = angle.sin_cos();
        Affine {
            a: c * sx,
            b: -s * sy,
            c: s * sx,
            d: c * sy,
            tx,
            ty,
        }
    }

    pub fn translate(tx: f32, ty: f32) -> Affine {
        Affine {
            tx,
            ty,
            ..Affine::IDENTITY
        }
    }

    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.a * p[0] + self.b * p[1] + self.tx,
            self.c * p[0] + self.d * p[1] + self.ty,
        ]
    }

    /// `self ∘ inner`: first `inner`, then `self`.
    pub fn after(&self, inner: &Affine) -> Affine {
        Affine {
            a: self.a * inner.a + self.b * inner.c,
            b: self.a * inner.b + self.b * inner.d,
            c: self.c * inner.a + self.d * inner.c,
            d: self.c * inner.b + self.d * inner.d,
            tx: self.a * inner.tx + self.b * inner.ty + self.tx,
            ty: self.c * inner.tx + self.d * inner.ty + self.ty,
        }
    }

    /// The inverse map, `None` for a degenerate (zero-area) map.
    pub fn inverse(&self) -> Option<Affine> {
        let det = self.a * self.d - self.b * self.c;
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let (a, b, c, d) = (self.d / det, -self.b / det, -self.c / det, self.a / det);
        Some(Affine {
            a,
            b,
            c,
            d,
            tx: -(a * self.tx + b * self.ty),
            ty: -(c * self.tx + d * self.ty),
        })
    }
}

/// A region of the local plane.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// The unit disc `x² + y² ≤ 1`.
    Disc,
    /// `inner² < x² + y² ≤ 1`.
    Ring { inner: f32 },
    /// The square `[-1, 1]²`.
    Rect,
    /// The upper half of the unit disc (`y ≤ 0`): hair caps, hats.
    HalfDisc,
    /// A simple polygon (even-odd rule, any winding).
    Polygon(Vec<[f32; 2]>),
}

impl Shape {
    pub fn contains(&self, p: [f32; 2]) -> bool {
        let [x, y] = p;
        match self {
            Shape::Disc => x * x + y * y <= 1.0,
            Shape::Ring { inner } => {
                let r2 = x * x + y * y;
                r2 <= 1.0 && r2 > inner * inner
            }
            Shape::Rect => x.abs() <= 1.0 && y.abs() <= 1.0,
            Shape::HalfDisc => y <= 0.0 && x * x + y * y <= 1.0,
            Shape::Polygon(v) => point_in_polygon(v, x, y),
        }
    }

    /// Local bounding box `[x0, y0, x1, y1]`.
    pub fn bounds(&self) -> [f32; 4] {
        match self {
            Shape::Disc | Shape::Ring { .. } | Shape::Rect => [-1.0, -1.0, 1.0, 1.0],
            Shape::HalfDisc => [-1.0, -1.0, 1.0, 0.0],
            Shape::Polygon(v) => v
                .iter()
                .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |b, p| {
                    [
                        b[0].min(p[0]),
                        b[1].min(p[1]),
                        b[2].max(p[0]),
                        b[3].max(p[1]),
                    ]
                }),
        }
    }
}

fn point_in_polygon(v: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut inside = false;
    let n = v.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = (v[i][0], v[i][1]);
        let (xj, yj) = (v[j][0], v[j][1]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// How a layer is coloured, as a function of the local coordinates (textures therefore move,
/// rotate and deform with their shape).
#[derive(Debug, Clone, PartialEq)]
pub enum Paint {
    Solid(Rgb),
    /// Bands of `a` and `b`, each `period/2` wide, across direction `angle`.
    Stripes {
        a: Rgb,
        b: Rgb,
        period: f32,
        angle: f32,
    },
    Checks {
        a: Rgb,
        b: Rgb,
        period: f32,
    },
    /// Discs of `b` (radius `radius·period`) on a square lattice over `a`.
    Dots {
        a: Rgb,
        b: Rgb,
        period: f32,
        radius: f32,
    },
    /// Smooth value noise blending `a` and `b` (two octaves), lattice spacing `scale`.
    Noise {
        a: Rgb,
        b: Rgb,
        scale: f32,
        seed: u32,
    },
    /// Concentric bands around the origin.
    Rings {
        a: Rgb,
        b: Rgb,
        period: f32,
    },
    /// Linear blend from `a` to `b` along direction `angle` over local `[-1, 1]`.
    Gradient {
        a: Rgb,
        b: Rgb,
        angle: f32,
    },
}

impl Paint {
    pub fn at(&self, p: [f32; 2]) -> Rgb {
        let [x, y] = p;
        match *self {
            Paint::Solid(c) => c,
            Paint::Stripes {
                a,
                b,
                period,
                angle,
            } => {
                let t = x * angle.cos() + y * angle.sin();
                if (t / period).rem_euclid(1.0) < 0.5 {
                    a
                } else {
                    b
                }
            }
            Paint::Checks { a, b, period } => {
                let k = (x / period).floor() as i64 + (y / period).floor() as i64;
                if k.rem_euclid(2) == 0 {
                    a
                } else {
                    b
                }
            }
            Paint::Dots {
                a,
                b,
                period,
                radius,
            } => {
                let fx = (x / period).rem_euclid(1.0) - 0.5;
                let fy = (y / period).rem_euclid(1.0) - 0.5;
                if fx * fx + fy * fy <= radius * radius {
                    b
                } else {
                    a
                }
            }
            Paint::Noise { a, b, scale, seed } => {
                let t = 0.65 * value_noise(x / scale, y / scale, seed)
                    + 0.35 * value_noise(2.0 * x / scale, 2.0 * y / scale, seed ^ 0x5bd1_e995);
                mix(a, b, smoothstep(0.35, 0.65, t))
            }
            Paint::Rings { a, b, period } => {
                if ((x * x + y * y).sqrt() / period).rem_euclid(1.0) < 0.5 {
                    a
                } else {
                    b
                }
            }
            Paint::Gradient { a, b, angle } => {
                let t = (x * angle.cos() + y * angle.sin()) * 0.5 + 0.5;
                mix(a, b, t.clamp(0.0, 1.0))
            }
        }
    }
}

pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub fn scale_rgb(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn lattice(ix: i32, iy: i32, seed: u32) -> f32 {
    // A fixed integer hash: same value on every platform and thread.
    let mut h = (ix as u32).wrapping_mul(0x27d4_eb2d)
        ^ (iy as u32).wrapping_mul(0x1656_67b1)
        ^ seed.wrapping_mul(0x9e37_79b9);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    (h >> 8) as f32 / (1u32 << 24) as f32
}

/// Bilinear value noise in [0, 1] with smoothstep interpolation.
pub fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (smoothstep(0.0, 1.0, x - fx), smoothstep(0.0, 1.0, y - fy));
    let v00 = lattice(ix, iy, seed);
    let v10 = lattice(ix + 1, iy, seed);
    let v01 = lattice(ix, iy + 1, seed);
    let v11 = lattice(ix + 1, iy + 1, seed);
    let top = v00 + (v10 - v00) * tx;
    let bot = v01 + (v11 - v01) * tx;
    top + (bot - top) * ty
}

/// HSV (h in degrees, s and v in [0, 1]) to RGB.
pub fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// One opaque layer: shape and paint in local coordinates, and where it sits in the picture.
#[derive(Debug, Clone)]
pub struct Layer {
    pub shape: Shape,
    pub paint: Paint,
    /// Pixel → local.
    to_local: Affine,
    /// Pixel-space bounding box `[x0, y0, x1, y1]`.
    bbox: [f32; 4],
    /// Free label for debugging hooks (e.g. "this is the left eye"); 0 by default.
    pub tag: u32,
}

impl Layer {
    /// `local_to_px` places the local plane in the picture. A degenerate map gives `None`.
    pub fn new(shape: Shape, paint: Paint, local_to_px: Affine) -> Option<Layer> {
        let to_local = local_to_px.inverse()?;
        let [x0, y0, x1, y1] = shape.bounds();
        let mut bbox = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
        for p in [[x0, y0], [x1, y0], [x0, y1], [x1, y1]] {
            let q = local_to_px.apply(p);
            bbox = [
                bbox[0].min(q[0]),
                bbox[1].min(q[1]),
                bbox[2].max(q[0]),
                bbox[3].max(q[1]),
            ];
        }
        Some(Layer {
            shape,
            paint,
            to_local,
            bbox,
            tag: 0,
        })
    }

    pub fn tagged(mut self, tag: u32) -> Layer {
        self.tag = tag;
        self
    }

    fn hit(&self, p: [f32; 2]) -> Option<[f32; 2]> {
        if p[0] < self.bbox[0] || p[0] > self.bbox[2] || p[1] < self.bbox[1] || p[1] > self.bbox[3]
        {
            return None;
        }
        let q = self.to_local.apply(p);
        self.shape.contains(q).then_some(q)
    }
}

/// A float picture, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pub w: u32,
    pub h: u32,
    pub px: Vec<Rgb>,
}

impl Canvas {
    /// Render `layers` (bottom first) over `background` with `ss × ss` samples per pixel.
    pub fn render(w: u32, h: u32, background: Rgb, layers: &[Layer], ss: u32) -> Canvas {
        let ss = ss.max(1);
        let inv = 1.0 / (ss * ss) as f32;
        let mut px = Vec::with_capacity((w * h) as usize);
        let mut cand: Vec<&Layer> = Vec::with_capacity(layers.len());
        for j in 0..h {
            for i in 0..w {
                let (x0, y0) = (i as f32, j as f32);
                // Layers that can touch this pixel, top-most first.
                cand.clear();
                cand.extend(layers.iter().rev().filter(|l| {
                    l.bbox[0] <= x0 + 1.0
                        && l.bbox[2] >= x0
                        && l.bbox[1] <= y0 + 1.0
                        && l.bbox[3] >= y0
                }));
                let mut acc = [0.0f32; 3];
                for sy in 0..ss {
                    for sx in 0..ss {
                        let p = [
                            x0 + (sx as f32 + 0.5) / ss as f32,
                            y0 + (sy as f32 + 0.5) / ss as f32,
                        ];
                        let c = cand
                            .iter()
                            .find_map(|l| l.hit(p).map(|q| l.paint.at(q)))
                            .unwrap_or(background);
                        acc[0] += c[0];
                        acc[1] += c[1];
                        acc[2] += c[2];
                    }
                }
                px.push(scale_rgb(acc, inv));
            }
        }
        Canvas { w, h, px }
    }

    /// Debugging hook: the tag of the top-most layer at each pixel centre (0 where none).
    pub fn tags_at_centres(w: u32, h: u32, layers: &[Layer]) -> Vec<u32> {
        let mut out = Vec::with_capacity((w * h) as usize);
        for j in 0..h {
            for i in 0..w {
                let p = [i as f32 + 0.5, j as f32 + 0.5];
                out.push(
                    layers
                        .iter()
                        .rev()
                        .find(|l| l.hit(p).is_some())
                        .map_or(0, |l| l.tag),
                );
            }
        }
        out
    }

    /// Multiply every pixel by `f(x, y)` evaluated at the pixel centre (lighting).
    pub fn shade(&mut self, f: impl Fn(f32, f32) -> f32) {
        for (k, p) in self.px.iter_mut().enumerate() {
            let (i, j) = (k as u32 % self.w, k as u32 / self.w);
            *p = scale_rgb(*p, f(i as f32 + 0.5, j as f32 + 0.5));
        }
    }

    /// Quantise to 8 bits (clamped, rounded to nearest).
    pub fn to_rgb8(&self) -> image::RgbImage {
        let mut buf = Vec::with_capacity(self.px.len() * 3);
        for p in &self.px {
            for &c in p {
                buf.push((c.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        image::RgbImage::from_raw(self.w, self.h, buf).unwrap_or_default()
    }
}

/// Encode as PNG (lossless and deterministic for a given encoder version).
pub fn png_bytes(img: &image::RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_inverse_and_composition() {
        let m = Affine::place(2.0, 3.0, 0.7, 5.0, -1.0);
        let inv = m.inverse().unwrap();
        let p = [0.3, -1.2];
        let q = inv.apply(m.apply(p));
        assert!((q[0] - p[0]).abs() < 1e-5 && (q[1] - p[1]).abs() < 1e-5);
        // place(1,1,90°) maps +x to +y: (1,0) -> (0,1), then translate.
        let r = Affine::place(1.0, 1.0, std::f32::consts::FRAC_PI_2, 10.0, 20.0);
        let s = r.apply([1.0, 0.0]);
        assert!((s[0] - 10.0).abs() < 1e-6 && (s[1] - 21.0).abs() < 1e-6);
        let t = Affine::translate(1.0, 2.0).after(&Affine::place(2.0, 2.0, 0.0, 0.0, 0.0));
        assert_eq!(t.apply([1.0, 1.0]), [3.0, 4.0]);
        assert!(Affine::place(0.0, 1.0, 0.0, 0.0, 0.0).inverse().is_none());
    }

    #[test]
    fn disc_coverage_approximates_its_area() {
        // A disc of radius 6 centred in a 16x16 picture: white on black, 8x8 supersampling.
        let l = Layer::new(
            Shape::Disc,
            Paint::Solid([1.0; 3]),
            Affine::place(6.0, 6.0, 0.0, 8.0, 8.0),
        )
        .unwrap();
        let c = Canvas::render(16, 16, [0.0; 3], &[l], 8);
        let area: f32 = c.px.iter().map(|p| p[0]).sum();
        let exact = std::f32::consts::PI * 36.0;
        assert!((area - exact).abs() < 0.01 * exact, "{area} vs {exact}");
        // Edge pixels are partially covered (anti-aliased), the centre fully.
        assert_eq!(c.px[8 * 16 + 8][0], 1.0);
        assert!(c.px.iter().any(|p| p[0] > 0.1 && p[0] < 0.9));
    }

    #[test]
    fn polygon_even_odd_and_top_layer_wins() {
        let tri = Shape::Polygon(vec![[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]);
        assert!(tri.contains([1.0, 1.0]));
        assert!(!tri.contains([3.0, 3.0]));
        let red = Layer::new(
            Shape::Rect,
            Paint::Solid([1.0, 0.0, 0.0]),
            Affine::place(2.0, 2.0, 0.0, 2.0, 2.0),
        )
        .unwrap()
        .tagged(1);
        let blue = Layer::new(
            Shape::Rect,
            Paint::Solid([0.0, 0.0, 1.0]),
            Affine::place(1.0, 1.0, 0.0, 3.0, 3.0),
        )
        .unwrap()
        .tagged(2);
        let tags = Canvas::tags_at_centres(4, 4, &[red, blue]);
        assert_eq!(tags, vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 2, 2]);
    }

    #[test]
    fn textures_alternate() {
        let (a, b) = ([0.0; 3], [1.0; 3]);
        let s = Paint::Stripes {
            a,
            b,
            period: 2.0,
            angle: 0.0,
        };
        assert_eq!(s.at([0.5, 9.0]), a);
        assert_eq!(s.at([1.5, -3.0]), b);
        let c = Paint::Checks { a, b, period: 1.0 };
        assert_eq!(c.at([0.5, 0.5]), a);
        assert_eq!(c.at([1.5, 0.5]), b);
        assert_eq!(c.at([-0.5, 0.5]), b);
        let n = value_noise(3.0, 4.0, 1);
        assert!((0.0..=1.0).contains(&n));
        assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
        assert_eq!(hsv(240.0, 1.0, 1.0), [0.0, 0.0, 1.0]);
    }
}
