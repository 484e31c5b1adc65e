//! ResNet against an independent implementation (candle-transformers), batch-norm statistics
//! against naive formulas, and checkpoint round trips / error reporting.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use trainer::model::{ops, Arch, BnMode, LoadOptions, ModelIoError, ResNet, ResNetConfig};

fn cfg(arch: Arch, width: f32, small_stem: bool, num_classes: Option<usize>) -> ResNetConfig {
    ResNetConfig {
        arch,
        width,
        small_stem,
        num_classes,
    }
}

/// Replace every BN tensor by random values so that eval-mode BN is not the identity.
fn randomise_bn(m: &ResNet, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in m.named_params().into_iter().chain(m.named_buffers()) {
        let n = var.as_tensor().elem_count();
        let range = if name.ends_with("running_var") {
            0.5..1.5
        } else if name.ends_with("running_mean") || (name.ends_with(".bias") && name != "fc.bias") {
            -0.2..0.2
        } else if name.ends_with(".weight") && var.as_tensor().rank() == 1 {
            0.5..1.5
        } else {
            continue;
        };
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(range.clone())).collect();
        var.set(&Tensor::from_vec(v, n, &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn random_input(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|: a relative error that does not blow up on near-zero elements.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let num = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let den = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(den > 0.0);
    num / den
}

fn reference_vb(m: &ResNet) -> VarBuilder<'static> {
    let ts: HashMap<String, Tensor> = m
        .all_tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == DType::F32)
        .collect();
    VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu)
}

#[test]
fn resnet18_eval_equals_candle_transformers() {
    use candle_core::Module;
    use candle_transformers::models::resnet;
    let m = ResNet::new(&cfg(Arch::Resnet18, 1.0, false, Some(10)), 11, &Device::Cpu).unwrap();
    randomise_bn(&m, 1);
    let x = random_input((2, 3, 64, 64), 2);
    let ours = m.forward(&x, BnMode::Eval).unwrap();
    let theirs = resnet::resnet18(10, reference_vb(&m))
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&ours, &theirs);
    assert!(d <= 1e-4, "logits differ: {d}");
    let feats = m.forward_features(&x, BnMode::Eval).unwrap();
    let theirs = resnet::resnet18_no_final_layer(reference_vb(&m))
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&feats, &theirs);
    assert!(d <= 1e-4, "features differ: {d}");
}

#[test]
fn resnet34_eval_equals_candle_transformers() {
    use candle_core::Module;
    use candle_transformers::models::resnet;
    let m = ResNet::new(&cfg(Arch::Resnet34, 1.0, false, None), 13, &Device::Cpu).unwrap();
    randomise_bn(&m, 5);
    let x = random_input((1, 3, 64, 64), 6);
    let ours = m.forward(&x, BnMode::Eval).unwrap();
    let theirs = resnet::resnet34_no_final_layer(reference_vb(&m))
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&ours, &theirs);
    assert!(d <= 1e-4, "features differ: {d}");
}

#[test]
fn resnet50_eval_equals_candle_transformers() {
    use candle_core::Module;
    use candle_transformers::models::resnet;
    let m = ResNet::new(&cfg(Arch::Resnet50, 1.0, false, Some(7)), 12, &Device::Cpu).unwrap();
    randomise_bn(&m, 3);
    let x = random_input((1, 3, 64, 64), 4);
    let ours = m.forward(&x, BnMode::Eval).unwrap();
    let theirs = resnet::resnet50(7, reference_vb(&m))
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&ours, &theirs);
    assert!(d <= 1e-4, "logits differ: {d}");
}

/// Naive per-channel mean and unbiased variance of [B, C, H, W] data, over a range of samples.
fn naive_stats(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    samples: std::ops::Range<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let (_, c, h, w) = dims;
    let hw = h * w;
    let mut means = vec![0f64; c];
    let mut vars = vec![0f64; c];
    for ch in 0..c {
        let vals: Vec<f64> = samples
            .clone()
            .flat_map(|n| (0..hw).map(move |p| (n * c + ch) * hw + p))
            .map(|i| x[i] as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        means[ch] = m;
        vars[ch] = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() as f64 - 1.0);
    }
    (means, vars)
}

