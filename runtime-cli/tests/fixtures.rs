//! Runs the `runtime-cli` binary on the committed fixtures (`fixtures/tiny`, written by
//! `host-trainer fixtures`): a MoCo-v2 backbone and a landmark model trained by host-trainer and
//! exported int8 and f32 by the real exporter, with tiny mini-ImageNet and CelebA/MAFL sets.
//!
//! * every command, human and `--json` forms;
//! * host/runtime agreement: `eval mafl` and `eval fewshot` on the f32 exports reproduce the
//!   host's own results recorded in `fixtures.json` (host-trainer's candle models on the same
//!   data; the regeneration test proves the record is what the host computes), int8 stays close;
//! * every bad input (missing, truncated, corrupt model; wrong task; wrong image size or format;
//!   lists naming missing files): exit 1, one `error:` line naming the file, never a panic.
mod common;

use std::path::{Path, PathBuf};

use common::LANDMARK_NAMES;
use common::{cli_env, fails, fixtures, json, mafl_ground_truth, naive_iod, s, text};
use serde_json::Value;

/// Tolerance of the f32 export against the host's candle model: the same graph in f32, only the
/// summation order differs (|ΔIOD| in points; measured: see fixtures/README.md).
const F32_IOD_TOL: f64 = 1e-3;
/// Tolerance of the int8 export against the host (points of IOD error).
const INT8_IOD_TOL: f64 = 5.0;

fn manifest() -> Value {
    let p = fixtures().join("fixtures.json");
    let t = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run `host-trainer fixtures`", p.display()));
    serde_json::from_str(&t).unwrap()
}

