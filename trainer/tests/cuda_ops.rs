//! Exactness of the CUDA kernels (features `cuda` / `cudnn`) against the CPU path: each CUDA op
//! equals the CPU op within 1e-4 relative on random shapes — conv2d forward and both gradients,
//! grouped training-mode batch-norm forward/backward and its statistics, the fused SGD and EMA
//! updates. Every test prints `SKIP` and returns when no GPU can be opened, so the file builds
//! and passes on GPU-less machines; `scripts/gpu_check.sh` runs it on a lent GPU.
//!
//! TF32 is switched off (`kernels::cuda::set_tf32(false)`): with TF32 a conv differs from f32 by
//! ~1e-3 relative, by design.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use trainer::kernels;

/// The GPU, set up as training sets it up, or `None` (and a printed SKIP).
fn gpu(test: &str) -> Option<Device> {
    kernels::cuda::set_tf32(false);
    match kernels::cuda::new_training_device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIP {test}: no CUDA device ({e})");
            None
        }
    }
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn rand_vec(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-scale..scale)).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// max |a − b| ≤ tol · max(1, max |b|): relative to the tensor's scale (per-element relative
/// error is meaningless for values that cancel to ~0).
fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f32) {
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shapes");
    let (a, b) = (flat(gpu), flat(cpu));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (worst, at) = a
        .iter()
        .zip(&b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0f32, 0), |m, v| if v.0 > m.0 { v } else { m });
    assert!(
        a.iter().all(|v| v.is_finite()) && worst <= tol * scale,
        "{what}: max |gpu − cpu| = {worst} at {at} (gpu {}, cpu {}), scale {scale}",
        a[at],
        b[at]
    );
}

/// Forward and both gradients of `kernels::conv2d` on `dev` for `sum(conv(x, w) ⊙ r)`.
#[allow(clippy::too_many_arguments)]
fn conv_run(
    dev: &Device,
    x: &[f32],
    w: &[f32],
    r: &[f32],
    xs: (usize, usize, usize, usize),
    ws: (usize, usize, usize, usize),
    stride: usize,
    pad: usize,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(&Tensor::from_slice(x, xs, dev).unwrap()).unwrap();
    let wv = Var::from_tensor(&Tensor::from_slice(w, ws, dev).unwrap()).unwrap();
    let y = kernels::conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad).unwrap();
    let rt = Tensor::from_slice(r, y.dims(), dev).unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap().clone();
    let dw = grads.get(wv.as_tensor()).unwrap().clone();
    (y, dx, dw)
}

#[test]
fn conv2d_forward_and_gradients_match_cpu() {
    let Some(dev) = gpu("conv2d_forward_and_gradients_match_cpu") else {
        return;
    };
    let mut r = rng(1);
    // The ResNet's shapes (3x3 s1/s2, 1x1 s2 downsample, stem) plus random odd ones.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    let mut cases: Vec<Case> = vec![
        // n, c_in, h, w, c_out, k, stride, pad
        (8, 3, 32, 32, 16, 3, 1, 1),
        (8, 16, 16, 16, 32, 3, 2, 1),
        (8, 16, 16, 16, 32, 1, 2, 0),
        (4, 64, 8, 8, 64, 3, 1, 1),
        (2, 3, 20, 20, 8, 7, 2, 3),
    ];
    for _ in 0..6 {
        let k = [1, 3, 5][r.gen_range(0..3)];
        let h = r.gen_range(k..k + 12);
        cases.push((
            r.gen_range(1..6),
            r.gen_range(1..20),
            h,
            r.gen_range(k..k + 12),
            r.gen_range(1..24),
            k,
            r.gen_range(1..3),
            r.gen_range(0..k / 2 + 1),
        ));
    }
    for (n, ci, h, w, co, k, s, p) in cases {
        let (xs, ws) = ((n, ci, h, w), (co, ci, k, k));
        let x = rand_vec(&mut r, n * ci * h * w, 1.0);
        let wt = rand_vec(&mut r, co * ci * k * k, 0.5);
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let rr = rand_vec(&mut r, n * co * ho * wo, 1.0);
        let cpu = conv_run(&Device::Cpu, &x, &wt, &rr, xs, ws, s, p);
        let gpu = conv_run(&dev, &x, &wt, &rr, xs, ws, s, p);
        let tag = format!("conv n{n} c{ci}->{co} {h}x{w} k{k} s{s} p{p}");
        assert_close(&format!("{tag} forward"), &gpu.0, &cpu.0, 1e-4);
        assert_close(&format!("{tag} input grad"), &gpu.1, &cpu.1, 1e-4);
        assert_close(&format!("{tag} weight grad"), &gpu.2, &cpu.2, 1e-4);
    }
}

