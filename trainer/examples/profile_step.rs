//! Where does a ResNet-18 (small stem, 32 px) training step spend its time on the CPU?
//!
//! Builds the network from plain candle ops (conv → batch-norm in train mode → relu, residual
//! adds, global average pool), then
//! 1. times one full forward (per op kind, candle is eager so each op is timed directly) and the
//!    whole `backward()`;
//! 2. attributes the backward per op kind by timing each distinct (op, shape) in isolation —
//!    backward of `sum(op(x) ⊙ r)` minus the backward of `sum(x' ⊙ r)` — times its use count.
//!
//! `cargo run --release -p trainer --example profile_step -- [batch] [candle|fast|fastbn] [reps]`
//! (the conv implementation is candle's `Tensor::conv2d` or `kernels::conv2d`).
//! Findings are written up in `train-kernels/README.md`.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::BTreeMap;
use std::time::Instant;
use trainer::kernels;

#[derive(Clone, Copy, PartialEq)]
enum ConvImpl {
    Candle,
    Fast,
    /// Fast conv and fused batch-norm.
    FastBn,
}

struct Prof {
    conv: ConvImpl,
    fwd: BTreeMap<&'static str, f64>,
}

impl Prof {
    fn time<T>(&mut self, kind: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f()?;
        *self.fwd.entry(kind).or_default() += t.elapsed().as_secs_f64();
        Ok(r)
    }
}

fn conv(conv_impl: ConvImpl, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    match conv_impl {
        ConvImpl::Candle => x.conv2d(w, pad, stride, 1, 1),
        ConvImpl::Fast | ConvImpl::FastBn => kernels::conv2d(x, w, stride, pad),
    }
}

/// Batch-norm, training mode, written with plain tensor ops (what a model without a fused
/// kernel does).
fn bn_train(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let xhat = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    xhat.broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)
}

fn bn(conv_impl: ConvImpl, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    match conv_impl {
        ConvImpl::FastBn => Ok(kernels::batch_norm_train(x, gamma, beta, 1e-5)?.y),
        _ => bn_train(x, gamma, beta),
    }
}

struct ConvBn {
    w: Var,
    gamma: Var,
    beta: Var,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    fn new(ci: usize, co: usize, k: usize, stride: usize) -> Result<Self> {
        let std = (2.0 / (ci * k * k) as f64).sqrt();
        Ok(Self {
            w: Var::from_tensor(&Tensor::randn(
                0f32,
                std as f32,
                (co, ci, k, k),
                &Device::Cpu,
            )?)?,
            gamma: Var::from_tensor(&Tensor::ones(co, DType::F32, &Device::Cpu)?)?,
            beta: Var::from_tensor(&Tensor::zeros(co, DType::F32, &Device::Cpu)?)?,
            stride,
            pad: k / 2,
        })
    }

    fn fwd(&self, p: &mut Prof, x: &Tensor, relu: bool) -> Result<Tensor> {
        let ci = p.conv;
        let y = p.time("conv", || {
            conv(ci, x, self.w.as_tensor(), self.stride, self.pad)
        })?;
        let y = p.time("batchnorm", || {
            bn_train(&y, self.gamma.as_tensor(), self.beta.as_tensor())
        })?;
        if relu {
            p.time("relu", || y.relu())
        } else {
            Ok(y)
        }
    }
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    down: Option<ConvBn>,
}

fn resnet18() -> Result<(ConvBn, Vec<Block>)> {
    let stem = ConvBn::new(3, 64, 3, 1)?;
    let mut blocks = Vec::new();
    let mut ci = 64;
    for (co, stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
        for i in 0..2 {
            let s = if i == 0 { stride } else { 1 };
            let down = if s != 1 || ci != co {
                Some(ConvBn::new(ci, co, 1, s)?)
            } else {
                None
            };
            blocks.push(Block {
                a: ConvBn::new(ci, co, 3, s)?,
                b: ConvBn::new(co, co, 3, 1)?,
                down,
            });
            ci = co;
        }
    }
    Ok((stem, blocks))
}

fn forward(p: &mut Prof, net: &(ConvBn, Vec<Block>), x: &Tensor) -> Result<Tensor> {
    let mut h = net.0.fwd(p, x, true)?;
    for b in &net.1 {
        let y = b.a.fwd(p, &h, true)?;
        let y = b.b.fwd(p, &y, false)?;
        let short = match &b.down {
            Some(d) => d.fwd(p, &h, false)?,
            None => h.clone(),
        };
        let s = p.time("add", || y + short)?;
        h = p.time("relu", || s.relu())?;
    }
    p.time("pool", || {
        h.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)
    })
}

