//! Puts the selected board's `memory.x` where the linker (cortex-m-rt's `link.x`) looks for it,
//! selects the embedded models, and rebuilds when either selection, the map or a fixture changes.
//!
//! * `MCU_BOARD`: a directory under `boards/` holding `memory.x` (the memory map) and `models`
//!   (the models that fit it). `qemu-an386` (the default, and the board `scripts/mcu.sh` runs
//!   under QEMU) or `stm32f411`.
//! * `MCU_MODELS`: overrides the board's `models` (names separated by spaces or commas, from
//!   `landmark`, `fewshot`, `resnet8`, `tiny-landmark`, `tiny-fewshot`, `tflite-landmark`,
//!   `mlperf-resnet8`).
//! * `MCU_MLPERF_DIR`: for `mlperf-resnet8` (MLPerf Tiny's own ResNet-8, whose `.tflite` stays
//!   out of the repository), a directory holding `model.safetensors` (the `.tflite` converted by
//!   `runtime_core::tflite`) and `inputs.bin` (int8 input tensors). The test
//!   `mlperf_resnet8_on_the_mcu` (`tests/tests/mcu_parity.rs`) writes it from
//!   `MLPERF_RESNET8_TFLITE`.
//!
//! * `MCU_PIPELINE_DIR`: a directory holding `backbone-int8.safetensors`,
//!   `landmarks-int8.safetensors` and `inputs.bin` (normalised inputs, `app::Images`) that the
//!   `tiny-*` parts run instead of the fixtures' exports (`fixtures/tiny`, `fixtures/mcu/tiny-inputs.bin`):
//!   e.g. a study's own models (`tests/tests/mcu_parity.rs`, `study_models_on_the_mcu`). Sets
//!   `cfg(mcu_pipeline_external)`, which sizes the arena and heap for models up to ResNet-18 ×0.125
//!   at 32 px.
//!
//! Each selected model becomes `cfg(mcu_model = "<name>")`: the firmware embeds only those
//! fixtures and runs only their part of the program. Environment variables and cfgs leave the
//! crate's metadata hash alone, so the default build is byte for byte the QEMU build.
use std::{env, fs, path::PathBuf};

const DEFAULT_BOARD: &str = "qemu-an386";
/// The builder-made random-weight models (`fixtures/mcu/`), then the training pipeline's
/// exported int8 models (`fixtures/tiny/*-int8.safetensors`, inputs in `fixtures/mcu/`).
const MODELS: [&str; 7] = [
    "landmark",
    "fewshot",
    "resnet8",
    "tiny-landmark",
    "tiny-fewshot",
    "tflite-landmark",
    "mlperf-resnet8",
];

