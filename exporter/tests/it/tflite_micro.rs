//! `host-trainer export --tflite` against TensorFlow Lite Micro: the committed int8 runtime
//! models written as `.tflite` and run by TFLM's interpreter (the `tflite-micro` PyPI package,
//! through scripts/tflite_run.py) give **the same int8 bits** as runtime-core
//! (`Model::run_int8_raw`) on every input, for the final output and for every intermediate
//! activation tensor (`t<id>`, compared with `Model::run_i8_traced`), so a difference would be
//! pinned to its op.
//!
//! tflite-micro comes from PyPI (`pip install tflite-micro`, which scripts/setup.sh runs); only
//! if it cannot be imported does the test print a SKIP line and pass.
use std::path::{Path, PathBuf};
use std::process::Command;

use exporter::export::tflite;
use runtime_core::{Dtype, Model};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The int8 models compared: the real pipeline's exports (`fixtures/tiny`) and the MCU parity
/// models (builder-made, random weights), among them a ResNet-18 with the ImageNet stem, whose
/// 3×3 stride-2 pad-1 max pool needs the explicit −128 pad.
const MODELS: &[&str] = &[
    "fixtures/tiny/backbone-int8.safetensors",
    "fixtures/tiny/landmarks-int8.safetensors",
    "fixtures/mcu/resnet8.safetensors",
    "fixtures/mcu/backbone.safetensors",
    "fixtures/mcu/landmark.safetensors",
];

fn have_tflite_micro() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import numpy; from tflite_micro.python.tflite_micro import runtime",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// int8 inputs: the committed object images of the model's size, quantised by runtime-core's
/// own preprocessing, then pseudo-random int8 tensors over the whole range (values no real
/// image gives, e.g. far outside the calibration range).
fn inputs(m: &Model) -> Vec<Vec<i8>> {
    let [h, w, _] = m.input_shape();
    let dir = root().join("fixtures/tiny/objects/images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out: Vec<Vec<i8>> = names
        .iter()
        .filter_map(|p| {
            let im = image::open(p).ok()?.to_rgb8();
            (im.width() as usize == w && im.height() as usize == h).then(|| im.into_raw())
        })
        .take(4)
        .map(|rgb| {
            m.preprocess_rgb8(&rgb, &mut arena).unwrap();
            m.input_slot_i8(&mut arena).unwrap().to_vec()
        })
        .collect();
    let mut s: u64 = 0x7f1e;
    for _ in 0..4 {
        out.push(
            (0..m.input_len())
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 56) as u8 as i8
                })
                .collect(),
        );
    }
    out
}

#[test]
fn tflite_micro_agrees_bit_for_bit() {
    if !have_tflite_micro() {
        println!(
            "SKIP tflite_micro: python3 cannot import tflite_micro/numpy (scripts/setup.sh \
             installs them with `pip install tflite-micro`; did that fail?)"
        );
        return;
    }
    let script = root().join("scripts/tflite_run.py");
    for rel in MODELS {
        let name = Path::new(rel).file_stem().unwrap().to_string_lossy();
        let bytes = std::fs::read(root().join(rel)).unwrap();
        let m = Model::parse(&bytes).unwrap();
        assert_eq!(m.dtype(), Dtype::Int8, "{name}");
        let t = tflite::to_tflite(&bytes).unwrap();
        // Every op's fixed-point parameters are TFLite's own (see the module doc of
        // export::tflite): nothing is expected to differ.
        assert!(t.notes.is_empty(), "{name}: {:#?}", t.notes);
        let xs = inputs(&m);
        let dir = tempfile::tempdir().unwrap();
        let (model, xin, xout) = (
            dir.path().join(format!("{name}.tflite")),
            dir.path().join("in.bin"),
            dir.path().join("out.bin"),
        );
        std::fs::write(&model, &t.bytes).unwrap();
        let raw: Vec<u8> = xs.iter().flatten().map(|&v| v as u8).collect();
        std::fs::write(&xin, raw).unwrap();
        let o = Command::new("python3")
            .arg(&script)
            .arg(&model)
            .arg(&xin)
            .arg(xs.len().to_string())
            .arg(&xout)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: tflite_run.py failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Vec<i8> = std::fs::read(&xout)
            .unwrap()
            .into_iter()
            .map(|b| b as i8)
            .collect();
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut want: Vec<i8> = Vec::new();
        let (mut tensors, mut values) = (0usize, 0usize);
        let mut differ: Vec<String> = Vec::new();
        for (k, x) in xs.iter().enumerate() {
            want.extend_from_slice(m.run_int8_raw(x, &mut arena).unwrap());
            // Op by op: every activation TFLM kept, against runtime-core's.
            m.input_slot_i8(&mut arena).unwrap().copy_from_slice(x);
            let mut trace: Vec<(u16, Vec<i8>)> = Vec::new();
            m.run_i8_traced(&mut arena, &mut |id, v| trace.push((id, v.to_vec())))
                .unwrap();
            for (id, v) in trace {
                let Ok(tf) = std::fs::read(dir.path().join(format!("s{k}_t{id}.bin"))) else {
                    continue;
                };
                tensors += 1;
                values += v.len();
                let n = v.iter().zip(&tf).filter(|(a, b)| **a != **b as i8).count();
                if n > 0 || tf.len() != v.len() {
                    differ.push(format!("input {k} t{id}: {n} of {} values", v.len()));
                }
            }
        }
        assert_eq!(got.len(), want.len(), "{name}: output length");
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        println!(
            "{name}: {} ops -> {} B .tflite; {} inputs: {same}/{} output values identical, \
             {tensors} intermediate tensors ({values} values) compared ({})",
            m.nodes().len(),
            t.bytes.len(),
            xs.len(),
            want.len(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
        assert!(differ.is_empty(), "{name}: tensors differ: {differ:#?}");
        assert!(
            tensors >= m.nodes().len(),
            "{name}: only {tensors} tensors compared"
        );
        assert_eq!(got, want, "{name}: TFLite Micro output differs");
    }
}
