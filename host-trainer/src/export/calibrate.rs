//! Calibration: the real range of every activation of the folded f32 graph over N images.
//!
//! The graph runs in candle ([`Graph::eval`], batched) — the same function as the runtime's f32
//! path, which the f32 parity test proves — and each tensor's range is recorded:
//! * min/max (`percentile` None or 100): nothing saturates on the calibration set;
//! * `percentile P` (the exporter's default is 99.9, see `export::DEFAULT_PERCENTILE`): the range is clipped to the (100−P)-th and P-th percentiles
//!   of the tensor's values over all images, positions and channels, trading a few saturated
//!   outliers for a finer step everywhere else. Percentiles come from a 2048-bin histogram over
//!   the min/max range (a second pass); the clip points are the outer edges of the bins holding
//!   the quantiles, so at most one bin (range/2048) more than asked is kept, never less.
//!
//! Calibration images are drawn deterministically ([`crate::rng::purpose::CALIBRATION`]) from a
//! dataset root whose format is detected: CelebA (MAFL training list, MAFL crop), mini-ImageNet
//! CSV (train split) or ImageFolder.
use candle_core::{Device, Tensor};
use std::path::Path;

use super::graph::Graph;
use super::ExportError;
use crate::augment::{geometry, CropRect};
use crate::data::{self, CelebA, LabelledImages, MiniImageNet, Split};
use crate::rng::{purpose, stream};

/// Histogram resolution of the percentile pass.
pub const BINS: usize = 2048;
/// Images per candle batch during calibration.
const BATCH: usize = 16;

/// Per-tensor real ranges, indexed by graph tensor id.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
}

fn batches<'a>(
    inputs: &'a [Vec<f32>],
    shape: [usize; 3],
) -> impl Iterator<Item = Result<Tensor, ExportError>> + 'a {
    inputs.chunks(BATCH).map(move |chunk| {
        let mut flat = Vec::with_capacity(chunk.len() * shape.iter().product::<usize>());
        for x in chunk {
            if x.len() != shape.iter().product::<usize>() {
                return Err(ExportError::Calibration(format!(
                    "input of {} values, the model takes {:?} (C, H, W)",
                    x.len(),
                    shape
                )));
            }
            flat.extend_from_slice(x);
        }
        Ok(Tensor::from_vec(
            flat,
            (chunk.len(), shape[0], shape[1], shape[2]),
            &Device::Cpu,
        )?)
    })
}

/// Ranges of every tensor of `g` over `inputs` (normalised CHW images at the model input size).
pub fn calibrate(
    g: &Graph,
    inputs: &[Vec<f32>],
    percentile: Option<f32>,
) -> Result<Ranges, ExportError> {
    if inputs.is_empty() {
        return Err(ExportError::Calibration("no calibration images".into()));
    }
    if let Some(p) = percentile {
        if !(p > 50.0 && p <= 100.0) {
            return Err(ExportError::Calibration(format!(
                "percentile {p} must be in (50, 100]"
            )));
        }
    }
    let n = g.shapes.len();
    let mut r = Ranges {
        lo: vec![f32::INFINITY; n],
        hi: vec![f32::NEG_INFINITY; n],
    };
    for b in batches(inputs, g.shapes[0]) {
        for (i, t) in g.eval(&b?)?.iter().enumerate() {
            let v = t.flatten_all()?;
            r.lo[i] = r.lo[i].min(v.min(0)?.to_scalar::<f32>()?);
            r.hi[i] = r.hi[i].max(v.max(0)?.to_scalar::<f32>()?);
        }
    }
    if let Some(i) = (0..n).find(|&i| !(r.lo[i].is_finite() && r.hi[i].is_finite())) {
        return Err(ExportError::Calibration(format!(
            "tensor {i} has non-finite values (check the model weights)"
        )));
    }
    let Some(p) = percentile.filter(|&p| p < 100.0) else {
        return Ok(r);
    };
    let mut hist = vec![vec![0u64; BINS]; n];
    for b in batches(inputs, g.shapes[0]) {
        for (i, t) in g.eval(&b?)?.iter().enumerate() {
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            add_to_histogram(&mut hist[i], &v, r.lo[i], r.hi[i]);
        }
    }
    for (i, h) in hist.iter().enumerate() {
        (r.lo[i], r.hi[i]) = percentile_range(h, r.lo[i], r.hi[i], p);
    }
    Ok(r)
}

