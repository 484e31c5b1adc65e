//! The MCU build of runtime-core against the host build, bit for bit.
//!
//! * `fixtures_are_current`: the embedded fixtures in `fixtures/mcu/` are exactly what the
//!   generator below writes (regenerate with
//!   `MCU_REGEN=1 cargo test -p parity-tests --test mcu_parity fixtures_are_current`):
//!   the random-weight models and images, and `tiny-inputs.bin`, the inputs of the training
//!   pipeline's exported models (`fixtures/tiny/*-int8.safetensors`, embedded as they are) made
//!   from the `fixtures/tiny` images by runtime-cli's own preprocessing.
//! * `mcu_matches_host_bit_for_bit`: runs `scripts/mcu.sh` (build + QEMU mps2-an386), collects
//!   the `RESULT` lines the firmware prints and compares them with the same program
//!   (`runtime-mcu/src/app.rs`, included below) run on the host. A panic, hard fault or hang
//!   (the script's timeout) makes the script exit non-zero and fails the test. Without
//!   `qemu-system-arm` it skips with a message, except under CI, where it fails.
//! * `hostile_models_on_the_mcu` (issue #33 item 5): the firmware's hostile mode (feature
//!   `hostile`, `runtime-mcu/src/hostile_run.rs`) cuts and mutates the embedded models on the
//!   device and pushes each case through the C API; its per-model status counts must equal the
//!   same cases run through the C API on the host (`runtime-mcu/src/hostile.rs`, included below),
//!   with no undocumented code, no panic and no fault (its HardFault handler's self-test must
//!   report), and its heap and stack high-water marks inside the board's map.
//! * `kernels_match_the_reference_on_the_mcu`: the firmware's kernel-check mode (feature
//!   `kernel-check`, `runtime-mcu/src/kernel_check.rs`) runs random int8 convolutions through the
//!   Cortex-M4 DSP kernel and through the reference kernel on the device: no byte may differ,
//!   and the reference outputs must hash to what the same cases give on the host.
//! * `mlperf_resnet8_on_the_mcu` (issue #31 item 4): MLPerf Tiny's own ResNet-8 `.tflite`, from
//!   the path in `MLPERF_RESNET8_TFLITE` (not in the repository; unset: SKIP), on the MCU,
//!   bit for bit against the host, with its instructions per inference and per MAC.

extern crate alloc;

#[path = "../../runtime-mcu/src/app.rs"]
mod app;
#[path = "../../runtime-mcu/src/hostile.rs"]
// Shared with the firmware and the other test: each user calls only part of it.
#[allow(dead_code)]
mod hostile;
#[path = "../../runtime-mcu/src/kernel_check.rs"]
mod kernel_check;

use std::path::{Path, PathBuf};
use std::process::Command;

use runtime_cli::engine::{self, Runner};
use runtime_core::heads::rng::SplitMix64;
use runtime_core::model::zoo;
use runtime_core::{Dtype, LayerParams, Model, ModelBuilder, Quant, Task, TensorId};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

// ---------------------------------------------------------------- fixture generator

const PX: usize = 32;
const N_LANDMARK: usize = 3;
const N_WAY: usize = 5;
const N_SHOT: usize = 2;
const N_QUERY: usize = 3;
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const Q_IN: Quant = Quant {
    scale: 3.0 / 127.0,
    zp: 0,
};
const Q_RELU: Quant = Quant {
    scale: 8.0 / 255.0,
    zp: -128,
};
const Q_LIN: Quant = Quant {
    scale: 4.0 / 127.0,
    zp: 0,
};
/// Landmark outputs are fractions of the image side: [0, 2) leaves room for points outside.
const Q_LM: Quant = Quant {
    scale: 2.0 / 255.0,
    zp: -128,
};

fn normal(rng: &mut SplitMix64) -> f32 {
    (0..12).map(|_| rng.unit_f32()).sum::<f32>() - 6.0
}

/// A random He-initialised layer quantised per output channel (weights OHWI / [out][in]).
struct Int8Layer {
    w: Vec<i8>,
    scale: Vec<f32>,
    bias: Vec<i32>,
}

fn int8_layer(
    rng: &mut SplitMix64,
    out_c: usize,
    fan_in: usize,
    in_scale: f32,
    bias_mean: f32,
) -> Int8Layer {
    let std = (2.0 / fan_in as f32).sqrt();
    let mut l = Int8Layer {
        w: Vec::new(),
        scale: Vec::new(),
        bias: Vec::new(),
    };
    for _ in 0..out_c {
        let row: Vec<f32> = (0..fan_in).map(|_| normal(rng) * std).collect();
        let s = row.iter().fold(1e-8f32, |m, v| m.max(v.abs())) / 127.0;
        l.w.extend(
            row.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
        );
        l.scale.push(s);
        l.bias
            .push(((bias_mean + 0.1 * normal(rng)) / (in_scale * s)).round() as i32);
    }
    l
}

