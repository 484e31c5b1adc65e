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
use runtime_core::ops::requant::multiply_by_quantized_multiplier as mbqm;
use runtime_core::{Dtype, Model, ModelBuilder, Quant, Task};

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The int8 models compared (here and by the other `.tflite` tests): the real pipeline's
/// exports (`fixtures/tiny`) and the MCU parity models (builder-made, random weights), among
/// them a ResNet-18 with the ImageNet stem, whose 3×3 stride-2 pad-1 max pool needs the explicit
/// −128 pad.
pub(crate) const MODELS: &[&str] = &[
    "fixtures/tiny/backbone-int8.safetensors",
    "fixtures/tiny/landmarks-int8.safetensors",
    "fixtures/mcu/resnet8.safetensors",
    "fixtures/mcu/backbone.safetensors",
    "fixtures/mcu/landmark.safetensors",
];

pub(crate) fn have_tflite_micro() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import numpy; from tflite_micro.python.tflite_micro import runtime",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether TFLite Micro is missing, after printing the test's SKIP line (`what`: which test).
pub(crate) fn skip_without_tflite_micro(what: &str) -> bool {
    if have_tflite_micro() {
        return false;
    }
    println!(
        "SKIP tflite_micro{what}: python3 cannot import tflite_micro/numpy (scripts/setup.sh \
         installs them with `pip install tflite-micro`; did that fail?)"
    );
    true
}

/// The tests' pseudo-random numbers: a 64-bit LCG (Knuth's MMIX constants) from a seed.
pub(crate) struct Lcg(pub u64);

impl Lcg {
    /// The next state.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// The next state's high 31 bits.
    pub(crate) fn next(&mut self) -> u32 {
        (self.next_u64() >> 33) as u32
    }

    /// `n` int8 weights over [−127, 127] (the loader's range).
    pub(crate) fn weights(&mut self, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| ((self.next() % 255) as i32 - 127) as i8)
            .collect()
    }
}

/// `n` pseudo-random int8 tensors of `len` values over the whole range (the LCG's top byte).
pub(crate) fn random_inputs(seed: u64, len: usize, n: usize) -> Vec<Vec<i8>> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| (0..len).map(|_| (rng.next_u64() >> 56) as i8).collect())
        .collect()
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
    out.extend(random_inputs(0x7f1e, m.input_len(), 4));
    out
}

#[test]
fn tflite_micro_agrees_bit_for_bit() {
    if skip_without_tflite_micro("") {
        return;
    }
    for rel in MODELS {
        let name = Path::new(rel).file_stem().unwrap().to_string_lossy();
        let bytes = std::fs::read(root().join(rel)).unwrap();
        let m = Model::parse(&bytes).unwrap();
        assert_eq!(m.dtype(), Dtype::Int8, "{name}");
        // A TFLM built from source that computes LEAKY_RELU's multipliers in f32 (see
        // `leaky_multipliers_f32`) would run these models bit for bit too: same 256 outputs.
        for n in m.nodes() {
            if let runtime_core::Op::LeakyI8 { leaky, alpha } = n.op() {
                let (ai, ao) = (
                    m.tensors()[n.inputs()[0] as usize],
                    m.tensors()[n.output() as usize],
                );
                let pairs = [
                    (leaky.id_mult, leaky.id_shift),
                    (leaky.alpha_mult, leaky.alpha_shift),
                ];
                let out = |pair: [(i32, i32); 2]| -> Vec<i32> {
                    (-128..=127)
                        .map(|x: i32| {
                            let d = x - leaky.in_zp;
                            let (mu, sh) = pair[usize::from(d < 0)];
                            (mbqm(d, mu, sh) + leaky.out_zp).clamp(-128, 127)
                        })
                        .collect()
                };
                assert_eq!(
                    out(leaky_multipliers_f32(ai.scale, ao.scale, alpha)),
                    out(pairs),
                    "{name}: leaky t{}",
                    n.output()
                );
            }
        }
        let t = tflite::to_tflite(&bytes).unwrap();
        // Every op's fixed-point parameters are TFLite's own (see the module doc of
        // export::tflite): nothing is expected to differ.
        assert!(t.notes.is_empty(), "{name}: {:#?}", t.notes);
        let xs = inputs(&m);
        let dir = tempfile::tempdir().unwrap();
        let (got, stdout) = run_script("tflite_run.py", &t.bytes, &xs, Some(dir.path()));
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
            stdout.trim()
        );
        assert!(differ.is_empty(), "{name}: tensors differ: {differ:#?}");
        assert!(
            tensors >= m.nodes().len(),
            "{name}: only {tensors} tensors compared"
        );
        assert_eq!(got, want, "{name}: TFLite Micro output differs");
    }
}