fn model(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn faces() -> PathBuf {
    fixtures().join("faces")
}

fn objects() -> PathBuf {
    fixtures().join("objects")
}

const BACKBONES: [&str; 2] = ["backbone-int8.safetensors", "backbone-f32.safetensors"];
const LANDMARKS: [&str; 2] = ["landmarks-int8.safetensors", "landmarks-f32.safetensors"];

fn mafl(model_name: &str) -> Value {
    json(&[
        "eval",
        "mafl",
        "--model",
        s(&model(model_name)),
        "--data",
        s(&faces()),
        "--json",
    ])
}

#[test]
fn eval_mafl_f32_reproduces_the_host_and_int8_stays_close() {
    let host = &manifest()["host"]["mafl_test"];
    let host_iod = host["iod_error"].as_f64().unwrap();
    let gt = mafl_ground_truth(&faces());
    assert_eq!(host["images"], gt.len());
    let f = mafl("landmarks-f32.safetensors");
    let q = mafl("landmarks-int8.safetensors");
    let (fi, qi) = (
        f["iod_error"].as_f64().unwrap(),
        q["iod_error"].as_f64().unwrap(),
    );
    eprintln!(
        "MAFL IOD error on {} test faces: host f32 {host_iod:.6}, runtime f32 {fi:.6} (Δ {:.2e}), \
         runtime int8 {qi:.6} (Δ {:+.4})",
        gt.len(),
        fi - host_iod,
        qi - host_iod
    );
    assert_eq!(f["images"], gt.len());
    assert_eq!(f["command"], "eval mafl");
    assert!(
        (fi - host_iod).abs() < F32_IOD_TOL,
        "f32 export {fi} vs host {host_iod}"
    );
    for n in LANDMARK_NAMES {
        let (a, b) = (
            f["per_landmark"][n].as_f64().unwrap(),
            host["per_landmark"][n].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < F32_IOD_TOL,
            "{n}: f32 export {a} vs host {b}"
        );
    }
    assert!(
        (qi - host_iod).abs() < INT8_IOD_TOL,
        "int8 export {qi} vs host {host_iod}"
    );
    // The figure is the naive formula on `infer`'s points for the same images (the int8 model).
    let imgs: Vec<String> = gt
        .iter()
        .map(|(n, _)| {
            faces()
                .join("img_align_celeba")
                .join(n)
                .display()
                .to_string()
        })
        .collect();
    let m = model("landmarks-int8.safetensors");
    let mut args = vec!["infer", "--model", s(&m), "--json"];
    args.extend(imgs.iter().map(String::as_str));
    let (naive, _) = naive_iod(&gt, &json(&args));
    assert!(
        (qi - naive).abs() < 1e-3 * naive,
        "eval mafl {qi} vs naive {naive}"
    );
    // Human form.
    let t = text(&["eval", "mafl", "--model", s(&m), "--data", s(&faces())]);
    assert!(
        t.contains(&format!("{qi:.3}%")) && t.contains("nose"),
        "{t}"
    );
}

fn fewshot(model_name: &str, json_out: bool) -> std::process::Output {
    let (m, data) = (model(model_name), objects());
    let mut a = vec![
        "eval",
        "fewshot",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--way",
        "3",
        "--shot",
        "1,2",
        "--query",
        "3",
        "--episodes",
        "10",
        "--classifier",
        "linear",
        "--seed",
        "0",
    ];
    if json_out {
        a.push("--json");
    }
    let a: Vec<String> = a.into_iter().map(String::from).collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    cli_env(&a, "RAYON_NUM_THREADS", "2")
}

#[test]
fn eval_fewshot_f32_reproduces_the_host_episodes() {
    let host = &manifest()["host"]["fewshot"];
    assert_eq!(
        (host["way"].as_u64(), host["query"].as_u64()),
        (Some(3), Some(3))
    );
    for name in BACKBONES {
        let o = fewshot(name, true);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let res = v["results"].as_array().unwrap();
        let want = host["results"].as_array().unwrap();
        assert_eq!(res.len(), want.len());
        for (r, h) in res.iter().zip(want) {
            assert_eq!(r["shot"], h["shot"]);
            assert_eq!(r["episodes"], 10);
            let (a, b) = (
                r["accuracy"].as_f64().unwrap(),
                h["accuracy"].as_f64().unwrap(),
            );
            eprintln!(
                "{name}: {}-shot runtime {a:.4}% host f32 {b:.4}%",
                r["shot"]
            );
            if name.contains("f32") {
                // Same episodes, same classifier seeds, features equal to rounding: equal.
                assert!(
                    (a - b).abs() < 1e-9,
                    "{name} {}-shot: {a} vs host {b}",
                    r["shot"]
                );
                assert!((r["ci95"].as_f64().unwrap() - h["ci95"].as_f64().unwrap()).abs() < 1e-9);
            } else {
                // Same episodes, int8 features: within the host's own episode noise (twice its
                // 95% half-interval; measured Δ −1.1 and +4.4 points against 4.4 and 8.3).
                let bound = 2.0 * h["ci95"].as_f64().unwrap();
                assert!(
                    (a - b).abs() <= bound,
                    "{name} {}-shot: int8 {a} vs host f32 {b} (bound {bound})",
                    r["shot"]
                );
            }
        }
    }
    let t =
        String::from_utf8_lossy(&fewshot("backbone-int8.safetensors", false).stdout).into_owned();
    assert!(
        t.contains("3-way") && t.contains("2-shot:") && t.contains('±'),
        "{t}"
    );
}

#[test]
fn infer_draws_landmarks_and_gives_features() {
    let d = tempfile::tempdir().unwrap();
    let face = fixtures().join("images/face.png");
    let (w, h) = image::image_dimensions(&face).unwrap();
    for name in LANDMARKS {
        let drawn = d.path().join(format!("{name}.png"));
        let v = json(&[
            "infer",
            "--model",
            s(&model(name)),
            "--draw",
            s(&drawn),
            "--json",
            s(&face),
        ]);
        assert_eq!(v["task"], "landmarks");
        for n in LANDMARK_NAMES {
            let p = &v["results"][0]["landmarks"][n];
            let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            // A (poorly) trained model still predicts points near the face, not far outside.
            assert!(
                (-(w as f64)..2.0 * w as f64).contains(&x)
                    && (-(h as f64)..2.0 * h as f64).contains(&y),
                "{name} {n}: ({x}, {y})"
            );
        }
        // Enlarged by the integer factor that brings the longer side to at most 256 px.
        let img = image::open(&drawn).unwrap().to_rgb8();
        let k = 256 / w.max(h);
        assert_eq!(img.dimensions(), (w * k, h * k));
        let le = &v["results"][0]["landmarks"]["lefteye"];
        let (x, y) = (le[0].as_f64().unwrap(), le[1].as_f64().unwrap());
        if (0.0..w as f64).contains(&x) && (0.0..h as f64).contains(&y) {
            assert!(
                img.pixels().any(|p| p.0 == [255, 0, 0]),
                "no red left-eye dot"
            );
        }
        let t = text(&["infer", "--model", s(&model(name)), s(&face)]);
        assert!(t.contains("lefteye"), "{t}");
    }
    let obj = fixtures().join("images/object.png");
    for name in BACKBONES {
        let v = json(&["infer", "--model", s(&model(name)), "--json", s(&obj)]);
        assert_eq!(v["task"], "features");
        let f = v["results"][0]["features"].as_array().unwrap();
        // ResNet-18 at width 1/16: 512/16 = 32 pooled features, ReLU'd, so non-negative.
        assert_eq!(f.len(), 32);
        assert!(f.iter().all(|x| x.as_f64().unwrap() >= 0.0), "{f:?}");
        let arg = v["results"][0]["argmax"].as_u64().unwrap() as usize;
        let max = f
            .iter()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(f[arg].as_f64().unwrap(), max);
    }
}

#[test]
fn inspect_and_bench_every_fixture_model() {
    let exports = manifest()["exports"].as_array().unwrap().clone();
    assert_eq!(exports.len(), 4);
    for e in &exports {
        let name = e["file"].as_str().unwrap();
        let p = model(name);
        let v = json(&["inspect", s(&p), "--json"]);
        // The runtime's reading of the file agrees with what the exporter said it wrote.
        assert_eq!(v["macs"], e["macs"], "{name}");
        assert_eq!(v["weight_bytes"], e["weight_bytes"], "{name}");
        assert_eq!(v["arena_bytes"], e["arena_bytes"], "{name}");
        assert_eq!(
            v["layers"].as_array().unwrap().len(),
            e["ops"].as_u64().unwrap() as usize
        );
        assert_eq!(v["file_bytes"], std::fs::metadata(&p).unwrap().len());
        let int8 = name.contains("int8");
        assert_eq!(v["dtype"], if int8 { "i8" } else { "f32" }, "{name}");
        assert_eq!(v["quantisation"].is_null(), !int8, "{name}");
        assert_eq!(
            v["task"],
            if name.starts_with("landmarks") {
                "landmarks"
            } else {
                "features"
            }
        );
        let t = text(&["inspect", s(&p)]);
        assert!(t.contains("MACs") && t.contains("conv"), "{t}");
        let b = json(&[
            "bench",
            "--model",
            s(&p),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--json",
        ]);
        let (p50, p99) = (b["p50_ms"].as_f64().unwrap(), b["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99, "{b}");
        assert_eq!(b["runs"], 3);
    }
    let t = text(&["bench", "--model", s(&model(BACKBONES[0])), "--runs", "2"]);
    assert!(t.contains("p99"), "{t}");
}

/// Copies `src` (a fixture dataset) into `dst`.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_model_files_are_one_line_errors_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read(model(LANDMARKS[0])).unwrap();
    let missing = d.path().join("missing.safetensors");
    let e = fails(&["inspect", s(&missing)]);
    assert!(
        e.contains("missing.safetensors") && e.contains("cannot read"),
        "{e}"
    );
    let e = fails(&[
        "eval",
        "mafl",
        "--model",
        s(&missing),
        "--data",
        s(&faces()),
    ]);
    assert!(e.contains("missing.safetensors"), "{e}");
    // Truncated: inside the tensor data, and inside the header.
    for (name, cut) in [
        ("trunc.safetensors", good.len() / 2),
        ("trunc_header.safetensors", 20),
    ] {
        let t = write(d.path(), name, &good[..cut]);
        for args in [
            vec!["inspect", s(&t)],
            vec!["bench", "--model", s(&t)],
            vec!["eval", "mafl", "--model", s(&t), "--data", s(&faces())],
            vec![
                "infer",
                "--model",
                s(&t),
                s(&fixtures().join("images/face.png")),
            ],
        ] {
            let e = fails(&args);
            assert!(
                e.contains(name) && e.contains("malformed safetensors"),
                "{e}"
            );
        }
    }
    let g = write(
        d.path(),
        "garbage.safetensors",
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a model at all",
    );
    assert!(fails(&["inspect", s(&g)]).contains("garbage.safetensors"));
    let empty = write(d.path(), "empty.safetensors", b"");
    assert!(fails(&["inspect", s(&empty)]).contains("empty.safetensors"));
    // Corrupt graph text (same length, so the safetensors container stays valid): the error
    // names the file and the graph line.
    let text = String::from_utf8_lossy(&good).into_owned();
    let at = text
        .find("task landmarks")
        .expect("graph text in the header");
    let mut bad = good.clone();
    bad[at..at + 14].copy_from_slice(b"task landmorks");
    let c = write(d.path(), "corrupt.safetensors", &bad);
    let e = fails(&["eval", "mafl", "--model", s(&c), "--data", s(&faces())]);
    assert!(e.contains("corrupt.safetensors: graph line"), "{e}");
    // Corrupt weights: a tensor's byte range beyond the file (header edited, same length).
    let at = text.find("\"data_offsets\":[0,").expect("data offsets");
    let mut bad = good.clone();
    bad[at + 16..at + 18].copy_from_slice(b"9,");
    let c = write(d.path(), "offsets.safetensors", &bad);
    let e = fails(&["inspect", s(&c)]);
    assert!(e.contains("offsets.safetensors"), "{e}");
}

#[test]
fn wrong_task_wrong_images_and_missing_files_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (feat, lm) = (model(BACKBONES[0]), model(LANDMARKS[0]));
    let e = fails(&[
        "eval",
        "fewshot",
        "--model",
        s(&lm),
        "--data",
        s(&objects()),
        "--way",
        "3",
        "--shot",
        "1",
        "--episodes",
        "2",
        "--query",
        "2",
    ]);
    assert!(
        e.contains("landmarks-int8.safetensors")
            && e.contains("`landmarks` model")
            && e.contains("`features`"),
        "{e}"
    );
    let e = fails(&["eval", "mafl", "--model", s(&feat), "--data", s(&faces())]);
    assert!(
        e.contains("backbone-int8.safetensors") && e.contains("`landmarks` model"),
        "{e}"
    );
    let face = fixtures().join("images/face.png");
    let e = fails(&["infer", "--model", s(&feat), "--draw", "x.png", s(&face)]);
    assert!(e.contains("backbone-int8.safetensors"), "{e}");

    // Wrong image size (the model takes 16×16 and --exact-size forbids resizing).
    let e = fails(&["infer", "--model", s(&lm), "--exact-size", s(&face)]);
    assert!(
        e.contains("face.png") && e.contains("40×49") && e.contains("16×16"),
        "{e}"
    );
    // Wrong format: text named .png, a truncated PNG, a GIF (not a supported format), missing.
    let bad = write(d.path(), "notimage.png", b"hello, I am text");
    let e = fails(&["infer", "--model", s(&feat), s(&bad)]);
    assert!(
        e.contains("notimage.png") && e.contains("cannot decode"),
        "{e}"
    );
    let png = std::fs::read(&face).unwrap();
    let cut = write(d.path(), "cut.png", &png[..png.len() / 2]);
    let e = fails(&["infer", "--model", s(&lm), s(&cut)]);
    assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");
    let gif = write(d.path(), "tiny.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let e = fails(&["infer", "--model", s(&feat), s(&gif)]);
    assert!(e.contains("tiny.gif"), "{e}");
    let e = fails(&["infer", "--model", s(&feat), s(&d.path().join("nope.png"))]);
    assert!(e.contains("nope.png"), "{e}");

    // Lists naming missing files (copies of the fixture sets).
    let objs = d.path().join("objects");
    copy_dir(&objects(), &objs);
    // Too few images per class for the protocol: names the CSV.
    let e = fails(&[
        "eval",
        "fewshot",
        "--model",
        s(&feat),
        "--data",
        s(&objs),
        "--way",
        "3",
        "--shot",
        "5",
        "--query",
        "15",
        "--episodes",
        "2",
    ]);
    assert!(e.contains("test.csv") && e.contains("need 20"), "{e}");
    let csv = std::fs::read_to_string(objs.join("test.csv")).unwrap();
    let victim = csv
        .lines()
        .nth(2)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    std::fs::remove_file(objs.join("images").join(&victim)).unwrap();
    let e = fails(&[
        "eval",
        "fewshot",
        "--model",
        s(&feat),
        "--data",
        s(&objs),
        "--way",
        "3",
        "--shot",
        "1",
        "--query",
        "2",
        "--episodes",
        "2",
    ]);
    assert!(e.contains(&victim) && e.contains("missing"), "{e}");

    let fcs = d.path().join("faces");
    copy_dir(&faces(), &fcs);
    let first = std::fs::read_to_string(fcs.join("MAFL/testing.txt"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    std::fs::remove_file(fcs.join("img_align_celeba").join(&first)).unwrap();
    let e = fails(&["eval", "mafl", "--model", s(&lm), "--data", s(&fcs)]);
    assert!(e.contains(&first) && e.contains("missing"), "{e}");
    // A list row naming an image the CelebA lists do not know: file and line.
    std::fs::write(
        fcs.join("MAFL/testing.txt"),
        format!("{first}\nno_such_face.png\n"),
    )
    .unwrap();
    let e = fails(&["eval", "mafl", "--model", s(&lm), "--data", s(&fcs)]);
    assert!(e.contains("testing.txt:2"), "{e}");
    // A data root that does not exist.
    let e = fails(&[
        "eval",
        "fewshot",
        "--model",
        s(&feat),
        "--data",
        "/nonexistent/dir",
    ]);
    assert!(e.contains("/nonexistent/dir"), "{e}");
}

/// An f32 model with a NaN weight (a diverged training exported without the exporter's checks,
/// or a damaged file) is refused, and the error names the file, the graph line and the tensor.
#[test]
fn a_non_finite_f32_weight_is_refused_naming_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("backbone-f32.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let name = "layer1.0.conv2.weight";
    let view = st.tensor(name).unwrap();
    let at = view.data().as_ptr() as usize - good.as_ptr() as usize + 4;
    for (bad_value, file) in [
        (f32::NAN, "nan.safetensors"),
        (f32::INFINITY, "inf.safetensors"),
    ] {
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&bad_value.to_le_bytes());
        let p = write(d.path(), file, &bad);
        for args in [vec!["inspect", s(&p)], vec!["bench", "--model", s(&p)]] {
            let e = fails(&args);
            assert!(
                e.contains(file) && e.contains("graph line") && e.contains(&format!("`{name}`")),
                "{e}"
            );
        }
    }
}
