//! The paper's analyses of *what* pretraining keeps, beyond transfer accuracy:
//! - [`invert`]: feature inversion with the deep image prior (paper §3, Figures 2 and 6);
//! - [`similarity`]: how close a reconstruction is to its image (SSIM and a distance under a
//!   fixed random network: no downloaded weights);
//! - [`subset`]: the pretraining-data variants of Table 2 (10% of the images per class, 10% of
//!   the classes), written as mini-ImageNet folders.
pub mod invert;
pub mod similarity;
pub mod subset;