fn bin_of(x: f32, lo: f32, hi: f32) -> usize {
    if hi <= lo {
        return 0;
    }
    (((x - lo) / (hi - lo) * BINS as f32) as usize).min(BINS - 1)
}

/// Counts `v` into `BINS` equal bins over `[lo, hi]`.
pub fn add_to_histogram(hist: &mut [u64], v: &[f32], lo: f32, hi: f32) {
    for &x in v {
        hist[bin_of(x, lo, hi)] += 1;
    }
}

/// The `[(100−p)-th, p-th]` percentile range from a histogram over `[lo, hi]` (outer bin edges;
/// see the module docs).
pub fn percentile_range(hist: &[u64], lo: f32, hi: f32, p: f32) -> (f32, f32) {
    let total: u64 = hist.iter().sum();
    if total == 0 || hi <= lo {
        return (lo, hi);
    }
    let width = (hi - lo) / hist.len() as f32;
    // Values strictly below the low clip may be at most (100−p)% of the total: keep bins from
    // the first one where the count below reaches that share.
    let tail = ((100.0 - p as f64) / 100.0 * total as f64).floor() as u64;
    let mut below = 0u64;
    let mut first = 0;
    for (b, &c) in hist.iter().enumerate() {
        if below + c > tail {
            first = b;
            break;
        }
        below += c;
    }
    let mut above = 0u64;
    let mut last = hist.len() - 1;
    for (b, &c) in hist.iter().enumerate().rev() {
        if above + c > tail {
            last = b;
            break;
        }
        above += c;
    }
    (
        lo + first as f32 * width,
        (lo + (last + 1) as f32 * width).min(hi),
    )
}

/// The real range of normalised inputs, known exactly from the normalisation: pixels in [0, 1]
/// map to `[(0 − mean)/std, (1 − mean)/std]` per channel; the union over channels is used
/// (one scale per tensor), so no input value ever saturates.
pub fn input_range(mean: &[f32; 3], std: &[f32; 3]) -> (f32, f32) {
    let lo = (0..3)
        .map(|c| -mean[c] / std[c])
        .fold(f32::INFINITY, f32::min);
    let hi = (0..3)
        .map(|c| (1.0 - mean[c]) / std[c])
        .fold(f32::NEG_INFINITY, f32::max);
    (lo, hi)
}

/// The dataset formats calibration reads (detected from the root's files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibFormat {
    /// `identity_CelebA.txt` present: the MAFL training list, MAFL-cropped (faces).
    CelebA,
    /// `train.csv` present: the mini-ImageNet train split.
    MiniImageNet,
    /// Otherwise: `root/<class>/<image>`.
    ImageFolder,
}

/// Which format `dir` holds.
pub fn detect_format(dir: &Path) -> CalibFormat {
    if dir.join(data::celeba::IDENTITY_FILE).is_file() {
        CalibFormat::CelebA
    } else if dir.join(Split::Train.file_name()).is_file() {
        CalibFormat::MiniImageNet
    } else {
        CalibFormat::ImageFolder
    }
}

/// The evaluation-time preprocessing of the host's pipeline: the whole image resized ("stretch")
/// to `size × size` by [`crate::augment::geometry::crop_resize`] and normalised with
/// `mean`/`std` into CHW f32 — exactly what [`crate::augment::eval_transform`] does with
/// [`crate::augment::AugmentConfig::none`] (and what runtime-cli's preprocessing does), so
/// calibration sees the very inputs the model is evaluated on. No crop beyond the dataset's own
/// (e.g. MAFL).
/// The image must be non-empty ([`calibration_inputs`] checks).
pub fn preprocess(img: &image::RgbImage, size: usize, mean: &[f32; 3], std: &[f32; 3]) -> Vec<f32> {
    let full = CropRect {
        i: 0,
        j: 0,
        h: img.height() as usize,
        w: img.width() as usize,
    };
    let mut p = geometry::crop_resize(img, full, size, size);
    p.normalize(*mean, *std);
    p.data
}

