//! `host-trainer export --onnx` against onnxruntime: the committed runtime models
//! (`fixtures/tiny`) converted to ONNX and run by onnxruntime (scripts/onnx_run.py) agree with
//! runtime-core on the same inputs: f32 within 1e-4, int8 within [`INT8_LSB_BOUND`] steps of the
//! output scale at worst and [`INT8_MEAN_LSB_BOUND`] on average; each op alone within 1 step.
//!
//! onnxruntime comes from PyPI (`pip install onnxruntime numpy onnx`, which scripts/setup.sh
//! runs); only if it cannot be imported does the test print a SKIP line and pass. With the
//! `onnx` package there as well, the script first runs onnx.checker's full check on each model.
use std::path::{Path, PathBuf};
use std::process::Command;

use exporter::export::onnx;
use runtime_core::{Dtype, Model};

/// int8 agreement, in output quantisation steps (LSB). Why not 0: runtime-core requantises
/// with TFLite's fixed-point multiply (two roundings) and rounds the input quantisation half
/// away from zero; onnxruntime requantises through a float multiply rounded once, half to
/// even, and runs `add`/`mean`/`leaky` as DequantizeLinear → float op → QuantizeLinear, so the
/// outputs differ by a few steps: every op alone stays within 1 LSB
/// ([`onnxruntime_agrees_per_op`], the exact check), and those steps carry through the graph,
/// by how much depends on the model's calibration. Measured (12 inputs per model, onnxruntime
/// 1.32): backbone int8 max 5 LSB (mean 0.91, 154 of 384 values identical); landmarks int8 max
/// 10 LSB, mean 3.4 (7 LSB, mean 2.2 on its predecessor, trained with other conv kernels: only
/// the rounding of the training changed). So, as for LiteRT (`tflite_litert.rs`), the bound on
/// the worst output is an eighth of the int8 range and the mean below is the tight check: a wrong
/// layout, scale or multiplier is off by tens of LSB on most values.
const INT8_LSB_BOUND: f32 = 32.0;
/// The largest mean |Δ| accepted, in LSB.
const INT8_MEAN_LSB_BOUND: f32 = 4.0;
const F32_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

/// `python3 -c "import onnxruntime, numpy"` works.
fn have_onnxruntime() -> bool {
    Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// RGB8 HWC images at `size`²: the committed object images of that size, then pseudo-random
/// pixels (an LCG, so the inputs also cover colours the synthetic images never have).
fn images(size: usize) -> Vec<Vec<u8>> {
    let dir = fixtures().join("objects/images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out: Vec<Vec<u8>> = names
        .iter()
        .filter_map(|p| {
            let im = image::open(p).ok()?.to_rgb8();
            (im.width() as usize == size && im.height() as usize == size).then(|| im.into_raw())
        })
        .take(8)
        .collect();
    let mut s: u64 = 0x2021;
    for _ in 0..4 {
        out.push(
            (0..size * size * 3)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 56) as u8
                })
                .collect(),
        );
    }
    out
}

/// Normalised f32, HWC (what runtime-core's `load_input_f32` takes).
fn normalise(rgb: &[u8], mean: &[f32], std: &[f32]) -> Vec<f32> {
    rgb.iter()
        .enumerate()
        .map(|(i, &p)| (p as f32 / 255.0 - mean[i % 3]) / std[i % 3])
        .collect()
}

fn hwc_to_chw(x: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut o = vec![0f32; x.len()];
    for y in 0..h {
        for xx in 0..w {
            for k in 0..c {
                o[(k * h + y) * w + xx] = x[(y * w + xx) * c + k];
            }
        }
    }
    o
}

