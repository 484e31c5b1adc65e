//! The embedded default datasets: procedurally drawn objects (mini-ImageNet format) and faces
//! (CelebA + MAFL format), generated deterministically from a seed.
//!
//! Determinism: every image is a pure function of `(seed, its indices, size)` drawn from its own
//! [`crate::rng::stream`], rendered with the f32 rasteriser in [`draw`], and PNG-encoded; the
//! list files are built in a fixed order. Same seed and arguments → byte-identical files for any
//! number of rayon threads.
//!
//! Durability: the many small image files are written by temp-file + rename (never torn from a
//! reader's point of view) but not fsynced one by one — fsyncing 10 000 files costs ~40 s here
//! and the data can be regenerated. The list files, which make the set readable, are written
//! last with [`crate::fsutil::write_atomic`]; a set whose lists exist has all its images.

pub mod draw;
pub mod faces;
pub mod objects;
pub mod preview;

use super::DataError;
use std::path::Path;

/// Write an image file: temp name in the same folder, then rename (see the module docs).
pub(crate) fn write_image_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

pub(crate) fn write_list_file(path: &Path, text: &str) -> Result<(), DataError> {
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| DataError::io(path, e))
}

pub(crate) fn create_dir(path: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(path).map_err(|e| DataError::io(path, e))
}

/// Split `n` items into `fractions` (rounded), the last part taking the remainder.
pub(crate) fn split_counts<const K: usize>(n: usize, fractions: [f64; K]) -> [usize; K] {
    let mut out = [0; K];
    let mut used = 0;
    for k in 0..K - 1 {
        out[k] = ((n as f64) * fractions[k]).round() as usize;
        out[k] = out[k].min(n - used);
        used += out[k];
    }
    out[K - 1] = n - used;
    out
}

/// A uniformly random permutation of `0..n` (Fisher–Yates on the given stream).
pub(crate) fn permutation(n: usize, rng: &mut crate::rng::Rng) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(rng);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_counts_round_and_keep_the_total() {
        assert_eq!(split_counts(100, [0.64, 0.16, 0.20]), [64, 16, 20]);
        // 6.4 -> 6, 1.6 -> 2, remainder 2.
        assert_eq!(split_counts(10, [0.64, 0.16, 0.20]), [6, 2, 2]);
        assert_eq!(split_counts(3, [0.64, 0.16, 0.20]), [2, 0, 1]);
        assert_eq!(split_counts(4000, [0.8, 0.1, 0.1]), [3200, 400, 400]);
    }
}
