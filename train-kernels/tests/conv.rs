//! `kernels::conv2d` against candle's own conv2d (forward and autograd) and against central finite
//! differences, on random shapes (odd sizes, strides 1–2, paddings 0..=k/2+1, k ∈ {1,3,5,7}).
//!
//! Tolerance: "1e-4 relative" is measured against the largest magnitude of the reference tensor
//! (`max|a−b| ≤ 1e-4 · max|b|`), not per element, because single elements of a sum of mixed-sign
//! products can legitimately cancel to ~0 where any two summation orders differ relatively a lot.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use train_kernels as kernels;

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        1usize..5,
        1usize..5,
        1usize..10,
        1usize..10,
        prop::sample::select(vec![1usize, 3, 5, 7]),
        1usize..3,
        any::<u64>(),
    )
        .prop_flat_map(|(n, c_in, c_out, h, w, k, stride, seed)| {
            // Padding range from the issue, restricted so the padded input holds one kernel window.
            let min_pad = k.saturating_sub(h.min(w)).div_ceil(2);
            (min_pad.min(k / 2 + 1)..=k / 2 + 1).prop_map(move |pad| Case {
                n,
                c_in,
                c_out,
                h,
                w,
                k,
                stride,
                pad,
                seed,
            })
        })
        .prop_filter("kernel fits the padded input", |c| {
            c.h + 2 * c.pad >= c.k && c.w + 2 * c.pad >= c.k
        })
}

fn rand_tensor(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize], dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

fn inputs(c: &Case, dt: DType) -> (Tensor, Tensor, rand_chacha::ChaCha8Rng) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
    let x = rand_tensor(&mut rng, &[c.n, c.c_in, c.h, c.w], dt);
    let w = rand_tensor(&mut rng, &[c.c_out, c.c_in, c.k, c.k], dt);
    (x, w, rng)
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `max|a−b| / max|b|` (0 when both are 0).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (flat(a), flat(b));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(1e-30)
    }
}

/// Gradients of `sum(conv(x, w) ⊙ r)` w.r.t. x and w through `conv`.
fn try_grads(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    conv: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let xv = Var::from_tensor(x)?;
    let wv = Var::from_tensor(w)?;
    let loss = (conv(xv.as_tensor(), wv.as_tensor())? * r)?.sum_all()?;
    let g: GradStore = loss.backward()?;
    Ok((
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(wv.as_tensor()).unwrap().clone(),
    ))
}

fn grads(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    conv: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor) {
    try_grads(x, w, r, |x, w| Ok(conv(x, w))).unwrap()
}