/// A tiny landmark regressor in the paper's head layout (§4.2: 1×1 conv, LeakyReLU, FC → 10)
/// on a two-conv stem, random weights.
fn landmark_model(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut b = ModelBuilder::new(Dtype::Int8, Task::Landmarks);
    let x = b
        .input([PX, PX, 3], &IMAGENET_MEAN, &IMAGENET_STD, Q_IN)
        .unwrap();
    let mut conv = |b: &mut ModelBuilder,
                    name: &str,
                    x: TensorId,
                    out_c: usize,
                    k: usize,
                    stride: usize,
                    relu: bool| {
        let xd = b.desc(x).unwrap();
        let l = int8_layer(&mut rng, out_c, k * k * xd.c, xd.scale, 0.0);
        let p = LayerParams::I8 {
            weights: &l.w,
            w_scale: &l.scale,
            bias: &l.bias,
        };
        let q = if relu { Q_RELU } else { Q_LIN };
        b.conv(
            name,
            x,
            out_c,
            [k, k],
            [stride, stride],
            [k / 2; 4],
            relu,
            p,
            q,
        )
        .unwrap()
    };
    let h = conv(&mut b, "stem.0", x, 8, 3, 2, true);
    let h = conv(&mut b, "stem.1", h, 16, 3, 2, true);
    let h = conv(&mut b, "head.conv", h, 32, 1, 1, false);
    let h = b.leaky_relu(h, 0.01, Q_LIN).unwrap();
    let hd = b.desc(h).unwrap();
    let l = int8_layer(&mut rng, 10, hd.len(), hd.scale, 0.5);
    let p = LayerParams::I8 {
        weights: &l.w,
        w_scale: &l.scale,
        bias: &l.bias,
    };
    let y = b.fc("head.fc", h, 10, false, p, Q_LM).unwrap();
    b.output(y).unwrap();
    b.to_bytes().unwrap()
}

/// 32×32 RGB: landmark images are face-like blobs (skin ellipse, dark eyes and mouth) at
/// different positions; episode class `k` has its own hue and stripe orientation, every image
/// its own phase and noise, so the few-shot heads have something to separate.
fn images(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut all: Vec<Vec<u8>> = Vec::new();
    for i in 0..N_LANDMARK {
        let (cx, cy) = (13.0 + 3.0 * i as f32, 15.0 + 1.5 * i as f32);
        let mut im = vec![0u8; PX * PX * 3];
        for y in 0..PX {
            for x in 0..PX {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let face = (dx / 10.0).powi(2) + (dy / 13.0).powi(2) < 1.0;
                let eye = [-4.0f32, 4.0]
                    .iter()
                    .any(|ex| (dx - ex).powi(2) + (dy + 4.0).powi(2) < 3.0);
                let mouth = dy > 5.0 && dy < 7.0 && dx.abs() < 4.0;
                let rgb = if eye || mouth {
                    [40, 20, 20]
                } else if face {
                    [220, 170, 140]
                } else {
                    [60, 90, 140]
                };
                for c in 0..3 {
                    let n = (rng.below(21) as i32) - 10;
                    im[(y * PX + x) * 3 + c] = (rgb[c] + n).clamp(0, 255) as u8;
                }
            }
        }
        all.push(im);
    }
    let class_image = |rng: &mut SplitMix64, k: usize| {
        let hue = [
            [230, 60, 50],
            [60, 200, 70],
            [50, 80, 230],
            [220, 210, 60],
            [170, 60, 200],
        ][k];
        let angle = k as f32 * std::f32::consts::PI / N_WAY as f32;
        let phase = rng.unit_f32() * 6.0;
        let mut im = vec![0u8; PX * PX * 3];
        for y in 0..PX {
            for x in 0..PX {
                let t = x as f32 * angle.cos() + y as f32 * angle.sin();
                let stripe = 0.6 + 0.4 * (t * 0.8 + phase).sin();
                for c in 0..3 {
                    let n = rng.below(41) as f32 - 20.0;
                    im[(y * PX + x) * 3 + c] = (hue[c] as f32 * stripe + n).clamp(0.0, 255.0) as u8;
                }
            }
        }
        im
    };
    for per_class in [N_SHOT, N_QUERY] {
        for k in 0..N_WAY {
            for _ in 0..per_class {
                all.push(class_image(&mut rng, k));
            }
        }
    }
    let refs: Vec<&[u8]> = all.iter().map(|v| v.as_slice()).collect();
    app::encode_images(
        [PX as u8, PX as u8, 3],
        N_LANDMARK as u8,
        N_WAY as u8,
        N_SHOT as u8,
        N_QUERY as u8,
        &refs,
    )
}

/// The pipeline's models in `fixtures/tiny` (host-trainer's fixture command writes them).
const TINY_LANDMARK: &str = "fixtures/tiny/landmarks-int8.safetensors";
const TINY_BACKBONE: &str = "fixtures/tiny/backbone-int8.safetensors";
/// `tiny-inputs.bin`: 3 faces, then a 3-way 2-shot 2-query episode from `objects` test.
const TINY_N_LANDMARK: usize = 3;
const TINY_WAY: usize = 3;
const TINY_SHOT: usize = 2;
const TINY_QUERY: usize = 2;

fn read(rel: &str) -> Vec<u8> {
    let path = root().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pipeline models' inputs, made exactly as runtime-cli makes them (its `Runner`: resize
/// to the model input, normalise with the model's mean/std; the device then quantises with
/// `quantize`, as `Runner::run_normalised` does through `load_input_f32`). Landmarks: `first_face`
/// if given (e.g. `images/face.png`, 40×49, resized), then the first MAFL test faces of
/// `data/faces`, each cropped to its MAFL square first as `runtime-cli infer` / `eval mafl` do;
/// `n_landmark` in all. Episode: the first `way` classes of `data/objects` test (csv order), each
/// class's first `shot` images the support, the next `query` the queries.
struct PipelineInputs<'p> {
    landmarks: &'p [u8],
    backbone: &'p [u8],
    data: PathBuf,
    first_face: Option<PathBuf>,
    n_landmark: usize,
    way: usize,
    shot: usize,
    query: usize,
}

