//! Runs the `runtime-cli` binary on tiny models built with runtime-core's `ModelBuilder` and tiny
//! datasets written here (solid-colour mini-ImageNet CSVs, host-trainer's synthetic faces), whose
//! outputs are known in closed form: every command's numbers are checked against independent
//! formulas. The same commands on the real exported fixtures, and every bad-input case, are in
//! `fixtures.rs`.
mod common;

use std::path::{Path, PathBuf};

use common::{cli, cli_env, fails, json, mafl_ground_truth, naive_iod, s, LANDMARK_NAMES};

use data::synth::faces::{generate_faces, FacesConfig};
use runtime_core::model::zoo;
use runtime_core::{Dtype, LayerParams, ModelBuilder, Quant, Task};
use serde_json::Value;

/// Features = mean colour of the input, normalised with mean 0 and `std` (so values are
/// `p̄/255/std`): a 1-op model whose output a test can predict by hand.
fn mean_colour_model(dtype: Dtype, h: usize, w: usize, std: f32) -> Vec<u8> {
    let q = Quant {
        scale: 1.0 / std / 255.0,
        zp: -128,
    };
    let mut b = ModelBuilder::new(dtype, Task::Features);
    let x = b.input([h, w, 3], &[0.0; 3], &[std; 3], q).unwrap();
    let y = b.mean(x, q).unwrap();
    b.output(y).unwrap();
    b.to_bytes().unwrap()
}

const TEMPLATE: [f32; 10] = [0.35, 0.45, 0.65, 0.45, 0.5, 0.6, 0.38, 0.75, 0.62, 0.75];

/// The landmark model's fc weights, `[out][rgb]`.
fn landmark_weights() -> Vec<f32> {
    (0..30).map(|i| 0.04 * ((i * 7 % 5) as f32 - 2.0)).collect()
}

/// Landmarks = a fixed face template plus a small linear function of the mean colour:
/// input → mean → fc(3 → 10). Outputs stay inside [0, 1] (normalised coordinates).
fn landmark_builder(dtype: Dtype, size: usize) -> ModelBuilder {
    let q_in = Quant {
        scale: 1.0 / 255.0,
        zp: -128,
    };
    let q_out = Quant {
        scale: 1.0 / 255.0,
        zp: -128,
    };
    let mut b = ModelBuilder::new(dtype, Task::Landmarks);
    let x = b
        .input([size, size, 3], &[0.0; 3], &[1.0; 3], q_in)
        .unwrap();
    let m = b.mean(x, q_in).unwrap();
    let (template, wf) = (TEMPLATE, landmark_weights());
    let y = match dtype {
        Dtype::F32 => b
            .fc(
                "head",
                m,
                10,
                false,
                LayerParams::F32 {
                    weights: &wf,
                    bias: &template,
                },
                q_out,
            )
            .unwrap(),
        Dtype::Int8 => {
            let mut wq = Vec::new();
            let mut ws = Vec::new();
            let mut bq = Vec::new();
            for (o, row) in wf.chunks(3).enumerate() {
                let sc = row.iter().fold(1e-6f32, |a, v| a.max(v.abs())) / 127.0;
                wq.extend(row.iter().map(|v| (v / sc).round() as i8));
                ws.push(sc);
                bq.push((template[o] / (q_in.scale * sc)).round() as i32);
            }
            b.fc(
                "head",
                m,
                10,
                false,
                LayerParams::I8 {
                    weights: &wq,
                    w_scale: &ws,
                    bias: &bq,
                },
                q_out,
            )
            .unwrap()
        }
    };
    b.output(y).unwrap();
    b
}

