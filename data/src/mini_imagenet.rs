//! mini-ImageNet in the Ravi & Larochelle CSV format (the split used by Chen et al. 2019).
//!
//! `root/train.csv`, `root/val.csv`, `root/test.csv`, each starting with the header
//! `filename,label`, then rows like `n0153282900000005.jpg,n01532829`; the images are in
//! `root/images/`. The canonical split has 64 / 16 / 20 classes.
//!
//! Class indices are assigned **per split in order of first appearance** in the CSV (the files
//! list classes in blocks, so this is also the file's class order). Labels are therefore
//! `0..n_classes` within each split, which is what both supervised pretraining (train split)
//! and few-shot episodes (val/test split) need.
use super::text::read_nonblank_lines;
use super::{DataError, LabelledImages};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.csv",
            Split::Val => "val.csv",
            Split::Test => "test.csv",
        }
    }
}

/// The image folder inside a mini-ImageNet root.
pub const IMAGE_DIR: &str = "images";

/// A mini-ImageNet root directory. `open` only checks it exists; each split is parsed on demand.
#[derive(Debug, Clone)]
pub struct MiniImageNet {
    root: PathBuf,
}

impl MiniImageNet {
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(DataError::invalid(
                &root,
                "mini-ImageNet root is not a directory",
            ));
        }
        Ok(MiniImageNet { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Parse one split's CSV (every row is validated; images are not opened).
    pub fn split(&self, split: Split) -> Result<LabelledImages, DataError> {
        read_csv(&self.root, &self.root.join(split.file_name()))
    }
}

/// Parse a `filename,label` CSV whose images live in `root/images/`.
pub fn read_csv(root: &Path, csv: &Path) -> Result<LabelledImages, DataError> {
    let lines = read_nonblank_lines(csv)?;
    let mut it = lines.into_iter();
    match it.next() {
        Some((_, h)) if h.trim() == "filename,label" => {}
        Some((n, h)) => {
            return Err(DataError::parse(
                csv,
                n,
                format!("expected the header `filename,label`, found `{}`", h.trim()),
            ))
        }
        None => {
            return Err(DataError::invalid(
                csv,
                "empty file (expected the header `filename,label`)",
            ))
        }
    }
    let images = root.join(IMAGE_DIR);
    let mut class_names: Vec<String> = Vec::new();
    let mut class_of: HashMap<String, usize> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut items = Vec::new();
    for (n, line) in it {
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 2 {
            return Err(DataError::parse(
                csv,
                n,
                format!("expected 2 columns (filename,label), found {}", cols.len()),
            ));
        }
        let (file, label) = (cols[0], cols[1]);
        if file.is_empty() || label.is_empty() {
            return Err(DataError::parse(csv, n, "empty filename or label"));
        }
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(DataError::parse(
                csv,
                n,
                format!("filename `{file}` must be a plain name inside images/"),
            ));
        }
        if let Some(first) = seen.insert(file.to_string(), n) {
            return Err(DataError::parse(
                csv,
                n,
                format!("duplicate filename `{file}` (first on line {first})"),
            ));
        }
        let next = class_names.len();
        let class = *class_of.entry(label.to_string()).or_insert(next);
        if class == next {
            class_names.push(label.to_string());
        }
        items.push((images.join(file), class));
    }
    if items.is_empty() {
        return Err(DataError::invalid(csv, "no rows after the header"));
    }
    Ok(LabelledImages {
        root: root.to_path_buf(),
        items,
        class_names,
        landmarks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_real_rows_and_indexes_classes_by_first_appearance() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "train.csv",
            "filename,label\r\nn0153282900000005.jpg,n01532829\r\nn0153282900000006.jpg,n01532829\r\n\
             n0155843700000001.jpg,n01558437\r\nn0153282900000007.jpg,n01532829\r\n",
        );
        let ds = MiniImageNet::open(d.path())
            .unwrap()
            .split(Split::Train)
            .unwrap();
        assert_eq!(ds.class_names, vec!["n01532829", "n01558437"]);
        let labels: Vec<usize> = ds.items.iter().map(|x| x.1).collect();
        assert_eq!(labels, vec![0, 0, 1, 0]);
        assert_eq!(
            ds.items[2].0,
            d.path().join("images").join("n0155843700000001.jpg")
        );
        assert_eq!(ds.class_counts(), vec![3, 1]);
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let ds = MiniImageNet::open(d.path()).unwrap();
        write(
            d.path(),
            "val.csv",
            "filename,label\na.jpg,x\nb.jpg,x,extra\n",
        );
        let e = ds.split(Split::Val).unwrap_err().to_string();
        assert!(
            e.ends_with("val.csv:3: expected 2 columns (filename,label), found 3"),
            "{e}"
        );
        write(d.path(), "test.csv", "file,label\na.jpg,x\n");
        let e = ds.split(Split::Test).unwrap_err().to_string();
        assert!(e.contains("test.csv:1:") && e.contains("header"), "{e}");
        write(d.path(), "train.csv", "filename,label\na.jpg,x\na.jpg,y\n");
        let e = ds.split(Split::Train).unwrap_err().to_string();
        assert!(e.contains("train.csv:3:") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn missing_csv_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = MiniImageNet::open(d.path())
            .unwrap()
            .split(Split::Test)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.csv"), "{e}");
    }
}
