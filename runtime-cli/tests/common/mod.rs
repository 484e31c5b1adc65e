//! Helpers shared by the runtime-cli integration tests: run the binary, parse its JSON, and check
//! that a failure is one clean `error: …` line.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_runtime-cli");

pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run runtime-cli")
}

pub fn cli_env(args: &[&str], key: &str, val: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env(key, val)
        .output()
        .expect("run runtime-cli")
}

/// Runs a command that must succeed and print one JSON object.
pub fn json(args: &[&str]) -> Value {
    let o = cli(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// Runs a command that must succeed and returns its stdout (the human form).
pub fn text(args: &[&str]) -> String {
    let o = cli(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must fail cleanly: exit 1, one `error: …` line, no panic or backtrace.
pub fn fails(args: &[&str]) -> String {
    let o = cli(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} should fail with exit 1; stderr: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The committed fixture set (`host-trainer fixtures --out fixtures/tiny`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

/// Reads `synth_landmarks_exact.txt` and `MAFL/testing.txt` independently of host-trainer.
pub fn mafl_ground_truth(root: &Path) -> Vec<(String, [[f64; 2]; 5])> {
    let text = std::fs::read_to_string(root.join("synth_landmarks_exact.txt")).unwrap();
    let mut all = std::collections::HashMap::new();
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let v: Vec<f64> = f[1..].iter().map(|x| x.parse().unwrap()).collect();
        all.insert(
            f[0].to_string(),
            [
                [v[0], v[1]],
                [v[2], v[3]],
                [v[4], v[5]],
                [v[6], v[7]],
                [v[8], v[9]],
            ],
        );
    }
    let test = std::fs::read_to_string(root.join("MAFL/testing.txt")).unwrap();
    test.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|n| (n.trim().to_string(), all[n.trim()]))
        .collect()
}

pub const LANDMARK_NAMES: [&str; 5] = ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"];

/// The IOD error (%) computed naively from `infer --json` output on the MAFL test images (in
/// `gt`'s order): the mean over images and landmarks of `‖pred − gt‖ / ‖gt_le − gt_re‖`, on the
/// uncropped image frame (the CLI works in the cropped one; the ratio is the same), and the
/// per-landmark means.
pub fn naive_iod(gt: &[(String, [[f64; 2]; 5])], infer: &Value) -> (f64, [f64; 5]) {
    let results = infer["results"].as_array().expect("infer results");
    assert_eq!(results.len(), gt.len());
    let (mut total, mut per) = (0.0, [0.0f64; 5]);
    for ((_, g), r) in gt.iter().zip(results) {
        let iod = ((g[0][0] - g[1][0]).powi(2) + (g[0][1] - g[1][1]).powi(2)).sqrt();
        for (k, n) in LANDMARK_NAMES.iter().enumerate() {
            let p = &r["landmarks"][n];
            let (px, py) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            let e = ((px - g[k][0]).powi(2) + (py - g[k][1]).powi(2)).sqrt() / iod * 100.0;
            total += e;
            per[k] += e;
        }
    }
    let n = gt.len() as f64;
    (total / (5.0 * n), per.map(|p| p / n))
}