/// The definition, in f64: `dx[b,c,iy,ix] = Σ w[o,c,ky,kx]·r[b,o,oy,ox]`, `dw = Σ x·r`.
fn naive_grads(c: &Case, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor) {
    let (xv, wv, rv) = (flat(x), flat(w), flat(r));
    let (ho, wo) = (r.dim(2).unwrap(), r.dim(3).unwrap());
    let mut dx = vec![0f64; xv.len()];
    let mut dw = vec![0f64; wv.len()];
    for b in 0..c.n {
        for o in 0..c.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = rv[((b * c.c_out + o) * ho + oy) * wo + ox];
                    for ci in 0..c.c_in {
                        for ky in 0..c.k {
                            for kx in 0..c.k {
                                let (iy, ix) = (
                                    (oy * c.stride + ky) as isize - c.pad as isize,
                                    (ox * c.stride + kx) as isize - c.pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * c.c_in + ci) * c.h + iy as usize) * c.w + ix as usize;
                                let wi = ((o * c.c_in + ci) * c.k + ky) * c.k + kx;
                                dx[xi] += wv[wi] * g;
                                dw[wi] += xv[xi] * g;
                            }
                        }
                    }
                }
            }
        }
    }
    let t = |v: Vec<f64>, d: &[usize]| Tensor::from_vec(v, d, &Device::Cpu).unwrap();
    (t(dx, x.dims()), t(dw, w.dims()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_candle(c in case()) {
        let (x, w, _) = inputs(&c, DType::F32);
        let ours = kernels::conv2d(&x, &w, c.stride, c.pad).unwrap();
        let theirs = x.conv2d(&w, c.pad, c.stride, 1, 1).unwrap();
        prop_assert!(rel_err(&ours, &theirs) <= 1e-4, "{c:?}: {}", rel_err(&ours, &theirs));
    }

    #[test]
    fn gradients_match_candle_autograd(c in case()) {
        let (x, w, mut rng) = inputs(&c, DType::F32);
        let y = x.conv2d(&w, c.pad, c.stride, 1, 1).unwrap();
        let r = rand_tensor(&mut rng, y.dims(), DType::F32);
        let (dx, dw) = grads(&x, &w, &r, |x, w| kernels::conv2d(x, w, c.stride, c.pad).unwrap());
        // candle 0.11's own conv2d backward fails ("shape mismatch in add") when H and W need
        // different output paddings in its conv_transpose2d (it derives one from H only); there
        // the reference is the definition, computed in f64.
        let (dx_ref, dw_ref) = try_grads(&x, &w, &r, |x, w| x.conv2d(w, c.pad, c.stride, 1, 1))
            .unwrap_or_else(|_| naive_grads(&c, &x, &w, &r));
        let (dx_def, dw_def) = naive_grads(&c, &x, &w, &r);
        prop_assert!(rel_err(&dx, &dx_def) <= 1e-4 && rel_err(&dw, &dw_def) <= 1e-4, "{c:?}: vs definition");
        prop_assert!(rel_err(&dx, &dx_ref) <= 1e-4, "{c:?}: dx {}", rel_err(&dx, &dx_ref));
        prop_assert!(rel_err(&dw, &dw_ref) <= 1e-4, "{c:?}: dw {}", rel_err(&dw, &dw_ref));
    }

    /// Central differences of `L = sum(conv(x, w) ⊙ r)` at a few random coordinates.
    ///
    /// L is bilinear in (x, w), so the central difference has no truncation error for any step
    /// and a large step (h = 0.5) keeps f32 rounding small: the only error is the rounding of
    /// the f32 conv outputs (each a sum of ≤ K = 245 products, relative error ≲ K·2⁻²⁴ ≈ 1.5e-5
    /// of Σ|terms|), summed into L in f64. The bound below is 1e-4 · Σ|y ⊙ r| / h, 4× that.
    #[test]
    fn gradients_match_finite_differences(c in case()) {
        let (x, w, mut rng) = inputs(&c, DType::F32);
        let y = x.conv2d(&w, c.pad, c.stride, 1, 1).unwrap();
        let r = rand_tensor(&mut rng, y.dims(), DType::F32);
        let (dx, dw) = grads(&x, &w, &r, |x, w| kernels::conv2d(x, w, c.stride, c.pad).unwrap());
        let rv = flat(&r);
        let loss = |x: &Tensor, w: &Tensor| -> (f64, f64) {
            let y = flat(&kernels::conv2d(x, w, c.stride, c.pad).unwrap());
            (y.iter().zip(&rv).map(|(a, b)| a * b).sum(), y.iter().zip(&rv).map(|(a, b)| (a * b).abs()).sum())
        };
        let h = 0.5f64;
        for (which, base, grad) in [("x", &x, &dx), ("w", &w, &dw)] {
            let bv = flat(base);
            let gv = flat(grad);
            for _ in 0..4 {
                let i = rng.gen_range(0..bv.len());
                let bump = |d: f64| {
                    let mut v: Vec<f32> = bv.iter().map(|&e| e as f32).collect();
                    v[i] += d as f32;
                    Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap()
                };
                let (p, m) = (bump(h), bump(-h));
                let ((lp, sp), (lm, sm)) = if which == "x" { (loss(&p, &w), loss(&m, &w)) } else { (loss(&x, &p), loss(&x, &m)) };
                let fd = (lp - lm) / (2.0 * h);
                let tol = 1e-4 * (sp + sm) / h + 1e-6;
                prop_assert!((fd - gv[i]).abs() <= tol, "{c:?}: d{which}[{i}] fd {fd} vs {}, tol {tol}", gv[i]);
            }
        }
    }
}

#[test]
fn resnet_shapes_match_candle_including_multi_image_chunks() {
    // 4x4 maps → several images per GEMM chunk (gather/scatter paths); 1x1 stride-2 downsample.
    for &(n, ci, co, hw, k, s, p) in &[
        (40, 8, 16, 4, 3, 1, 1),
        (9, 8, 16, 8, 1, 2, 0),
        (3, 3, 8, 11, 3, 1, 1),
    ] {
        let c = Case {
            n,
            c_in: ci,
            c_out: co,
            h: hw,
            w: hw,
            k,
            stride: s,
            pad: p,
            seed: 7,
        };
        let (x, w, mut rng) = inputs(&c, DType::F32);
        let y_ref = x.conv2d(&w, p, s, 1, 1).unwrap();
        assert!(rel_err(&kernels::conv2d(&x, &w, s, p).unwrap(), &y_ref) <= 1e-4);
        let r = rand_tensor(&mut rng, y_ref.dims(), DType::F32);
        let (dx, dw) = grads(&x, &w, &r, |x, w| kernels::conv2d(x, w, s, p).unwrap());
        let (dx_ref, dw_ref) = grads(&x, &w, &r, |x, w| x.conv2d(w, p, s, 1, 1).unwrap());
        assert!(
            rel_err(&dx, &dx_ref) <= 1e-4,
            "dx {}",
            rel_err(&dx, &dx_ref)
        );
        assert!(
            rel_err(&dw, &dw_ref) <= 1e-4,
            "dw {}",
            rel_err(&dw, &dw_ref)
        );
    }
}

#[test]
fn strided_views_and_untracked_input() {
    let c = Case {
        n: 2,
        c_in: 3,
        c_out: 4,
        h: 5,
        w: 6,
        k: 3,
        stride: 2,
        pad: 1,
        seed: 3,
    };
    let (x, w, _) = inputs(&c, DType::F32);
    // A non-contiguous view of the same values (transpose twice through a copy-free path).
    let xt = x
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    assert!(!xt.is_contiguous());
    let ours = kernels::conv2d(&xt, &w, 2, 1).unwrap();
    assert!(rel_err(&ours, &x.conv2d(&w, 1, 2, 1, 1).unwrap()) <= 1e-4);
    // The images are not a variable: only the weight gets a gradient.
    let wv = Var::from_tensor(&w).unwrap();
    let g = kernels::conv2d(&x, wv.as_tensor(), 2, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(wv.as_tensor()).is_some());
}

#[test]
fn other_dtypes_fall_back_to_candle() {
    let c = Case {
        n: 2,
        c_in: 3,
        c_out: 2,
        h: 5,
        w: 5,
        k: 3,
        stride: 1,
        pad: 1,
        seed: 5,
    };
    let (x, w, _) = inputs(&c, DType::F64);
    let ours = kernels::conv2d(&x, &w, 1, 1).unwrap();
    assert_eq!(ours.dtype(), DType::F64);
    assert_eq!(flat(&ours), flat(&x.conv2d(&w, 1, 1, 1, 1).unwrap()));
}

#[test]
fn mismatched_channels_is_an_error_not_a_panic() {
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let e = kernels::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(e.contains("channels"), "{e}");
}

#[test]
fn training_gradients_bit_identical_across_thread_counts() {
    let c = Case {
        n: 33,
        c_in: 4,
        c_out: 6,
        h: 6,
        w: 6,
        k: 3,
        stride: 1,
        pad: 1,
        seed: 11,
    };
    let (x, w, mut rng) = inputs(&c, DType::F32);
    let r = rand_tensor(&mut rng, &[33, 6, 6, 6], DType::F32);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (dx, dw) = grads(&x, &w, &r, |x, w| kernels::conv2d(x, w, 1, 1).unwrap());
            (flat(&dx), flat(&dw))
        })
    };
    assert_eq!(run(1), run(3));
}