impl PipelineInputs<'_> {
    fn encode(&self) -> Vec<u8> {
        let lm = Model::parse(self.landmarks).expect("landmark model");
        let bb = Model::parse(self.backbone).expect("backbone");
        let shape = lm.input_shape();
        assert_eq!(shape, bb.input_shape(), "one input shape for both models");
        let (lm_run, bb_run) = (Runner::new(&lm), Runner::new(&bb));
        let load =
            |p: PathBuf| engine::load_image(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let read_text = |p: PathBuf| {
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };

        let mut inputs: Vec<Vec<f32>> = Vec::new();
        let faces_dir = self.data.join("faces");
        let mafl = read_text(faces_dir.join("MAFL/testing.txt"));
        let faces = self.first_face.iter().cloned().chain(
            mafl.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|n| faces_dir.join("img_align_celeba").join(n.trim())),
        );
        for path in faces.take(self.n_landmark) {
            let (crop, _, _) = runtime_cli::landmarks::aligned_crop(&load(path));
            inputs.push(lm_run.normalised_input(&crop));
        }
        assert_eq!(inputs.len(), self.n_landmark, "too few MAFL test faces");

        let objects = self.data.join("objects");
        let csv = read_text(objects.join("test.csv"));
        let mut classes: Vec<(String, Vec<String>)> = Vec::new();
        for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let (file, label) = line.split_once(',').expect("filename,label");
            match classes.iter_mut().find(|(l, _)| l == label) {
                Some((_, files)) => files.push(file.to_string()),
                None => classes.push((label.to_string(), vec![file.to_string()])),
            }
        }
        assert!(
            classes.len() >= self.way,
            "objects test has {} classes",
            classes.len()
        );
        let episode = |range: std::ops::Range<usize>| {
            let mut v = Vec::new();
            for (_, files) in &classes[..self.way] {
                for f in &files[range.clone()] {
                    v.push(bb_run.normalised_input(&load(objects.join("images").join(f))));
                }
            }
            v
        };
        inputs.extend(episode(0..self.shot));
        inputs.extend(episode(self.shot..self.shot + self.query));

        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        app::encode_normalised(
            shape.map(|d| d as u8),
            self.n_landmark as u8,
            self.way as u8,
            self.shot as u8,
            self.query as u8,
            &refs,
        )
    }
}

/// `tiny-inputs.bin`: the fixtures' pipeline models on `fixtures/tiny`'s own images.
fn tiny_inputs() -> Vec<u8> {
    let (landmarks, backbone) = (read(TINY_LANDMARK), read(TINY_BACKBONE));
    let tiny = root().join("fixtures/tiny");
    PipelineInputs {
        landmarks: &landmarks,
        backbone: &backbone,
        first_face: Some(tiny.join("images/face.png")),
        data: tiny,
        n_landmark: TINY_N_LANDMARK,
        way: TINY_WAY,
        shot: TINY_SHOT,
        query: TINY_QUERY,
    }
    .encode()
}

/// Every fixture file: (name, bytes). Deterministic: fixed seeds, integer/f32 maths only.
fn generate() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("landmark.safetensors", landmark_model(11)),
        (
            "backbone.safetensors",
            zoo::resnet18(Dtype::Int8, PX, 8, 12)
                .unwrap()
                .to_bytes()
                .unwrap(),
        ),
        (
            "resnet8.safetensors",
            zoo::resnet8(Dtype::Int8, 13).unwrap().to_bytes().unwrap(),
        ),
        ("images.bin", images(14)),
        ("tiny-inputs.bin", tiny_inputs()),
    ]
}

#[test]
fn fixtures_are_current() {
    let dir = root().join("fixtures/mcu");
    let regen = std::env::var_os("MCU_REGEN").is_some();
    for (name, bytes) in generate() {
        let path = dir.join(name);
        if regen {
            std::fs::create_dir_all(&dir).unwrap();
            trainer::fsutil::write_atomic(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from the generator's output; regenerate with \
             MCU_REGEN=1 cargo test -p parity-tests --test mcu_parity fixtures_are_current",
            path.display()
        );
    }
}

// ---------------------------------------------------------------- parity

/// The host side of `app::Platform`: results formatted exactly as the firmware's defmt lines
/// (`{=[u32]}` prints like Rust's `{:?}` of a slice; f32 go as bits in chunks of 16).
/// `PIPELINE_ONLY`: runs only the `tiny-*` parts, as a firmware built with
/// `MCU_MODELS="tiny-landmark tiny-fewshot"` does.
struct Host<const PIPELINE_ONLY: bool = false> {
    lines: Vec<String>,
}

impl<const PIPELINE_ONLY: bool> app::Platform for Host<PIPELINE_ONLY> {
    const PARTS: app::Parts = if PIPELINE_ONLY {
        app::Parts {
            landmark: false,
            fewshot: false,
            resnet8: false,
            tiny_landmark: true,
            tiny_fewshot: true,
            tflite_landmark: false,
            mlperf_resnet8: false,
        }
    } else {
        app::Parts::ALL
    };
    fn now(&mut self) -> u64 {
        0
    }
    fn reset_heap_peak(&mut self) {}
    fn heap_peak(&mut self) -> u64 {
        0
    }
    fn result(&mut self, prefix: &str, tag: &str, idx: usize, values: &[u32]) {
        self.lines.push(format!("{prefix}{tag} {idx} {values:?}"));
    }
    fn result_f32(&mut self, prefix: &str, tag: &str, idx: usize, values: &[f32]) {
        for (k, chunk) in values.chunks(16).enumerate() {
            let bits: Vec<u32> = chunk.iter().map(|x| x.to_bits()).collect();
            self.lines.push(format!("{prefix}{tag} {idx}.{k} {bits:?}"));
        }
    }
    fn footprint(&mut self, _: &str, _: &str, _: u64) {}
}

/// The fixture files the firmware embeds, read from disk.
struct FixtureFiles {
    lm: Vec<u8>,
    bb: Vec<u8>,
    r8: Vec<u8>,
    im: Vec<u8>,
    tiny_lm: Vec<u8>,
    tiny_bb: Vec<u8>,
    tiny_in: Vec<u8>,
    tfl_lm: Vec<u8>,
}

impl FixtureFiles {
    fn read() -> Self {
        FixtureFiles {
            lm: read("fixtures/mcu/landmark.safetensors"),
            bb: read("fixtures/mcu/backbone.safetensors"),
            r8: read("fixtures/mcu/resnet8.safetensors"),
            im: read("fixtures/mcu/images.bin"),
            tiny_lm: read(TINY_LANDMARK),
            tiny_bb: read(TINY_BACKBONE),
            tiny_in: read("fixtures/mcu/tiny-inputs.bin"),
            tfl_lm: read("fixtures/tflite/landmark.tflite"),
        }
    }

    fn fixtures(&self) -> app::Fixtures<'_> {
        app::Fixtures {
            landmark: &self.lm,
            backbone: &self.bb,
            resnet8: &self.r8,
            images: &self.im,
            tiny_landmark: &self.tiny_lm,
            tiny_backbone: &self.tiny_bb,
            tiny_inputs: &self.tiny_in,
            tflite_landmark: &self.tfl_lm,
            mlperf_resnet8: &[],
            mlperf_inputs: &[],
        }
    }
}