fn main() {
    println!("cargo:rerun-if-env-changed=MCU_BOARD");
    println!("cargo:rerun-if-env-changed=MCU_MODELS");
    println!("cargo:rerun-if-changed=../fixtures/mcu");
    println!("cargo:rerun-if-changed=../fixtures/tiny/landmarks-int8.safetensors");
    println!("cargo:rerun-if-changed=../fixtures/tiny/backbone-int8.safetensors");
    println!("cargo:rerun-if-env-changed=MCU_PIPELINE_DIR");
    println!("cargo:rerun-if-env-changed=MCU_MLPERF_DIR");
    println!("cargo::rustc-check-cfg=cfg(mcu_pipeline_external)");
    println!(
        "cargo::rustc-check-cfg=cfg(mcu_model, values(\"{}\"))",
        MODELS.join("\", \"")
    );

    let board = env::var("MCU_BOARD").unwrap_or_default();
    let board = if board.is_empty() {
        DEFAULT_BOARD
    } else {
        board.as_str()
    };
    let dir = PathBuf::from("boards").join(board);
    let (map, models_file) = (dir.join("memory.x"), dir.join("models"));
    if !map.is_file() || !models_file.is_file() {
        panic!(
            "MCU_BOARD={board}: no {} and {} (boards: {})",
            map.display(),
            models_file.display(),
            known_boards().join(", ")
        );
    }
    println!("cargo:rerun-if-changed={}", map.display());
    println!("cargo:rerun-if-changed={}", models_file.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(&map, out.join("memory.x")).expect("copy the board's memory.x into OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());

    let models = match env::var("MCU_MODELS") {
        Ok(list) if !list.trim().is_empty() => list,
        _ => fs::read_to_string(&models_file)
            .unwrap_or_else(|e| panic!("{}: {e}", models_file.display()))
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut any = false;
    for name in models.split([' ', ',', '\t']).filter(|s| !s.is_empty()) {
        if !MODELS.contains(&name) {
            panic!(
                "unknown model '{name}' (MCU_MODELS or {}): expected some of {}",
                models_file.display(),
                MODELS.join(", ")
            );
        }
        println!("cargo:rustc-cfg=mcu_model=\"{name}\"");
        if name == "mlperf-resnet8" {
            copy_mlperf(&out);
        }
        any = true;
    }
    if !any {
        panic!("no models selected for board {board}");
    }
    copy_pipeline(&out);
}

/// The training pipeline's exports the `tiny-*` parts run, copied into OUT_DIR under fixed names
/// (`include_bytes!` needs a literal path): `MCU_PIPELINE_DIR`'s, else the fixtures'.
fn copy_pipeline(out: &std::path::Path) {
    let external = env::var("MCU_PIPELINE_DIR")
        .ok()
        .filter(|d| !d.trim().is_empty());
    let (models, inputs) = match &external {
        Some(dir) => {
            println!("cargo:rustc-cfg=mcu_pipeline_external");
            (PathBuf::from(dir), PathBuf::from(dir).join("inputs.bin"))
        }
        None => (
            PathBuf::from("../fixtures/tiny"),
            PathBuf::from("../fixtures/mcu/tiny-inputs.bin"),
        ),
    };
    let files = [
        (
            models.join("backbone-int8.safetensors"),
            "pipeline-backbone.safetensors",
        ),
        (
            models.join("landmarks-int8.safetensors"),
            "pipeline-landmarks.safetensors",
        ),
        (inputs, "pipeline-inputs.bin"),
    ];
    for (from, name) in files {
        println!("cargo:rerun-if-changed={}", from.display());
        fs::copy(&from, out.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (MCU_PIPELINE_DIR={})",
                from.display(),
                external.as_deref().unwrap_or("unset: the fixtures")
            )
        });
    }
}

/// MLPerf Tiny's converted ResNet-8 and its inputs from `MCU_MLPERF_DIR`, into OUT_DIR.
fn copy_mlperf(out: &std::path::Path) {
    let Some(dir) = env::var_os("MCU_MLPERF_DIR").filter(|d| !d.is_empty()) else {
        panic!(
            "model mlperf-resnet8 needs MCU_MLPERF_DIR (model.safetensors and inputs.bin): \
             `MLPERF_RESNET8_TFLITE=… cargo test -p parity-tests --test mcu_parity \
             mlperf_resnet8_on_the_mcu` makes them from MLPerf Tiny's .tflite and runs the build"
        );
    };
    let dir = PathBuf::from(dir);
    for (from, to) in [
        ("model.safetensors", "mlperf-resnet8.safetensors"),
        ("inputs.bin", "mlperf-inputs.bin"),
    ] {
        let from = dir.join(from);
        println!("cargo:rerun-if-changed={}", from.display());
        fs::copy(&from, out.join(to))
            .unwrap_or_else(|e| panic!("{}: {e} (MCU_MLPERF_DIR)", from.display()));
    }
}

fn known_boards() -> Vec<String> {
    let Ok(d) = fs::read_dir("boards") else {
        return Vec::new();
    };
    let mut v: Vec<String> = d
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("memory.x").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