/// Runs `tflite_bytes` in TFLite Micro on `xs`; the outputs back to back.
pub(crate) fn run_tflm(tflite_bytes: &[u8], xs: &[Vec<i8>]) -> Vec<i8> {
    run_python_engine("tflite_run.py", tflite_bytes, xs)
}

/// Runs `tflite_bytes` through `scripts/<script>` (model, input file, input count, output file:
/// the interface `tflite_run.py` and `litert_run.py` share) on `xs`; the outputs back to back.
pub(crate) fn run_python_engine(script: &str, tflite_bytes: &[u8], xs: &[Vec<i8>]) -> Vec<i8> {
    run_script(script, tflite_bytes, xs, None).0
}

/// [`run_python_engine`], also asking the script to write every intermediate tensor it keeps
/// into `trace_dir` (`s<input>_t<id>.bin`; `tflite_run.py` does); the outputs and the
/// script's stdout.
pub(crate) fn run_script(
    script: &str,
    tflite_bytes: &[u8],
    xs: &[Vec<i8>],
    trace_dir: Option<&Path>,
) -> (Vec<i8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (model, xin, xout) = (
        dir.path().join("m.tflite"),
        dir.path().join("in.bin"),
        dir.path().join("out.bin"),
    );
    std::fs::write(&model, tflite_bytes).unwrap();
    let raw: Vec<u8> = xs.iter().flatten().map(|&v| v as u8).collect();
    std::fs::write(&xin, raw).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("scripts").join(script))
        .arg(&model)
        .arg(&xin)
        .arg(xs.len().to_string())
        .arg(&xout);
    if let Some(t) = trace_dir {
        cmd.arg(t);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = std::fs::read(&xout)
        .unwrap()
        .into_iter()
        .map(|b| b as i8)
        .collect();
    (out, String::from_utf8_lossy(&o.stdout).into_owned())
}

/// TFLite Micro runs `t` on `xs` with runtime-core's bytes (`m`'s outputs, which must take
/// more than `min_distinct` values: no degenerate model), and `t` read back (`.tflite` in)
/// into a model that computes them too; returns the read-back model's bytes and the outputs.
fn assert_tflm_and_read_back(
    what: &str,
    t: &tflite::TfliteModel,
    m: &Model,
    xs: &[Vec<i8>],
    min_distinct: usize,
) -> (Vec<u8>, Vec<i8>) {
    let (tflm, rt) = (run_tflm(&t.bytes, xs), run_runtime(m, xs));
    let mut distinct = rt.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() > min_distinct,
        "{what}: degenerate {distinct:?}"
    );
    assert_eq!(tflm, rt, "{what}: TFLite Micro vs runtime-core");
    let back = runtime_core::tflite::to_model_bytes(&t.bytes).unwrap();
    assert_eq!(
        run_runtime(&Model::parse(&back).unwrap(), xs),
        rt,
        "{what}: read back"
    );
    (back, rt)
}

/// runtime-core's outputs on `xs`, back to back.
fn run_runtime(m: &Model, xs: &[Vec<i8>]) -> Vec<i8> {
    let mut arena = vec![0u8; m.arena_bytes()];
    xs.iter()
        .flat_map(|x| m.run_int8_raw(x, &mut arena).unwrap().to_vec())
        .collect()
}

/// The first scales `(in, out)` of a deterministic sweep for which `noted` holds for the
/// model `build` makes, with that model.
fn first_where(
    build: impl Fn(f32, f32) -> Vec<u8>,
    noted: impl Fn(&[u8], f32, f32) -> bool,
) -> (Vec<u8>, f32, f32) {
    for k in 0..20_000 {
        let (a, b) = (
            0.01 * (1.0 + 0.000731 * k as f32),
            0.017 * (1.0 + 0.000377 * k as f32),
        );
        let bytes = build(a, b);
        if noted(&bytes, a, b) {
            return (bytes, a, b);
        }
    }
    panic!("no scales in the sweep qualify");
}