fn run_host(fx: app::Fixtures) -> Result<Vec<String>, app::AppError> {
    run_host_parts::<false>(fx)
}

/// The program on the host, every part or (`PIPELINE_ONLY`) the `tiny-*` parts only.
fn run_host_parts<const PIPELINE_ONLY: bool>(
    fx: app::Fixtures,
) -> Result<Vec<String>, app::AppError> {
    let mut host: Host<PIPELINE_ONLY> = Host { lines: Vec::new() };
    let mut arena = vec![0u8; 1 << 20];
    app::run(&mut host, fx, &mut arena)?;
    Ok(host.lines)
}

fn host_results() -> Vec<String> {
    let files = FixtureFiles::read();
    run_host(files.fixtures()).unwrap_or_else(|e| panic!("host run failed: {e:?}"))
}

/// `fs_correct_linear_centroid_of`'s three numbers (after `prefix`).
fn correct_counts(lines: &[String], prefix: &str) -> Vec<u32> {
    let tag = format!("{prefix}fs_correct_linear_centroid_of ");
    let line = lines
        .iter()
        .find(|l| l.starts_with(&tag))
        .unwrap_or_else(|| panic!("no {tag}line"));
    line.rsplit('[')
        .next()
        .unwrap()
        .trim_end_matches(']')
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn host_program_runs_and_the_episode_is_learnable() {
    // The host half alone (no QEMU needed): every result is produced, and the fitted classifier
    // beats chance on the synthetic episode, so the parity check compares meaningful numbers.
    let lines = host_results();
    let count = |tag: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .count()
    };
    assert_eq!(count("lm_out"), N_LANDMARK);
    // The landmark model's `.tflite` twin, converted by the program, gives the same results.
    let strip = |prefix: &str| -> Vec<String> {
        let p = format!("{prefix}lm_");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(&p).map(String::from))
            .collect()
    };
    assert_eq!(strip("").len(), 2 * N_LANDMARK);
    assert_eq!(
        strip("tfl."),
        strip(""),
        "landmark.tflite vs landmark.safetensors"
    );
    assert_eq!(
        count("fs_query_feat"),
        N_WAY * N_QUERY * 4,
        "64-dim features print as 4 chunks of 16"
    );
    let nums = correct_counts(&lines, "");
    assert_eq!(nums[2] as usize, N_WAY * N_QUERY);

    // The outputs are those of one inference: runtime-core's `preprocess_rgb8` + `run` on a
    // fresh arena (a second run of the graph in the same arena would start from an input slot
    // the first run has overwritten).
    let files = FixtureFiles::read();
    let im = app::Images::parse(&files.im).unwrap();
    let m = Model::parse(&files.lm).unwrap();
    let mut arena = vec![0u8; m.arena_bytes()];
    let mut out = vec![0f32; m.output_len()];
    let app::Input::Rgb8(rgb) = im.landmark(0) else {
        panic!("images.bin holds RGB8 images")
    };
    m.preprocess_rgb8(rgb, &mut arena).unwrap();
    m.run(&mut arena, &mut out).unwrap();
    let bits: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
    assert!(
        lines.contains(&format!("lm_out 0.0 {bits:?}")),
        "lm_out 0 is not one run's output"
    );
    assert!(
        nums[0] as usize > N_QUERY,
        "linear head at chance: {nums:?}"
    );

    // The pipeline's models: every result present (the 1-epoch backbone is not expected to
    // beat chance on 3 test classes: fixtures/README.md measures ~33-43 % on the host).
    assert_eq!(count("tiny.lm_out"), TINY_N_LANDMARK);
    assert_eq!(count("tiny.lm_px"), TINY_N_LANDMARK);
    assert_eq!(
        count("tiny.fs_query_feat"),
        TINY_WAY * TINY_QUERY * 2,
        "32-dim features print as 2 chunks of 16"
    );
    assert_eq!(count("tiny.fs_support_feat"), TINY_WAY * TINY_SHOT * 2);
    let nums = correct_counts(&lines, "tiny.");
    assert_eq!(nums[2] as usize, TINY_WAY * TINY_QUERY);
    assert!(nums[0] <= nums[2] && nums[1] <= nums[2], "{nums:?}");
}

