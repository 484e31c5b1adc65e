//! The 5 facial landmarks of CelebA/MAFL, in the file's column order.

/// Number of landmarks (CelebA aligned: eyes, nose, mouth corners).
pub const NUM_LANDMARKS: usize = 5;

/// `(x, y)` pixel coordinates of the 5 landmarks, in [`LANDMARK_NAMES`] order.
pub type Landmarks = [[f32; 2]; NUM_LANDMARKS];

/// Column-pair names as in `list_landmarks_align_celeba.txt`.
pub const LANDMARK_NAMES: [&str; NUM_LANDMARKS] =
    ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"];

/// A horizontal flip turns the left eye into the right eye (and mouth corners likewise):
/// `flipped[i] = original[FLIP_PERMUTATION[i]]` after mirroring x.
pub const FLIP_PERMUTATION: [usize; NUM_LANDMARKS] = [1, 0, 2, 4, 3];
