//! `bench`: single-thread latency of one inference on this machine (input quantisation + the
//! graph), after a warm-up, as percentiles and throughput.
//!
//! The input is a fixed pseudo-random image (SplitMix64, seed 0) so no kernel sees the trivial
//! all-zero case; it is reloaded before every run because the arena planner may reuse the input
//! slot for later activations. With `--input-raw FILE` the input is instead that file's int8
//! input tensor, copied in before every run (`Model::run_int8_raw`): what another engine is
//! timed on when it is given the same tensor (scripts/bench_vs_litert.py).
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use runtime_core::heads::rng::SplitMix64;
use serde_json::json;

use crate::engine::{self, Runner};

/// Timings in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub runs: usize,
    pub warmup: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub images_per_s: f64,
    pub macs: u64,
    pub dtype: &'static str,
    /// int8 conv/fc kernel per op on this machine (`Model::kernel_backends`), summarised as
    /// `name×count`; empty for f32 models.
    pub kernels: String,
    /// Heap bytes the loader added for the fast kernels (`Model::prepared_bytes`).
    pub prepared_bytes: usize,
    /// Threads the int8 convs could split over (`Model::set_threads`).
    pub threads: usize,
    /// Per-op medians (`--per-op`), in graph order; empty unless asked for.
    pub per_op: Vec<OpTime>,
}

/// One node's share of an inference (`--per-op`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    pub index: usize,
    pub op: &'static str,
    /// Output tensor, HWC.
    pub shape: [usize; 3],
    /// Multiply-accumulates (conv, dwconv, fc), or element operations (the others).
    pub macs: u64,
    /// Median over the profiled runs of the time from the previous node's end (the input's
    /// copy, for the first) to this node's end.
    pub p50_us: f64,
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of the
/// values at or below it. `sorted` must be non-empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Runs the benchmark.
pub fn bench(
    path: &Path,
    runs: usize,
    warmup: usize,
    reference_kernels: bool,
    threads: usize,
    input_raw: Option<&Path>,
    per_op: bool,
) -> Result<BenchResult> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bytes = engine::read_model(path)?;
    let mut model = engine::parse_model(&bytes, path)?;
    model.set_reference_kernels(reference_kernels);
    model.set_threads(threads);
    let kernels = summarise(&model.kernel_backends());
    let prepared_bytes = model.prepared_bytes();
    let mut runner = Runner::new(&model);
    let [h, w, _] = model.input_shape();
    let mut rng = SplitMix64::new(0);
    let img = image::RgbImage::from_fn(w as u32, h as u32, |_, _| {
        let v = rng.next_u64();
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let x = runner.exact_input(&img, path)?;
    let raw = match input_raw {
        Some(p) => Some(raw_input(&model, p)?),
        None => None,
    };
    let mut arena = vec![
        0u8;
        if raw.is_some() {
            model.arena_bytes()
        } else {
            0
        }
    ];
    let mut once = || -> Result<()> {
        match &raw {
            Some(q) => {
                std::hint::black_box(
                    model
                        .run_int8_raw(std::hint::black_box(q), &mut arena)
                        .map_err(|e| anyhow::anyhow!("{}: inference: {e}", path.display()))?,
                );
            }
            None => {
                std::hint::black_box(runner.run_normalised(std::hint::black_box(&x))?);
            }
        }
        Ok(())
    };
    for _ in 0..warmup {
        once()?;
    }
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        once()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let per_op = if per_op {
        let q = match &raw {
            Some(q) => q.clone(),
            None => random_int8(&model, path)?,
        };
        profile_ops(&model, &q, runs, path)?
    } else {
        Vec::new()
    };
    let total: f64 = ms.iter().sum();
    ms.sort_by(f64::total_cmp);
    Ok(BenchResult {
        runs,
        warmup,
        p50_ms: percentile(&ms, 50.0),
        p90_ms: percentile(&ms, 90.0),
        p99_ms: percentile(&ms, 99.0),
        mean_ms: total / runs as f64,
        images_per_s: runs as f64 / (total / 1e3),
        macs: model.macs(),
        dtype: engine::dtype_name(model.dtype()),
        kernels,
        prepared_bytes,
        threads: model.threads(),
        per_op,
    })
}

/// A pseudo-random int8 input tensor (SplitMix64, seed 0) for `--per-op` without `--input-raw`.
fn random_int8(model: &runtime_core::Model, path: &Path) -> Result<Vec<i8>> {
    if model.dtype() != runtime_core::Dtype::Int8 {
        bail!("{}: --per-op profiles int8 models only", path.display());
    }
    let mut rng = SplitMix64::new(0);
    Ok((0..model.input_len())
        .map(|_| rng.next_u64() as i8)
        .collect())
}

/// `runs` inferences of `q` through `Model::run_i8_traced`, whose callback marks the end of
/// every node: the median time of each node (from the previous node's end).
fn profile_ops(
    model: &runtime_core::Model,
    q: &[i8],
    runs: usize,
    path: &Path,
) -> Result<Vec<OpTime>> {
    let nodes = model.nodes();
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut marks: Vec<Instant> = Vec::with_capacity(nodes.len() + 1);
    let mut us: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); nodes.len()];
    for _ in 0..runs {
        marks.clear();
        let t0 = Instant::now();
        model
            .input_slot_i8(&mut arena)
            .map_err(|e| anyhow::anyhow!("{}: inference: {e}", path.display()))?
            .copy_from_slice(q);
        model
            .run_i8_traced(&mut arena, &mut |_, _| marks.push(Instant::now()))
            .map_err(|e| anyhow::anyhow!("{}: inference: {e}", path.display()))?;
        // marks[0]: the input (before the first node); marks[i + 1]: node i's end.
        let mut prev = t0;
        for (i, m) in marks.iter().skip(1).enumerate() {
            us[i].push(m.duration_since(prev).as_secs_f64() * 1e6);
            prev = *m;
        }
    }
    let tensors = model.tensors();
    Ok(nodes
        .iter()
        .zip(us.iter_mut())
        .enumerate()
        .map(|(index, (n, t))| {
            t.sort_by(f64::total_cmp);
            let d = tensors[n.output() as usize];
            OpTime {
                index,
                op: n.kind().name(),
                shape: [d.h, d.w, d.c],
                macs: n.macs(),
                p50_us: percentile(t, 50.0),
            }
        })
        .collect())
}