#[test]
fn bad_fixtures_are_errors_not_panics() {
    // What the firmware reports as FAILED (semihosting exit 1) rather than a panic: truncated,
    // corrupt or mismatched input files and models.
    let good = FixtureFiles::read();
    let cut = |b: &[u8], n: usize| b[..b.len().saturating_sub(n)].to_vec();
    let mut cases: Vec<(&str, FixtureFiles)> = Vec::new();
    let mut case = |what: &'static str, edit: &dyn Fn(&mut FixtureFiles)| {
        let mut f = FixtureFiles::read();
        edit(&mut f);
        cases.push((what, f));
    };
    case("tiny inputs truncated", &|f| f.tiny_in = cut(&f.tiny_in, 1));
    case("tiny inputs header only", &|f| {
        f.tiny_in = cut(&f.tiny_in, f.tiny_in.len() - 16)
    });
    case("tiny inputs empty", &|f| f.tiny_in.clear());
    case("tiny inputs bad magic", &|f| f.tiny_in[3] ^= 0x40);
    case("tiny inputs too many images", &|f| f.tiny_in[13] = 200);
    // RGB8 32-px images for the 16-px pipeline models: a shape error, not a bad index.
    case("rgb8 images as tiny inputs", &|f| f.tiny_in = f.im.clone());
    case("random landmark model for 16 px", &|f| {
        f.tiny_lm = f.lm.clone()
    });
    case("backbone as landmark model", &|f| {
        f.tiny_lm = f.tiny_bb.clone()
    });
    case("tiny model truncated", &|f| {
        f.tiny_bb = cut(&f.tiny_bb, 100)
    });
    case("images as tiny model", &|f| f.tiny_bb = f.tiny_in.clone());
    for (what, f) in &cases {
        let r = std::panic::catch_unwind(|| run_host(f.fixtures()));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("{what}: ran without an error"),
            Err(_) => panic!("{what}: panicked"),
        }
    }
    assert!(run_host(good.fixtures()).is_ok());
}

/// Whether QEMU is here; without it the MCU tests skip with a message, except under CI.
fn have_qemu(test: &str) -> bool {
    if Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("qemu-system-arm is missing under CI: scripts/setup.sh should have installed it");
    }
    eprintln!("SKIP {test}: qemu-system-arm not installed (run scripts/mcu.sh setup)");
    false
}

/// Builds and runs the firmware with `scripts/mcu.sh` (extra environment `env`), keeps its log
/// and footprint report in `target/<report>`, and returns the `RESULT` lines it printed.
fn run_mcu(env: &[(&str, &std::ffi::OsStr)], report: &str) -> Vec<String> {
    run_mcu_log(env, report)
        .lines()
        .filter_map(|l| {
            l.split_once("RESULT ")
                .map(|(_, r)| r.trim_end().to_string())
        })
        .collect()
}

