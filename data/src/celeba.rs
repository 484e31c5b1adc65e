//! CelebA (aligned & cropped) with its identity, landmark and partition lists, and MAFL.
//!
//! Files, relative to the CelebA root (the real download's names):
//! - `identity_CelebA.txt`: `000001.jpg 2880` — the master list of images; every other list
//!   may only name images that appear here (else an "unknown label" error with file and line).
//! - `list_landmarks_align_celeba.txt`: line 1 the row count (checked against the rows present),
//!   line 2 exactly the 10 column names (`lefteye_x lefteye_y ... rightmouth_y`), then rows
//!   `000001.jpg    69  109   106  113 ...` split on runs of white space. Coordinates may be
//!   integers (real file) or decimals (the synthetic exact file).
//! - `list_eval_partition.txt`: `000001.jpg 0` with 0 train / 1 val / 2 test; every image of the
//!   identity file must have one.
//! - images in `img_align_celeba/` (JPEG in the real set, PNG in the synthetic one).
//! - MAFL: `MAFL/training.txt` and `MAFL/testing.txt` under the CelebA root, one file name per
//!   line; each must have landmarks. They are required: without them the pretraining split
//!   could not exclude the MAFL images, which would leak the landmark test set into pretraining.
//!
//! Landmark coordinates are in pixels of the stored image, continuous, with pixel `(i, j)`
//! covering `[i, i+1) × [j, j+1)` (so the centre of the top-left pixel is `(0.5, 0.5)`).
use super::text::{read_lines, read_nonblank_lines};
use super::{DataError, LabelledImages, Landmarks, NUM_LANDMARKS};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CELEBA_IMAGE_DIR: &str = "img_align_celeba";
pub const IDENTITY_FILE: &str = "identity_CelebA.txt";
pub const LANDMARK_FILE: &str = "list_landmarks_align_celeba.txt";
pub const PARTITION_FILE: &str = "list_eval_partition.txt";
/// The MAFL lists live in this sub-folder of the CelebA root.
pub const MAFL_DIR: &str = "MAFL";
pub const MAFL_TRAIN_FILE: &str = "training.txt";
pub const MAFL_TEST_FILE: &str = "testing.txt";
/// Written by `host-trainer synth faces` next to the standard landmark file: the same format
/// with the unrounded coordinates (2 decimals). See [`CelebA::open_preferring_exact`].
pub const SYNTH_EXACT_LANDMARK_FILE: &str = "synth_landmarks_exact.txt";
/// Line 2 of the landmark file.
pub const LANDMARK_COLUMNS: [&str; 2 * NUM_LANDMARKS] = [
    "lefteye_x",
    "lefteye_y",
    "righteye_x",
    "righteye_y",
    "nose_x",
    "nose_y",
    "leftmouth_x",
    "leftmouth_y",
    "rightmouth_x",
    "rightmouth_y",
];

/// `list_eval_partition.txt` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partition {
    Train = 0,
    Val = 1,
    Test = 2,
}

/// A parsed and cross-checked CelebA root.
#[derive(Debug, Clone)]
pub struct CelebA {
    root: PathBuf,
    /// Image file names in identity-file order.
    names: Vec<String>,
    identity: Vec<u32>,
    partition: Vec<Partition>,
    landmarks: Vec<Option<Landmarks>>,
    index: HashMap<String, usize>,
    mafl_train: Vec<usize>,
    mafl_test: Vec<usize>,
}