/// `n` images of the dataset in `dir`, chosen by a permutation from `seed` (purpose
/// CALIBRATION), preprocessed for a `size`-pixel model. Asking for more images than the
/// dataset has is an error (the exported file records N, so it must mean what it says).
pub fn calibration_inputs(
    dir: &Path,
    n: usize,
    size: usize,
    seed: u64,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> Result<Vec<Vec<f32>>, ExportError> {
    let format = detect_format(dir);
    let list: LabelledImages = match format {
        CalibFormat::CelebA => CelebA::open_preferring_exact(dir)?.mafl_train(),
        CalibFormat::MiniImageNet => MiniImageNet::open(dir)?.split(Split::Train)?,
        CalibFormat::ImageFolder => data::image_folder(dir)?,
    };
    if n == 0 {
        return Err(ExportError::Calibration(
            "--calib-images must be at least 1 for an int8 export".into(),
        ));
    }
    if n > list.len() {
        return Err(ExportError::Input {
            path: dir.to_owned(),
            msg: format!(
                "--calib-images {n} but the {format:?} dataset has only {} images",
                list.len()
            ),
        });
    }
    let mut order: Vec<usize> = (0..list.len()).collect();
    {
        use rand::seq::SliceRandom;
        order.shuffle(&mut stream(seed, &[purpose::CALIBRATION]));
    }
    order[..n]
        .iter()
        .map(|&i| {
            let (img, _, lm) = list.load(i)?;
            if img.width() == 0 || img.height() == 0 {
                return Err(ExportError::Input {
                    path: list.items[i].0.clone(),
                    msg: "empty image".into(),
                });
            }
            let img = match (format, lm) {
                (CalibFormat::CelebA, Some(lm)) => data::mafl_crop(&img, &lm).0,
                _ => img,
            };
            Ok(preprocess(&img, size, mean, std))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a sort: values 0..1000 (each once); the 99th percentile range must contain
    /// [10, 989] (1% = 10 values each side may be clipped) and exceed it by at most one bin.
    #[test]
    fn percentile_matches_sorted_values() {
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let mut h = vec![0u64; BINS];
        add_to_histogram(&mut h, &v, 0.0, 999.0);
        assert_eq!(h.iter().sum::<u64>(), 1000);
        let (lo, hi) = percentile_range(&h, 0.0, 999.0, 99.0);
        let bin = 999.0 / BINS as f32;
        assert!(lo <= 10.0 && lo >= 10.0 - 2.0 * bin, "{lo}");
        assert!(hi >= 989.0 && hi <= 989.0 + 2.0 * bin, "{hi}");
        // No more than 1% strictly outside the range on each side.
        assert!(v.iter().filter(|&&x| x < lo).count() <= 10);
        assert!(v.iter().filter(|&&x| x > hi).count() <= 10);
        // A single outlier far out is clipped away at 99.9 with 1001 values.
        let mut w = v.clone();
        w.push(1e6);
        let mut h = vec![0u64; BINS];
        add_to_histogram(&mut h, &w, 0.0, 1e6);
        let (_, hi) = percentile_range(&h, 0.0, 1e6, 99.9);
        assert!(hi < 1e4, "{hi}");
    }

    #[test]
    fn input_range_covers_every_pixel() {
        let (lo, hi) = input_range(
            &super::super::fold::IMAGENET_MEAN,
            &super::super::fold::IMAGENET_STD,
        );
        assert!(
            (lo - (-0.485 / 0.229)).abs() < 1e-6 && (hi - (1.0 - 0.406) / 0.225).abs() < 1e-6,
            "{lo} {hi}"
        );
    }

    /// Calibration preprocesses exactly as the eval pipeline (bit for bit), on a non-square
    /// image that is both shrunk and stretched.
    #[test]
    fn preprocess_is_the_eval_transform() {
        use crate::augment::{eval_transform, AugmentConfig};
        let img = image::RgbImage::from_fn(13, 7, |x, y| {
            image::Rgb([(x * 19) as u8, (y * 37) as u8, ((x * y) % 251) as u8])
        });
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let cfg = AugmentConfig {
            mean,
            std,
            ..AugmentConfig::none(5)
        };
        let want = eval_transform(&img, None, &cfg).unwrap().pixels;
        assert_eq!(preprocess(&img, 5, &mean, &std), want);
    }

    #[test]
    fn preprocess_layout_and_normalisation() {
        // 1×1 image upscaled to 2×2 keeps its colour; CHW order.
        let img = image::RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 51]));
        let x = preprocess(&img, 2, &[0.5, 0.0, 0.0], &[0.5, 1.0, 0.1]);
        let want = [
            1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0,
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{x:?}");
        }
    }
}