/// LEAKY_RELU's multipliers as TFLite Micro's source at 90b983c computes them (f32 `in/out`,
/// `in·alpha/out`, then `QuantizeMultiplier`).
fn leaky_multipliers_f32(a: f32, b: f32, alpha: f32) -> [(i32, i32); 2] {
    [
        runtime_core::quantize_multiplier((a / b) as f64),
        runtime_core::quantize_multiplier((a * alpha / b) as f64),
    ]
}

/// Where TFLite's fixed-point parameters could differ from runtime-core's, on one-op models (so
/// no other op is involved), at scales found by a sweep (the fixtures have none):
/// * `MEAN` over a count that is not a power of two: TFLite Micro folds `1/n` as `(m << k)/n`,
///   truncated; runtime-core rounds `in/(out·n)` once. The writer's note is exact: TFLite Micro
///   gives bit for bit runtime-core's arithmetic with TFLite's multiplier, so it differs from
///   runtime-core in exactly the sums the note counts, by the LSB it states.
/// * `LEAKY_RELU` where an f32 `in/out`, `in·alpha/out` (TFLM's source at 90b983c) would change
///   an output: the tested TFLite Micro still gives runtime-core's outputs, all 256 of them.
#[test]
fn tflite_micro_differs_only_where_the_notes_say() {
    if skip_without_tflite_micro(" notes") {
        return;
    }
    // LEAKY_RELU on all 256 int8 values (a 16×16×1 input).
    let (zi, zo, alpha) = (-7, 11, 0.1f32);
    let leaky = |a: f32, b: f32| {
        let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features);
        let x = mb
            .input([16, 16, 1], &[0.5], &[0.25], Quant { scale: a, zp: zi })
            .unwrap();
        let y = mb.leaky_relu(x, alpha, Quant { scale: b, zp: zo }).unwrap();
        mb.output(y).unwrap();
        mb.to_bytes().unwrap()
    };
    let table = |pair: [(i32, i32); 2]| -> Vec<i8> {
        (-128..=127)
            .map(|x: i32| {
                let d = x - zi;
                let (mu, sh) = pair[usize::from(d < 0)];
                (mbqm(d, mu, sh) + zo).clamp(-128, 127) as i8
            })
            .collect()
    };
    let xs = vec![(-128..=127).map(|v| v as i8).collect::<Vec<i8>>()];
    let (bytes, a, b) = first_where(leaky, |bytes, a, b| {
        let m = Model::parse(bytes).unwrap();
        table(leaky_multipliers_f32(a, b, alpha)) != run_runtime(&m, &xs)
    });
    let t = tflite::to_tflite(&bytes).unwrap();
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    let m = Model::parse(&bytes).unwrap();
    let (tflm, rt) = (run_tflm(&t.bytes, &xs), run_runtime(&m, &xs));
    let f32_differ = table(leaky_multipliers_f32(a, b, alpha))
        .iter()
        .zip(&rt)
        .filter(|(p, q)| p != q)
        .count();
    println!(
        "leaky (in {a}, out {b}, alpha {alpha}): f32 multipliers would change {f32_differ}/256 \
         outputs; TFLite Micro vs runtime-core: {}/256 identical",
        tflm.iter().zip(&rt).filter(|(p, q)| p == q).count()
    );
    assert_eq!(tflm, rt, "leaky: TFLite Micro differs from runtime-core");

    // MEAN over 3×3 = 9 values, 64 channels: inputs whose channel sums cover the noted sums.
    let (zi, zo, n) = (5, -3, 9i32);
    let mean = |a: f32, b: f32| {
        let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features);
        let x = mb
            .input(
                [3, 3, 64],
                &[0.5; 64],
                &[0.25; 64],
                Quant { scale: a, zp: zi },
            )
            .unwrap();
        let y = mb.mean(x, Quant { scale: b, zp: zo }).unwrap();
        mb.output(y).unwrap();
        mb.to_bytes().unwrap()
    };
    let (bytes, a, b) = first_where(mean, |bytes, _, _| {
        !tflite::to_tflite(bytes).unwrap().notes.is_empty()
    });
    let note = tflite::to_tflite(&bytes).unwrap().notes[0].clone();
    let m = Model::parse(&bytes).unwrap();
    let (mt, st) = tflite::tflm_mean_multiplier(a, b, n as usize);
    let Some(runtime_core::Op::MeanI8(p)) = m.nodes().first().map(|x| x.op()) else {
        panic!("not a mean model")
    };
    let out = |sum: i32, (mu, sh): (i32, i32)| (mbqm(sum, mu, sh) + zo).clamp(-128, 127);
    let sums: Vec<i32> = (n * (-128 - zi)..=n * (127 - zi)).collect();
    let noted: Vec<i32> = sums
        .iter()
        .copied()
        .filter(|&s| out(s, (mt, st)) != out(s, (p.mult, p.shift)))
        .collect();
    // Channel c of input j sums to the (64·j + c)-th target: the noted sums, then others.
    let targets: Vec<i32> = noted
        .iter()
        .copied()
        .chain(sums.iter().copied().step_by(37))
        .collect();
    let xs: Vec<Vec<i8>> = targets
        .chunks(64)
        .map(|ch| {
            let mut x = vec![zi as i8; 9 * 64];
            for (c, &s) in ch.iter().enumerate() {
                // Nine values (each x − zi in [−128 − zi, 127 − zi]) summing to s.
                let mut left = s;
                for px in 0..9 {
                    let d = (left / (9 - px as i32)).clamp(-128 - zi, 127 - zi);
                    x[px * 64 + c] = (d + zi) as i8;
                    left -= d;
                }
                assert_eq!(left, 0);
            }
            x
        })
        .collect();
    let tflm = run_tflm(&tflite::to_tflite(&bytes).unwrap().bytes, &xs);
    let rt = run_runtime(&m, &xs);
    let emulated: Vec<i8> = xs
        .iter()
        .flat_map(|x| {
            (0..64).map(move |c| {
                let s: i32 = (0..9).map(|px| x[px * 64 + c] as i32 - zi).sum();
                out(s, (mt, st)) as i8
            })
        })
        .collect();
    assert_eq!(
        tflm, emulated,
        "mean: TFLM is runtime-core's arithmetic with TFLite's multiplier"
    );
    let differ = tflm.iter().zip(&rt).filter(|(p, q)| p != q).count();
    let max = tflm
        .iter()
        .zip(&rt)
        .map(|(p, q)| (*p as i32 - *q as i32).abs())
        .max()
        .unwrap();
    println!(
        "mean over 9 (in {a}, out {b}): TFLM multiplier ({mt}, {st}) vs runtime-core ({}, {}); \
         {} of {} reachable sums differ; on {} values TFLM vs runtime-core differ in {differ}, max {max} LSB; note: {note}",
        p.mult, p.shift, noted.len(), sums.len(), tflm.len()
    );
    assert_eq!(differ, noted.len(), "every noted sum differs, no other");
    assert!(max == 1, "{note}");
    assert!(
        note.contains(&format!(
            "differs for {} of the {}",
            noted.len(),
            sums.len()
        )),
        "{note}"
    );
}