/// One firmware build and run at a time: the builds share a target directory and the script
/// runs (and decodes with) the ELF at one path, which a concurrent build would replace.
static MCU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `run_mcu`'s build and run; returns the whole decoded log (the script's stdout).
fn run_mcu_log(env: &[(&str, &std::ffi::OsStr)], report: &str) -> String {
    let _one_at_a_time = MCU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // The firmware gets its own target dir: `cargo test` may hold the lock on the host one while
    // tests run, and a nested build waiting for it would hang until the script's timeout.
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/mcu.sh"))
        .current_dir(root())
        .env("CARGO_TARGET_DIR", root().join("runtime-mcu/target"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run scripts/mcu.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The run's log and footprint report, for scripts/test.sh to print (the MCU runs once).
    let report = root().join("target").join(report);
    if let Some(dir) = report.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(&report, format!("{stdout}{stderr}"));
    }
    assert!(
        out.status.success(),
        "scripts/mcu.sh failed ({}): panic, hard fault, hang or build error\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout.into_owned()
}

fn assert_same_results(mcu: &[String], host: &[String]) {
    assert!(!host.is_empty());
    for (i, (m, h)) in mcu.iter().zip(host).enumerate() {
        assert_eq!(m, h, "result line {i} differs (MCU left, host right)");
    }
    assert_eq!(
        mcu.len(),
        host.len(),
        "the MCU printed {} result lines, the host {}",
        mcu.len(),
        host.len()
    );
}

#[test]
fn mcu_matches_host_bit_for_bit() {
    if !have_qemu("mcu_matches_host_bit_for_bit") {
        return;
    }
    let mcu = run_mcu(&[], "mcu-report.txt");
    assert_same_results(&mcu, &host_results());
}

/// A study's own int8 models on the MCU, bit for bit against the host: the chosen method's
/// objects backbone (`objects/<method>/model.int8.safetensors`) on a 5-way 1-shot episode with
/// 2 queries per class from the study's novel classes, and its landmark model
/// (`faces/<method>/landmarks.int8.safetensors`) on 3 MAFL test faces, built with
/// `MCU_PIPELINE_DIR` in place of the fixtures' exports. Not in CI (it needs a study's output):
///
/// `MCU_STUDY=out/study [MCU_STUDY_METHOD=exemplar-v2] cargo test --release -p parity-tests
/// --test mcu_parity study_models_on_the_mcu -- --ignored`
///
/// The log and footprint report go to `target/mcu-study-report.txt`.
#[test]
#[ignore = "needs a study's output directory in MCU_STUDY"]
fn study_models_on_the_mcu() {
    let study = PathBuf::from(
        std::env::var_os("MCU_STUDY").expect("MCU_STUDY=<a study's --out directory>"),
    );
    let method = std::env::var("MCU_STUDY_METHOD").unwrap_or_else(|_| "exemplar-v2".into());
    let read_abs =
        |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let backbone = read_abs(
        study
            .join("objects")
            .join(&method)
            .join("model.int8.safetensors"),
    );
    let landmarks = read_abs(
        study
            .join("faces")
            .join(&method)
            .join("landmarks.int8.safetensors"),
    );
    let inputs = PipelineInputs {
        landmarks: &landmarks,
        backbone: &backbone,
        data: study.join("data"),
        first_face: None,
        n_landmark: 3,
        way: 5,
        shot: 1,
        query: 2,
    }
    .encode();
    let dir = root().join("target/mcu-study");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("backbone-int8.safetensors", &backbone),
        ("landmarks-int8.safetensors", &landmarks),
        ("inputs.bin", &inputs),
    ] {
        trainer::fsutil::write_atomic(&dir.join(name), bytes).unwrap();
    }

    let fx = app::Fixtures {
        landmark: &[],
        backbone: &[],
        resnet8: &[],
        images: &[],
        tiny_landmark: &landmarks,
        tiny_backbone: &backbone,
        tiny_inputs: &inputs,
        tflite_landmark: &[],
        mlperf_resnet8: &[],
        mlperf_inputs: &[],
    };
    let host = run_host_parts::<true>(fx).unwrap_or_else(|e| panic!("host run failed: {e:?}"));
    if !have_qemu("study_models_on_the_mcu") {
        return;
    }
    let models = std::ffi::OsStr::new("tiny-landmark tiny-fewshot");
    let mcu = run_mcu(
        &[
            ("MCU_PIPELINE_DIR", dir.as_os_str()),
            ("MCU_MODELS", models),
        ],
        "mcu-study-report.txt",
    );
    assert_same_results(&mcu, &host);
}

/// The models the hostile firmware embeds (`MCU_MODELS`) and the names its log uses for them,
/// with their files: the random-weight landmark model and the pipeline's two exports.
const HOSTILE_MODELS: [(&str, &str, &str); 3] = [
    ("landmark", "landmark", "fixtures/mcu/landmark.safetensors"),
    ("tiny-landmark", "tiny-landmark", TINY_LANDMARK),
    ("tiny-fewshot", "tiny-backbone", TINY_BACKBONE),
];

/// `FOOTPRINT key value` of a decoded log.
fn footprint(log: &str, key: &str) -> usize {
    let tag = format!("FOOTPRINT {key} ");
    log.lines()
        .find_map(|l| l.split_once(&tag).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {tag}line in the log"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// `ORIGIN` and `LENGTH` of the RAM region of a board's `memory.x` (hex or decimal, K suffix).
fn ram_region(board: &str) -> (usize, usize) {
    let path = root()
        .join("runtime-mcu/boards")
        .join(board)
        .join("memory.x");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("RAM"))
        .unwrap_or_else(|| panic!("{}: no RAM region", path.display()));
    let field = |key: &str| -> usize {
        let v = line
            .split(key)
            .nth(1)
            .expect("ORIGIN and LENGTH on the RAM line");
        let v = v
            .trim_start_matches([' ', '='])
            .split([',', ' '])
            .next()
            .unwrap();
        let (num, mul) = match v.strip_suffix('K') {
            Some(n) => (n, 1024),
            None => (v, 1),
        };
        let n = match num.strip_prefix("0x") {
            Some(h) => usize::from_str_radix(h, 16),
            None => num.parse(),
        };
        n.unwrap_or_else(|e| panic!("{}: {key} {v}: {e}", path.display())) * mul
    };
    (field("ORIGIN"), field("LENGTH"))
}

#[test]
fn hostile_models_on_the_mcu() {
    // The host half first (no QEMU needed): the expected log lines, and every code documented.
    let mut image = vec![0u8; hostile::DEVICE_IMAGE_BYTES];
    let mut input = vec![0i8; hostile::DEVICE_IMAGE_BYTES];
    hostile::fill_inputs(&mut image, &mut input);
    let mut out = vec![0f32; hostile::DEVICE_OUT_FLOATS];
    // The firmware's arena: 8 KiB for these models (runtime-mcu/src/main.rs, checked below).
    let mut arena = vec![0u8; 8 * 1024];
    let mut expected = Vec::new();
    let mut total = 0;
    for (_, name, file) in HOSTILE_MODELS {
        let base = read(file);
        let mut case = vec![0u8; base.len() + hostile::MAX_GROWTH];
        let c = hostile::run_model(
            name,
            &base,
            hostile::DEVICE_RANDOM_CASES,
            &mut case,
            &mut arena,
            &image,
            &input,
            &mut out,
        )
        .unwrap_or_else(|| panic!("{name}: a case does not fit its buffer"));
        let boundaries = hostile::Mutator::new(&base, hostile::seed(name)).boundaries();
        assert_eq!(c.cases as usize, boundaries + hostile::DEVICE_RANDOM_CASES);
        assert_eq!(
            c.errors + c.ran,
            c.cases,
            "{name}: a case neither ran nor failed"
        );
        assert_eq!(
            c.undocumented, 0,
            "{name}: undocumented status codes: {c:?}"
        );
        assert!(c.ran > 0 && c.errors > 0, "{name}: {c:?}");
        total += c.cases;
        expected.push(format!(
            "HOSTILE {name} cases {} errors {} ran {} undocumented {}",
            c.cases, c.errors, c.ran, c.undocumented
        ));
        for (call, h) in [
            ("load", &c.load),
            ("run_u8", &c.run_u8),
            ("run_i8", &c.run_i8),
            ("landmarks", &c.landmarks),
        ] {
            expected.push(format!("HOSTILE {name} {call} {h:?}"));
        }
    }
    if !have_qemu("hostile_models_on_the_mcu") {
        return;
    }

    let models: Vec<&str> = HOSTILE_MODELS.iter().map(|m| m.0).collect();
    let models = models.join(" ");
    let log = run_mcu_log(
        &[
            ("MCU_FEATURES", std::ffi::OsStr::new("hostile")),
            ("MCU_MODELS", std::ffi::OsStr::new(&models)),
        ],
        "mcu-hostile-report.txt",
    );
    // The script exited 0 (run_mcu_log asserts it): no panic, no fault, no hang. The only
    // HardFault is the handler's self-test, after DONE, and it reported.
    let faults: Vec<&str> = log.lines().filter(|l| l.contains("HARDFAULT")).collect();
    assert_eq!(faults.len(), 1, "faults: {faults:?}\n{log}");
    assert!(faults[0].contains("HARDFAULT self-test"), "{log}");
    assert!(!log.contains("PANIC") && log.contains("DONE"), "{log}");
    let done = log.find("DONE").unwrap();
    assert!(
        log.find("HARDFAULT").unwrap() > done,
        "fault before DONE:\n{log}"
    );

    // Every case accounted for, with the host's codes.
    let mcu: Vec<String> = log
        .lines()
        .filter_map(|l| l.find("HOSTILE ").map(|i| l[i..].trim_end().to_string()))
        .collect();
    assert_eq!(
        mcu, expected,
        "the MCU's status counts differ from the host's ({total} cases)"
    );

    // High-water marks inside the board's map (qemu-an386, the board QEMU runs).
    assert_eq!(footprint(&log, "board.arena_capacity_bytes"), arena.len());
    let (origin, length) = ram_region("qemu-an386");
    let (static_end, ram_top) = (
        footprint(&log, "board.static_ram_end"),
        footprint(&log, "board.ram_top"),
    );
    assert_eq!(
        ram_top,
        origin + length,
        "the stack does not start at the top of the map's RAM"
    );
    let stack = footprint(&log, "board.peak_stack_bytes");
    let stack_cap = footprint(&log, "board.stack_capacity_bytes");
    assert_eq!(stack_cap, ram_top - static_end);
    assert!(
        stack > 0 && stack < stack_cap && static_end + stack <= origin + length,
        "peak stack {stack} of {stack_cap} bytes above .bss"
    );
    let heap = footprint(&log, "hostile.heap_peak_bytes");
    let heap_cap = footprint(&log, "board.heap_capacity_bytes");
    assert!(
        heap > 0 && heap <= heap_cap,
        "heap peak {heap} of {heap_cap}"
    );
    eprintln!(
        "hostile on the MCU: {total} cases; heap peak {heap} of {heap_cap} B; stack peak {stack} of \
         {stack_cap} B (RAM {length} B, statics end at {:#x})",
        static_end
    );
}

/// The part of the program a firmware built with `MCU_MODELS=mlperf-resnet8` runs.
struct HostMlperf {
    lines: Vec<String>,
}

impl app::Platform for HostMlperf {
    const PARTS: app::Parts = app::Parts {
        landmark: false,
        fewshot: false,
        resnet8: false,
        tiny_landmark: false,
        tiny_fewshot: false,
        tflite_landmark: false,
        mlperf_resnet8: true,
    };
    fn now(&mut self) -> u64 {
        0
    }
    fn reset_heap_peak(&mut self) {}
    fn heap_peak(&mut self) -> u64 {
        0
    }
    fn result(&mut self, prefix: &str, tag: &str, idx: usize, values: &[u32]) {
        self.lines.push(format!("{prefix}{tag} {idx} {values:?}"));
    }
    fn result_f32(&mut self, _: &str, _: &str, _: usize, _: &[f32]) {
        unreachable!("the MLPerf part prints int8 outputs")
    }
    fn footprint(&mut self, _: &str, _: &str, _: u64) {}
}

/// MLPerf Tiny's own ResNet-8 on the MCU (issue #31 item 4): its `.tflite`
/// (`pretrainedResnet_quant.tflite` from mlcommons/tiny, at the path in `MLPERF_RESNET8_TFLITE`;
/// unset: SKIP, as the exporter's TFLite Micro test) is converted here by
/// `runtime_core::tflite` (on the host: the conversion's heap peak is about twice the 96 KiB
/// file, more than the board's 256 KiB of RAM holds beside the arena), embedded with
/// `MCU_MODELS=mlperf-resnet8 MCU_MLPERF_DIR=…`, and run under QEMU on the fixture images as
/// int8 inputs (pixel − 128, the model's input quantisation: scale 1, zero point −128). Every
/// int8 output (the 10 scores after its int8 SOFTMAX) must equal runtime-core's on the host for
/// the same input. Prints the executed instructions per inference and per MAC; the log and
/// footprint report go to `target/mcu-mlperf-report.txt`.
#[test]
fn mlperf_resnet8_on_the_mcu() {
    const ENV: &str = "MLPERF_RESNET8_TFLITE";
    let Some(path) = std::env::var_os(ENV) else {
        println!(
            "SKIP mlperf_resnet8_on_the_mcu: {ENV} is not set (the path of MLPerf Tiny's \
             pretrainedResnet_quant.tflite)"
        );
        return;
    };
    if !have_qemu("mlperf_resnet8_on_the_mcu") {
        return;
    }
    let file =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{ENV}={}: {e}", path.to_string_lossy()));
    let model = runtime_core::tflite::to_model_bytes(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()));
    let m = Model::parse(&model).unwrap();
    assert_eq!(m.input_shape(), [32, 32, 3], "MLPerf ResNet-8's input");
    let desc = m.input_desc();
    // The fixture images (RGB8, 32×32) as the model's int8 input: pixel − 128.
    let images = read("fixtures/mcu/images.bin");
    let im = app::Images::parse(&images).unwrap();
    let mut inputs = Vec::new();
    for i in 0..3 {
        let app::Input::Rgb8(px) = im.landmark(i) else {
            panic!("images.bin holds RGB8 images")
        };
        inputs.extend(px.iter().map(|&v| v.wrapping_sub(128)));
    }
    let dir = root().join("target/mlperf-mcu");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), &model).unwrap();
    std::fs::write(dir.join("inputs.bin"), &inputs).unwrap();

    let log = run_mcu_log(
        &[
            ("MCU_MODELS", "mlperf-resnet8".as_ref()),
            ("MCU_MLPERF_DIR", dir.as_os_str()),
        ],
        "mcu-mlperf-report.txt",
    );
    let mcu: Vec<String> = log
        .lines()
        .filter_map(|l| {
            l.split_once("RESULT ")
                .map(|(_, r)| r.trim_end().to_string())
        })
        .collect();
    let fx = app::Fixtures {
        landmark: &[],
        backbone: &[],
        resnet8: &[],
        images: &[],
        tiny_landmark: &[],
        tiny_backbone: &[],
        tiny_inputs: &[],
        tflite_landmark: &[],
        mlperf_resnet8: &model,
        mlperf_inputs: &inputs,
    };
    let mut host = HostMlperf { lines: Vec::new() };
    let mut arena = vec![0u8; 1 << 20];
    app::run(&mut host, fx, &mut arena).unwrap_or_else(|e| panic!("host run failed: {e:?}"));
    assert_eq!(host.lines.len(), 3, "{:?}", host.lines);
    // Independent of the program: the host lines are runtime-core's int8 outputs.
    for (i, line) in host.lines.iter().enumerate() {
        let n = m.input_len();
        let mut a = vec![0u8; m.arena_bytes()];
        for (d, &b) in m
            .input_slot_i8(&mut a)
            .unwrap()
            .iter_mut()
            .zip(&inputs[i * n..][..n])
        {
            *d = b as i8;
        }
        let y: Vec<u32> = m
            .run_i8_in_arena(&mut a)
            .unwrap()
            .iter()
            .map(|&v| u32::from(v as u8))
            .collect();
        assert_eq!(line, &format!("mlperf_out {i} {y:?}"));
    }
    assert_same_results(&mcu, &host.lines);
    let insns = footprint(&log, "mlperf-resnet8.infer_insns");
    let macs = footprint(&log, "mlperf-resnet8.macs");
    println!(
        "MLPerf Tiny ResNet-8 on the Cortex-M4 (QEMU mps2-an386): {insns} instructions per \
         inference, {macs} MACs, {:.3} instructions per MAC; input scale {} zero point {}; \
         outputs bit for bit with the host",
        insns as f64 / macs as f64,
        desc.scale,
        desc.zp
    );
}