// ---------------------------------------------------------------------------------------------
// The direct kernels (`kernels::direct`): the AVX2 kernels against the portable ones bit for bit,
// the portable ones against the definition in f64 within a rigorous per-element bound.

mod direct {
    use super::*;
    use kernels::conv::Geom;
    use kernels::direct::{self as d, Isa};

    #[derive(Debug, Clone)]
    struct Shape {
        n: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
        seed: u64,
    }

    /// Random shapes: every channel count 1..=64 can be drawn, odd sizes, 1×1 and 3×3, strides 1
    /// and 2, padding 0..=k (past `k − 1` the input gradient has pixels no tap reaches), batch
    /// 1..=5. Spatial sizes stay small so the f64 reference is quick.
    fn shape() -> impl Strategy<Value = Shape> {
        (
            1usize..=5,
            1usize..=64,
            1usize..=64,
            1usize..=9,
            1usize..=9,
            prop::sample::select(vec![1usize, 3]),
            1usize..=2,
            0usize..=2,
            any::<u64>(),
        )
            .prop_map(|(n, c_in, c_out, h, w, k, stride, pad, seed)| Shape {
                n,
                c_in,
                c_out,
                h: h.max(k),
                w: w.max(k),
                k,
                stride,
                pad: pad.min(k),
                seed,
            })
    }

