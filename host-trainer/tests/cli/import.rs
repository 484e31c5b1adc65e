//! `host-trainer import` on checkpoints PyTorch wrote (fixtures/import, made once by
//! scripts/make_import_fixtures.py; read here without PyTorch): the detected layout, the kept
//! and dropped keys, pooled features equal to PyTorch's within 1e-4, the errors, and the
//! imported backbone through `export` (runtime model and ONNX) and `eval fewshot`.
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use exporter::export::{self, ExportOptions, ExportRequest};
use exporter::import::{import, ImportError, ImportRequest};
use runtime_core::Model;
use serde_json::Value;
use trainer::model::{BnMode, ResNet};

/// Runs the host-trainer binary; panics with its output unless it succeeds; returns stdout.
fn run(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "host-trainer {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/import")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

/// The fixed image of the fixture script, CHW, normalised.
fn fixed_image(size: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let p = ((7 * x + 13 * y + 29 * c) % 256) as f32 / 255.0;
                v.push((p - mean[c]) / std[c]);
            }
        }
    }
    v
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn req(name: &str) -> ImportRequest {
    ImportRequest {
        from: dir().join(name),
        ..Default::default()
    }
}

fn features(net: &ResNet, x: &[f32]) -> Vec<f32> {
    let t = Tensor::from_vec(x.to_vec(), (1, 3, 32, 32), &Device::Cpu).unwrap();
    net.forward_features(&t, BnMode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{what}[{i}]: {a} vs PyTorch {b}");
    }
}

