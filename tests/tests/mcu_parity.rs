//! The MCU build of runtime-core against the host build, bit for bit.
//!
//! * `fixtures_are_current`: the embedded fixtures in `fixtures/mcu/` are exactly what the
//!   generator below writes (regenerate with
//!   `MCU_REGEN=1 cargo test -p parity-tests --test mcu_parity fixtures_are_current`).
//! * `mcu_matches_host_bit_for_bit`: runs `scripts/mcu.sh` (build + QEMU mps2-an386), collects
//!   the `RESULT` lines the firmware prints and compares them with the same program
//!   (`runtime-mcu/src/app.rs`, included below) run on the host. A panic, hard fault or hang
//!   (the script's timeout) makes the script exit non-zero and fails the test. Without
//!   `qemu-system-arm` it skips with a message, except under CI, where it fails.

extern crate alloc;

#[path = "../../runtime-mcu/src/app.rs"]
mod app;

use std::path::{Path, PathBuf};
use std::process::Command;

use runtime_core::heads::rng::SplitMix64;
use runtime_core::model::zoo;
use runtime_core::{Dtype, LayerParams, ModelBuilder, Quant, Task, TensorId};

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
            host_trainer::fsutil::write_atomic(&path, &bytes).unwrap();
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
struct Host {
    lines: Vec<String>,
}

impl app::Platform for Host {
    fn now(&mut self) -> u64 {
        0
    }
    fn reset_heap_peak(&mut self) {}
    fn heap_peak(&mut self) -> u64 {
        0
    }
    fn result(&mut self, tag: &str, idx: usize, values: &[u32]) {
        self.lines.push(format!("{tag} {idx} {values:?}"));
    }
    fn result_f32(&mut self, tag: &str, idx: usize, values: &[f32]) {
        for (k, chunk) in values.chunks(16).enumerate() {
            let bits: Vec<u32> = chunk.iter().map(|x| x.to_bits()).collect();
            self.lines.push(format!("{tag} {idx}.{k} {bits:?}"));
        }
    }
    fn footprint(&mut self, _: &str, _: &str, _: u64) {}
}

fn host_results() -> Vec<String> {
    let dir = root().join("fixtures/mcu");
    let read = |n: &str| {
        std::fs::read(dir.join(n)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(n).display()))
    };
    let (lm, bb, r8, im) = (
        read("landmark.safetensors"),
        read("backbone.safetensors"),
        read("resnet8.safetensors"),
        read("images.bin"),
    );
    let fx = app::Fixtures {
        landmark: &lm,
        backbone: &bb,
        resnet8: &r8,
        images: &im,
    };
    let mut host = Host { lines: Vec::new() };
    let mut arena = vec![0u8; 1 << 20];
    app::run(&mut host, fx, &mut arena).unwrap_or_else(|e| panic!("host run failed: {e:?}"));
    host.lines
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
    assert_eq!(
        count("fs_query_feat"),
        N_WAY * N_QUERY * 4,
        "64-dim features print as 4 chunks of 16"
    );
    let correct = lines
        .iter()
        .find(|l| l.starts_with("fs_correct_linear_centroid_of "))
        .expect("accuracy line");
    let nums: Vec<u32> = correct
        .rsplit('[')
        .next()
        .unwrap()
        .trim_end_matches(']')
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums[2] as usize, N_WAY * N_QUERY);
    assert!(
        nums[0] as usize > N_QUERY,
        "linear head at chance: {correct}"
    );
}

#[test]
fn mcu_matches_host_bit_for_bit() {
    if Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!(
                "qemu-system-arm is missing under CI: scripts/setup.sh should have installed it"
            );
        }
        eprintln!("SKIP mcu_matches_host_bit_for_bit: qemu-system-arm not installed (run scripts/mcu.sh setup)");
        return;
    }
    // The firmware gets its own target dir: `cargo test` may hold the lock on the host one while
    // tests run, and a nested build waiting for it would hang until the script's timeout.
    let out = Command::new("bash")
        .arg(root().join("scripts/mcu.sh"))
        .current_dir(root())
        .env("CARGO_TARGET_DIR", root().join("runtime-mcu/target"))
        .output()
        .expect("run scripts/mcu.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The run's log and footprint report, for scripts/test.sh to print (the MCU runs once).
    let report = root().join("target").join("mcu-report.txt");
    if let Some(dir) = report.parent() {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(&report, format!("{stdout}{stderr}"));
    }
    assert!(
        out.status.success(),
        "scripts/mcu.sh failed ({}): panic, hard fault, hang or build error\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let mcu: Vec<String> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once("RESULT ")
                .map(|(_, r)| r.trim_end().to_string())
        })
        .collect();
    let host = host_results();
    assert!(!host.is_empty());
    for (i, (m, h)) in mcu.iter().zip(&host).enumerate() {
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
