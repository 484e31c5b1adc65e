//! Calibration: the real range of every activation of the folded f32 graph over N images.
//!
//! The graph runs in candle ([`Graph::eval`], batched) — the same function as the runtime's f32
//! path, which the f32 parity test proves — and each tensor's range is chosen by a
//! [`CalibMethod`], per tensor, from what that tensor held over the calibration set:
//! * [`CalibMethod::MinMax`]: the observed min/max; nothing saturates on the calibration set.
//! * [`CalibMethod::Percentile`]`(P)`: clipped to the (100−P)-th and P-th percentiles of the
//!   tensor's values over all images, positions and channels, trading a few saturated outliers
//!   for a finer step everywhere else. Percentiles come from a 2048-bin histogram over the
//!   min/max range (a second pass); the clip points are the outer edges of the bins holding the
//!   quantiles, so at most one bin (range/2048) more than asked is kept, never less.
//! * [`CalibMethod::Mse`]: the clip range whose int8 quantisation (the exporter's own
//!   [`activation_quant`], zero-point nudge included) has the smallest mean squared error
//!   over the tensor's histogram ([`mse_range`]): saturation and rounding error weighed
//!   against each other, per tensor, instead of one percentile for all.
//! * [`CalibMethod::Kl`]: TensorRT's entropy calibration ([`kl_threshold`]): the threshold on
//!   |x| whose clipped distribution loses the least information (KL divergence) when merged
//!   into the int8 levels.
//!
//! Calibration images are drawn deterministically ([`trainer::rng::purpose::CALIBRATION`]) from a
//! dataset root whose format is detected: CelebA (MAFL training list, MAFL crop), mini-ImageNet
//! CSV (train split) or ImageFolder.
use candle_core::{Device, Tensor};
use std::path::Path;

use super::graph::Graph;
use super::quantize::activation_quant;
use super::ExportError;
use trainer::augment::{geometry, CropRect};
use trainer::data::{self, CelebA, LabelledImages, MiniImageNet, Split};
use trainer::rng::{purpose, stream};

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

/// How a tensor's activation range is chosen from the calibration set (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibMethod {
    MinMax,
    /// Clip at the (100−P)/P percentiles, P in (50, 100); 100 means min/max.
    Percentile(f32),
    Mse,
    Kl,
}

impl CalibMethod {
    /// The CLI / provenance name: `minmax`, `percentile`, `mse`, `kl`.
    pub fn name(&self) -> &'static str {
        match self {
            CalibMethod::MinMax => "minmax",
            CalibMethod::Percentile(_) => "percentile",
            CalibMethod::Mse => "mse",
            CalibMethod::Kl => "kl",
        }
    }

    /// What the provenance comment of an exported file says.
    pub fn describe(&self) -> String {
        match self {
            CalibMethod::Percentile(p) if *p < 100.0 => format!("percentile {p}"),
            CalibMethod::Percentile(_) | CalibMethod::MinMax => "min/max".into(),
            CalibMethod::Mse => "MSE-optimal clip".into(),
            CalibMethod::Kl => "KL (entropy) clip".into(),
        }
    }
}