/// The Cortex-M4 conv kernel against runtime-core's reference kernel on random convolutions, and
/// the tabulated add (its `asm!` loop) against the direct formula on random adds
/// (`runtime-mcu/src/kernel_check.rs`), on the device: no mismatch, most convs on the DSP kernel
/// (the others are the portable fallback's: `act_max` below 127, a multiplier of 1/4 or more,
/// a single output pixel), and the device's reference outputs hash to the host's.
#[test]
fn kernels_match_the_reference_on_the_mcu() {
    let host = kernel_check::run(|case| panic!("host: fast path != reference in case {case}"));
    assert_eq!((host.mismatches, host.add_mismatches), (0, 0));
    if !have_qemu("kernels_match_the_reference_on_the_mcu") {
        return;
    }
    let log = run_mcu_log(
        &[
            ("MCU_FEATURES", "kernel-check".as_ref()),
            ("MCU_MODELS", "landmark".as_ref()),
        ],
        "mcu-kernels-report.txt",
    );
    let line = log
        .lines()
        .find_map(|l| l.split_once("KERNELS ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| panic!("no KERNELS line in the log:\n{log}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |key: &str| -> u64 {
        let i = f
            .iter()
            .position(|&w| w == key)
            .unwrap_or_else(|| panic!("{key} in {line}"));
        f[i + 1].parse().unwrap()
    };
    assert_eq!(num("mismatches"), 0, "{line}");
    assert_eq!(num("add_mismatches"), 0, "{line}");
    assert_eq!(num("cases"), u64::from(host.cases), "{line}");
    assert_eq!(num("add_cases"), u64::from(host.add_cases), "{line}");
    assert_eq!(num("checksum"), u64::from(host.checksum), "{line}");
    let dsp = num("dsp");
    assert!(
        dsp * 2 > u64::from(host.cases),
        "only {dsp} cases on the DSP kernel: {line}"
    );
    println!("kernel check on the MCU: {line}");
}