/// The zoo's int8 ResNet-8 (one output) written to `dir/r8.safetensors`.
fn int8_resnet8(dir: &Path) -> PathBuf {
    write(
        dir,
        "r8.safetensors",
        &zoo::resnet8(Dtype::Int8, 1).unwrap().to_bytes().unwrap(),
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const COLOURS: [[u8; 3]; 6] = [
    [200, 20, 20],
    [20, 200, 20],
    [20, 20, 200],
    [200, 200, 20],
    [20, 200, 200],
    [200, 20, 200],
];

/// A mini-ImageNet-format `test.csv` with 6 classes of solid colours (12×10 px, ±3 noise).
fn colour_dataset(root: &Path, per_class: usize) {
    let img_dir = root.join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let mut csv = String::from("filename,label\n");
    for (c, col) in COLOURS.iter().enumerate() {
        for i in 0..per_class {
            let name = format!("c{c}_{i}.png");
            let img = image::RgbImage::from_fn(12, 10, |x, y| {
                let n = ((x * 7 + y * 13 + i as u32 * 5) % 7) as i32 - 3;
                image::Rgb(col.map(|v| (v as i32 + n) as u8))
            });
            img.save(img_dir.join(&name)).unwrap();
            csv += &format!("{name},class{c}\n");
        }
    }
    std::fs::write(root.join("test.csv"), csv).unwrap();
}

fn faces(root: &Path) {
    let cfg = FacesConfig {
        identities: 10,
        per_identity: 10,
        size: 24,
        seed: 3,
    };
    generate_faces(&cfg, root).unwrap();
}

#[test]
fn fewshot_centroid_on_mean_colour_is_perfect_and_linear_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    colour_dataset(d.path(), 8);
    for dtype in [Dtype::Int8, Dtype::F32] {
        let m = write(
            d.path(),
            "mc.safetensors",
            &mean_colour_model(dtype, 8, 8, 0.1),
        );
        let args = |cls: &'static str, seed: &'static str| {
            vec![
                "eval",
                "fewshot",
                "--model",
                s(&m),
                "--data",
                s(d.path()),
                "--way",
                "5",
                "--shot",
                "1,2",
                "--episodes",
                "20",
                "--query",
                "3",
                "--classifier",
                cls,
                "--seed",
                seed,
                "--json",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        };
        let run = |a: Vec<String>| json(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let v = run(args("centroid", "4"));
        assert_eq!(v["command"], "eval fewshot");
        assert_eq!(v["way"], 5);
        assert_eq!(v["query"], 3);
        assert_eq!(v["classifier"], "centroid");
        let res = v["results"].as_array().unwrap();
        assert_eq!(res.len(), 2);
        for (r, shot) in res.iter().zip([1, 2]) {
            assert_eq!(r["shot"], shot);
            assert_eq!(r["episodes"], 20);
            assert_eq!(r["accuracy"].as_f64().unwrap(), 100.0, "{v}");
            assert_eq!(r["ci95"].as_f64().unwrap(), 0.0, "{v}");
        }
        // Linear head: the same result for the same seed, whatever the thread count.
        let a: Vec<String> = args("linear", "4");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let one = cli_env(&a, "RAYON_NUM_THREADS", "1");
        let two = cli_env(&a, "RAYON_NUM_THREADS", "2");
        assert!(
            one.status.success(),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        assert_eq!(one.stdout, two.stdout);
        let v: Value = serde_json::from_slice(&one.stdout).unwrap();
        for r in v["results"].as_array().unwrap() {
            // Solid colours are linearly separable: the fitted head should get (almost) all.
            assert!(r["accuracy"].as_f64().unwrap() >= 90.0, "{v}");
        }
    }
}

#[test]
fn fewshot_on_resnet8_gives_an_interval_and_text_output() {
    let d = tempfile::tempdir().unwrap();
    colour_dataset(d.path(), 6);
    let m = int8_resnet8(d.path());
    let o = cli(&[
        "eval",
        "fewshot",
        "--model",
        s(&m),
        "--data",
        s(d.path()),
        "--way",
        "3",
        "--shot",
        "1",
        "--episodes",
        "30",
        "--query",
        "2",
        "--classifier",
        "linear",
        "--seed",
        "1",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("3-way") && out.contains("1-shot:") && out.contains('±'),
        "{out}"
    );
}

#[test]
fn mafl_error_equals_a_naive_iod_formula_on_infer_predictions() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("faces");
    faces(&data);
    let gt = mafl_ground_truth(&data);
    assert!(gt.len() >= 3);
    let names = LANDMARK_NAMES;
    for dtype in [Dtype::Int8, Dtype::F32] {
        let m = write(
            d.path(),
            "lm.safetensors",
            &landmark_builder(dtype, 16).to_bytes().unwrap(),
        );
        let ev = json(&[
            "eval",
            "mafl",
            "--model",
            s(&m),
            "--data",
            s(&data),
            "--json",
        ]);
        assert_eq!(ev["images"], gt.len());
        let imgs: Vec<String> = gt
            .iter()
            .map(|(n, _)| data.join("img_align_celeba").join(n).display().to_string())
            .collect();
        let mut args = vec!["infer", "--model", s(&m), "--json"];
        args.extend(imgs.iter().map(String::as_str));
        let inf = json(&args);
        assert_eq!(inf["task"], "landmarks");
        let (naive, per) = naive_iod(&gt, &inf);
        let got = ev["iod_error"].as_f64().unwrap();
        assert!(naive > 1.0, "template model should not be perfect: {naive}");
        assert!(
            (got - naive).abs() < 1e-3 * naive,
            "eval mafl {got} vs naive {naive}"
        );
        for (k, nm) in names.iter().enumerate() {
            let g = ev["per_landmark"][nm].as_f64().unwrap();
            assert!((g - per[k]).abs() < 1e-3 * naive, "{nm}: {g} vs {}", per[k]);
        }
        // Text output names the metric and every landmark.
        let o = cli(&["eval", "mafl", "--model", s(&m), "--data", s(&data)]);
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(
            t.contains("IOD error") && names.iter().all(|n| t.contains(n)),
            "{t}"
        );
    }
}

#[test]
fn infer_features_are_the_mean_colour_and_draw_writes_a_png() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("red.png");
    image::RgbImage::from_pixel(9, 7, image::Rgb([200, 20, 100]))
        .save(&img)
        .unwrap();
    let want = [200.0, 20.0, 100.0].map(|v: f64| v / 255.0 / 0.1);
    for (dtype, tol) in [(Dtype::F32, 1e-4), (Dtype::Int8, 0.5 / 0.1 / 255.0 + 1e-4)] {
        let m = write(
            d.path(),
            "mc.safetensors",
            &mean_colour_model(dtype, 4, 4, 0.1),
        );
        let v = json(&["infer", "--model", s(&m), "--json", s(&img)]);
        let f = v["results"][0]["features"].as_array().unwrap();
        for (a, b) in f.iter().zip(want) {
            assert!((a.as_f64().unwrap() - b).abs() <= tol, "{f:?} vs {want:?}");
        }
        assert_eq!(v["results"][0]["argmax"], 0);
        assert_eq!(v["task"], "features");
    }
    let m = write(
        d.path(),
        "lm.safetensors",
        &landmark_builder(Dtype::Int8, 16).to_bytes().unwrap(),
    );
    let out = d.path().join("drawn.png");
    let face = d.path().join("face.png");
    image::RgbImage::from_pixel(24, 29, image::Rgb([120, 90, 80]))
        .save(&face)
        .unwrap();
    let v = json(&[
        "infer",
        "--model",
        s(&m),
        "--draw",
        s(&out),
        "--json",
        s(&face),
    ]);
    let le = &v["results"][0]["landmarks"]["lefteye"];
    // The crop of a 24×29 image is rows 4..28 (y0 = round(5·3/4) = 4); the template's left eye
    // sits near (0.35·24, 0.45·24 + 4) ≈ (8.4, 14.8).
    assert!(
        (le[0].as_f64().unwrap() - 8.4).abs() < 2.0 && (le[1].as_f64().unwrap() - 14.8).abs() < 2.0,
        "{le}"
    );
    let drawn = image::open(&out).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), (24 * 8, 29 * 8));
    assert!(
        drawn.pixels().any(|p| p.0 == [255, 0, 0]),
        "no red left-eye dot"
    );
    // f32 model on a solid image: output = template + W·colour exactly, so each point is
    // `out·24` in the 24×24 crop, plus the crop's 4-row offset.
    let m32 = write(
        d.path(),
        "lm32.safetensors",
        &landmark_builder(Dtype::F32, 16).to_bytes().unwrap(),
    );
    let v = json(&["infer", "--model", s(&m32), "--json", s(&face)]);
    let rgb = [120.0f64 / 255.0, 90.0 / 255.0, 80.0 / 255.0];
    let w = landmark_weights();
    for (k, name) in ["lefteye", "righteye", "nose", "leftmouth", "rightmouth"]
        .iter()
        .enumerate()
    {
        let o = |j: usize| {
            TEMPLATE[j] as f64 + (0..3).map(|c| w[j * 3 + c] as f64 * rgb[c]).sum::<f64>()
        };
        let want = [o(2 * k) * 24.0, o(2 * k + 1) * 24.0 + 4.0];
        let p = &v["results"][0]["landmarks"][name];
        let got = [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()];
        assert!(
            (got[0] - want[0]).abs() < 1e-3 && (got[1] - want[1]).abs() < 1e-3,
            "{name}: {got:?} vs {want:?}"
        );
    }
    // --exact-size on the right size works and on the wrong size is a clear error.
    let sq = d.path().join("sq.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]))
        .save(&sq)
        .unwrap();
    json(&["infer", "--model", s(&m), "--exact-size", "--json", s(&sq)]);
    let e = fails(&["infer", "--model", s(&m), "--exact-size", s(&face)]);
    assert!(
        e.contains("face.png") && e.contains("24×29") && e.contains("16×16"),
        "{e}"
    );
}

#[test]
fn inspect_reports_hand_computed_macs_and_bytes() {
    let d = tempfile::tempdir().unwrap();
    // conv 3×3 pad 1, 8×8×3 → 8×8×4, then the landmark-style mean → fc 4 → 10.
    let q = Quant { scale: 0.05, zp: 0 };
    let mut b = ModelBuilder::new(Dtype::Int8, Task::Features);
    let x = b.input([8, 8, 3], &[0.5; 3], &[0.25; 3], q).unwrap();
    let w = vec![1i8; 4 * 27];
    let c = b
        .conv(
            "c",
            x,
            4,
            [3, 3],
            [1, 1],
            [1; 4],
            true,
            LayerParams::I8 {
                weights: &w,
                w_scale: &[0.01; 4],
                bias: &[0; 4],
            },
            q,
        )
        .unwrap();
    let m = b.mean(c, q).unwrap();
    let fw = vec![2i8; 40];
    let y = b
        .fc(
            "f",
            m,
            10,
            false,
            LayerParams::I8 {
                weights: &fw,
                w_scale: &[0.01; 10],
                bias: &[1; 10],
            },
            q,
        )
        .unwrap();
    b.output(y).unwrap();
    let bytes = b.to_bytes().unwrap();
    let p = write(d.path(), "tiny.safetensors", &bytes);
    let v = json(&["inspect", s(&p), "--json"]);
    assert_eq!(v["macs"], 8 * 8 * 4 * 27 + 40);
    // conv: 108 i8 weights + 3×4 i32 (bias, mult, shift); fc: 40 + 3×10×4.
    assert_eq!(v["weight_bytes"], 108 + 48 + 40 + 120);
    assert_eq!(v["file_bytes"], bytes.len());
    assert_eq!(v["dtype"], "i8");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(
        layers
            .iter()
            .map(|l| l["op"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["conv", "mean", "fc"]
    );
    assert_eq!(layers[0]["shape"], serde_json::json!([8, 8, 4]));
    assert_eq!(layers[0]["macs"], 8 * 8 * 4 * 27);
    // The conv's input (192 B) and output (256 B) are alive together: the arena holds both.
    assert!(v["arena_bytes"].as_u64().unwrap() >= 192 + 256, "{v}");
    assert_eq!(v["params"].as_array().unwrap().len(), 8);
    assert!(v["quantisation"]["shift"].is_array());
    let o = cli(&["inspect", s(&p)]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("MACs 6952") && t.contains("arena bytes") && t.contains("conv"),
        "{t}"
    );
    // An f32 model: no quantisation section.
    let f = write(
        d.path(),
        "r8f.safetensors",
        &zoo::resnet8(Dtype::F32, 2).unwrap().to_bytes().unwrap(),
    );
    let v = json(&["inspect", s(&f), "--json"]);
    assert_eq!(v["dtype"], "f32");
    assert!(v["quantisation"].is_null());
}

#[test]
fn bench_reports_ordered_percentiles() {
    let d = tempfile::tempdir().unwrap();
    let m = int8_resnet8(d.path());
    let v = json(&[
        "bench",
        "--model",
        s(&m),
        "--runs",
        "20",
        "--warmup",
        "2",
        "--json",
    ]);
    let (p50, p90, p99) = (
        v["p50_ms"].as_f64().unwrap(),
        v["p90_ms"].as_f64().unwrap(),
        v["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{v}");
    let ips = v["images_per_s"].as_f64().unwrap();
    let mean = v["mean_ms"].as_f64().unwrap();
    assert!((ips - 1000.0 / mean).abs() < 1e-6 * ips, "{v}");
    assert_eq!(v["runs"], 20);
    let o = cli(&["bench", "--model", s(&m), "--runs", "3"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("p99"));
    fails(&["bench", "--model", s(&m), "--runs", "0"]);
}

/// `bench --per-op` times every node: one entry per layer that `inspect` lists, in order, with
/// its op and MACs, each time positive; an f32 model is refused with a one-line error.
#[test]
fn bench_per_op_lists_every_layer() {
    let d = tempfile::tempdir().unwrap();
    let m = int8_resnet8(d.path());
    let v = json(&[
        "bench",
        "--model",
        s(&m),
        "--runs",
        "5",
        "--per-op",
        "--json",
    ]);
    let info = json(&["inspect", s(&m), "--json"]);
    let ops = v["per_op"].as_array().unwrap();
    let layers = info["layers"].as_array().unwrap();
    assert_eq!(ops.len(), layers.len(), "{v}");
    for (o, l) in ops.iter().zip(layers) {
        assert_eq!((&o["op"], &o["macs"]), (&l["op"], &l["macs"]), "{o} vs {l}");
        assert!(o["p50_us"].as_f64().unwrap() > 0.0, "{o}");
    }
    let text = cli(&["bench", "--model", s(&m), "--runs", "2", "--per-op"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("per op"));
    let f = write(
        d.path(),
        "f.safetensors",
        &zoo::resnet8(Dtype::F32, 1).unwrap().to_bytes().unwrap(),
    );
    let err = fails(&["bench", "--model", s(&f), "--runs", "2", "--per-op"]);
    assert!(
        err.contains("f.safetensors") && err.contains("int8"),
        "{err}"
    );
}

/// `bench --input-raw` times a `.tflite` on a given int8 input tensor (what
/// scripts/bench_vs_litert.py gives both engines); a file of the wrong size is a one-line error
/// naming it.
#[test]
fn bench_times_a_tflite_on_a_raw_input() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tflite/landmark.tflite");
    let info = json(&["inspect", s(&m), "--json"]);
    let sh = &info["input"]["shape"];
    let len: usize = (0..3).map(|i| sh[i].as_u64().unwrap() as usize).product();
    let d = tempfile::tempdir().unwrap();
    let x: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
    let raw = write(d.path(), "x.bin", &x);
    let v = json(&[
        "bench",
        "--model",
        s(&m),
        "--input-raw",
        s(&raw),
        "--runs",
        "5",
        "--json",
    ]);
    assert!(v["p50_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["runs"], 5);
    let short = write(d.path(), "short.bin", &x[1..]);
    let err = fails(&["bench", "--model", s(&m), "--input-raw", s(&short)]);
    assert!(err.contains("short.bin") && err.contains("bytes"), "{err}");
}

/// `infer --raw` prints the int8 tensor that `infer` dequantises: `scale·(raw − zp)` is the
/// feature vector, value for value, on a ResNet-8 whose outputs are not all equal.
#[test]
fn infer_raw_is_the_tensor_the_features_dequantise() {
    let d = tempfile::tempdir().unwrap();
    let bytes = zoo::resnet8(Dtype::Int8, 3).unwrap().to_bytes().unwrap();
    let m = write(d.path(), "r8.safetensors", &bytes);
    let img = d.path().join("img.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, ((x * y) % 256) as u8])
    })
    .save(&img)
    .unwrap();
    let raw = json(&["infer", "--model", s(&m), "--raw", "--json", s(&img)]);
    let raw: Vec<i64> = raw["results"][0]["raw_int8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let feats = json(&["infer", "--model", s(&m), "--json", s(&img)]);
    let feats = feats["results"][0]["features"].as_array().unwrap();
    let od = runtime_core::Model::parse(&bytes).unwrap().output_desc();
    assert_eq!(raw.len(), 10);
    assert!(raw.iter().any(|&v| v != raw[0]), "{raw:?}");
    for (r, f) in raw.iter().zip(feats) {
        assert!((-128..=127).contains(r));
        let want = od.scale * (*r as i32 - od.zp) as f32;
        assert_eq!(f.as_f64().unwrap() as f32, want, "{raw:?} vs {feats:?}");
    }
    // Text form lists every value; an f32 model has no int8 tensor to print.
    let o = cli(&["infer", "--model", s(&m), "--raw", s(&img)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("raw_int8[10]"));
    let f = write(
        d.path(),
        "f.safetensors",
        &zoo::resnet8(Dtype::F32, 3).unwrap().to_bytes().unwrap(),
    );
    fails(&["infer", "--model", s(&f), "--raw", s(&img)]);
}

/// `bench --json` names the kernels it ran and the loader's extra bytes; with
/// `--reference-kernels` every int8 conv/fc runs the reference kernel.
#[test]
fn bench_reports_its_kernels() {
    let d = tempfile::tempdir().unwrap();
    let m = int8_resnet8(d.path());
    let fast = json(&["bench", "--model", s(&m), "--runs", "2", "--json"]);
    let k = fast["kernels"].as_str().unwrap();
    assert!(!k.is_empty() && !k.contains("reference"), "{fast}");
    assert!(fast["prepared_bytes"].as_u64().unwrap() > 0, "{fast}");
    let reference = json(&[
        "bench",
        "--model",
        s(&m),
        "--runs",
        "2",
        "--reference-kernels",
        "--json",
    ]);
    // Every int8 conv and the fc of ResNet-8 on one kernel: the reference.
    let r = reference["kernels"].as_str().unwrap();
    assert!(
        r.starts_with("reference×") && !r.contains(' '),
        "{reference}"
    );
}
