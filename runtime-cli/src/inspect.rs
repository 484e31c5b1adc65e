//! `inspect`: what a model file holds — the op graph with per-layer shapes and MACs, the memory
//! it needs on a device (weight bytes, arena bytes), and a summary of its quantisation.
use std::path::Path;

use anyhow::{anyhow, Result};
use runtime_core::{Dtype, Model, TensorDesc};
use serde_json::json;

use crate::engine;

/// One op, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub index: usize,
    pub op: &'static str,
    pub inputs: Vec<u16>,
    pub output: u16,
    pub shape: [usize; 3],
    pub macs: u64,
    pub scale: f32,
    pub zp: i32,
}

/// One parameter tensor of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub file_bytes: usize,
    pub dtype: &'static str,
    pub task: &'static str,
    pub input: TensorDesc,
    pub output: TensorDesc,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layers: Vec<Layer>,
    pub macs: u64,
    pub weight_bytes: usize,
    pub arena_bytes: usize,
    pub params: Vec<Param>,
    /// Activation scale range `[min, max]` and zero-point range (int8 models).
    pub act_scale: Option<(f32, f32)>,
    pub act_zp: Option<(i32, i32)>,
    /// Requantisation shift range over all `*.shift` tensors (int8 models).
    pub shift_range: Option<(i32, i32)>,
}

fn min_max<T: PartialOrd + Copy>(it: impl Iterator<Item = T>) -> Option<(T, T)> {
    it.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((if v < lo { v } else { lo }, if v > hi { v } else { hi })),
    })
}

/// Builds the report of a parsed model (`bytes` is its file, for the parameter list).
pub fn report(model: &Model, bytes: &[u8], path: &Path) -> Result<Report> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut params: Vec<Param> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Param {
            name,
            dtype: format!("{:?}", v.dtype()),
            shape: v.shape().to_vec(),
            bytes: v.data().len(),
        })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    let tensors = model.tensors();
    let layers = model
        .nodes()
        .iter()
        .enumerate()
        .map(|(index, n)| {
            let t = tensors[n.output() as usize];
            Layer {
                index,
                op: n.kind().name(),
                inputs: n.inputs().to_vec(),
                output: n.output(),
                shape: [t.h, t.w, t.c],
                macs: n.macs(),
                scale: t.scale,
                zp: t.zp,
            }
        })
        .collect();
    let int8 = model.dtype() == Dtype::Int8;
    let shifts = st
        .tensors()
        .into_iter()
        .filter(|(n, v)| n.ends_with(".shift") && v.dtype() == safetensors::Dtype::I32)
        .flat_map(|(_, v)| {
            v.data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<_>>()
        });
    let (mean, std) = model.normalisation();
    Ok(Report {
        file_bytes: bytes.len(),
        dtype: engine::dtype_name(model.dtype()),
        task: engine::task_name(model.task()),
        input: model.input_desc(),
        output: model.output_desc(),
        mean: mean.to_vec(),
        std: std.to_vec(),
        layers,
        macs: model.macs(),
        weight_bytes: model.weight_bytes(),
        arena_bytes: model.arena_bytes(),
        params,
        act_scale: if int8 {
            min_max(tensors.iter().map(|t| t.scale))
        } else {
            None
        },
        act_zp: if int8 {
            min_max(tensors.iter().map(|t| t.zp))
        } else {
            None
        },
        shift_range: if int8 { min_max(shifts) } else { None },
    })
}

/// Reads, validates and reports a model file.
pub fn inspect(path: &Path) -> Result<Report> {
    let bytes = engine::read_model(path)?;
    let model = engine::parse_model(&bytes, path)?;
    report(&model, &bytes, path)
}

fn shape(t: &TensorDesc) -> String {
    format!("{}×{}×{}", t.h, t.w, t.c)
}

