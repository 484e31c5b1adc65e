//! Datasets: readers for the real formats (mini-ImageNet CSV, ImageFolder, CelebA, MAFL) and the
//! embedded synthetic generators that write the same formats.

pub mod landmarks;

pub use landmarks::{Landmarks, FLIP_PERMUTATION, LANDMARK_NAMES, NUM_LANDMARKS};