    fn data(s: &Shape) -> (Geom, Vec<f32>, Vec<f32>, Vec<f32>) {
        let g = Geom::new(
            (s.n, s.c_in, s.h, s.w),
            (s.c_out, s.c_in, s.k, s.k),
            s.stride,
            s.pad,
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
        let mut v =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect() };
        let x = v(s.n * s.c_in * s.h * s.w);
        let w = v(s.c_out * g.k());
        let dy = v(s.n * s.c_out * g.p());
        (g, x, w, dy)
    }

    /// Exact sums and sums of |terms| of y, dx and dw by the definition, in f64.
    #[allow(clippy::type_complexity)]
    fn reference(g: &Geom, x: &[f32], w: &[f32], dy: &[f32]) -> [(Vec<f64>, Vec<f64>); 3] {
        let mut y = (vec![0f64; dy.len()], vec![0f64; dy.len()]);
        let mut dx = (vec![0f64; x.len()], vec![0f64; x.len()]);
        let mut dw = (vec![0f64; w.len()], vec![0f64; w.len()]);
        for b in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let yi = ((b * g.c_out + o) * g.ho + oy) * g.wo + ox;
                        for c in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((b * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((o * g.c_in + c) * g.kh + ky) * g.kw + kx;
                                    let (xv, wv, gv) = (x[xi] as f64, w[wi] as f64, dy[yi] as f64);
                                    y.0[yi] += xv * wv;
                                    y.1[yi] += (xv * wv).abs();
                                    dx.0[xi] += wv * gv;
                                    dx.1[xi] += (wv * gv).abs();
                                    dw.0[wi] += xv * gv;
                                    dw.1[wi] += (xv * gv).abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// `|got − exact| ≤ γ_m · Σ|terms|` per element, `γ_m = m·u/(1 − m·u)` with `u = 2⁻²⁴`: the
    /// textbook bound for a sum of `m` rounded operations (each FMA or add rounds once; products
    /// inside an FMA are exact).
    fn within_bound(
        what: &str,
        got: &[f32],
        exact: &(Vec<f64>, Vec<f64>),
        m: usize,
    ) -> Result<(), TestCaseError> {
        let u = 2f64.powi(-24);
        let gamma = m as f64 * u / (1.0 - m as f64 * u);
        for (i, (&a, (&e, &s))) in got.iter().zip(exact.0.iter().zip(&exact.1)).enumerate() {
            let tol = gamma * s;
            prop_assert!(
                (a as f64 - e).abs() <= tol,
                "{what}[{i}]: {a} vs {e} (bound {tol})"
            );
        }
        Ok(())
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// Every direct kernel: the runtime-chosen ISA gives exactly the portable bits, and the
        /// portable result is within the rounding bound of the exact value.
        #[test]
        fn direct_kernels_bitwise_and_within_bound(s in shape()) {
            let (g, x, w, dy) = data(&s);
            let fast = Isa::detect();
            let [ry, rdx, rdw] = reference(&g, &x, &w, &dy);

            let y = d::forward(Isa::Portable, &g, &x, &w);
            prop_assert_eq!(bits(&d::forward(fast, &g, &x, &w)), bits(&y), "forward {:?}", s);
            within_bound("y", &y, &ry, g.k() + 1)?;

            let dx = d::input_grad(Isa::Portable, &g, &dy, &w).expect("square kernels are supported");
            let dx_fast = d::input_grad(fast, &g, &dy, &w).unwrap();
            prop_assert_eq!(bits(&dx_fast), bits(&dx), "input grad {:?}", s);
            // One chain over at most every (o, ky, kx) of the phase (padding zeros included).
            within_bound("dx", &dx, &rdx, g.c_out * g.kh * g.kw + 1)?;

            let dw = d::weight_grad(Isa::Portable, &g, &x, &dy);
            prop_assert_eq!(bits(&d::weight_grad(fast, &g, &x, &dy)), bits(&dw), "weight grad {:?}", s);
            within_bound("dw", &dw, &rdw, g.p() + g.n + 1)?;
        }
    }

    /// At stride 1 the input gradient is the transposed convolution: the forward kernel on the
    /// output gradient padded by `k − 1 − pad`, with the weights transposed and flipped, summed
    /// in the same `(o, ky, kx)` order, so the bits agree exactly (the phase formulation keeps
    /// the stride-1 results of the dilated one it replaced).
    #[test]
    fn stride1_input_grad_is_the_flipped_forward_bit_for_bit() {
        for &(n, c_in, c_out, h, w, k, pad) in &[
            (2, 3, 5, 7, 6, 3, 1),
            (3, 8, 8, 9, 9, 3, 0),
            (1, 17, 9, 5, 8, 3, 2),
            (2, 6, 11, 4, 5, 1, 0),
        ] {
            let s = Shape {
                n,
                c_in,
                c_out,
                h,
                w,
                k,
                stride: 1,
                pad,
                seed: 4,
            };
            let (g, _x, wt, dy) = data(&s);
            let mut flipped = vec![0f32; wt.len()];
            for o in 0..c_out {
                for c in 0..c_in {
                    for ky in 0..k {
                        for kx in 0..k {
                            flipped[((c * c_out + o) * k + ky) * k + kx] =
                                wt[((o * c_in + c) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
                        }
                    }
                }
            }
            let gt =
                Geom::new((n, c_out, g.ho, g.wo), (c_in, c_out, k, k), 1, k - 1 - pad).unwrap();
            assert_eq!((gt.ho, gt.wo), (h, w));
            for isa in [Isa::Portable, Isa::detect()] {
                assert_eq!(
                    bits(&d::input_grad(isa, &g, &dy, &wt).unwrap()),
                    bits(&d::forward(isa, &gt, &dy, &flipped)),
                    "{s:?} {isa:?}"
                );
            }
        }
    }

    /// The direct kernels against the im2col + GEMM path they replace, on the study's shapes
    /// (within 1e-4 of the largest magnitude: the two sum in different orders).
    #[test]
    fn direct_matches_gemm_path_on_resnet_shapes() {
        for &(n, c_in, c_out, hw, k, stride, pad) in &[
            (3, 3, 8, 32, 3, 1, 1),
            (2, 8, 8, 32, 3, 1, 1),
            (2, 8, 16, 32, 3, 2, 1),
            (2, 8, 16, 32, 1, 2, 0),
            (4, 64, 64, 4, 3, 1, 1),
            (5, 32, 64, 8, 1, 2, 0),
            (3, 16, 32, 16, 1, 2, 0),
            (3, 16, 32, 16, 3, 2, 1),
            (2, 32, 64, 7, 3, 2, 1),
            (2, 64, 64, 4, 3, 1, 1),
        ] {
            let s = Shape {
                n,
                c_in,
                c_out,
                h: hw,
                w: hw,
                k,
                stride,
                pad,
                seed: 1,
            };
            let (g, x, w, dy) = data(&s);
            let close = |a: &[f32], b: &[f32], what: &str| {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    diff <= 1e-4 * scale,
                    "{what} {s:?}: {diff} vs scale {scale}"
                );
            };
            let fast = Isa::detect();
            close(
                &d::forward(fast, &g, &x, &w),
                &kernels::conv::gemm_forward(&g, &x, &w),
                "y",
            );
            close(
                &d::input_grad(fast, &g, &dy, &w).unwrap(),
                &kernels::conv::gemm_input_grad(&g, &dy, &w),
                "dx",
            );
            close(
                &d::weight_grad(fast, &g, &x, &dy),
                &kernels::conv::gemm_weight_grad(&g, &x, &dy),
                "dw",
            );
        }
    }

    /// Thread count changes nothing: same bits with 1 and 3 rayon threads, with a batch large
    /// enough for several chunks and weight-gradient groups.
    #[test]
    fn direct_bitwise_independent_of_thread_count() {
        let s = Shape {
            n: 37,
            c_in: 5,
            c_out: 9,
            h: 6,
            w: 7,
            k: 3,
            stride: 1,
            pad: 1,
            seed: 9,
        };
        let (g, x, w, dy) = data(&s);
        assert!(g.weight_grad_groups() > 1);
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| {
                    let isa = Isa::detect();
                    (
                        bits(&d::forward(isa, &g, &x, &w)),
                        bits(&d::input_grad(isa, &g, &dy, &w).unwrap()),
                        bits(&d::weight_grad(isa, &g, &x, &dy)),
                    )
                })
        };
        assert_eq!(run(1), run(3));
    }
}