impl CelebA {
    /// Open with the standard landmark file.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref();
        Self::open_with_landmark_file(root, &root.join(LANDMARK_FILE))
    }

    /// Open with the synthetic exact landmarks when the root has them, else the standard file.
    ///
    /// The standard file holds integers (as the real one does); at 48 px rounding moves a
    /// landmark by up to 0.7 px, several % of the inter-ocular distance, so landmark
    /// evaluation on synthetic data should use this.
    pub fn open_preferring_exact(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref();
        let exact = root.join(SYNTH_EXACT_LANDMARK_FILE);
        if exact.is_file() {
            Self::open_with_landmark_file(root, &exact)
        } else {
            Self::open(root)
        }
    }

    /// Open with landmarks read from `landmark_file` (same format as the standard one).
    pub fn open_with_landmark_file(
        root: impl AsRef<Path>,
        landmark_file: &Path,
    ) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        let id_path = root.join(IDENTITY_FILE);
        let mut names = Vec::new();
        let mut identity = Vec::new();
        let mut index = HashMap::new();
        for (n, name, id) in read_name_int_file(&id_path)? {
            let id = u32::try_from(id).map_err(|_| {
                DataError::parse(
                    &id_path,
                    n,
                    format!("identity `{id}` is not a non-negative integer"),
                )
            })?;
            if let Some(first) = index.insert(name.clone(), names.len()) {
                return Err(DataError::parse(
                    &id_path,
                    n,
                    format!("duplicate image `{name}` (first on line {})", first + 1),
                ));
            }
            names.push(name);
            identity.push(id);
        }
        if names.is_empty() {
            return Err(DataError::invalid(&id_path, "no images listed"));
        }

        let part_path = root.join(PARTITION_FILE);
        let mut partition: Vec<Option<Partition>> = vec![None; names.len()];
        for (n, name, code) in read_name_int_file(&part_path)? {
            let i = lookup(&index, &part_path, n, &name)?;
            partition[i] = Some(match code {
                0 => Partition::Train,
                1 => Partition::Val,
                2 => Partition::Test,
                c => {
                    return Err(DataError::UnknownLabel {
                        path: part_path,
                        line: n,
                        msg: format!("partition code {c} (expected 0 train, 1 val or 2 test)"),
                    })
                }
            });
        }
        let partition = partition
            .into_iter()
            .zip(&names)
            .map(|(p, name)| {
                p.ok_or_else(|| {
                    DataError::invalid(&part_path, format!("image `{name}` has no partition"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut landmarks = vec![None; names.len()];
        for (n, name, lm) in read_landmark_file(landmark_file)? {
            let i = lookup(&index, landmark_file, n, &name)?;
            landmarks[i] = Some(lm);
        }

        let mafl_dir = root.join(MAFL_DIR);
        let mafl_train = read_mafl_list(&mafl_dir.join(MAFL_TRAIN_FILE), &index, &landmarks)?;
        let mafl_test = read_mafl_list(&mafl_dir.join(MAFL_TEST_FILE), &index, &landmarks)?;
        let train_set: BTreeSet<usize> = mafl_train.iter().copied().collect();
        if let Some(&i) = mafl_test.iter().find(|i| train_set.contains(i)) {
            return Err(DataError::invalid(
                mafl_dir.join(MAFL_TEST_FILE),
                format!("image `{}` is also in {MAFL_TRAIN_FILE}", names[i]),
            ));
        }
        Ok(CelebA {
            root,
            names,
            identity,
            partition,
            landmarks,
            index,
            mafl_train,
            mafl_test,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of images in the identity file.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn image_path(&self, name: &str) -> PathBuf {
        self.root.join(CELEBA_IMAGE_DIR).join(name)
    }

    /// Landmarks of one image by file name (`None` if unknown or without landmarks).
    pub fn landmarks(&self, name: &str) -> Option<Landmarks> {
        self.index.get(name).and_then(|&i| self.landmarks[i])
    }

    /// Identity number (as in the file) of one image.
    pub fn identity(&self, name: &str) -> Option<u32> {
        self.index.get(name).map(|&i| self.identity[i])
    }

    pub fn partition(&self, name: &str) -> Option<Partition> {
        self.index.get(name).map(|&i| self.partition[i])
    }

    /// The pretraining set: the CelebA train partition minus every MAFL image (training and
    /// testing lists), labelled by identity. Identities are re-indexed `0..n` in increasing
    /// order of their number in the file (`class_names[k]` is that number as text). Items keep
    /// the identity-file order. No landmarks: pretraining must not see them.
    pub fn pretrain(&self) -> Result<LabelledImages, DataError> {
        let mafl: BTreeSet<usize> = self
            .mafl_train
            .iter()
            .chain(&self.mafl_test)
            .copied()
            .collect();
        let chosen: Vec<usize> = (0..self.names.len())
            .filter(|i| self.partition[*i] == Partition::Train && !mafl.contains(i))
            .collect();
        if chosen.is_empty() {
            return Err(DataError::invalid(
                self.root.join(PARTITION_FILE),
                "no train-partition image left after excluding the MAFL images",
            ));
        }
        Ok(self.by_identity(&chosen, false))
    }

    /// MAFL training list with landmarks (labels: identity re-indexed within the list).
    pub fn mafl_train(&self) -> LabelledImages {
        self.by_identity(&self.mafl_train, true)
    }

    /// MAFL testing list with landmarks (labels: identity re-indexed within the list).
    pub fn mafl_test(&self) -> LabelledImages {
        self.by_identity(&self.mafl_test, true)
    }

    fn by_identity(&self, chosen: &[usize], with_landmarks: bool) -> LabelledImages {
        let ids: BTreeSet<u32> = chosen.iter().map(|&i| self.identity[i]).collect();
        let class_of: HashMap<u32, usize> =
            ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();
        let items = chosen
            .iter()
            .map(|&i| (self.image_path(&self.names[i]), class_of[&self.identity[i]]))
            .collect();
        // MAFL entries were checked to have landmarks when the lists were read.
        let landmarks = with_landmarks.then(|| {
            chosen
                .iter()
                .map(|&i| self.landmarks[i].unwrap_or_default())
                .collect()
        });
        LabelledImages {
            root: self.root.clone(),
            items,
            class_names: ids.iter().map(|id| id.to_string()).collect(),
            landmarks,
        }
    }
}

fn lookup(
    index: &HashMap<String, usize>,
    path: &Path,
    line: usize,
    name: &str,
) -> Result<usize, DataError> {
    index
        .get(name)
        .copied()
        .ok_or_else(|| DataError::UnknownLabel {
            path: path.into(),
            line,
            msg: format!("image `{name}` is not in {IDENTITY_FILE}"),
        })
}

/// Rows `name integer` (identity and partition files), blank lines skipped.
fn read_name_int_file(path: &Path) -> Result<Vec<(usize, String, i64)>, DataError> {
    let mut out = Vec::new();
    for (n, line) in read_nonblank_lines(path)? {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() != 2 {
            return Err(DataError::parse(
                path,
                n,
                format!("expected 2 columns (image number), found {}", cols.len()),
            ));
        }
        let v: i64 = cols[1]
            .parse()
            .map_err(|_| DataError::parse(path, n, format!("`{}` is not an integer", cols[1])))?;
        out.push((n, cols[0].to_string(), v));
    }
    Ok(out)
}

/// The landmark file: count line, column-name line, rows of a name and 10 numbers.
pub fn read_landmark_file(path: &Path) -> Result<Vec<(usize, String, Landmarks)>, DataError> {
    let lines = read_lines(path)?;
    let mut it = lines.into_iter();
    let (_, count_line) = it
        .next()
        .ok_or_else(|| DataError::invalid(path, "empty file"))?;
    let count: usize = count_line.trim().parse().map_err(|_| {
        DataError::parse(
            path,
            1,
            format!("expected the row count, found `{}`", count_line.trim()),
        )
    })?;
    let (_, header) = it
        .next()
        .ok_or_else(|| DataError::parse(path, 2, "missing the column-name line"))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    if cols != LANDMARK_COLUMNS {
        return Err(DataError::parse(
            path,
            2,
            format!("expected the column names `{}`", LANDMARK_COLUMNS.join(" ")),
        ));
    }
    let mut out = Vec::with_capacity(count);
    for (n, line) in it.filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 1 + 2 * NUM_LANDMARKS {
            return Err(DataError::parse(
                path,
                n,
                format!(
                    "expected {} columns (image and 10 coordinates), found {}",
                    1 + 2 * NUM_LANDMARKS,
                    f.len()
                ),
            ));
        }
        let mut lm: Landmarks = [[0.0; 2]; NUM_LANDMARKS];
        for (k, s) in f[1..].iter().enumerate() {
            let v: f32 = s.parse().map_err(|_| {
                DataError::parse(
                    path,
                    n,
                    format!("{} = `{s}` is not a number", LANDMARK_COLUMNS[k]),
                )
            })?;
            if !v.is_finite() {
                return Err(DataError::parse(
                    path,
                    n,
                    format!("{} = `{s}` is not finite", LANDMARK_COLUMNS[k]),
                ));
            }
            lm[k / 2][k % 2] = v;
        }
        out.push((n, f[0].to_string(), lm));
    }
    if out.len() != count {
        return Err(DataError::parse(
            path,
            1,
            format!(
                "the count line says {count} rows but the file has {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn read_mafl_list(
    path: &Path,
    index: &HashMap<String, usize>,
    landmarks: &[Option<Landmarks>],
) -> Result<Vec<usize>, DataError> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (n, line) in read_nonblank_lines(path)? {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 1 {
            return Err(DataError::parse(
                path,
                n,
                format!("expected 1 column (an image file name), found {}", f.len()),
            ));
        }
        let name = f[0];
        let i = index
            .get(name)
            .copied()
            .filter(|&i| landmarks[i].is_some())
            .ok_or_else(|| DataError::UnknownLabel {
                path: path.into(),
                line: n,
                msg: format!("image `{name}` has no row in the landmark file"),
            })?;
        if let Some(first) = seen.insert(i, n) {
            return Err(DataError::parse(
                path,
                n,
                format!("duplicate image `{name}` (first on line {first})"),
            ));
        }
        out.push(i);
    }
    if out.is_empty() {
        return Err(DataError::invalid(path, "no images listed"));
    }
    Ok(out)
}

/// The square MAFL crop of a `w × h` aligned image: `(x0, y0, side)`.
///
/// Real CelebA aligned images are 178×218 and the common MAFL preprocessing keeps rows 30..208.
/// Generalised: the side is `min(w, h)`; vertically the crop starts at `round((h − side)·3/4)`
/// (for 178×218: 30), keeping 3/4 of the spare rows above (the faces sit low in the frame);
/// horizontally it is centred (`x0 = 0` whenever `h ≥ w`, the CelebA case). Halves round up.
pub fn mafl_crop_window(w: u32, h: u32) -> (u32, u32, u32) {
    let side = w.min(h);
    let y0 = (3 * (h - side) + 2) / 4;
    let x0 = (w - side).div_ceil(2);
    (x0, y0, side)
}

/// Crop an aligned face image to its MAFL square and move the landmarks with it
/// (resizing to the network input is the augmentation pipeline's job).
pub fn mafl_crop(img: &image::RgbImage, lm: &Landmarks) -> (image::RgbImage, Landmarks) {
    let (x0, y0, side) = mafl_crop_window(img.width(), img.height());
    let out = image::imageops::crop_imm(img, x0, y0, side, side).to_image();
    let mut l = *lm;
    for p in l.iter_mut() {
        p[0] -= x0 as f32;
        p[1] -= y0 as f32;
    }
    (out, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mafl_crop_window_matches_the_celeba_convention() {
        assert_eq!(mafl_crop_window(178, 218), (0, 30, 178));
        // 48 x 59 (the synthetic default): (59-48)*3/4 = 8.25 -> 8.
        assert_eq!(mafl_crop_window(48, 59), (0, 8, 48));
        // 10 x 12: 2*3/4 = 1.5 -> rounds up to 2.
        assert_eq!(mafl_crop_window(10, 12), (0, 2, 10));
        assert_eq!(mafl_crop_window(8, 8), (0, 0, 8));
        // Wider than tall: centred horizontally.
        assert_eq!(mafl_crop_window(12, 8), (2, 0, 8));
    }

    #[test]
    fn mafl_crop_moves_pixels_and_landmarks_together() {
        // 4 x 7 image: side 4, y0 = round(3*3/4 = 2.25) = 2 -> rows 2..6.
        let img = image::RgbImage::from_fn(4, 7, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let lm: Landmarks = [[1.5, 3.5], [2.5, 3.5], [2.0, 4.0], [1.0, 5.25], [3.0, 5.25]];
        let (c, l) = mafl_crop(&img, &lm);
        assert_eq!(c.dimensions(), (4, 4));
        assert_eq!(c.get_pixel(3, 0).0, [3, 2, 0]);
        assert_eq!(c.get_pixel(0, 3).0, [0, 5, 0]);
        assert_eq!(
            l,
            [[1.5, 1.5], [2.5, 1.5], [2.0, 2.0], [1.0, 3.25], [3.0, 3.25]]
        );
    }
}