/// `--json` form.
pub fn to_json(r: &Report, path: &Path) -> serde_json::Value {
    let q = |t: &TensorDesc| {
        if r.dtype == "i8" {
            json!({"scale": t.scale, "zp": t.zp})
        } else {
            json!(null)
        }
    };
    json!({
        "command": "inspect",
        "model": path.display().to_string(),
        "file_bytes": r.file_bytes,
        "dtype": r.dtype,
        "task": r.task,
        "input": {"shape": [r.input.h, r.input.w, r.input.c], "quant": q(&r.input), "mean": r.mean, "std": r.std},
        "output": {"shape": [r.output.h, r.output.w, r.output.c], "quant": q(&r.output)},
        "layers": r.layers.iter().map(|l| json!({
            "index": l.index, "op": l.op, "inputs": l.inputs, "output": l.output, "shape": l.shape, "macs": l.macs,
            "quant": if r.dtype == "i8" { json!({"scale": l.scale, "zp": l.zp}) } else { json!(null) },
        })).collect::<Vec<_>>(),
        "macs": r.macs,
        "weight_bytes": r.weight_bytes,
        "arena_bytes": r.arena_bytes,
        "params": r.params.iter().map(|p| json!({"name": p.name, "dtype": p.dtype, "shape": p.shape, "bytes": p.bytes})).collect::<Vec<_>>(),
        "quantisation": if r.dtype == "i8" { json!({
            "activation_scale": r.act_scale.map(|(a, b)| [a, b]),
            "activation_zp": r.act_zp.map(|(a, b)| [a, b]),
            "shift": r.shift_range.map(|(a, b)| [a, b]),
        }) } else { json!(null) },
    })
}

/// Human form.
pub fn to_text(r: &Report, path: &Path) -> String {
    let mut s = format!(
        "{} ({} bytes): dtype {}, task {}\n",
        path.display(),
        r.file_bytes,
        r.dtype,
        r.task
    );
    s += &format!(
        "input {} mean {:?} std {:?}",
        shape(&r.input),
        r.mean,
        r.std
    );
    if r.dtype == "i8" {
        s += &format!(" scale {} zp {}", r.input.scale, r.input.zp);
    }
    s += &format!("\noutput {}\n", shape(&r.output));
    s += &format!(
        "{:>4}  {:<8} {:<10} {:>4}  {:<12} {:>12}",
        "#", "op", "in", "out", "shape", "MACs"
    );
    if r.dtype == "i8" {
        s += &format!("  {:>12} {:>5}", "scale", "zp");
    }
    s.push('\n');
    for l in &r.layers {
        let ins: Vec<String> = l.inputs.iter().map(|i| i.to_string()).collect();
        s += &format!(
            "{:>4}  {:<8} {:<10} {:>4}  {:<12} {:>12}",
            l.index,
            l.op,
            ins.join(","),
            l.output,
            format!("{}×{}×{}", l.shape[0], l.shape[1], l.shape[2]),
            l.macs
        );
        if r.dtype == "i8" {
            s += &format!("  {:>12.6} {:>5}", l.scale, l.zp);
        }
        s.push('\n');
    }
    s += &format!("MACs {} ({:.2} M)\n", r.macs, r.macs as f64 / 1e6);
    s += &format!(
        "weight bytes {} ({:.1} KiB) in {} parameter tensors\n",
        r.weight_bytes,
        r.weight_bytes as f64 / 1024.0,
        r.params.len()
    );
    s += &format!(
        "arena bytes {} ({:.1} KiB)",
        r.arena_bytes,
        r.arena_bytes as f64 / 1024.0
    );
    if let (Some(sc), Some(zp)) = (r.act_scale, r.act_zp) {
        s += &format!(
            "\nquantisation: activation scales {:.6}..{:.6}, zero points {}..{}",
            sc.0, sc.1, zp.0, zp.1
        );
        if let Some((a, b)) = r.shift_range {
            s += &format!(", requantisation shifts {a}..{b}");
        }
    }
    s
}
