//! The pretraining-data variants of the paper's Table 2: "ImageNet-10%" (a tenth of the images
//! of every class) and "ImageNet-100" (a tenth of the classes, all their images), made from any
//! mini-ImageNet folder as a new mini-ImageNet folder: its `train.csv` keeps the chosen rows in
//! file order, `val.csv` and `test.csv` are copied, and `images/` links to the source's images.
//! Which images or classes are kept is drawn from the seed alone.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;

use trainer::data::mini_imagenet::{read_csv, IMAGE_DIR};
use trainer::data::Split;
use trainer::rng::{purpose, stream};

/// Which part of the training split a variant keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    /// A fraction of the images of every class (the paper's ImageNet-10%).
    ImagesPerClass,
    /// A fraction of the classes, with all their images (the paper's ImageNet-100).
    Classes,
}

impl Subset {
    pub const ALL: [Subset; 2] = [Subset::ImagesPerClass, Subset::Classes];

    /// Folder and step-id name.
    pub fn name(self) -> &'static str {
        match self {
            Subset::ImagesPerClass => "images-subset",
            Subset::Classes => "classes-subset",
        }
    }

    /// Table label, e.g. "10% of the images per class".
    pub fn label(self, fraction: f64) -> String {
        let pct = fraction * 100.0;
        match self {
            Subset::ImagesPerClass => format!("{pct:.0}% of the images per class"),
            Subset::Classes => format!("{pct:.0}% of the classes"),
        }
    }
}

/// What a written variant holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubsetSummary {
    pub dir: PathBuf,
    pub classes: usize,
    pub images: usize,
    pub source_classes: usize,
    pub source_images: usize,
}

/// `round(fraction · n)`, at least `min` (and at most `n`).
fn keep_count(n: usize, fraction: f64, min: usize) -> usize {
    ((n as f64 * fraction).round() as usize).max(min).min(n)
}

/// The training-split rows (indices into the source's `train.csv` rows) that `subset` keeps.
/// `labels[i]` is row i's class (0-based, in order of first appearance).
pub fn select(labels: &[usize], subset: Subset, fraction: f64, seed: u64) -> Vec<usize> {
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in labels.iter().enumerate() {
        per_class[c].push(i);
    }
    let mut keep = vec![false; labels.len()];
    match subset {
        Subset::ImagesPerClass => {
            for (c, rows) in per_class.iter().enumerate() {
                let mut r = rows.clone();
                r.shuffle(&mut stream(seed, &[purpose::SUBSET, 0, c as u64]));
                for &i in &r[..keep_count(r.len(), fraction, 1)] {
                    keep[i] = true;
                }
            }
        }
        Subset::Classes => {
            let mut cs: Vec<usize> = (0..classes).collect();
            cs.shuffle(&mut stream(seed, &[purpose::SUBSET, 1]));
            for &c in &cs[..keep_count(classes, fraction, 2)] {
                for &i in &per_class[c] {
                    keep[i] = true;
                }
            }
        }
    }
    (0..labels.len()).filter(|&i| keep[i]).collect()
}

/// Writes the variant of the mini-ImageNet folder `src` into `dst` (replacing what a previous,
/// interrupted call left there).
pub fn write_subset(
    src: &Path,
    dst: &Path,
    subset: Subset,
    fraction: f64,
    seed: u64,
) -> Result<SubsetSummary> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("subset: fraction {fraction} must be in (0, 1)");
    }
    let train_csv = src.join(Split::Train.file_name());
    // The real reader validates every row first (errors name the file and line).
    let list = read_csv(src, &train_csv)?;
    let text = std::fs::read_to_string(&train_csv)
        .with_context(|| format!("reading {}", train_csv.display()))?;
    let rows: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if rows.len() != list.len() {
        bail!(
            "{}: {} rows but the reader found {}",
            train_csv.display(),
            rows.len(),
            list.len()
        );
    }
    let labels: Vec<usize> = list.items.iter().map(|(_, c)| *c).collect();
    let kept = select(&labels, subset, fraction, seed);
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut out = String::from("filename,label\n");
    for &i in &kept {
        out.push_str(rows[i].trim_end());
        out.push('\n');
    }
    trainer::fsutil::write_atomic(&dst.join(Split::Train.file_name()), out.as_bytes())
        .with_context(|| format!("writing {}", dst.display()))?;
    for s in [Split::Val, Split::Test] {
        let (from, to) = (src.join(s.file_name()), dst.join(s.file_name()));
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        trainer::fsutil::write_atomic(&to, &bytes)
            .with_context(|| format!("writing {}", to.display()))?;
    }
    let images = src
        .join(IMAGE_DIR)
        .canonicalize()
        .with_context(|| format!("{}: no {IMAGE_DIR}/ folder", src.display()))?;
    let link = dst.join(IMAGE_DIR);
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .or_else(|_| std::fs::remove_dir_all(&link))
            .with_context(|| format!("replacing {}", link.display()))?;
    }
    link_dir(&images, &link)?;
    let kept_classes: std::collections::BTreeSet<usize> = kept.iter().map(|&i| labels[i]).collect();
    Ok(SubsetSummary {
        dir: dst.to_path_buf(),
        classes: kept_classes.len(),
        images: kept.len(),
        source_classes: list.num_classes(),
        source_images: list.len(),
    })
}

