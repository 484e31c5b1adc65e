//! The 5 facial landmarks of CelebA/MAFL, in the file's column order.

/// Number of landmarks (CelebA aligned: eyes, nose, mouth corners) and their column names: one
/// definition, runtime-core's, which the device decodes with.
pub use runtime_core::heads::landmarks::{LANDMARK_NAMES, N_LANDMARKS as NUM_LANDMARKS};

/// `(x, y)` pixel coordinates of the 5 landmarks, in [`LANDMARK_NAMES`] order.
pub type Landmarks = [[f32; 2]; NUM_LANDMARKS];

/// A horizontal flip turns the left eye into the right eye (and mouth corners likewise):
/// `flipped[i] = original[FLIP_PERMUTATION[i]]` after mirroring x.
pub const FLIP_PERMUTATION: [usize; NUM_LANDMARKS] = [1, 0, 2, 4, 3];
