//! End-to-end transfer evaluation on tiny synthetic sets with a random-init tiny backbone:
//! few-shot (library and binary), base-class and linear probes, and bad-input errors.
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use runtime_core::protocol::fewshot::FewShotHead;
use trainer::data::synth::objects::{generate_objects, ObjectsConfig};
use trainer::data::Split;
use trainer::model::{Arch, ResNet, ResNetConfig};
use transfer_eval::{fewshot, probe};

/// 25 classes → 16/4/5 train/val/test classes, 21 images each, 16 px; a width-1/8 ResNet-18.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("objects");
    generate_objects(
        &ObjectsConfig {
            classes: 25,
            per_class: 21,
            size: 16,
            seed: 3,
            alignment: 1.0,
        },
        &data,
    )
    .expect("synthetic objects");
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.125,
        small_stem: true,
        num_classes: None,
    };
    let net = ResNet::new(&cfg, 5, &Device::Cpu).unwrap();
    let backbone = dir.join("backbone.safetensors");
    net.save_safetensors(&backbone).unwrap();
    (data, backbone)
}

fn fewshot_cfg(data: &Path, backbone: &Path) -> fewshot::FewShotConfig {
    fewshot::FewShotConfig {
        backbone: backbone.to_owned(),
        data: data.to_owned(),
        split: Split::Test,
        way: 5,
        shots: vec![1, 5],
        episodes: 8,
        query: 15,
        classifier: FewShotHead::Linear,
        seed: 11,
        image_size: 16,
        batch: 32,
    }
}

#[test]
fn fewshot_is_reproducible_and_reports_the_population_interval() {
    let d = tempfile::tempdir().unwrap();
    let (data, backbone) = setup(d.path());
    let cfg = fewshot_cfg(&data, &backbone);
    let a = fewshot::evaluate(&cfg, &Device::Cpu).unwrap();
    let b = fewshot::evaluate(&cfg, &Device::Cpu).unwrap();
    assert_eq!(a, b, "same seed, same episodes and classifiers");
    assert_eq!(
        a.results.iter().map(|r| r.shot).collect::<Vec<_>>(),
        vec![1, 5]
    );
    for (r, accs) in a.results.iter().zip(&a.per_episode) {
        assert_eq!(accs.len(), 8);
        // Each 5-way episode has 75 queries: accuracies are multiples of 100/75.
        for &x in accs {
            assert!((0.0..=100.0).contains(&x));
            assert!(
                ((x * 75.0 / 100.0) - (x * 75.0 / 100.0).round()).abs() < 1e-9,
                "{x}"
            );
        }
        // Independent formula: mean and 1.96·σ/√n with the population σ.
        let n = accs.len() as f64;
        let mean = accs.iter().sum::<f64>() / n;
        let sd = (accs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((r.accuracy - mean).abs() < 1e-9);
        assert!((r.ci95 - 1.96 * sd / n.sqrt()).abs() < 1e-9);
    }
    // Another seed draws other episodes.
    let c = fewshot::evaluate(&fewshot::FewShotConfig { seed: 12, ..cfg }, &Device::Cpu).unwrap();
    assert_ne!(a.per_episode, c.per_episode);
}

#[test]
fn fewshot_rejects_bad_input_with_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (data, backbone) = setup(d.path());
    // Too few images per class: 21 < 5 + 20.
    let e = fewshot::evaluate(
        &fewshot::FewShotConfig {
            query: 20,
            ..fewshot_cfg(&data, &backbone)
        },
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("test.csv") && msg.contains("21 images") && msg.contains("need 25"),
        "{msg}"
    );
    // A file that is not a ResNet.
    let junk = d.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let e = fewshot::evaluate(&fewshot_cfg(&data, &junk), &Device::Cpu).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("junk.safetensors") && msg.contains("not a ResNet"),
        "{msg}"
    );
}

#[test]
fn binary_fewshot_writes_json_with_accuracy_and_ci95() {
    let d = tempfile::tempdir().unwrap();
    let (data, backbone) = setup(d.path());
    let out = d.path().join("res");
    let run = Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .args(["eval", "fewshot", "--backbone"])
        .arg(&backbone)
        .arg("--data")
        .arg(&data)
        .args([
            "--image-size",
            "16",
            "--episodes",
            "4",
            "--shot",
            "1,5",
            "--seed",
            "11",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("--json prints only JSON");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fewshot.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(printed["command"], "eval fewshot");
    assert_eq!(printed["results"][1]["shot"], 5);
    assert!(printed["results"][0]["accuracy"].is_f64() && printed["results"][0]["ci95"].is_f64());
    assert_eq!(printed["backbone_fnv64"].as_str().unwrap().len(), 16);
    // The library with the same seed gives the same numbers.
    let lib = fewshot::evaluate(
        &fewshot::FewShotConfig {
            episodes: 4,
            ..fewshot_cfg(&data, &backbone)
        },
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        printed["results"][0]["accuracy"].as_f64().unwrap(),
        lib.results[0].accuracy
    );
}

#[test]
fn base_and_linear_probes_run_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let (data, backbone) = setup(d.path());
    let heldout = trainer::train::data::open_pretrain_data(&data, 0)
        .unwrap()
        .heldout
        .len();
    for kind in [probe::ProbeKind::Base, probe::ProbeKind::Linear] {
        let recipe = match kind {
            probe::ProbeKind::Base => probe::ProbeRecipe {
                epochs: 20,
                ..probe::ProbeRecipe::base()
            },
            probe::ProbeKind::Linear => probe::ProbeRecipe {
                epochs: 3,
                ..probe::ProbeRecipe::lincls()
            },
        };
        let cfg = probe::ProbeConfig {
            kind,
            backbone: backbone.clone(),
            data: data.clone(),
            pretrain_seed: 0,
            image_size: 16,
            batch: 64,
            recipe,
        };
        let r = probe::evaluate(&cfg, &Device::Cpu).unwrap();
        assert_eq!(r.classes, 16);
        assert!((0.0..=100.0).contains(&r.accuracy));
        match kind {
            // 21 images → 2 held out per class: one to fit, one to test.
            probe::ProbeKind::Base => assert_eq!((r.fit_images, r.test_images), (16, 16)),
            probe::ProbeKind::Linear => {
                assert_eq!((r.fit_images, r.test_images), (16 * 21 - heldout, heldout))
            }
        }
        let j = probe::to_json(&cfg, &r);
        assert_eq!(j["accuracy"].as_f64().unwrap(), r.accuracy);
    }
}