/// The int8 input tensor in `p` (the model's NHWC layout, exactly `input_len` bytes).
fn raw_input(model: &runtime_core::Model, p: &Path) -> Result<Vec<i8>> {
    if model.dtype() != runtime_core::Dtype::Int8 {
        bail!(
            "{}: --input-raw feeds an int8 input tensor, but the model is f32",
            p.display()
        );
    }
    let bytes = std::fs::read(p)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the input tensor: {e}", p.display()))?;
    if bytes.len() != model.input_len() {
        let [h, w, c] = model.input_shape();
        bail!(
            "{}: {} bytes, but the model's int8 input tensor is {h}x{w}x{c} = {} bytes (NHWC)",
            p.display(),
            bytes.len(),
            model.input_len()
        );
    }
    Ok(bytes.into_iter().map(|b| b as i8).collect())
}

/// `["a", "a", "b"]` → `"a×2 b×1"` (in first-seen order).
pub fn summarise(names: &[&str]) -> String {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for &n in names {
        match seen.iter_mut().find(|(m, _)| *m == n) {
            Some((_, c)) => *c += 1,
            None => seen.push((n, 1)),
        }
    }
    seen.iter()
        .map(|(n, c)| format!("{n}×{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--json` form.
pub fn to_json(r: &BenchResult, path: &Path) -> serde_json::Value {
    json!({
        "command": "bench",
        "model": path.display().to_string(),
        "dtype": r.dtype,
        "threads": r.threads,
        "runs": r.runs,
        "warmup": r.warmup,
        "p50_ms": r.p50_ms,
        "p90_ms": r.p90_ms,
        "p99_ms": r.p99_ms,
        "mean_ms": r.mean_ms,
        "images_per_s": r.images_per_s,
        "macs": r.macs,
        "kernels": r.kernels,
        "prepared_bytes": r.prepared_bytes,
        "per_op": r.per_op.iter().map(|o| json!({
            "index": o.index,
            "op": o.op,
            "shape": o.shape,
            "macs": o.macs,
            "p50_us": o.p50_us,
        })).collect::<Vec<_>>(),
    })
}

/// Human form.
pub fn to_text(r: &BenchResult, path: &Path) -> String {
    let gmacs = r.macs as f64 * r.images_per_s / 1e9;
    let mut s = format!(
        "{} ({}, {:.2} M MACs), {} thread{}, {} runs after {} warm-up:\n  latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms (mean {:.3} ms)\n  throughput {:.1} images/s ({:.2} GMAC/s)\n  kernels: {} (prepared {} B)",
        path.display(),
        r.dtype,
        r.macs as f64 / 1e6,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.runs,
        r.warmup,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.mean_ms,
        r.images_per_s,
        gmacs,
        if r.kernels.is_empty() { "f32" } else { &r.kernels },
        r.prepared_bytes
    );
    if !r.per_op.is_empty() {
        let sum: f64 = r.per_op.iter().map(|o| o.p50_us).sum();
        s.push_str("\n  per op (median µs of the profiled runs; sum of medians ");
        s.push_str(&format!("{sum:.1} µs):"));
        for o in &r.per_op {
            let [h, w, c] = o.shape;
            s.push_str(&format!(
                "\n  {:>3} {:<8} {:>4}x{:<3}x{:<4} {:>10} {} {:>9.2} µs {:>5.1}%",
                o.index,
                o.op,
                h,
                w,
                c,
                o.macs,
                if is_mac_op(o.op) { "MACs" } else { "elts" },
                o.p50_us,
                100.0 * o.p50_us / sum
            ));
            if is_mac_op(o.op) {
                s.push_str(&format!(" {:>6.1} GMAC/s", o.macs as f64 / o.p50_us / 1e3));
            }
        }
    }
    s
}

/// Whether `Node::macs` of this op counts multiply-accumulates (else element operations).
fn is_mac_op(op: &str) -> bool {
    matches!(op, "conv" | "dwconv" | "fc")
}

#[cfg(test)]
mod tests {
    use super::{percentile, summarise};

    #[test]
    fn kernel_summary_counts_in_order() {
        assert_eq!(
            summarise(&["vnni", "vnni", "portable", "vnni"]),
            "vnni×3 portable×1"
        );
        assert_eq!(summarise(&[]), "");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