/// An fc output (`[1, N]` in TFLite) read by later ops as NHWC goes through a `RESHAPE` to
/// `[1, 1, 1, N]` (made once, shared by the leaky and the add here), and a fused-ReLU fc with
/// the output zero point above −128 clamps as the runtime does: a builder-made
/// fc → leaky → add(leaky, fc) model runs bit for bit in TFLite Micro on 16 random inputs.
#[test]
fn tflite_micro_runs_fc_outputs_read_as_nhwc() {
    if skip_without_tflite_micro(" fc chain") {
        return;
    }
    let mut rng = Lcg(99);
    let weights = rng.weights(8 * 12);
    let w_scale: Vec<f32> = (0..8).map(|c| 0.004 + 0.001 * c as f32).collect();
    let bias: Vec<i32> = (0..8).map(|_| (rng.next() % 4001) as i32 - 2000).collect();
    let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features).with_weight_scales();
    let x = mb
        .input(
            [2, 2, 3],
            &[0.5; 3],
            &[0.25; 3],
            Quant { scale: 0.02, zp: 3 },
        )
        .unwrap();
    let f = mb
        .fc(
            "head.fc",
            x,
            8,
            true,
            runtime_core::LayerParams::I8 {
                weights: &weights,
                w_scale: &w_scale,
                bias: &bias,
            },
            Quant {
                scale: 0.031,
                zp: -20,
            },
        )
        .unwrap();
    let l = mb
        .leaky_relu(
            f,
            0.2,
            Quant {
                scale: 0.027,
                zp: -9,
            },
        )
        .unwrap();
    let y = mb.add(l, f, false, Quant { scale: 0.05, zp: 4 }).unwrap();
    mb.output(y).unwrap();
    let bytes = mb.to_bytes().unwrap();
    let m = Model::parse(&bytes).unwrap();
    let t = tflite::to_tflite(&bytes).unwrap();
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    let xs: Vec<Vec<i8>> = (0..16)
        .map(|_| (0..12).map(|_| rng.next() as u8 as i8).collect())
        .collect();
    let (tflm, rt) = (run_tflm(&t.bytes, &xs), run_runtime(&m, &xs));
    println!(
        "fc chain: {}/{} values identical",
        tflm.iter().zip(&rt).filter(|(p, q)| p == q).count(),
        rt.len()
    );
    let mut distinct = rt.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 16, "a degenerate output: {distinct:?}");
    assert_eq!(tflm, rt);
}

