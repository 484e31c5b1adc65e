//! `kernels::batch_norm_train` against the same maths written as candle tensor ops (forward,
//! autograd gradients, batch statistics) and against central finite differences.

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use train_kernels as kernels;

/// The definition with plain candle ops (independent of the fused kernel).
fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let c = x.dim(1).unwrap();
    let mean = x
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc
        .sqr()
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let xhat = xc
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap();
    xhat.broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (flat(a), flat(b));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(1e-30, f64::max)
}

fn setup(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    offset: f32,
    seed: u64,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(lo..hi)).collect()
    };
    let dev = &Device::Cpu;
    let x = Tensor::from_vec(
        t(n * c * h * w, offset - 1.0, offset + 1.0),
        (n, c, h, w),
        dev,
    )
    .unwrap();
    let g = Tensor::from_vec(t(c, 0.5, 1.5), c, dev).unwrap();
    let b = Tensor::from_vec(t(c, -0.5, 0.5), c, dev).unwrap();
    let r = Tensor::from_vec(t(n * c * h * w, -1.0, 1.0), (n, c, h, w), dev).unwrap();
    (x, g, b, r)
}

/// Gradients of `sum(bn(x) ⊙ r)` w.r.t. x, gamma, beta.
fn grads(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    r: &Tensor,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> Vec<Tensor> {
    let vs: Vec<Var> = [x, g, b]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let loss = (f(vs[0].as_tensor(), vs[1].as_tensor(), vs[2].as_tensor()) * r)
        .unwrap()
        .sum_all()
        .unwrap();
    let gs = loss.backward().unwrap();
    vs.iter()
        .map(|v| gs.get(v.as_tensor()).unwrap().clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_tensor_op_batch_norm(n in 1usize..5, c in 1usize..6, h in 1usize..7, w in 1usize..7,
                                    offset in prop::sample::select(vec![0f32, 3.0]), seed in any::<u64>()) {
        // With exactly 2 values per channel BN maps them to ±γ whatever x is, so dx is 0 in exact
        // arithmetic and both implementations return rounding noise: a relative comparison is
        // meaningless there. From 3 values on, dx is a real signal.
        prop_assume!(n * h * w > 2);
        let (x, g, b, r) = setup(n, c, h, w, offset, seed);
        let out = kernels::batch_norm_train(&x, &g, &b, 1e-5).unwrap();
        prop_assert!(rel_err(&out.y, &reference(&x, &g, &b, 1e-5)) <= 1e-4);
        let mean = x.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
        // The mean is compared against the data's scale, not its own: with offset 0 a channel's
        // mean can be ~0, and the f32 reference's rounding (≈ ε·max|x| per sum) then dwarfs it.
        let mean_err = flat(&out.mean).iter().zip(flat(&mean.flatten_all().unwrap()))
            .map(|(a, e)| (a - e).abs()).fold(0.0, f64::max);
        let scale = flat(&x).iter().map(|v| v.abs()).fold(1e-30, f64::max);
        prop_assert!(mean_err <= 1e-5 * scale, "mean: {mean_err} vs data scale {scale}");
        // Gradients against the definition evaluated in f64 (the truth, to ~1e-16). dx can be a
        // cancellation (terms of size γ·|r|/σ summing to far less), where no f32 evaluation is
        // within 1e-4 of max|dx|: the kernel must then be as close as the definition's own f32
        // evaluation (within 2×), as it is elsewhere within 1e-4.
        let ours = grads(&x, &g, &b, &r, |x, g, b| kernels::batch_norm_train(x, g, b, 1e-5).unwrap().y);
        let theirs = grads(&x, &g, &b, &r, |x, g, b| reference(x, g, b, 1e-5));
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let truth = grads(&f64s(&x), &f64s(&g), &f64s(&b), &f64s(&r), |x, g, b| reference(x, g, b, 1e-5));
        for (name, ((a, e), t)) in ["dx", "dgamma", "dbeta"].iter().zip(ours.iter().zip(&theirs).zip(&truth)) {
            let (err, f32_err) = (rel_err(a, t), rel_err(e, t));
            prop_assert!(err <= f64::max(1e-4, 2.0 * f32_err), "{name}: {err} (the f32 definition: {f32_err})");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The grouped op against the per-group loop it replaces (each group sliced, normalised by
    /// `batch_norm_train`, concatenated): the same per-group statistics, output and gradients,
    /// to the bit (the gamma/beta gradients are summed in the order autograd sums the loop's).
    #[test]
    fn grouped_matches_the_per_group_loop(groups in 1usize..5, per in 2usize..4, c in 1usize..5,
                                          h in 1usize..5, w in 1usize..5, seed in any::<u64>()) {
        let n = groups * per;
        let (x, g, b, r) = setup(n, c, h, w, 0.0, seed);
        let grouped = kernels::batch_norm_train_grouped(&x, &g, &b, groups, 1e-5).unwrap().unwrap();
        let slices: Vec<_> = (0..groups)
            .map(|i| kernels::batch_norm_train(&x.narrow(0, i * per, per).unwrap(), &g, &b, 1e-5).unwrap())
            .collect();
        let ys: Vec<Tensor> = slices.iter().map(|s| s.y.clone()).collect();
        prop_assert_eq!(flat(&grouped.y), flat(&Tensor::cat(&ys, 0).unwrap()));
        for (i, s) in slices.iter().enumerate() {
            prop_assert_eq!(flat(&grouped.mean.get(i).unwrap()), flat(&s.mean));
            prop_assert_eq!(flat(&grouped.var.get(i).unwrap()), flat(&s.var));
        }
        let ours = grads(&x, &g, &b, &r, |x, g, b| {
            kernels::batch_norm_train_grouped(x, g, b, groups, 1e-5).unwrap().unwrap().y
        });
        let looped = grads(&x, &g, &b, &r, |x, g, b| {
            let ys: Vec<Tensor> = (0..groups)
                .map(|i| kernels::batch_norm_train(&x.narrow(0, i * per, per).unwrap(), g, b, 1e-5).unwrap().y)
                .collect();
            Tensor::cat(&ys, 0).unwrap()
        });
        for (name, k) in [("dx", 0), ("dgamma", 1), ("dbeta", 2)] {
            prop_assert_eq!(flat(&ours[k]), flat(&looped[k]), "{}", name);
        }
    }
}

#[test]
fn grouped_rejects_a_batch_that_does_not_split() {
    let (x, g, b, _) = setup(5, 2, 2, 2, 0.0, 1);
    assert!(kernels::batch_norm_train_grouped(&x, &g, &b, 2, 1e-5).is_err());
}

/// Central differences in f32 on a small batch: L = Σ bn(x)·r is smooth; with h = 1e-2 the
/// truncation error is O(h²·L''') ≈ 1e-4 and the f32 rounding of L (|L| ≲ 20) over 2h is
/// ≈ 20·6e-8/2e-2 ≈ 6e-5, so 2e-3 absolute leaves a safe margin.
#[test]
fn gradients_match_finite_differences() {
    let (x, g, b, r) = setup(3, 2, 3, 2, 0.0, 42);
    let ours = grads(&x, &g, &b, &r, |x, g, b| {
        kernels::batch_norm_train(x, g, b, 1e-5).unwrap().y
    });
    let rv = flat(&r);
    let loss = |x: &Tensor, g: &Tensor, b: &Tensor| -> f64 {
        let y = flat(&kernels::batch_norm_train(x, g, b, 1e-5).unwrap().y);
        y.iter().zip(&rv).map(|(a, b)| a * b).sum()
    };
    let h = 1e-2f32;
    for (which, grad) in ours.iter().enumerate() {
        let base = [&x, &g, &b][which];
        let bv: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
        let gv = flat(grad);
        for i in 0..bv.len() {
            let bump = |d: f32| {
                let mut v = bv.clone();
                v[i] += d;
                Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap()
            };
            let mut args = [x.clone(), g.clone(), b.clone()];
            args[which] = bump(h);
            let lp = loss(&args[0], &args[1], &args[2]);
            args[which] = bump(-h);
            let lm = loss(&args[0], &args[1], &args[2]);
            let fd = (lp - lm) / (2.0 * h as f64);
            assert!(
                (fd - gv[i]).abs() <= 2e-3,
                "arg {which} [{i}]: fd {fd} vs {}",
                gv[i]
            );
        }
    }
}

#[test]
fn bit_identical_across_thread_counts() {
    let (x, g, b, r) = setup(16, 5, 6, 6, 1.0, 9);
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| {
                grads(&x, &g, &b, &r, |x, g, b| {
                    kernels::batch_norm_train(x, g, b, 1e-5).unwrap().y
                })
                .iter()
                .map(flat)
                .collect::<Vec<_>>()
            })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn wrong_gamma_shape_is_an_error() {
    let (x, _, b, _) = setup(2, 3, 2, 2, 0.0, 1);
    let g = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let e = kernels::batch_norm_train(&x, &g, &b, 1e-5)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("gamma"), "{e}");
}