#[cfg(unix)]
fn link_dir(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

#[cfg(not(unix))]
fn link_dir(target: &Path, link: &Path) -> Result<()> {
    std::fs::create_dir_all(link)?;
    for e in std::fs::read_dir(target)? {
        let e = e?;
        std::fs::copy(e.path(), link.join(e.file_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<usize> {
        // 10 classes of 20 rows, interleaved.
        (0..200).map(|i| i % 10).collect()
    }

    #[test]
    fn a_tenth_of_the_images_of_every_class() {
        let l = labels();
        let k = select(&l, Subset::ImagesPerClass, 0.1, 3);
        assert_eq!(k.len(), 20);
        for c in 0..10 {
            assert_eq!(k.iter().filter(|&&i| l[i] == c).count(), 2);
        }
        assert!(k.windows(2).all(|w| w[0] < w[1]), "file order kept");
        assert_eq!(k, select(&l, Subset::ImagesPerClass, 0.1, 3));
        assert_ne!(k, select(&l, Subset::ImagesPerClass, 0.1, 4));
    }

    #[test]
    fn a_tenth_of_the_classes_with_all_their_images() {
        let l = labels();
        let k = select(&l, Subset::Classes, 0.1, 3);
        let classes: std::collections::BTreeSet<usize> = k.iter().map(|&i| l[i]).collect();
        // round(0.1 · 10) = 1 class, raised to the minimum of 2.
        assert_eq!(classes.len(), 2);
        assert_eq!(k.len(), 40);
        let k = select(&l, Subset::Classes, 0.5, 3);
        assert_eq!(k.len(), 100);
    }

    #[test]
    fn writes_a_folder_the_reader_opens() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("images")).unwrap();
        let mut train = String::from("filename,label\n");
        for i in 0..12 {
            let f = format!("{i}.png");
            image::RgbImage::new(4, 4)
                .save(src.join("images").join(&f))
                .unwrap();
            train.push_str(&format!("{f},n{}\n", i % 3));
        }
        std::fs::write(src.join("train.csv"), &train).unwrap();
        std::fs::write(src.join("val.csv"), "filename,label\n0.png,v0\n").unwrap();
        std::fs::write(src.join("test.csv"), "filename,label\n1.png,t0\n").unwrap();
        let dst = dir.path().join("dst");
        let s = write_subset(&src, &dst, Subset::ImagesPerClass, 0.5, 0).unwrap();
        assert_eq!((s.classes, s.images, s.source_images), (3, 6, 12));
        // Again over the first result (an interrupted step redone).
        write_subset(&src, &dst, Subset::ImagesPerClass, 0.5, 0).unwrap();
        let list = trainer::data::MiniImageNet::open(&dst)
            .unwrap()
            .split(Split::Train)
            .unwrap();
        assert_eq!(list.len(), 6);
        list.check_files().unwrap();
        assert_eq!(
            std::fs::read(dst.join("test.csv")).unwrap(),
            std::fs::read(src.join("test.csv")).unwrap()
        );
        // A bad source row is the reader's error, naming the file and line.
        std::fs::write(src.join("train.csv"), "filename,label\n0.png\n").unwrap();
        let e = format!(
            "{:#}",
            write_subset(&src, &dst, Subset::Classes, 0.5, 0).unwrap_err()
        );
        assert!(e.contains("train.csv") && e.contains('2'), "{e}");
    }
}