/// AVERAGE_POOL_2D and SOFTMAX, the ops TFLite models end with, against TFLite Micro on
/// builder-made models over a sweep of scales and β: a 3×3 stride-2 `SAME` average pool with a
/// fused ReLU on a 9×9 input (windows of 4, 6 and 9 in-image taps: the rounding of every count),
/// a 2×2 `VALID` one, a softmax over the 6 channels of every pixel (β 0.5, 1, 2) and an fc →
/// softmax over 10 classes (the classifier head, `[1, 10]` in TFLite). Every model runs bit for
/// bit on inputs over the whole int8 range and narrower ones, and reads back (`.tflite` in) into
/// a model that computes the same bytes.
#[test]
fn tflite_micro_runs_avgpool_and_softmax_bit_for_bit() {
    if skip_without_tflite_micro(" avgpool/softmax") {
        return;
    }
    let mut rng = Lcg(0xA76);
    let (mut models, mut values) = (0, 0);
    for (k, &(scale, beta)) in [
        (0.003f32, 1.0f32),
        (0.02, 0.5),
        (0.0731, 1.0),
        (0.11, 2.0),
        (0.37, 1.0),
        (1.3, 0.5),
        (4.9, 1.0),
    ]
    .iter()
    .enumerate()
    {
        let zp = -90 + 25 * k as i32;
        let q = Quant { scale, zp };
        // Spatial: pools, then softmax over channels.
        let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features);
        let x = mb.input([9, 9, 6], &[0.5; 6], &[0.25; 6], q).unwrap();
        let p = mb.avgpool(x, [3, 3], [2, 2], [1, 1, 1, 1], true).unwrap();
        let p = mb.avgpool(p, [2, 2], [2, 2], [0; 4], false).unwrap();
        let y = mb.softmax(p, beta).unwrap();
        mb.output(y).unwrap();
        let spatial = mb.to_bytes().unwrap();
        // Classifier head: fc to 10 logits, softmax.
        let weights = rng.weights(10 * 24);
        let w_scale: Vec<f32> = (0..10).map(|c| 0.002 + 0.0007 * c as f32).collect();
        let bias: Vec<i32> = (0..10).map(|_| (rng.next() % 2001) as i32 - 1000).collect();
        let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features).with_weight_scales();
        let x = mb
            .input(
                [2, 2, 6],
                &[0.5; 6],
                &[0.25; 6],
                Quant { scale: 0.02, zp: 3 },
            )
            .unwrap();
        let p = runtime_core::LayerParams::I8 {
            weights: &weights,
            w_scale: &w_scale,
            bias: &bias,
        };
        let f = mb.fc("head.fc", x, 10, false, p, q).unwrap();
        let y = mb.softmax(f, beta).unwrap();
        mb.output(y).unwrap();
        let head = mb.to_bytes().unwrap();
        for (what, bytes) in [("spatial", spatial), ("head", head)] {
            let m = Model::parse(&bytes).unwrap();
            let t = tflite::to_tflite(&bytes).unwrap();
            assert!(t.notes.is_empty(), "{what} {scale}: {:?}", t.notes);
            let xs: Vec<Vec<i8>> = (0..12)
                .map(|j| {
                    (0..m.input_len())
                        .map(|_| {
                            // Around the zero point, over narrower ranges too, so that the
                            // fused ReLU does not flatten everything and the logits are not all
                            // far apart.
                            let r = [256, 64, 16, 4][j % 4];
                            (zp + (rng.next() % r) as i32 - (r as i32) / 2).clamp(-128, 127) as i8
                        })
                        .collect()
                })
                .collect();
            let label = format!("{what}: scale {scale}, beta {beta}");
            let (_, rt) = assert_tflm_and_read_back(&label, &t, &m, &xs, 4);
            models += 1;
            values += rt.len();
        }
    }
    println!(
        "avgpool/softmax: {models} models, {values} output values identical with TFLite Micro"
    );
}