#[test]
fn onnxruntime_agrees_with_runtime_core() {
    if !have_onnxruntime() {
        println!(
            "SKIP onnx_runtime: python3 cannot import onnxruntime/numpy (scripts/setup.sh \
             installs them with `pip install onnxruntime numpy onnx`; did that fail?)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx_run.py");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "backbone-f32",
        "backbone-int8",
        "landmarks-f32",
        "landmarks-int8",
    ] {
        let bytes = std::fs::read(fixtures().join(format!("{}.safetensors", name))).unwrap();
        let m = Model::parse(&bytes).unwrap();
        let [h, w, c] = m.input_shape();
        let (mean, std) = m.normalisation();
        let inputs: Vec<Vec<f32>> = images(h)
            .iter()
            .map(|im| normalise(im, mean, std))
            .collect();
        assert!(inputs.len() >= 10, "{}: too few inputs", name);
        // runtime-core
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut want = Vec::new();
        for x in &inputs {
            let mut out = vec![0f32; m.output_len()];
            m.load_input_f32(x, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
            want.extend(out);
        }
        // onnxruntime
        let model = dir.path().join(format!("{}.onnx", name));
        std::fs::write(&model, onnx::to_onnx(&bytes).unwrap()).unwrap();
        let xin = dir.path().join(format!("{}.in", name));
        let xout = dir.path().join(format!("{}.out", name));
        let raw: Vec<u8> = inputs
            .iter()
            .flat_map(|x| hwc_to_chw(x, h, w, c))
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&xin, raw).unwrap();
        let o = Command::new("python3")
            .arg(&script)
            .arg(&model)
            .arg(&xin)
            .args([inputs.len(), c, h, w].map(|v| v.to_string()))
            .arg(&xout)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: onnx_run.py failed: {}{}",
            name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Vec<f32> = std::fs::read(&xout)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), want.len(), "{}: output length", name);
        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        match m.dtype() {
            Dtype::F32 => {
                println!(
                    "{}: {} values, max |onnxruntime - runtime-core| = {max_abs:.3e} ({})",
                    name,
                    got.len(),
                    String::from_utf8_lossy(&o.stdout).trim()
                );
                assert!(max_abs <= F32_TOL, "{}: f32 differs by {max_abs}", name);
            }
            Dtype::Int8 => {
                let scale = m.output_desc().scale;
                let lsb: Vec<f32> = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| ((a - b) / scale).abs())
                    .collect();
                let max = lsb.iter().fold(0f32, |m, v| m.max(*v));
                let equal = lsb.iter().filter(|v| **v < 0.5).count();
                let mean = lsb.iter().sum::<f32>() / lsb.len() as f32;
                println!(
                    "{}: {} values, identical {equal}, mean |Δ| {mean:.3} LSB, max |Δ| {max:.2} LSB \
                     (bounds {INT8_LSB_BOUND}, mean {INT8_MEAN_LSB_BOUND}; output scale {scale}) ({})",
                    name,
                    got.len(),
                    String::from_utf8_lossy(&o.stdout).trim()
                );
                assert!(
                    max <= INT8_LSB_BOUND + 1e-3,
                    "{}: int8 differs by {max} LSB",
                    name
                );
                assert!(
                    mean <= INT8_MEAN_LSB_BOUND,
                    "{}: int8 differs by {mean} LSB on average",
                    name
                );
            }
        }
    }
}

/// Per-op agreement, in LSB of each op's output, by op kind: (op, max |Δ| allowed). 1 LSB is
/// the bound for two engines that round differently (fixed-point double rounding vs
/// one float rounding, half away vs half to even); `maxpool` only compares int8 values, so it
/// must agree exactly, as must any op kind not listed.
const PER_OP_LSB: &[(&str, i32)] = &[
    ("input", 1),
    ("conv", 1),
    ("fc", 1),
    ("add", 1),
    ("mean", 1),
    ("leaky", 1),
    ("maxpool", 0),
];

