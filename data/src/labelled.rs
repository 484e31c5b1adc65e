//! The one "list of labelled images" type every reader produces and the batch loader consumes.
use super::{load_rgb, DataError, Landmarks};
use rayon::prelude::*;
use std::path::PathBuf;

/// A list of images with class labels (and, for face sets, landmarks).
///
/// `items[i].0` is the full path of image `i` (already joined with the dataset's image folder),
/// `items[i].1` its class index into `class_names`. `landmarks`, when present, has one entry per
/// item, in the pixel coordinates of the image file as stored (see [`super::celeba`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImages {
    /// The dataset root the list was read from (for messages).
    pub root: PathBuf,
    pub items: Vec<(PathBuf, usize)>,
    pub class_names: Vec<String>,
    pub landmarks: Option<Vec<Landmarks>>,
}

impl LabelledImages {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Decode image `i`: `(RGB image, class label, landmarks if this list has them)`.
    pub fn load(&self, i: usize) -> Result<(image::RgbImage, usize, Option<Landmarks>), DataError> {
        let (path, label) = self.items.get(i).ok_or_else(|| DataError::OutOfRange {
            root: self.root.clone(),
            index: i,
            len: self.items.len(),
        })?;
        let img = load_rgb(path)?;
        let lm = self.landmarks.as_ref().and_then(|l| l.get(i).copied());
        Ok((img, *label, lm))
    }

    /// Fail now, naming the first missing image, rather than hours into training.
    pub fn check_files(&self) -> Result<(), DataError> {
        // `find_first` keeps the report deterministic (the first missing item in list order).
        match self.items.par_iter().find_first(|(p, _)| !p.is_file()) {
            Some((p, _)) => Err(DataError::invalid(
                p,
                "image listed in the dataset is missing",
            )),
            None => Ok(()),
        }
    }

    /// Number of images per class (index = class).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.class_names.len()];
        for (_, l) in &self.items {
            if let Some(n) = c.get_mut(*l) {
                *n += 1;
            }
        }
        c
    }
}
