//! `host-trainer export` end to end: synthetic data, a saved backbone and landmark model, the
//! binary, a loadable and deterministic output file, and clear errors.
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use runtime_core::{Dtype, Model, Task};
use trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use trainer::model::landmarks::LandmarkModel;
use trainer::model::{Arch, ResNet, ResNetConfig};

fn export(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .arg("export")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn export_cli_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("objects");
    generate_objects(
        &ObjectsConfig {
            classes: 10,
            per_class: 4,
            size: 32,
            seed: 1,
            alignment: 1.0,
        },
        &data,
    )
    .unwrap();
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.0625,
        small_stem: true,
        num_classes: None,
    };
    let net = ResNet::new(&cfg, 0, &Device::Cpu).unwrap();
    let bb = d.path().join("bb.safetensors");
    net.save_safetensors(&bb).unwrap();

    let out1 = d.path().join("a.safetensors");
    let out2 = d.path().join("b.safetensors");
    for out in [&out1, &out2] {
        let (ok, text) = export(&[
            "--model",
            s(&bb),
            "--calib-data",
            s(&data),
            "--calib-images",
            "8",
            "--out",
            s(out),
        ]);
        assert!(ok, "{text}");
        assert!(
            text.contains("ops") && text.contains("arena") && text.contains("8 images"),
            "{text}"
        );
    }
    let bytes = std::fs::read(&out1).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&out2).unwrap(),
        "export must be deterministic"
    );
    let m = Model::parse(&bytes).unwrap();
    assert_eq!(
        (m.dtype(), m.task(), m.input_shape(), m.output_len()),
        (Dtype::Int8, Task::Features, [32, 32, 3], 32)
    );

    // --f32 needs no data; --image-size changes the input.
    let f = d.path().join("f.safetensors");
    let (ok, text) = export(&[
        "--model",
        s(&bb),
        "--f32",
        "--image-size",
        "24",
        "--out",
        s(&f),
    ]);
    assert!(ok, "{text}");
    let fb = std::fs::read(&f).unwrap();
    let m = Model::parse(&fb).unwrap();
    assert_eq!((m.dtype(), m.input_shape()), (Dtype::F32, [24, 24, 3]));

    // A landmark model is detected from its metadata.
    let lm = LandmarkModel::new(ResNet::new(&cfg, 0, &Device::Cpu).unwrap(), 32, 0).unwrap();
    let lp = d.path().join("lm.safetensors");
    lm.save(&lp).unwrap();
    let lo = d.path().join("lm_int8.safetensors");
    let (ok, text) = export(&[
        "--model",
        s(&lp),
        "--calib-data",
        s(&data),
        "--calib-images",
        "4",
        "--percentile",
        "99.9",
        "--out",
        s(&lo),
    ]);
    assert!(ok, "{text}");
    let lb = std::fs::read(&lo).unwrap();
    let m = Model::parse(&lb).unwrap();
    assert_eq!((m.task(), m.output_len()), (Task::Landmarks, 10));

    // Every calibration method exports a loadable model and records itself in the file.
    for (method, mode) in [
        ("minmax", "min/max"),
        ("mse", "MSE-optimal clip"),
        ("kl", "KL (entropy) clip"),
        ("percentile", "percentile 99.9"),
    ] {
        let o = d.path().join(format!("{method}.safetensors"));
        let (ok, text) = export(&[
            "--model",
            s(&bb),
            "--calib-data",
            s(&data),
            "--calib-images",
            "6",
            "--calib",
            method,
            "--out",
            s(&o),
        ]);
        assert!(ok && text.contains(mode), "{method}: {text}");
        let b = std::fs::read(&o).unwrap();
        Model::parse(&b).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&b).unwrap();
        let g = &meta.metadata().as_ref().unwrap()["rt.graph"];
        assert!(
            g.contains(&format!("calibration {mode} over 6 images")),
            "{method}: {g}"
        );
    }
    // A percentile with another method is refused.
    let (ok, text) = export(&[
        "--model",
        s(&bb),
        "--calib-data",
        s(&data),
        "--calib",
        "mse",
        "--percentile",
        "99",
        "--out",
        s(&d.path().join("no.safetensors")),
    ]);
    assert!(!ok && text.contains("--percentile only applies"), "{text}");

    // Errors: not a ResNet, too many calibration images, int8 without data. No output written.
    let bad = d.path().join("notes.safetensors");
    std::fs::write(&bad, b"definitely not safetensors").unwrap();
    let x = d.path().join("x.safetensors");
    let (ok, text) = export(&[
        "--model",
        s(&bad),
        "--calib-data",
        s(&data),
        "--calib-images",
        "4",
        "--out",
        s(&x),
    ]);
    assert!(
        !ok && text.contains("notes.safetensors") && !text.contains("panicked"),
        "{text}"
    );
    let (ok, text) = export(&[
        "--model",
        s(&bb),
        "--calib-data",
        s(&data),
        "--calib-images",
        "1000",
        "--out",
        s(&x),
    ]);
    assert!(
        !ok && text.contains("1000") && text.contains("only 24"),
        "{text}"
    );
    let (ok, text) = export(&["--model", s(&bb), "--out", s(&x)]);
    assert!(!ok && text.contains("--calib-data"), "{text}");
    assert!(!x.exists());
}

