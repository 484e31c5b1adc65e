//! `host-trainer bench-step`: the JSON line the PyTorch comparison script reads, the `--baseline`
//! path (candle's own ops in the same process), and clear errors for impossible requests.
use std::process::Command;

fn bench_step(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_host-trainer"))
        .arg("bench-step")
        .args(args)
        .output()
        .expect("host-trainer runs")
}

#[test]
fn json_line_has_the_figures_the_torch_script_reads() {
    let out = bench_step(&[
        "--width",
        "0.0625",
        "--image-size",
        "16",
        "--batch-size",
        "16",
        "--queue",
        "64",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--baseline",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["method"], "moco-v2");
    let runs = v["runs"].as_array().unwrap();
    let ops: Vec<&str> = runs.iter().map(|r| r["ops"].as_str().unwrap()).collect();
    assert_eq!(ops, ["kernels", "candle"]);
    for r in runs {
        let (f, b, s) = (
            r["forward_s"].as_f64().unwrap(),
            r["backward_s"].as_f64().unwrap(),
            r["step_s"].as_f64().unwrap(),
        );
        assert!(f > 0.0 && b > 0.0 && s > 0.0);
        // img/s is the batch over the median step (the script's ratio depends on it).
        let ips = r["img_per_sec"].as_f64().unwrap();
        assert!(
            (ips - 16.0 / s).abs() < 1e-9 * ips.max(1.0),
            "{ips} vs {}",
            16.0 / s
        );
    }
    assert_eq!(v["img_per_sec"], runs[0]["img_per_sec"]);
    let speedup = v["speedup_vs_candle_ops"].as_f64().unwrap();
    let want = runs[0]["img_per_sec"].as_f64().unwrap() / runs[1]["img_per_sec"].as_f64().unwrap();
    assert!((speedup - want).abs() < 1e-9 * want);
}

#[test]
fn impossible_requests_are_clear_errors() {
    for (args, needle) in [
        (
            vec!["--batch-size", "16", "--queue", "100", "--width", "0.0625"],
            "--queue 100",
        ),
        (vec!["--method", "simclr"], "simclr"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--device", "cuda:0", "--width", "0.0625"], "cuda"),
    ] {
        let out = bench_step(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