/// `(h, w, c, dm, k, stride, pad [t, l, b, r], relu)` of one depthwise test model.
type DwCase = (
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    usize,
    [usize; 4],
    bool,
);

/// Depthwise convolutions (`dwconv` → DEPTHWISE_CONV_2D) over depth multipliers 1–3, strides 1
/// and 2, SAME, VALID and PyTorch-style padding (an explicit PAD), square and oblong kernels,
/// with and without a fused ReLU, each followed by a 1×1 conv (a depthwise separable block):
/// TFLite Micro gives runtime-core's bytes, and the file reads back into the same bytes.
#[test]
fn tflite_micro_runs_depthwise_bit_for_bit() {
    if skip_without_tflite_micro(" depthwise") {
        return;
    }
    let mut rng = Lcg(0xD3E9);
    let cases: &[DwCase] = &[
        (8, 8, 4, 1, [3, 3], 1, [1, 1, 1, 1], true),   // SAME
        (8, 8, 4, 1, [3, 3], 2, [1, 1, 1, 1], true),   // PyTorch pad 1, stride 2: PAD + VALID
        (9, 7, 3, 2, [3, 3], 2, [1, 1, 1, 1], false),  // SAME on odd sizes
        (6, 6, 5, 3, [3, 3], 1, [0; 4], false),        // VALID, dm 3
        (7, 9, 6, 1, [5, 5], 1, [2, 2, 2, 2], true),   // 5x5 SAME
        (8, 6, 4, 2, [3, 2], 2, [0; 4], true),         // oblong kernel, VALID
        (5, 5, 40, 2, [3, 3], 1, [1, 1, 1, 1], false), // more channels than the kernel's block
    ];
    let mut values = 0;
    for (k, &(h, w, c, dm, kk, st, pad, relu)) in cases.iter().enumerate() {
        let oc = c * dm;
        let in_q = Quant {
            scale: 0.02 + 0.01 * k as f32,
            zp: -20 + 9 * k as i32,
        };
        let mid_q = Quant {
            scale: 0.03 + 0.007 * k as f32,
            zp: if relu { -128 } else { 5 - 3 * k as i32 },
        };
        let out_q = Quant { scale: 0.05, zp: 2 };
        let dw_w = rng.weights(kk[0] * kk[1] * oc);
        let pw_w = rng.weights(8 * oc);
        let dw_s: Vec<f32> = (0..oc).map(|i| 0.003 + 0.0011 * (i % 7) as f32).collect();
        let pw_s: Vec<f32> = (0..8).map(|i| 0.002 + 0.0005 * i as f32).collect();
        let dw_b: Vec<i32> = (0..oc).map(|i| (i as i32 * 37) % 400 - 200).collect();
        let pw_b: Vec<i32> = (0..8).map(|i| i * 50 - 150).collect();
        let mut mb = ModelBuilder::new(Dtype::Int8, Task::Features).with_weight_scales();
        let x = mb
            .input([h, w, c], &vec![0.5; c], &vec![0.25; c], in_q)
            .unwrap();
        let p = runtime_core::LayerParams::I8 {
            weights: &dw_w,
            w_scale: &dw_s,
            bias: &dw_b,
        };
        let d = mb
            .dwconv("dw", x, dm, kk, [st, st], pad, relu, p, mid_q)
            .unwrap();
        let p = runtime_core::LayerParams::I8 {
            weights: &pw_w,
            w_scale: &pw_s,
            bias: &pw_b,
        };
        let y = mb
            .conv("pw", d, 8, [1, 1], [1, 1], [0; 4], false, p, out_q)
            .unwrap();
        mb.output(y).unwrap();
        let bytes = mb.to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        let t = tflite::to_tflite(&bytes).unwrap();
        assert!(t.notes.is_empty(), "case {k}: {:?}", t.notes);
        let xs: Vec<Vec<i8>> = (0..6)
            .map(|_| {
                (0..m.input_len())
                    .map(|_| (rng.next() % 256) as u8 as i8)
                    .collect()
            })
            .collect();
        let (back, rt) = assert_tflm_and_read_back(&format!("case {k}"), &t, &m, &xs, 8);
        assert!(Model::parse(&back)
            .unwrap()
            .nodes()
            .iter()
            .any(|n| n.kind() == runtime_core::OpKind::DepthwiseConv2d));
        values += rt.len();
    }
    println!(
        "depthwise: {} models, {values} output values identical with TFLite Micro",
        cases.len()
    );
}