#[test]
fn features_equal_pytorch() {
    let e = expected();
    let mean = floats(&e["mean"]);
    let std = floats(&e["std"]);
    let x = fixed_image(32, &mean, &std);
    for (name, m) in e["models"].as_object().unwrap() {
        let imp = import(&req(name)).unwrap();
        let r = &imp.report;
        assert_eq!(r.arch, m["arch"].as_str().unwrap(), "{name}");
        assert_eq!(r.width as f64, m["width"].as_f64().unwrap(), "{name}");
        assert_eq!(r.small_stem, m["small_stem"].as_bool().unwrap(), "{name}");
        assert_eq!(r.prefix, m["prefix"].as_str().unwrap(), "{name}");
        assert_eq!(r.key.as_deref(), m["key"].as_str(), "{name}");
        let want = floats(&m["features"]);
        assert_close(&features(&imp.net, &x), &want, 1e-4, name);
        // Written and reopened as our own backbones are: the same function.
        let bytes = imp.to_safetensors_bytes().unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("backbone.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let net = ResNet::open(&p, &Device::Cpu).unwrap();
        assert_close(&features(&net, &x), &want, 1e-4, name);
    }
}

#[test]
fn reports_what_it_kept_and_dropped() {
    // torchvision: every backbone tensor kept, the classifier dropped.
    let tv = import(&req("resnet18-torchvision.pth")).unwrap().report;
    assert_eq!(tv.dropped, vec!["fc.bias", "fc.weight"]);
    assert!(tv.defaulted.is_empty(), "{:?}", tv.defaulted);
    // 20 convs + 20 BNs × 5 tensors (weight, bias, running mean/var, num_batches_tracked).
    assert_eq!(tv.kept.len(), 20 + 20 * 5);
    // MoCo: the query encoder kept, its MLP head, the key encoder and the queue dropped.
    let moco = import(&req("moco-v2.pth.tar")).unwrap().report;
    assert_eq!(moco.kept.len(), 20 + 20 * 5);
    assert!(moco.kept.iter().all(|k| k.starts_with("module.encoder_q.")));
    for k in [
        "module.queue",
        "module.queue_ptr",
        "module.encoder_q.fc.0.weight",
        "module.encoder_q.fc.2.bias",
        "module.encoder_k.conv1.weight",
    ] {
        assert!(moco.dropped.iter().any(|d| d == k), "{k} not dropped");
    }
    assert_eq!(moco.kept.len() + moco.dropped.len(), 250);
}

#[test]
fn errors_name_the_key_or_file() {
    let err = |r: ImportRequest| import(&r).unwrap_err().to_string();
    // The key encoder as an explicit prefix works (same shapes), a wrong one names the key.
    let mut r = req("moco-v2.pth.tar");
    r.prefix = Some("module.encoder_k.".into());
    assert!(import(&r).is_ok());
    r.prefix = Some("module.encoder.".into());
    let e = err(r);
    assert!(
        e.contains("missing key `module.encoder.conv1.weight`"),
        "{e}"
    );
    assert!(e.contains("moco-v2.pth.tar"), "{e}");
    let mut r = req("moco-v2.pth.tar");
    r.key = Some("weights".into());
    let e = err(r);
    assert!(e.contains("`weights`"), "{e}");
    // Not a PyTorch file; a missing file.
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("junk.pth");
    std::fs::write(&junk, b"not a zip").unwrap();
    let e = err(ImportRequest {
        from: junk,
        ..Default::default()
    });
    assert!(e.contains("junk.pth") && e.contains("not a PyTorch"), "{e}");
    let e = err(req("missing.pth"));
    assert!(e.contains("missing.pth"), "{e}");
    // A mis-shaped key: under the prefix `layer1.0.` the "stem" `layer1.0.conv1.weight` has
    // 1 input channel, not 3. (Mis-shaped tensors past the stem are listed by the checked
    // loader, tested in model::checkpoint.)
    let e = import(&ImportRequest {
        from: dir().join("resnet18-torchvision.pth"),
        prefix: Some("layer1.0.".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, ImportError::Layout { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("`layer1.0.conv1.weight` has shape [1, 1, 3, 3]"),
        "{e}"
    );
}

/// The imported backbone goes through export (runtime f32 model = PyTorch's features, int8
/// and ONNX written) and `eval fewshot` (the CLI, on the tiny fixture objects).
#[test]
fn imported_backbone_exports_and_evaluates() {
    let e = expected();
    let m = &e["models"]["moco-v2.pth.tar"];
    let d = tempfile::tempdir().unwrap();
    let bb = d.path().join("backbone.safetensors");
    let from = dir().join("moco-v2.pth.tar");
    let out = run(&[
        "import",
        "--from",
        from.to_str().unwrap(),
        "--out",
        bb.to_str().unwrap(),
        "--image-size",
        "32",
        "--json",
    ]);
    let rep: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rep["prefix"], "module.encoder_q.");
    assert_eq!(rep["kept"].as_array().unwrap().len(), 120);

    // export f32: runtime-core on the fixed image gives PyTorch's features.
    let f32m = export::export_file(&ExportRequest {
        model: bb.clone(),
        calib_data: None,
        calib_images: 0,
        image_size: None, // from the imported file's metadata
        seed: 0,
        opts: ExportOptions::f32(),
    })
    .unwrap();
    let model = Model::parse(&f32m.bytes).unwrap();
    assert_eq!(model.input_shape(), [32, 32, 3]);
    let (mean, std) = model.normalisation();
    let chw = fixed_image(32, mean, std);
    let mut hwc = vec![0f32; chw.len()];
    for c in 0..3 {
        for i in 0..32 * 32 {
            hwc[i * 3 + c] = chw[c * 32 * 32 + i];
        }
    }
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut out = vec![0f32; model.output_len()];
    model.run_f32(&hwc, &mut arena, &mut out).unwrap();
    assert_close(&out, &floats(&m["features"]), 1e-4, "runtime f32 export");

    // export int8 (calibrated on the tiny objects) with its ONNX twin, through the CLI.
    let objects = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny/objects");
    let rt = d.path().join("model.safetensors");
    let ox = d.path().join("model.onnx");
    run(&[
        "export",
        "--model",
        bb.to_str().unwrap(),
        "--calib-data",
        objects.to_str().unwrap(),
        "--calib-images",
        "16",
        "--out",
        rt.to_str().unwrap(),
        "--onnx",
        ox.to_str().unwrap(),
    ]);
    let rt_bytes = std::fs::read(&rt).unwrap();
    assert_eq!(Model::parse(&rt_bytes).unwrap().output_len(), 8);
    assert_eq!(
        std::fs::read(&ox).unwrap(),
        export::onnx::to_onnx(&rt_bytes).unwrap(),
        "the ONNX file is the runtime file converted"
    );

    // eval fewshot on the imported backbone.
    let out = run(&[
        "eval",
        "fewshot",
        "--backbone",
        bb.to_str().unwrap(),
        "--data",
        objects.to_str().unwrap(),
        "--image-size",
        "32",
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "3",
        "--episodes",
        "5",
        "--classifier",
        "centroid",
        "--json",
    ]);
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    let res = r["results"].as_array().unwrap();
    assert_eq!(res.len(), 1, "{r}");
    assert_eq!(
        (res[0]["shot"].as_u64(), res[0]["episodes"].as_u64()),
        (Some(1), Some(5))
    );
    let acc = res[0]["accuracy"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&acc), "{r}");
}

/// An imported torchvision backbone (ImageNet stem: 7×7/2 conv, 3×3/2 max-pool) fine-tunes on
/// landmarks, all layers, through the CLI — the path that needs the stem max-pool's backward
/// (candle's own `max_pool2d` has none for kernel 3 / stride 2, so this failed before).
#[test]
fn imported_torchvision_backbone_fine_tunes_on_landmarks() {
    let d = tempfile::tempdir().unwrap();
    let bb = d.path().join("backbone.safetensors");
    let from = dir().join("resnet18-torchvision.pth");
    run(&[
        "import",
        "--from",
        from.to_str().unwrap(),
        "--out",
        bb.to_str().unwrap(),
    ]);
    let faces = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny/faces");
    let out = run(&[
        "eval",
        "landmarks",
        "--backbone",
        bb.to_str().unwrap(),
        "--data",
        faces.to_str().unwrap(),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--json",
    ]);
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["epochs"], 1);
    let iod = r["iod_error"].as_f64().expect("iod_error");
    assert!(iod.is_finite() && iod > 0.0, "{r}");
    assert!(
        r["final_loss"].as_f64().expect("final_loss").is_finite(),
        "{r}"
    );
}
