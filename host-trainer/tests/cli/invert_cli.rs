//! `host-trainer invert` end to end: two named backbones, two images; the reconstructions, the
//! grid and invert.json are written, the loss falls, the same image gets the same generator for
//! both backbones, and bad input is an error that names it.
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use serde_json::Value;
use trainer::model::{Arch, ResNet, ResNetConfig};

fn backbone(dir: &Path, seed: u64) -> std::path::PathBuf {
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.0625,
        small_stem: true,
        num_classes: None,
    };
    let p = dir.join(format!("b{seed}.safetensors"));
    ResNet::new(&cfg, seed, &Device::Cpu)
        .unwrap()
        .save_safetensors(&p)
        .unwrap();
    p
}

fn invert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .arg("invert")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn invert_writes_reconstructions_grid_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (backbone(dir.path(), 1), backbone(dir.path(), 2));
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny/images");
    let out = dir.path().join("inv");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = invert(&[
        "--backbone",
        &format!("one={}", s(&a)),
        "--backbone",
        &format!("two={}", s(&b)),
        "--image",
        &s(&images.join("object.png")),
        "--image",
        &s(&images.join("face.png")),
        "--image-size",
        "16",
        "--iterations",
        "30",
        "--lr",
        "0.01",
        "--out",
        &s(&out),
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("invert.json")).unwrap()).unwrap();
    assert_eq!(v, on_disk);
    let grid = image::open(out.join("grid.png")).unwrap();
    assert!(grid.height() >= 3 * 96, "three rows: images, one, two");
    let bb = v["backbones"].as_array().unwrap();
    assert_eq!(bb.len(), 2);
    for b in bb {
        let name = b["name"].as_str().unwrap();
        for (k, i) in b["images"].as_array().unwrap().iter().enumerate() {
            let png = image::open(out.join(name).join(format!("{k}.png"))).unwrap();
            assert_eq!((png.width(), png.height()), (16, 16));
            let (start, end) = (
                i["initial_loss"].as_f64().unwrap(),
                i["final_loss"].as_f64().unwrap(),
            );
            assert!(end < start, "{name} image {k}: {start} → {end}");
            let ssim = i["ssim"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&ssim));
            assert!(i["random_feature_distance"].as_f64().unwrap() > 0.0);
        }
    }

    // Errors name what is wrong.
    let missing = dir.path().join("nope.png");
    let run = invert(&[
        "--backbone",
        &s(&a),
        "--image",
        &s(&missing),
        "--out",
        &s(&out),
    ]);
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && e.contains("nope.png"), "{e}");
    let run = invert(&[
        "--backbone",
        &format!("x={}", s(&a)),
        "--backbone",
        &format!("x={}", s(&b)),
        "--image",
        &s(&images.join("object.png")),
        "--out",
        &s(&out),
    ]);
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && e.contains("used twice"), "{e}");
    let run = invert(&[
        "--backbone",
        &s(&images.join("object.png")),
        "--image",
        &s(&images.join("object.png")),
        "--out",
        &s(&out),
    ]);
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && e.contains("object.png"), "{e}");
}