/// `export --tflite` converts an int8 runtime model as it is (the file is the library's
/// conversion of it); an f32 model, or `--f32` with `--tflite`, is an error that says why.
#[test]
fn export_tflite_converts_a_runtime_model() {
    let d = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny");
    let int8 = fixtures.join("landmarks-int8.safetensors");
    let out = d.path().join("lm.tflite");
    let (ok, text) = export(&["--model", s(&int8), "--tflite", s(&out)]);
    assert!(ok, "{text}");
    assert!(text.contains("TFLite schema 3"), "{text}");
    let want = exporter::export::tflite::to_tflite(&std::fs::read(&int8).unwrap()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want.bytes);

    let f32m = fixtures.join("landmarks-f32.safetensors");
    let (ok, text) = export(&["--model", s(&f32m), "--tflite", s(&out)]);
    assert!(!ok && text.contains("only int8"), "{text}");
    let (ok, text) = export(&["--model", s(&int8), "--tflite", s(&out), "--f32"]);
    assert!(!ok && text.contains("int8 models only"), "{text}");
}

/// Both directions from the command line: `export --tflite` writes the file, and `runtime-cli
/// infer --input-raw` runs it (read through `runtime_core::tflite`) and the original model on the
/// same int8 input tensor: the raw outputs are the same bytes, and the ones runtime-core's
/// library gives.
#[test]
fn runtime_cli_runs_the_exported_tflite_like_the_original() {
    let rt = Path::new(env!("CARGO_BIN_EXE_host-trainer")).with_file_name("runtime-cli");
    if !rt.exists() {
        println!(
            "SKIP: {} not built (cargo test --workspace builds it)",
            rt.display()
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let int8 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny/landmarks-int8.safetensors");
    let tfl = d.path().join("lm.tflite");
    let (ok, text) = export(&["--model", s(&int8), "--tflite", s(&tfl)]);
    assert!(ok, "{text}");
    let bytes = std::fs::read(&int8).unwrap();
    let m = Model::parse(&bytes).unwrap();
    let x: Vec<i8> = (0..m.input_len())
        .map(|i| (i * 37 % 256) as u8 as i8)
        .collect();
    let input = d.path().join("x.bin");
    std::fs::write(&input, x.iter().map(|&v| v as u8).collect::<Vec<u8>>()).unwrap();
    let mut arena = vec![0u8; m.arena_bytes()];
    let want: Vec<i64> = m
        .run_int8_raw(&x, &mut arena)
        .unwrap()
        .iter()
        .map(|&v| v as i64)
        .collect();
    for model in [&int8, &tfl] {
        let o = Command::new(&rt)
            .args([
                "infer",
                "--json",
                "--model",
                s(model),
                "--input-raw",
                s(&input),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let got: Vec<i64> = v["results"][0]["raw_int8"]
            .as_array()
            .unwrap_or_else(|| panic!("{text}"))
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "{}", model.display());
    }
    // A tensor of the wrong size is refused, naming the file and the size wanted.
    std::fs::write(&input, [0u8; 5]).unwrap();
    let o = Command::new(&rt)
        .args(["infer", "--model", s(&tfl), "--input-raw", s(&input)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("x.bin") && err.contains("5 bytes"),
        "{err}"
    );
}
