//! Which images a pretraining run learns from, and which it holds out.
//!
//! The dataset kind is recognised from its standard files:
//! - mini-ImageNet (`train.csv`): the 64 base classes; labels are classes.
//! - CelebA (`identity_CelebA.txt`): the train partition minus every MAFL image; labels are identities.
//! - otherwise an ImageFolder (one sub-folder per class).
//!
//! A fixed share of each class is held out ([`holdout_split`]): the kNN monitor reads it during
//! pretraining and the base-class accuracy protocol (paper Table 4) reads it afterwards, so both
//! measure images the backbone never trained on.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::augment::loader::ImageSource;
use crate::data::{image_folder, CelebA, LabelledImages, Landmarks, MiniImageNet, Split};
use crate::rng::{self, purpose};

/// The share of each class held out from pretraining (at least one image of every class that has two).
pub const HOLDOUT_FRACTION: f64 = 0.1;

/// The recognised dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DatasetKind {
    MiniImageNet,
    CelebA,
    ImageFolder,
}

impl DatasetKind {
    /// Recognise `root` by its standard files.
    pub fn detect(root: &Path) -> Result<DatasetKind> {
        if !root.is_dir() {
            bail!("--data {}: no such directory", root.display());
        }
        if root.join("train.csv").is_file() {
            Ok(DatasetKind::MiniImageNet)
        } else if root.join("identity_CelebA.txt").is_file() {
            Ok(DatasetKind::CelebA)
        } else {
            Ok(DatasetKind::ImageFolder)
        }
    }
}

/// The images of a pretraining run.
pub struct PretrainData {
    pub kind: DatasetKind,
    pub root: PathBuf,
    /// What the run trains on.
    pub train: LabelledImages,
    /// Held-out images of the same classes (kNN monitor, base-class accuracy).
    pub heldout: LabelledImages,
}

impl PretrainData {
    pub fn num_classes(&self) -> usize {
        self.train.num_classes()
    }
}

/// The labelled pretraining list of `root` before the hold-out split.
pub fn pretrain_list(root: &Path) -> Result<(DatasetKind, LabelledImages)> {
    let kind = DatasetKind::detect(root)?;
    let list = match kind {
        DatasetKind::MiniImageNet => MiniImageNet::open(root)?.split(Split::Train)?,
        DatasetKind::CelebA => CelebA::open(root)?.pretrain()?,
        DatasetKind::ImageFolder => image_folder(root)
            .with_context(|| format!("{} is neither mini-ImageNet (train.csv) nor CelebA (identity_CelebA.txt); read as an ImageFolder", root.display()))?,
    };
    if list.is_empty() {
        bail!("{}: the pretraining split has no images", root.display());
    }
    Ok((kind, list))
}

/// Open `root` for pretraining: the list, split into train and held-out parts.
pub fn open_pretrain_data(root: &Path, seed: u64) -> Result<PretrainData> {
    let (kind, list) = pretrain_list(root)?;
    list.check_files()?;
    let (train, heldout) = holdout_split(&list, HOLDOUT_FRACTION, seed);
    Ok(PretrainData {
        kind,
        root: root.to_owned(),
        train,
        heldout,
    })
}

/// Split every class: `round(fraction·n)` images (at least 1 when the class has 2 or more) go to
/// the held-out list, chosen by a shuffle keyed by `seed` and the class, the rest stay. Item order
/// within each part follows the input order, so the split is independent of anything else.
pub fn holdout_split(
    list: &LabelledImages,
    fraction: f64,
    seed: u64,
) -> (LabelledImages, LabelledImages) {
    use rand::seq::SliceRandom;
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); list.num_classes()];
    for (i, (_, label)) in list.items.iter().enumerate() {
        per_class[*label].push(i);
    }
    let mut held = vec![false; list.len()];
    for (c, idx) in per_class.iter().enumerate() {
        if idx.len() < 2 {
            continue;
        }
        let k = ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1);
        let mut shuffled = idx.clone();
        shuffled.shuffle(&mut rng::stream(seed, &[purpose::SPLIT, c as u64]));
        for &i in &shuffled[..k] {
            held[i] = true;
        }
    }
    let pick = |want: bool| {
        let keep: Vec<usize> = (0..list.len()).filter(|&i| held[i] == want).collect();
        LabelledImages {
            root: list.root.clone(),
            items: keep.iter().map(|&i| list.items[i].clone()).collect(),
            class_names: list.class_names.clone(),
            landmarks: list
                .landmarks
                .as_ref()
                .map(|l| keep.iter().map(|&i| l[i]).collect()),
        }
    };
    (pick(false), pick(true))
}

/// The loader reads any labelled list.
impl ImageSource for LabelledImages {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn load(&self, i: usize) -> Result<(image::RgbImage, usize, Option<Landmarks>)> {
        Ok(LabelledImages::load(self, i)?)
    }
}

/// A list as a shared loader source.
pub fn source(list: &LabelledImages) -> Arc<dyn ImageSource> {
    Arc::new(list.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(counts: &[usize]) -> LabelledImages {
        let mut items = Vec::new();
        for (c, &n) in counts.iter().enumerate() {
            for i in 0..n {
                items.push((PathBuf::from(format!("c{c}_{i}.png")), c));
            }
        }
        LabelledImages {
            root: PathBuf::from("/x"),
            items,
            class_names: (0..counts.len()).map(|c| format!("c{c}")).collect(),
            landmarks: None,
        }
    }

    #[test]
    fn holdout_takes_a_tenth_of_each_class_disjointly_and_deterministically() {
        let l = list(&[20, 11, 1, 2]);
        let (tr, ho) = holdout_split(&l, 0.1, 5);
        assert_eq!(tr.len() + ho.len(), l.len());
        let count = |x: &LabelledImages, c| x.items.iter().filter(|(_, l)| *l == c).count();
        assert_eq!(count(&ho, 0), 2);
        assert_eq!(count(&ho, 1), 1);
        assert_eq!(count(&ho, 2), 0, "a single-image class stays in training");
        assert_eq!(count(&ho, 3), 1);
        for item in &ho.items {
            assert!(!tr.items.contains(item));
        }
        assert_eq!(holdout_split(&l, 0.1, 5), (tr.clone(), ho.clone()));
        assert_ne!(holdout_split(&l, 0.1, 6).1, ho);
    }
}