/// Every int8 op alone: runtime-core's own input tensors of each op (`Model::run_i8_traced`)
/// fed to that op's ONNX subgraph in onnxruntime (scripts/onnx_per_op.py), the outputs compared
/// value by value, so no difference upstream carries into an op's comparison. The end-to-end
/// bound above is a sum of these per-op roundings carried through the graph.
#[test]
fn onnxruntime_agrees_per_op() {
    let have_onnx = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy, onnx"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_onnx {
        println!("SKIP onnx per-op: python3 cannot import onnxruntime/numpy/onnx (scripts/setup.sh installs them)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx_per_op.py");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        root.join("fixtures/tiny/backbone-int8.safetensors"),
        root.join("fixtures/tiny/landmarks-int8.safetensors"),
        root.join("fixtures/mcu/resnet8.safetensors"),
        // zoo ResNet-18 layout with the ImageNet stem (a maxpool), width 8, 32 px.
        root.join("fixtures/mcu/backbone.safetensors"),
    ] {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&file).unwrap();
        let m = Model::parse(&bytes).unwrap();
        assert_eq!(m.dtype(), Dtype::Int8);
        let [h, w, c] = m.input_shape();
        let (mean, std) = m.normalisation();
        let dir = tempfile::tempdir().unwrap();
        let inputs: Vec<Vec<f32>> = images(h)
            .iter()
            .take(6)
            .map(|im| normalise(im, mean, std))
            .collect();
        let mut arena = vec![0u8; m.arena_bytes()];
        for (k, x) in inputs.iter().enumerate() {
            m.load_input_f32(x, &mut arena).unwrap();
            let mut files: Vec<(u16, Vec<i8>)> = Vec::new();
            m.run_i8_traced(&mut arena, &mut |id, v| files.push((id, v.to_vec())))
                .unwrap();
            for (id, v) in files {
                let raw: Vec<u8> = v.iter().map(|&q| q as u8).collect();
                std::fs::write(dir.path().join(format!("s{k}_t{id}.bin")), raw).unwrap();
            }
            let nchw: Vec<u8> = hwc_to_chw(x, h, w, c)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(dir.path().join(format!("s{k}_input.bin")), nchw).unwrap();
        }
        let tensors: serde_json::Map<String, serde_json::Value> = m
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    i.to_string(),
                    serde_json::json!({"shape": [t.h, t.w, t.c], "scale": t.scale, "zp": t.zp}),
                )
            })
            .collect();
        let nodes: Vec<serde_json::Value> = m
            .nodes()
            .iter()
            .map(|n| {
                serde_json::json!({"op": n.kind().name(), "inputs": n.inputs(), "output": n.output()})
            })
            .collect();
        let manifest = serde_json::json!({
            "samples": inputs.len(), "dir": dir.path(), "input_shape": [h, w, c],
            "input_id": m.input_id(), "tensors": tensors, "nodes": nodes,
        });
        let man_path = dir.path().join("manifest.json");
        std::fs::write(&man_path, manifest.to_string()).unwrap();
        let onnx_path = dir.path().join("model.onnx");
        std::fs::write(&onnx_path, onnx::to_onnx(&bytes).unwrap()).unwrap();
        let out_path = dir.path().join("per_op.json");
        let o = Command::new("python3")
            .arg(&script)
            .args([&onnx_path, &man_path, &out_path])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: onnx_per_op.py failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
        let rows = report["rows"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            m.nodes().len() + 1,
            "{name}: one row per op and the input"
        );
        let mut worst: Vec<(String, i64, u64, u64)> = Vec::new();
        for r in rows {
            let op = r["op"].as_str().unwrap().to_string();
            let (max, differ, values) = (
                r["max_lsb"].as_i64().unwrap(),
                r["differ"].as_u64().unwrap(),
                r["values"].as_u64().unwrap(),
            );
            match worst.iter_mut().find(|w| w.0 == op) {
                Some(w) => {
                    w.1 = w.1.max(max);
                    w.2 += differ;
                    w.3 += values;
                }
                None => worst.push((op, max, differ, values)),
            }
        }
        let summary: Vec<String> = worst
            .iter()
            .map(|(op, max, differ, values)| {
                format!("{op}: max {max} LSB, {differ}/{values} differ")
            })
            .collect();
        println!(
            "{name} per op ({} inputs): {}",
            inputs.len(),
            summary.join("; ")
        );
        for (op, max, _, _) in &worst {
            let bound = PER_OP_LSB
                .iter()
                .find(|(o, _)| o == op)
                .map_or(0, |(_, b)| *b as i64);
            assert!(
                *max <= bound,
                "{name}: {op} differs from onnxruntime by {max} LSB (bound {bound})"
            );
        }
    }
}