/// Median seconds of `reps` runs of the backward of `sum(f(x) ⊙ r)` minus that of `sum(x ⊙ r)`.
fn isolated_bwd(x: &Tensor, reps: usize, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<f64> {
    let xv = Var::from_tensor(x)?;
    let y = f(xv.as_tensor())?;
    let r = Tensor::randn(0f32, 1f32, y.dims(), &Device::Cpu)?;
    let yv = Var::from_tensor(&y)?;
    let mut op = Vec::new();
    let mut base = Vec::new();
    for _ in 0..reps {
        let loss = (f(xv.as_tensor())? * &r)?.sum_all()?;
        let t = Instant::now();
        loss.backward()?;
        op.push(t.elapsed().as_secs_f64());
        let loss = (yv.as_tensor() * &r)?.sum_all()?;
        let t = Instant::now();
        loss.backward()?;
        base.push(t.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((med(&mut op) - med(&mut base)).max(0.0))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let conv_impl = match args.get(2).map(String::as_str) {
        Some("fast") => ConvImpl::Fast,
        Some("fastbn") => ConvImpl::FastBn,
        _ => ConvImpl::Candle,
    };
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let label = match conv_impl {
        ConvImpl::Candle => "candle conv2d + tensor-op BN",
        ConvImpl::Fast => "kernels::conv2d + tensor-op BN",
        ConvImpl::FastBn => "kernels::conv2d + kernels::batch_norm_train",
    };
    println!(
        "ResNet-18 small stem, 32 px, batch {n}, ops = {label}, rayon threads = {}",
        rayon::current_num_threads()
    );

    let net = resnet18()?;
    let x = Tensor::randn(0f32, 1f32, (n, 3, 32, 32), &Device::Cpu)?;
    let mut best: Option<(BTreeMap<&'static str, f64>, f64, f64)> = None;
    for _ in 0..reps {
        let mut p = Prof {
            conv: conv_impl,
            fwd: BTreeMap::new(),
        };
        let t = Instant::now();
        let out = forward(&mut p, &net, &x)?;
        let loss = out.sqr()?.sum_all()?;
        let t_fwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        loss.backward()?;
        let t_bwd = t.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|b| t_fwd + t_bwd < b.1 + b.2) {
            best = Some((p.fwd, t_fwd, t_bwd));
        }
    }
    let (fwd, t_fwd, t_bwd) = best.expect("reps >= 1");
    println!(
        "full step: forward {:.3} s, backward {:.3} s, total {:.3} s → {:.1} img/s (query encoder only)",
        t_fwd,
        t_bwd,
        t_fwd + t_bwd,
        n as f64 / (t_fwd + t_bwd)
    );
    println!("forward by op kind:");
    for (k, v) in &fwd {
        println!("  {k:<10} {v:7.3} s  ({:4.1} %)", 100.0 * v / t_fwd);
    }

    // Backward attribution, per distinct shape × uses in the network.
    let mut bwd: BTreeMap<&str, f64> = BTreeMap::new();
    let conv_shapes: &[(usize, usize, usize, usize, usize, usize)] = &[
        // (c_in, c_out, size, k, stride, uses)
        (3, 64, 32, 3, 1, 1),
        (64, 64, 32, 3, 1, 4),
        (64, 128, 32, 3, 2, 1),
        (64, 128, 32, 1, 2, 1),
        (128, 128, 16, 3, 1, 3),
        (128, 256, 16, 3, 2, 1),
        (128, 256, 16, 1, 2, 1),
        (256, 256, 8, 3, 1, 3),
        (256, 512, 8, 3, 2, 1),
        (256, 512, 8, 1, 2, 1),
        (512, 512, 4, 3, 1, 3),
    ];
    for &(ci, co, hw, k, s, uses) in conv_shapes {
        let x = Tensor::randn(0f32, 1f32, (n, ci, hw, hw), &Device::Cpu)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05f32, (co, ci, k, k), &Device::Cpu)?)?;
        let t = isolated_bwd(&x, reps, &|x| conv(conv_impl, x, w.as_tensor(), s, k / 2))?;
        println!("  conv bwd {ci:>3}->{co:<3} {hw:>2}px k{k} s{s}: {t:.3} s × {uses}");
        *bwd.entry("conv").or_default() += t * uses as f64;
    }
    // (channels, size, bn uses, relu uses, add uses)
    for &(c, hw, bn_uses, relu_uses, add_uses) in &[
        (64, 32, 5, 5, 2),
        (128, 16, 5, 4, 2),
        (256, 8, 5, 4, 2),
        (512, 4, 5, 4, 2),
    ] {
        let x = Tensor::randn(0f32, 1f32, (n, c, hw, hw), &Device::Cpu)?;
        let g = Var::from_tensor(&Tensor::ones(c, DType::F32, &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::zeros(c, DType::F32, &Device::Cpu)?)?;
        let other = Tensor::randn(0f32, 1f32, (n, c, hw, hw), &Device::Cpu)?;
        let t_bn = isolated_bwd(&x, reps, &|x| {
            bn(conv_impl, x, g.as_tensor(), b.as_tensor())
        })?;
        let t = Instant::now();
        for _ in 0..reps {
            bn(conv_impl, &x, g.as_tensor(), b.as_tensor())?;
        }
        println!(
            "  bn fwd {c:>3}ch {hw:>2}px: {:.4} s",
            t.elapsed().as_secs_f64() / reps as f64
        );
        let t_relu = isolated_bwd(&x, reps, &|x| x.relu())?;
        let t_add = isolated_bwd(&x, reps, &|x| x + &other)?;
        println!("  bn/relu/add bwd {c:>3}ch {hw:>2}px: {t_bn:.3} / {t_relu:.3} / {t_add:.3} s");
        *bwd.entry("batchnorm").or_default() += t_bn * bn_uses as f64;
        *bwd.entry("relu").or_default() += t_relu * relu_uses as f64;
        *bwd.entry("add").or_default() += t_add * add_uses as f64;
    }
    let sum: f64 = bwd.values().sum();
    println!("backward by op kind (isolated, sum {sum:.3} s vs measured {t_bwd:.3} s):");
    for (k, v) in &bwd {
        println!("  {k:<10} {v:7.3} s  ({:4.1} %)", 100.0 * v / sum);
    }
    Ok(())
}