#[test]
fn train_mode_updates_running_stats_like_pytorch() {
    let dev = Device::Cpu;
    for groups in [1usize, 2] {
        let m = ResNet::new(&cfg(Arch::Resnet18, 0.125, true, None), 5, &dev).unwrap();
        let x = random_input((4, 3, 8, 8), 6);
        // conv1 output computed directly; its stats feed bn1.
        let w = m.var("conv1.weight").unwrap().as_tensor().clone();
        let c1 = ops::conv2d(&x, &w, 1, 1).unwrap();
        let dims = c1.dims4().unwrap();
        let c1v = c1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gsize = 4 / groups;
        let mut exp_mean = vec![0f64; dims.1];
        let mut exp_var = vec![0f64; dims.1];
        for g in 0..groups {
            let (mm, vv) = naive_stats(&c1v, dims, g * gsize..(g + 1) * gsize);
            for ch in 0..dims.1 {
                exp_mean[ch] += mm[ch] / groups as f64;
                exp_var[ch] += vv[ch] / groups as f64;
            }
        }
        let before_eval = m
            .var("bn1.running_mean")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        m.forward(&x, BnMode::Eval).unwrap();
        assert_eq!(
            m.var("bn1.running_mean")
                .unwrap()
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap(),
            before_eval
        );

        m.forward(&x, BnMode::Train { groups }).unwrap();
        let rm = m
            .var("bn1.running_mean")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        let rv = m
            .var("bn1.running_var")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        for ch in 0..dims.1 {
            let em = 0.9 * 0.0 + 0.1 * exp_mean[ch];
            let ev = 0.9 * 1.0 + 0.1 * exp_var[ch];
            assert!(
                (rm[ch] as f64 - em).abs() < 1e-5,
                "groups {groups} mean ch {ch}: {} vs {em}",
                rm[ch]
            );
            assert!(
                (rv[ch] as f64 - ev).abs() < 1e-4 * ev.abs().max(1.0),
                "groups {groups} var ch {ch}: {} vs {ev}",
                rv[ch]
            );
        }
        let nbt = m
            .var("bn1.num_batches_tracked")
            .unwrap()
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(nbt, 1);
    }
}

#[test]
fn train_groups_normalise_each_sub_batch_separately() {
    // Train-mode output of the whole net with groups=2 on [a; b] equals groups=1 on a and on b.
    let dev = Device::Cpu;
    let c = cfg(Arch::Resnet18, 0.125, true, None);
    let m = ResNet::new(&c, 9, &dev).unwrap();
    let x = random_input((4, 3, 16, 16), 10);
    let y2 = m.forward(&x, BnMode::Train { groups: 2 }).unwrap();
    let ya = m
        .forward(&x.narrow(0, 0, 2).unwrap(), BnMode::TRAIN)
        .unwrap();
    let yb = m
        .forward(&x.narrow(0, 2, 2).unwrap(), BnMode::TRAIN)
        .unwrap();
    let y1 = Tensor::cat(&[ya, yb], 0).unwrap();
    assert!(max_rel_diff(&y2, &y1) < 1e-4);
    let yall = m.forward(&x, BnMode::TRAIN).unwrap();
    assert!(
        max_rel_diff(&yall, &y1) > 1e-3,
        "one group should differ from two"
    );
}