/// Ranges of every tensor of `g` over `inputs` (normalised CHW images at the model input size).
pub fn calibrate(
    g: &Graph,
    inputs: &[Vec<f32>],
    method: CalibMethod,
) -> Result<Ranges, ExportError> {
    if inputs.is_empty() {
        return Err(ExportError::Calibration("no calibration images".into()));
    }
    if let CalibMethod::Percentile(p) = method {
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
    match method {
        CalibMethod::MinMax => return Ok(r),
        CalibMethod::Percentile(p) if p >= 100.0 => return Ok(r),
        _ => {}
    }
    // KL works on |x| over [0, max |x|]; the others on x over [lo, hi].
    let kl = method == CalibMethod::Kl;
    let hist_ranges: Vec<(f32, f32)> = (0..n)
        .map(|i| {
            if kl {
                (0.0, r.lo[i].abs().max(r.hi[i].abs()))
            } else {
                (r.lo[i], r.hi[i])
            }
        })
        .collect();
    let mut hist = vec![vec![0u64; BINS]; n];
    for b in batches(inputs, g.shapes[0]) {
        for (i, t) in g.eval(&b?)?.iter().enumerate() {
            let mut v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            if kl {
                v.iter_mut().for_each(|x| *x = x.abs());
            }
            let (lo, hi) = hist_ranges[i];
            add_to_histogram(&mut hist[i], &v, lo, hi);
        }
    }
    for (i, h) in hist.iter().enumerate() {
        let (lo, hi) = (r.lo[i], r.hi[i]);
        (r.lo[i], r.hi[i]) = match method {
            CalibMethod::Percentile(p) => percentile_range(h, lo, hi, p),
            CalibMethod::Mse => mse_range(h, lo, hi),
            CalibMethod::Kl => {
                let amax = hist_ranges[i].1;
                let levels = if lo >= 0.0 || hi <= 0.0 {
                    KL_LEVELS_ONE_SIDED
                } else {
                    KL_LEVELS_TWO_SIDED
                };
                let t = kl_threshold(h, levels) as f32 * amax / BINS as f32;
                (lo.max(-t), hi.min(t))
            }
            CalibMethod::MinMax => unreachable!("returned above"),
        };
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

/// Most candidate clip points per side of a two-sided [`mse_range`] search (the search is
/// exhaustive over candidate pairs, so this bounds its cost at 128² histogram sweeps).
pub const MSE_CANDIDATES_TWO_SIDED: usize = 128;

/// Sum over the histogram of `count · (x − dequant(quant(x)))²` with `x` the bin centre and the
/// int8 parameters [`activation_quant`] gives the range `[a, b]` (what the export will use).
pub fn quant_sq_error(hist: &[u64], lo: f32, hi: f32, a: f32, b: f32) -> f64 {
    let q = activation_quant(a, b);
    let (s, zp) = (q.scale as f64, q.zp as f64);
    let w = (hi as f64 - lo as f64) / hist.len() as f64;
    hist.iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(k, &c)| {
            let x = lo as f64 + (k as f64 + 0.5) * w;
            let xq = ((x / s).round() + zp).clamp(-128.0, 127.0);
            let e = x - s * (xq - zp);
            c as f64 * e * e
        })
        .sum()
}

/// Evenly spaced picks of at most `max` items from `v`, always keeping the first (the widest
/// clip point, so ties go to the wider range).
fn thin(v: Vec<f32>, max: usize) -> Vec<f32> {
    if v.len() <= max {
        return v;
    }
    (0..max).map(|i| v[i * (v.len() - 1) / (max - 1)]).collect()
}

/// The MSE-optimal clip range of a tensor from its `BINS`-bin histogram over `[lo, hi]`.
///
/// Candidates are bin edges (so a clip keeps whole bins): upper ends `> 0`, lower ends `< 0`
/// (the quantiser widens every range to contain 0, so a side that never leaves 0 has the single
/// candidate 0). A one-sided tensor (after ReLU) is searched over every edge; a two-sided one over
/// every pair of [`MSE_CANDIDATES_TWO_SIDED`] evenly spaced edges per side (the error of one
/// side's clip depends on the other through the shared scale, so the pair is searched jointly,
/// not side by side). The smallest [`quant_sq_error`] wins; ties keep the wider range.
pub fn mse_range(hist: &[u64], lo: f32, hi: f32) -> (f32, f32) {
    if hi <= lo || hist.iter().all(|&c| c == 0) {
        return (lo, hi);
    }
    let n = hist.len();
    let w = (hi - lo) / n as f32;
    let edge = |k: usize| if k == n { hi } else { lo + k as f32 * w };
    // Widest first.
    let mut uppers: Vec<f32> = (1..=n).rev().map(edge).filter(|&e| e > 0.0).collect();
    let mut lowers: Vec<f32> = (0..n).map(edge).filter(|&e| e < 0.0).collect();
    if uppers.is_empty() {
        uppers.push(hi.max(0.0));
    }
    if lowers.is_empty() {
        lowers.push(lo.min(0.0));
    }
    if uppers.len() > 1 && lowers.len() > 1 {
        uppers = thin(uppers, MSE_CANDIDATES_TWO_SIDED);
        lowers = thin(lowers, MSE_CANDIDATES_TWO_SIDED);
    }
    let mut best = (f64::INFINITY, lo, hi);
    for &a in &lowers {
        for &b in &uppers {
            let e = quant_sq_error(hist, lo, hi, a, b);
            if e < best.0 {
                best = (e, a, b);
            }
        }
    }
    (best.1.max(lo), best.2.min(hi))
}

/// int8 levels a one-sided tensor's `[0, T]` clip is spread over (all 256 codes).
pub const KL_LEVELS_ONE_SIDED: usize = 256;
/// Levels per side for a two-sided tensor (TensorRT's 128: `[−T, T]` shares the 256 codes).
pub const KL_LEVELS_TWO_SIDED: usize = 128;

/// MXNet's `_smooth_distribution`: zero bins get `eps`, taken evenly from the non-zero ones, so
/// the divergence stays finite. Returns it normalised to sum 1.
fn smooth(p: &[f64]) -> Vec<f64> {
    const EPS: f64 = 1e-4;
    let zeros = p.iter().filter(|&&x| x == 0.0).count();
    let nonzeros = p.len() - zeros;
    let eps1 = if nonzeros > 0 {
        EPS * zeros as f64 / nonzeros as f64
    } else {
        0.0
    };
    let v: Vec<f64> = p
        .iter()
        .map(|&x| if x == 0.0 { EPS } else { x - eps1 })
        .collect();
    let sum: f64 = v.iter().sum();
    v.into_iter().map(|x| x / sum).collect()
}

/// KL divergence of TensorRT's entropy calibration for keeping the first `i` bins of an |x|
/// histogram: P = those bins with everything beyond added to the last; Q = the same bins merged
/// into `levels` groups of `i / levels` (the last takes the remainder), each group's mass spread
/// evenly over its non-empty bins (empty in P stays empty in Q); both smoothed ([`smooth`]).
pub fn kl_divergence(hist: &[u64], i: usize, levels: usize) -> f64 {
    let sliced = &hist[..i];
    let mut p: Vec<f64> = sliced.iter().map(|&c| c as f64).collect();
    p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
    let merged = i / levels;
    let mut q = vec![0f64; i];
    for j in 0..levels {
        let start = j * merged;
        let stop = if j == levels - 1 { i } else { start + merged };
        let group = &sliced[start..stop];
        let mass: u64 = group.iter().sum();
        let nz = group.iter().filter(|&&c| c > 0).count();
        if nz > 0 {
            for k in start..stop {
                if sliced[k] > 0 {
                    q[k] = mass as f64 / nz as f64;
                }
            }
        }
    }
    for k in 0..i {
        if p[k] == 0.0 {
            q[k] = 0.0;
        }
    }
    let (p, q) = (smooth(&p), smooth(&q));
    p.iter()
        .zip(&q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| a * (a / b).ln())
        .sum()
}

/// TensorRT's entropy calibration on an |x| histogram over `[0, max|x|]`: the number of bins
/// `i ∈ [levels, len]` to keep (threshold = `i` bin widths) whose [`kl_divergence`] is the
/// smallest; ties keep the larger `i`. An empty histogram or one with fewer bins than levels
/// keeps everything.
///
/// Bin 0 (|x| near 0) first takes bin 1's count, as NVIDIA's pytorch-quantization entropy
/// calibrator does: after a ReLU it holds every exact zero (often half the values), and that
/// spike, spread over its merged group in Q, would dominate the divergence and push the threshold
/// to the smallest candidates (measured: −10 points of few-shot accuracy without this).
pub fn kl_threshold(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    if n <= levels || levels == 0 || hist.iter().all(|&c| c == 0) {
        return n;
    }
    let mut h = hist.to_vec();
    if n > 1 {
        h[0] = h[1];
    }
    let hist = &h[..];
    let mut best = (f64::INFINITY, n);
    for i in (levels..=n).rev() {
        let d = kl_divergence(hist, i, levels);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
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
/// to `size × size` by [`trainer::augment::geometry::crop_resize`] and normalised with
/// `mean`/`std` into CHW f32 — exactly what [`trainer::augment::eval_transform`] does with
/// [`trainer::augment::AugmentConfig::none`] (and what runtime-cli's preprocessing does), so
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

    /// A small histogram drawn from a fixed LCG: a bell of counts plus a few far outliers.
    fn bell_with_outliers(bins: usize, centre: usize, outliers: &[usize]) -> Vec<u64> {
        let mut h = vec![0u64; bins];
        let mut state = 12345u64;
        for _ in 0..4000 {
            // Sum of 4 uniforms ~ a bell around `centre`.
            let mut s = 0i64;
            for _ in 0..4 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s += ((state >> 33) % (bins as u64 / 4)) as i64;
            }
            let k = (s - 3 * bins as i64 / 8 + centre as i64 - bins as i64 / 8)
                .clamp(0, bins as i64 - 1);
            h[k as usize] += 1;
        }
        for &o in outliers {
            h[o] += 1;
        }
        h
    }

    /// Naive MSE of clipping at `[a, b]`: every value expanded out of the histogram (bin
    /// centre), quantised and dequantised one by one with the exporter's parameters.
    fn naive_mse(h: &[u64], lo: f32, hi: f32, a: f32, b: f32) -> f64 {
        let q = activation_quant(a, b);
        let w = (hi - lo) as f64 / h.len() as f64;
        let values: Vec<f64> = h
            .iter()
            .enumerate()
            .flat_map(|(k, &c)| std::iter::repeat_n(lo as f64 + (k as f64 + 0.5) * w, c as usize))
            .collect();
        values
            .iter()
            .map(|&x| {
                let code = (x / q.scale as f64).round() as i64 + q.zp as i64;
                let code = code.clamp(-128, 127);
                let back = q.scale as f64 * (code - q.zp as i64) as f64;
                (x - back).powi(2)
            })
            .sum::<f64>()
            / values.len() as f64
    }

    /// The MSE chooser against a brute-force search over every pair of bin edges (both sides),
    /// on small histograms where the chooser's candidate grid is not thinned: one-sided (after
    /// ReLU, with outliers) and two-sided (lopsided, with outliers on both sides).
    #[test]
    fn mse_range_matches_brute_force_grid() {
        for (lo, hi, h) in [
            (0.0f32, 10.0f32, bell_with_outliers(64, 10, &[60, 63])),
            (-3.0, 9.0, bell_with_outliers(64, 20, &[0, 62, 63])),
            (-8.0, 8.0, bell_with_outliers(48, 24, &[1, 46])),
        ] {
            let (a, b) = mse_range(&h, lo, hi);
            let n = h.len();
            let w = (hi - lo) / n as f32;
            let edges: Vec<f32> = (0..=n)
                .map(|k| if k == n { hi } else { lo + k as f32 * w })
                .collect();
            let mut best = f64::INFINITY;
            for &x in edges.iter().filter(|&&e| e <= 0.0) {
                for &y in edges.iter().filter(|&&e| e >= 0.0) {
                    best = best.min(naive_mse(&h, lo, hi, x, y));
                }
            }
            let got = naive_mse(&h, lo, hi, a, b);
            assert!(
                got <= best * (1.0 + 1e-9),
                "[{lo}, {hi}]: chooser [{a}, {b}] has MSE {got}, brute force {best}"
            );
            assert!(got <= naive_mse(&h, lo, hi, lo, hi), "{a} {b}");
        }
        // At the calibrator's resolution (2048 bins, finer than the int8 step) a far outlier
        // is clipped once the bulk is large: the finer step saves more rounding error than the
        // outlier's saturation costs.
        let mut h = vec![0u64; BINS];
        for (k, c) in bell_with_outliers(64, 12, &[]).iter().enumerate() {
            for j in 0..4 {
                h[k * 4 + j] += c * 250;
            }
        }
        h[BINS - 1] += 1;
        let (a, b) = mse_range(&h, 0.0, 10.0);
        assert!(a == 0.0 && b < 5.0, "[{a}, {b}]");
        assert!(quant_sq_error(&h, 0.0, 10.0, a, b) < quant_sq_error(&h, 0.0, 10.0, 0.0, 10.0));
    }

    /// Naive KL of keeping `i` bins (written independently of `kl_divergence`): P and Q as
    /// probabilities built value by value, each level found by division, same smoothing rule.
    fn naive_kl(h: &[u64], i: usize, levels: usize) -> f64 {
        let total: u64 = h.iter().sum();
        let merged = i / levels;
        let level_of = |k: usize| (k / merged).min(levels - 1);
        // P: the clipped values' bins (outliers land in bin i − 1).
        let mut p = vec![0f64; i];
        for (k, &c) in h.iter().enumerate() {
            p[k.min(i - 1)] += c as f64;
        }
        // Q: each level's in-range mass spread over the level's occupied bins.
        let mut mass = vec![0f64; levels];
        let mut occupied = vec![0usize; levels];
        for k in 0..i {
            mass[level_of(k)] += h[k] as f64;
            occupied[level_of(k)] += (h[k] > 0) as usize;
        }
        let mut q = vec![0f64; i];
        for k in 0..i {
            if h[k] > 0 && p[k] > 0.0 {
                q[k] = mass[level_of(k)] / occupied[level_of(k)] as f64;
            }
        }
        let smooth = |v: &[f64]| -> Vec<f64> {
            let z = v.iter().filter(|&&x| x == 0.0).count() as f64;
            let nz = v.len() as f64 - z;
            let v: Vec<f64> = v
                .iter()
                .map(|&x| if x == 0.0 { 1e-4 } else { x - 1e-4 * z / nz })
                .collect();
            let s: f64 = v.iter().sum();
            v.iter().map(|x| x / s).collect()
        };
        assert!(total > 0);
        let (p, q) = (smooth(&p), smooth(&q));
        (0..i).map(|k| p[k] * (p[k] / q[k]).ln()).sum()
    }

    /// The KL chooser against the naive divergence minimised over every threshold (bin 0
    /// replaced by bin 1 first, the documented zero-spike rule).
    #[test]
    fn kl_threshold_matches_naive_argmin() {
        for (mut h, levels) in [
            (bell_with_outliers(64, 12, &[63]), 8),
            (bell_with_outliers(96, 30, &[70, 95]), 16),
            (bell_with_outliers(40, 5, &[]), 8),
        ] {
            let got = kl_threshold(&h, levels);
            h[0] = h[1];
            let mut best = (f64::INFINITY, 0);
            for i in (levels..=h.len()).rev() {
                let d = naive_kl(&h, i, levels);
                assert!(
                    (d - kl_divergence(&h, i, levels)).abs() <= 1e-9 * d.abs().max(1.0),
                    "i {i}: naive {d} vs {}",
                    kl_divergence(&h, i, levels)
                );
                if d < best.0 {
                    best = (d, i);
                }
            }
            assert_eq!(got, best.1, "levels {levels}");
        }
        // A far outlier is clipped away; a flat histogram with nothing to clip keeps it all;
        // a ReLU spike at 0 does not drag the threshold down to the smallest candidate.
        let h = bell_with_outliers(64, 12, &[63]);
        assert!(kl_threshold(&h, 8) < 63);
        assert_eq!(kl_threshold(&[7u64; 64], 8), 64);
        let mut spiked = vec![7u64; 64];
        spiked[0] = 100_000;
        assert_eq!(kl_threshold(&spiked, 8), 64);
    }

    /// The method names and provenance strings (what the CLI accepts, what the file records).
    #[test]
    fn method_names() {
        assert_eq!(CalibMethod::Percentile(99.9).describe(), "percentile 99.9");
        assert_eq!(CalibMethod::Percentile(100.0).describe(), "min/max");
        assert_eq!(CalibMethod::Mse.name(), "mse");
        assert_eq!(CalibMethod::Kl.name(), "kl");
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
        use trainer::augment::{eval_transform, AugmentConfig};
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
