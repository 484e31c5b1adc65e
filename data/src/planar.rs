//! The float image the augmentations work on: 3 planes (R, G, B), row-major, values in [0, 1]
//! until normalisation. Planar (CHW) because that is the tensor layout the network eats, so the
//! last step writes the batch buffer without a transpose.

/// A 3-channel `f32` image in CHW order.
#[derive(Clone, Debug, PartialEq)]
pub struct Planar {
    pub width: usize,
    pub height: usize,
    /// `data[c·H·W + y·W + x]`.
    pub data: Vec<f32>,
}

impl Planar {
    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Planar {
            width,
            height,
            data: vec![0.0; 3 * width * height],
        }
    }

    /// Pixels per plane.
    pub fn plane_len(&self) -> usize {
        self.width * self.height
    }

    /// Convert a u8 RGB image to [0, 1] floats (torchvision's `ToTensor`).
    pub fn from_rgb8(img: &image::RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = Planar::zeros(w, h);
        let n = w * h;
        for (k, p) in img.as_raw().chunks_exact(3).enumerate() {
            for (c, &v) in p.iter().enumerate() {
                out.data[c * n + k] = v as f32 / 255.0;
            }
        }
        out
    }

    /// The value of channel `c` at `(x, y)`.
    pub fn get(&self, c: usize, x: usize, y: usize) -> f32 {
        self.data[c * self.plane_len() + y * self.width + x]
    }

    /// The three planes, borrowed mutably at once.
    pub fn planes_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let n = self.plane_len();
        let (r, gb) = self.data.split_at_mut(n);
        let (g, b) = gb.split_at_mut(n);
        (r, g, b)
    }

    /// `(x − mean[c]) / std[c]` per channel (torchvision's `Normalize`).
    pub fn normalize(&mut self, mean: [f32; 3], std: [f32; 3]) {
        let n = self.plane_len();
        for c in 0..3 {
            let inv = 1.0 / std[c];
            self.data[c * n..(c + 1) * n]
                .iter_mut()
                .for_each(|v| *v = (*v - mean[c]) * inv);
        }
    }
}