#[test]
fn gradients_reach_every_parameter_and_no_buffer() {
    let dev = Device::Cpu;
    let m = ResNet::new(&cfg(Arch::Resnet50, 0.0625, true, Some(3)), 1, &dev).unwrap();
    let x = random_input((4, 3, 16, 16), 2);
    let logits = m.forward(&x, BnMode::Train { groups: 2 }).unwrap();
    let r = random_input((1, 1, 4, 3), 3).reshape((4, 3)).unwrap();
    let loss = (logits * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in m.named_params() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }
    for (name, v) in m.named_buffers() {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "buffer {name} is in the graph"
        );
    }
}

fn trained_tiny(seed: u64, num_classes: Option<usize>) -> ResNet {
    let m = ResNet::new(
        &cfg(Arch::Resnet18, 0.125, true, num_classes),
        seed,
        &Device::Cpu,
    )
    .unwrap();
    m.forward(&random_input((2, 3, 8, 8), seed + 100), BnMode::TRAIN)
        .unwrap();
    m
}

fn assert_same_tensors(a: &ResNet, b: &ResNet) {
    let ta = a.all_tensors();
    let tb = b.all_tensors();
    assert_eq!(ta.len(), tb.len());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(xa.dtype(), xb.dtype(), "{na}");
        let d = (xa.to_dtype(DType::F64).unwrap() - xb.to_dtype(DType::F64).unwrap()).unwrap();
        let d = d
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(d, 0.0, "{na} differs");
    }
}

#[test]
fn save_open_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let a = trained_tiny(1, Some(4));
    a.save_safetensors(&p).unwrap();
    let b = ResNet::open(&p, &Device::Cpu).unwrap();
    assert_eq!(b.config(), a.config());
    assert_same_tensors(&a, &b);
    assert_eq!(
        b.var("bn1.num_batches_tracked")
            .unwrap()
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
    let x = random_input((2, 3, 16, 16), 7);
    let d = max_rel_diff(
        &a.forward(&x, BnMode::Eval).unwrap(),
        &b.forward(&x, BnMode::Eval).unwrap(),
    );
    assert_eq!(d, 0.0);
    // load into an existing, differently initialised model too
    let c = ResNet::new(a.config(), 99, &Device::Cpu).unwrap();
    let rep = c.load_safetensors(&p, &LoadOptions::exact()).unwrap();
    assert_eq!(rep.loaded.len(), a.all_tensors().len());
    assert_same_tensors(&a, &c);
}