/// `model::ops::batch_norm_train` (the model's BN, shuffle-BN groups included) on `dev`:
/// y, batch statistics, and the gradients of `sum(y ⊙ r)` w.r.t. x, gamma, beta.
fn bn_run(
    dev: &Device,
    x: &[f32],
    shape: (usize, usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
    r: &[f32],
    groups: usize,
) -> Vec<Tensor> {
    let c = shape.1;
    let xv = Var::from_tensor(&Tensor::from_slice(x, shape, dev).unwrap()).unwrap();
    let gv = Var::from_tensor(&Tensor::from_slice(gamma, c, dev).unwrap()).unwrap();
    let bv = Var::from_tensor(&Tensor::from_slice(beta, c, dev).unwrap()).unwrap();
    let (y, st) = trainer::model::ops::batch_norm_train(
        xv.as_tensor(),
        gv.as_tensor(),
        bv.as_tensor(),
        groups,
    )
    .unwrap();
    let rt = Tensor::from_slice(r, shape, dev).unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
    vec![
        y,
        st.mean,
        st.var_unbiased,
        grads.get(xv.as_tensor()).unwrap().clone(),
        grads.get(gv.as_tensor()).unwrap().clone(),
        grads.get(bv.as_tensor()).unwrap().clone(),
    ]
}

#[test]
fn batch_norm_train_with_groups_matches_cpu() {
    let Some(dev) = gpu("batch_norm_train_with_groups_matches_cpu") else {
        return;
    };
    let mut r = rng(2);
    let mut cases = vec![
        // n, c, h, w, groups
        (16, 8, 8, 8, 1),
        (16, 8, 8, 8, 4),
        (32, 16, 4, 4, 8),
        (8, 5, 1, 1, 2),
    ];
    for _ in 0..6 {
        let g = [1, 2, 4][r.gen_range(0..3)];
        cases.push((
            g * r.gen_range(1..5),
            r.gen_range(1..20),
            r.gen_range(2..9),
            r.gen_range(2..9),
            g,
        ));
    }
    let names = ["y", "mean", "var_unbiased", "dx", "dgamma", "dbeta"];
    for (n, c, h, w, groups) in cases {
        let shape = (n, c, h, w);
        // An offset mean per channel, so centring matters.
        let x: Vec<f32> = rand_vec(&mut r, n * c * h * w, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v + ((i / (h * w)) % c) as f32)
            .collect();
        let gamma = rand_vec(&mut r, c, 1.5);
        let beta = rand_vec(&mut r, c, 1.0);
        let rr = rand_vec(&mut r, n * c * h * w, 1.0);
        let cpu = bn_run(&Device::Cpu, &x, shape, &gamma, &beta, &rr, groups);
        let gpu = bn_run(&dev, &x, shape, &gamma, &beta, &rr, groups);
        for ((name, g), c_) in names.iter().zip(&gpu).zip(&cpu) {
            assert_close(
                &format!("bn {shape:?} groups {groups}: {name}"),
                g,
                c_,
                1e-4,
            );
        }
    }
}

/// Three SGD steps on `dev` with fixed gradients (loss `sum(p ⊙ a_t)` gives gradient `a_t`),
/// returning the parameters and momentum buffers.
fn sgd_run(
    dev: &Device,
    cfg: trainer::train::optim::SgdConfig,
    p0: &[Vec<f32>],
    grads: &[Vec<Vec<f32>>],
) -> Vec<Tensor> {
    use trainer::train::optim::Sgd;
    let vars: Vec<(String, Var)> = p0
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = Tensor::from_slice(v, v.len(), dev).unwrap();
            (format!("p{i}"), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let mut opt = Sgd::new(vars.clone(), cfg).unwrap();
    for step in grads {
        let mut loss = Tensor::zeros((), DType::F32, dev).unwrap();
        for ((_, v), a) in vars.iter().zip(step) {
            let at = Tensor::from_slice(a, a.len(), dev).unwrap();
            loss = (loss + (v.as_tensor() * at).unwrap().sum_all().unwrap()).unwrap();
        }
        opt.backward_step(&loss).unwrap();
    }
    let st = opt.state_tensors();
    let mut out: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    for (n, _) in &vars {
        out.push(st[&format!("{n}.momentum_buffer")].clone());
    }
    out
}

#[test]
fn fused_sgd_matches_cpu() {
    let Some(dev) = gpu("fused_sgd_matches_cpu") else {
        return;
    };
    use trainer::train::optim::SgdConfig;
    let mut r = rng(3);
    let sizes = [1usize, 7, 300, 4099];
    let p0: Vec<Vec<f32>> = sizes.iter().map(|&n| rand_vec(&mut r, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|_| sizes.iter().map(|&n| rand_vec(&mut r, n, 2.0)).collect())
        .collect();
    let cfgs = [
        SgdConfig::pretrain(0.03, 1e-4),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.9,
            weight_decay: 0.001,
            nesterov: false,
        },
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 5e-4,
            nesterov: true,
        },
    ];
    for cfg in cfgs {
        let cpu = sgd_run(&Device::Cpu, cfg, &p0, &grads);
        let gpu = sgd_run(&dev, cfg, &p0, &grads);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_close(&format!("sgd {cfg:?} tensor {i}"), g, c, 1e-5);
        }
    }
}

