//! Landmark decoding. Convention (shared with the host trainer, see `FORMAT.md`): the model
//! outputs 10 numbers `x0, y0, …, x4, y4`, each normalised to [0, 1] of the model input
//! (`x/W`, `y/H`), in CelebA order: left eye, right eye, nose, left mouth corner, right mouth
//! corner. Decoding scales back to input pixels.

/// Number of landmarks.
pub const N_LANDMARKS: usize = 5;
/// Landmark names as CelebA's `list_landmarks_align_celeba.txt` columns name them (`lefteye_x`,
/// `lefteye_y`, …), in output order.
pub const LANDMARK_NAMES: [&str; N_LANDMARKS] =
    ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"];
/// Index of the left eye in the decoded points.
pub const LEFT_EYE: usize = 0;
/// Index of the right eye in the decoded points.
pub const RIGHT_EYE: usize = 1;

/// A point in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// Decodes the 10 normalised outputs into 5 points in pixels of a `w×h` input; `None` if
/// `out` does not hold exactly 10 values.
pub fn decode(out: &[f32], w: usize, h: usize) -> Option<[Point; N_LANDMARKS]> {
    if out.len() != 2 * N_LANDMARKS {
        return None;
    }
    let mut p = [Point::default(); N_LANDMARKS];
    for (i, pt) in p.iter_mut().enumerate() {
        pt.x = out[2 * i] * w as f32;
        pt.y = out[2 * i + 1] * h as f32;
    }
    Some(p)
}