fn write_map(path: &std::path::Path, ts: Vec<(String, Tensor)>) {
    let map: HashMap<String, Tensor> = ts.into_iter().collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn mismatch_errors_name_every_bad_tensor_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    let src = trained_tiny(2, Some(4));
    let mut ts = src.all_tensors();
    ts.retain(|(n, _)| n != "layer2.1.conv1.weight");
    ts.push((
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    for (n, t) in ts.iter_mut() {
        if n == "fc.weight" {
            *t = Tensor::zeros((5, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    write_map(&p, ts);
    let m = trained_tiny(3, Some(4));
    let before = m
        .var("conv1.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let err = m.load_safetensors(&p, &LoadOptions::exact()).unwrap_err();
    let msg = err.to_string();
    for needle in [
        "bad.safetensors",
        "layer2.1.conv1.weight",
        "extra.weight",
        "fc.weight",
        "[4, 64]",
        "[5, 64]",
        "missing",
        "unexpected",
        "mis-shaped",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    match err {
        ModelIoError::Mismatch(m) => {
            let (missing, unexpected, misshaped) = (m.missing, m.unexpected, m.misshaped);
            assert_eq!(missing, vec!["layer2.1.conv1.weight".to_string()]);
            assert_eq!(unexpected, vec!["extra.weight".to_string()]);
            assert_eq!(misshaped.len(), 1);
            assert_eq!(misshaped[0].expected, vec![4, 64]);
        }
        e => panic!("wrong error {e}"),
    }
    let after = m
        .var("conv1.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(before, after, "a failed load must not modify the model");
}

#[test]
fn moco_checkpoint_prefix_is_stripped_and_heads_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("moco_v2.safetensors");
    let q = trained_tiny(4, None);
    let k = trained_tiny(5, None);
    let mut ts: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in q.all_tensors() {
        ts.push((format!("module.encoder_q.{n}"), t));
    }
    for (n, t) in k.all_tensors() {
        ts.push((format!("module.encoder_k.{n}"), t));
    }
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    ts.push(("module.encoder_q.fc.0.weight".into(), z(&[64, 64])));
    ts.push(("module.encoder_q.fc.0.bias".into(), z(&[64])));
    ts.push(("module.encoder_q.fc.2.weight".into(), z(&[16, 64])));
    ts.push(("module.encoder_q.fc.2.bias".into(), z(&[16])));
    ts.push(("module.queue".into(), z(&[16, 32])));
    write_map(&p, ts);

    let m = ResNet::new(q.config(), 77, &Device::Cpu).unwrap();
    let rep = m.load_safetensors(&p, &LoadOptions::moco()).unwrap();
    assert_same_tensors(&q, &m);
    assert!(rep
        .ignored
        .contains(&"module.encoder_q.fc.2.weight".to_string()));
    assert!(rep.ignored.contains(&"module.queue".to_string()));

    // Without skipping the projection head, its keys are reported as unexpected.
    let opts = LoadOptions {
        strip_prefix: Some("module.encoder_q.".into()),
        ..LoadOptions::default()
    };
    let msg = m.load_safetensors(&p, &opts).unwrap_err().to_string();
    assert!(
        msg.contains("fc.0.weight") && msg.contains("fc.2.bias"),
        "{msg}"
    );
}

#[test]
fn torchvision_checkpoint_with_1000_classes_loads_as_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tv.safetensors");
    let tv = trained_tiny(6, Some(1000));
    // torchvision files have no config metadata; write with candle's plain writer, with an
    // f32 num_batches_tracked to check the dtype is accepted.
    let ts = tv
        .all_tensors()
        .into_iter()
        .map(|(n, t)| {
            if n.ends_with("num_batches_tracked") {
                (n, t.to_dtype(DType::F32).unwrap())
            } else {
                (n, t)
            }
        })
        .collect();
    write_map(&p, ts);
    let m = ResNet::new(&cfg(Arch::Resnet18, 0.125, true, Some(10)), 8, &Device::Cpu).unwrap();
    let fc_before = m
        .var("fc.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(m.load_safetensors(&p, &LoadOptions::exact()).is_err());
    let rep = m
        .load_safetensors(&p, &LoadOptions::torchvision_backbone())
        .unwrap();
    assert_eq!(
        rep.kept,
        vec!["fc.bias".to_string(), "fc.weight".to_string()]
    );
    let fc_after = m
        .var("fc.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(fc_before, fc_after);
    let a = tv
        .var("layer4.1.bn2.running_var")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    let b = m
        .var("layer4.1.bn2.running_var")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        m.var("bn1.num_batches_tracked")
            .unwrap()
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap(),
        1
    );

    // Such a file cannot be opened alone: it has no config.
    let err = ResNet::open(&p, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelIoError::NoConfig { .. }), "{err}");
    assert!(err.to_string().contains("tv.safetensors"));
}

#[test]
fn garbage_and_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"definitely not safetensors").unwrap();
    let e = ResNet::open(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let e = ResNet::open(&dir.path().join("nope.safetensors"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn copy_from_makes_identical_encoders() {
    let a = trained_tiny(10, None);
    let b = ResNet::new(a.config(), 11, &Device::Cpu).unwrap();
    b.copy_from(&a).unwrap();
    assert_same_tensors(&a, &b);
    // independent storage: training b does not move a
    let before = a
        .var("bn1.running_mean")
        .unwrap()
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    b.forward(&random_input((2, 3, 8, 8), 1), BnMode::TRAIN)
        .unwrap();
    assert_eq!(
        a.var("bn1.running_mean")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap(),
        before
    );
}