#[test]
fn fused_ema_matches_cpu() {
    let Some(dev) = gpu("fused_ema_matches_cpu") else {
        return;
    };
    let mut r = rng(4);
    let sizes = [3usize, 64, 9 * 64 * 64 + 5];
    let k0: Vec<Vec<f32>> = sizes.iter().map(|&n| rand_vec(&mut r, n, 1.0)).collect();
    let q0: Vec<Vec<f32>> = sizes.iter().map(|&n| rand_vec(&mut r, n, 1.0)).collect();
    let run = |d: &Device| {
        let mk = |vs: &[Vec<f32>]| -> Vec<(String, Var)> {
            vs.iter()
                .enumerate()
                .map(|(i, v)| {
                    let t = Tensor::from_slice(v, v.len(), d).unwrap();
                    (format!("w{i}"), Var::from_tensor(&t).unwrap())
                })
                .collect()
        };
        let (k, q) = (mk(&k0), mk(&q0));
        for m in [0.999, 0.99, 0.5] {
            trainer::method::ema::ema_update(&k, &q, m).unwrap();
        }
        k.into_iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect::<Vec<_>>()
    };
    let (cpu, gpu) = (run(&Device::Cpu), run(&dev));
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert_close(&format!("ema tensor {i}"), g, c, 1e-6);
    }
}

#[test]
fn bn_running_update_matches_cpu() {
    let Some(dev) = gpu("bn_running_update_matches_cpu") else {
        return;
    };
    let mut r = rng(5);
    let (old, batch) = (rand_vec(&mut r, 64, 3.0), rand_vec(&mut r, 64, 3.0));
    let run = |d: &Device| {
        let v = Var::from_tensor(&Tensor::from_slice(&old, 64, d).unwrap()).unwrap();
        let b = Tensor::from_slice(&batch, 64, d).unwrap();
        for _ in 0..3 {
            trainer::model::ops::update_running(&v, &b).unwrap();
        }
        v.as_tensor().clone()
    };
    assert_close("running update", &run(&dev), &run(&Device::Cpu), 1e-6);
}

/// The update kernels' CUDA C compiles with NVRTC (no GPU needed, only libnvrtc).
#[test]
fn nvrtc_compiles_update_kernels() {
    let ptx = kernels::cuda::compile_update_kernels().unwrap();
    for f in ["ht_ema", "ht_sgd_buf", "ht_sgd_param"] {
        assert!(ptx.contains(f), "PTX lacks {f}");
    }
}
