//! Parity item 1: every int8 kernel equals, bit for bit, a naive i64 implementation of the
//! TFLite formulas written here (independently of `ops::requant`), over random shapes, strides,
//! paddings, zero points and multipliers. f32 kernels are checked against naive f64 sums.

use proptest::prelude::*;
use runtime_core::ops::{
    add::{add_f32, add_i8, AddI8},
    conv2d::{conv2d_f32, conv2d_i8, ConvF32, ConvI8},
    depthwise::{depthwise_f32, depthwise_i8, DwConvF32, DwConvI8},
    fully_connected::{fully_connected_f32, fully_connected_i8, FcF32, FcI8},
    leaky_relu::{leaky_lut, leaky_relu_f32, leaky_relu_i8, leaky_relu_i8_lut, LeakyI8},
    maxpool::{maxpool_f32, maxpool_i8},
    mean::{mean_f32, mean_i8, MeanI8},
    F32Le, I32Le, Window,
};

// ---- naive TFLite fixed-point maths, in i128/i64, written from the gemmlowp definitions ----

/// round(a·b / 2³¹): ties away from zero for positive products, toward zero for negative ones
/// (gemmlowp's nudge is 2³⁰ resp. 1 − 2³⁰), saturating the single overflow case.
fn naive_srdhm(a: i64, b: i64) -> i64 {
    if a == i32::MIN as i64 && b == i32::MIN as i64 {
        return i32::MAX as i64;
    }
    let ab = a as i128 * b as i128;
    let m = ab.abs();
    if ab >= 0 {
        ((m + (1 << 30)) >> 31) as i64
    } else {
        -(((m + (1 << 30) - 1) >> 31) as i64)
    }
}

/// x / 2^e rounded half away from zero.
fn naive_rdbp(x: i64, e: i64) -> i64 {
    if e == 0 {
        return x;
    }
    let half = 1i64 << (e - 1);
    let q = (x.abs() + half) >> e;
    if x < 0 {
        -q
    } else {
        q
    }
}

fn naive_mbqm(x: i64, m: i64, shift: i64) -> i64 {
    let shifted = if shift > 0 {
        (x << shift).clamp(i32::MIN as i64, i32::MAX as i64)
    } else {
        x
    };
    naive_rdbp(naive_srdhm(shifted, m), if shift > 0 { 0 } else { -shift })
}

fn clamp_act(v: i64, relu: bool, zp: i64) -> i8 {
    let lo = if relu { zp.max(-128) } else { -128 };
    v.clamp(lo, 127) as i8
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- strategies ----

fn multiplier() -> impl Strategy<Value = (i32, i32)> {
    prop_oneof![
        8 => ((1i32 << 30)..=i32::MAX, -14i32..=1),
        1 => (0i32..=i32::MAX, -31i32..=30),
        1 => Just((0, 0)),
    ]
}

fn i8s(n: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(any::<i8>(), n)
}
fn weights(n: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(-127i8..=127, n)
}

#[derive(Debug, Clone)]
struct WinCase {
    win: Window,
    pad_bottom: usize,
    pad_right: usize,
}

fn window(max_hw: usize, max_c: usize, max_k: usize) -> impl Strategy<Value = WinCase> {
    (
        1..=max_hw,
        1..=max_hw,
        1..=max_c,
        1..=max_k,
        1..=max_k,
        1usize..=3,
        1usize..=3,
    )
        .prop_flat_map(|(h, w, c, kh, kw, sh, sw)| {
            (Just((h, w, c, kh, kw, sh, sw)), 0..kh, 0..kw, 0..kh, 0..kw)
        })
        .prop_filter_map(
            "window fits",
            |((h, w, c, kh, kw, sh, sw), pt, pl, pb, pr)| {
                let oh = Window::out_dim(h, kh, sh, pt, pb)?;
                let ow = Window::out_dim(w, kw, sw, pl, pr)?;
                let win = Window {
                    in_h: h,
                    in_w: w,
                    in_c: c,
                    out_h: oh,
                    out_w: ow,
                    kh,
                    kw,
                    stride_h: sh,
                    stride_w: sw,
                    pad_top: pt,
                    pad_left: pl,
                };
                Some(WinCase {
                    win,
                    pad_bottom: pb,
                    pad_right: pr,
                })
            },
        )
}

/// The input pixel (iy, ix) for output (oy, ox) and tap (ky, kx), or None in the padding.
fn tap(w: &Window, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let iy = (oy * w.stride_h + ky) as i64 - w.pad_top as i64;
    let ix = (ox * w.stride_w + kx) as i64 - w.pad_left as i64;
    (iy >= 0 && ix >= 0 && (iy as usize) < w.in_h && (ix as usize) < w.in_w)
        .then_some((iy as usize, ix as usize))
}

#[derive(Debug, Clone)]
struct ConvCase {
    wc: WinCase,
    out_c: usize,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i32>,
    mults: Vec<(i32, i32)>,
    in_zp: i32,
    out_zp: i32,
    relu: bool,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (window(9, 6, 4), 1usize..=6).prop_flat_map(|(wc, oc)| {
        let w = wc.win;
        (
            Just(wc),
            Just(oc),
            i8s(w.in_h * w.in_w * w.in_c),
            weights(oc * w.kh * w.kw * w.in_c),
            proptest::collection::vec(-(1i32 << 30)..=(1 << 30), oc),
            proptest::collection::vec(multiplier(), oc),
            -128i32..=127,
            -128i32..=127,
            any::<bool>(),
        )
            .prop_map(
                |(wc, out_c, input, weights, bias, mults, in_zp, out_zp, relu)| ConvCase {
                    wc,
                    out_c,
                    input,
                    weights,
                    bias,
                    mults,
                    in_zp,
                    out_zp,
                    relu,
                },
            )
    })
}

#[derive(Debug, Clone)]
struct DwCase {
    wc: WinCase,
    dm: usize,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i32>,
    mults: Vec<(i32, i32)>,
    in_zp: i32,
    out_zp: i32,
    relu: bool,
}

/// Depthwise cases: `wc` gives the geometry (in_c included), `dm` the depth multiplier.
fn dw_case(
    wc: impl Strategy<Value = WinCase>,
    dm: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = DwCase> {
    (wc, dm).prop_flat_map(|(wc, dm)| {
        let w = wc.win;
        let oc = w.in_c * dm;
        (
            Just(wc),
            Just(dm),
            i8s(w.in_h * w.in_w * w.in_c),
            weights(w.kh * w.kw * oc),
            proptest::collection::vec(-(1i32 << 30)..=(1 << 30), oc),
            proptest::collection::vec(multiplier(), oc),
            -128i32..=127,
            -128i32..=127,
            any::<bool>(),
        )
            .prop_map(
                |(wc, dm, input, weights, bias, mults, in_zp, out_zp, relu)| DwCase {
                    wc,
                    dm,
                    input,
                    weights,
                    bias,
                    mults,
                    in_zp,
                    out_zp,
                    relu,
                },
            )
    })
}

/// TFLite's `reference_integer_ops::DepthwiseConvPerChannel`, written out in i64: output
/// channel `oc = ic·dm + m` sums `(x[iy, ix, ic] − in_zp)·w[0, ky, kx, oc]` over in-image taps.
fn naive_depthwise(c: &DwCase) -> Vec<i8> {
    let w = c.wc.win;
    let oc_n = w.in_c * c.dm;
    let mut out = vec![0i8; w.out_h * w.out_w * oc_n];
    for oy in 0..w.out_h {
        for ox in 0..w.out_w {
            for ic in 0..w.in_c {
                for m in 0..c.dm {
                    let oc = ic * c.dm + m;
                    let mut acc: i64 = 0;
                    for ky in 0..w.kh {
                        for kx in 0..w.kw {
                            if let Some((iy, ix)) = tap(&w, oy, ox, ky, kx) {
                                let x = c.input[(iy * w.in_w + ix) * w.in_c + ic] as i64
                                    + (-c.in_zp) as i64;
                                acc += c.weights[(ky * w.kw + kx) * oc_n + oc] as i64 * x;
                            }
                        }
                    }
                    acc += c.bias[oc] as i64;
                    let (mq, sq) = c.mults[oc];
                    out[(oy * w.out_w + ox) * oc_n + oc] = clamp_act(
                        naive_mbqm(acc, mq as i64, sq as i64) + c.out_zp as i64,
                        c.relu,
                        c.out_zp as i64,
                    );
                }
            }
        }
    }
    out
}

fn run_depthwise_i8(c: &DwCase) -> Vec<i8> {
    let w = c.wc.win;
    let bias = le_i32(&c.bias);
    let mult = le_i32(&c.mults.iter().map(|m| m.0).collect::<Vec<_>>());
    let shift = le_i32(&c.mults.iter().map(|m| m.1).collect::<Vec<_>>());
    let act_min = if c.relu { c.out_zp.max(-128) } else { -128 };
    let p = DwConvI8 {
        win: w,
        depth_mult: c.dm,
        weights: &c.weights,
        bias: I32Le::new(&bias),
        mult: I32Le::new(&mult),
        shift: I32Le::new(&shift),
        in_zp: c.in_zp,
        out_zp: c.out_zp,
        act_min,
        act_max: 127,
    };
    let mut got = vec![0i8; w.out_h * w.out_w * w.in_c * c.dm];
    depthwise_i8(&p, &c.input, &mut got).unwrap();
    got
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn depthwise_i8_bit_exact(c in dw_case(window(9, 6, 4), 1..=3)) {
        prop_assert_eq!(run_depthwise_i8(&c), naive_depthwise(&c), "pads b{} r{}", c.wc.pad_bottom, c.wc.pad_right);
    }

    /// More output channels than the kernel's stack block (64): the block boundaries.
    #[test]
    fn depthwise_i8_bit_exact_wide(c in dw_case(window(3, 80, 3), 1..=2)) {
        prop_assert_eq!(run_depthwise_i8(&c), naive_depthwise(&c));
    }

    #[test]
    fn depthwise_f32_matches_f64(c in dw_case(window(7, 6, 4), 1..=3)) {
        let w = c.wc.win;
        let oc_n = w.in_c * c.dm;
        let x: Vec<f32> = c.input.iter().map(|&v| v as f32 / 64.0).collect();
        let wt: Vec<f32> = c.weights.iter().map(|&v| v as f32 / 128.0).collect();
        let b: Vec<f32> = c.bias.iter().map(|&v| (v >> 24) as f32 / 8.0).collect();
        let (wb, bb) = (le_f32(&wt), le_f32(&b));
        let p = DwConvF32 { win: w, depth_mult: c.dm, weights: F32Le::new(&wb), bias: F32Le::new(&bb), relu: c.relu };
        let mut got = vec![0f32; w.out_h * w.out_w * oc_n];
        depthwise_f32(&p, &x, &mut got).unwrap();
        for oy in 0..w.out_h { for ox in 0..w.out_w { for oc in 0..oc_n {
            let mut acc = b[oc] as f64;
            for ky in 0..w.kh { for kx in 0..w.kw {
                if let Some((iy, ix)) = tap(&w, oy, ox, ky, kx) {
                    acc += x[(iy * w.in_w + ix) * w.in_c + oc / c.dm] as f64 * wt[(ky * w.kw + kx) * oc_n + oc] as f64;
                }
            }}
            if c.relu { acc = acc.max(0.0); }
            let g = got[(oy * w.out_w + ox) * oc_n + oc] as f64;
            prop_assert!((g - acc).abs() <= 1e-4 * (1.0 + acc.abs()), "{} vs {}", g, acc);
        }}}
    }

    #[test]
    fn requant_matches_naive(x in any::<i32>(), (m, s) in multiplier()) {
        prop_assert_eq!(
            runtime_core::ops::requant::multiply_by_quantized_multiplier(x, m, s) as i64,
            naive_mbqm(x as i64, m as i64, s as i64)
        );
    }

    /// Exact ties (odd x with m = 2^30 or 3·2^29) are where gemmlowp's asymmetric nudge shows.
    #[test]
    fn requant_ties_match_naive(x in -100_000i32..100_000, m in prop_oneof![Just(1i32 << 30), Just(3i32 << 29)], s in -8i32..=2) {
        prop_assert_eq!(
            runtime_core::ops::requant::multiply_by_quantized_multiplier(x, m, s) as i64,
            naive_mbqm(x as i64, m as i64, s as i64)
        );
    }

    #[test]
    fn conv2d_i8_bit_exact(c in conv_case()) {
        let w = c.wc.win;
        let bias = le_i32(&c.bias);
        let mult = le_i32(&c.mults.iter().map(|m| m.0).collect::<Vec<_>>());
        let shift = le_i32(&c.mults.iter().map(|m| m.1).collect::<Vec<_>>());
        let act_min = if c.relu { c.out_zp.max(-128) } else { -128 };
        let p = ConvI8 { win: w, out_c: c.out_c, weights: &c.weights, bias: I32Le::new(&bias), mult: I32Le::new(&mult),
            shift: I32Le::new(&shift), in_zp: c.in_zp, out_zp: c.out_zp, act_min, act_max: 127 };
        let mut got = vec![0i8; w.out_h * w.out_w * c.out_c];
        conv2d_i8(&p, &c.input, &mut got).unwrap();
        for oy in 0..w.out_h { for ox in 0..w.out_w { for oc in 0..c.out_c {
            let mut acc: i64 = c.bias[oc] as i64;
            for ky in 0..w.kh { for kx in 0..w.kw {
                if let Some((iy, ix)) = tap(&w, oy, ox, ky, kx) {
                    for ic in 0..w.in_c {
                        let x = c.input[(iy * w.in_w + ix) * w.in_c + ic] as i64 - c.in_zp as i64;
                        let wt = c.weights[((oc * w.kh + ky) * w.kw + kx) * w.in_c + ic] as i64;
                        acc += x * wt;
                    }
                }
            }}
            let (m, s) = c.mults[oc];
            let want = clamp_act(naive_mbqm(acc, m as i64, s as i64) + c.out_zp as i64, c.relu, c.out_zp as i64);
            prop_assert_eq!(got[(oy * w.out_w + ox) * c.out_c + oc], want, "at {},{},{} pads b{} r{}", oy, ox, oc, c.wc.pad_bottom, c.wc.pad_right);
        }}}
    }

    #[test]
    fn conv2d_f32_matches_f64(c in conv_case()) {
        let w = c.wc.win;
        let x: Vec<f32> = c.input.iter().map(|&v| v as f32 / 64.0).collect();
        let wt: Vec<f32> = c.weights.iter().map(|&v| v as f32 / 128.0).collect();
        let b: Vec<f32> = c.bias.iter().map(|&v| (v >> 24) as f32 / 8.0).collect();
        let (wb, bb) = (le_f32(&wt), le_f32(&b));
        let p = ConvF32 { win: w, out_c: c.out_c, weights: F32Le::new(&wb), bias: F32Le::new(&bb), relu: c.relu };
        let mut got = vec![0f32; w.out_h * w.out_w * c.out_c];
        conv2d_f32(&p, &x, &mut got).unwrap();
        for oy in 0..w.out_h { for ox in 0..w.out_w { for oc in 0..c.out_c {
            let mut acc = b[oc] as f64;
            for ky in 0..w.kh { for kx in 0..w.kw {
                if let Some((iy, ix)) = tap(&w, oy, ox, ky, kx) {
                    for ic in 0..w.in_c {
                        acc += x[(iy * w.in_w + ix) * w.in_c + ic] as f64 * wt[((oc * w.kh + ky) * w.kw + kx) * w.in_c + ic] as f64;
                    }
                }
            }}
            if c.relu { acc = acc.max(0.0); }
            let g = got[(oy * w.out_w + ox) * c.out_c + oc] as f64;
            prop_assert!((g - acc).abs() <= 1e-4 * (1.0 + acc.abs()), "{} vs {}", g, acc);
        }}}
    }

    #[test]
    fn fully_connected_i8_bit_exact(
        (in_len, out_len) in (1usize..=64, 1usize..=8),
        seed in any::<u64>(), in_zp in -128i32..=127, out_zp in -128i32..=127, relu in any::<bool>(),
        (m, s) in multiplier(),
    ) {
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let input: Vec<i8> = (0..in_len).map(|_| rng.next_u64() as i8).collect();
        let weights: Vec<i8> = (0..in_len * out_len).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
        let bias: Vec<i32> = (0..out_len).map(|_| (rng.next_u64() as i32) >> 2).collect();
        let mults: Vec<i32> = (0..out_len).map(|o| if o == 0 { m } else { (1 << 30) + (rng.below(1 << 30) as i32) }).collect();
        let shifts: Vec<i32> = (0..out_len).map(|o| if o == 0 { s } else { -(rng.below(12) as i32) }).collect();
        let (bb, mb, sb) = (le_i32(&bias), le_i32(&mults), le_i32(&shifts));
        let p = FcI8 { in_len, out_len, weights: &weights, bias: I32Le::new(&bb), mult: I32Le::new(&mb), shift: I32Le::new(&sb),
            in_zp, out_zp, act_min: if relu { out_zp } else { -128 }, act_max: 127 };
        let mut got = vec![0i8; out_len];
        fully_connected_i8(&p, &input, &mut got).unwrap();
        for o in 0..out_len {
            let acc: i64 = bias[o] as i64 + (0..in_len).map(|i| (input[i] as i64 - in_zp as i64) * weights[o * in_len + i] as i64).sum::<i64>();
            let want = clamp_act(naive_mbqm(acc, mults[o] as i64, shifts[o] as i64) + out_zp as i64, relu, out_zp as i64);
            prop_assert_eq!(got[o], want);
        }
        // f32 twin
        let xf: Vec<f32> = input.iter().map(|&v| v as f32 / 32.0).collect();
        let wf: Vec<f32> = weights.iter().map(|&v| v as f32 / 127.0).collect();
        let bf: Vec<f32> = bias.iter().map(|&v| (v >> 26) as f32).collect();
        let (wfb, bfb) = (le_f32(&wf), le_f32(&bf));
        let pf = FcF32 { in_len, out_len, weights: F32Le::new(&wfb), bias: F32Le::new(&bfb), relu };
        let mut gotf = vec![0f32; out_len];
        fully_connected_f32(&pf, &xf, &mut gotf).unwrap();
        for o in 0..out_len {
            let mut acc = bf[o] as f64 + (0..in_len).map(|i| xf[i] as f64 * wf[o * in_len + i] as f64).sum::<f64>();
            if relu { acc = acc.max(0.0); }
            prop_assert!((gotf[o] as f64 - acc).abs() <= 1e-4 * (1.0 + acc.abs()));
        }
    }

    #[test]
    fn add_i8_bit_exact(
        n in 1usize..=64, seed in any::<u64>(),
        zps in (-128i32..=127, -128i32..=127, -128i32..=127),
        ma in ((1i32 << 30)..=i32::MAX, -31i32..=0), mb in ((1i32 << 30)..=i32::MAX, -31i32..=0),
        mo in multiplier(), relu in any::<bool>(),
    ) {
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let a: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let b: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let p = AddI8 { a_zp: zps.0, a_mult: ma.0, a_shift: ma.1, b_zp: zps.1, b_mult: mb.0, b_shift: mb.1,
            out_zp: zps.2, out_mult: mo.0, out_shift: mo.1, act_min: if relu { zps.2 } else { -128 }, act_max: 127 };
        let mut got = vec![0i8; n];
        add_i8(&p, &a, &b, &mut got).unwrap();
        for i in 0..n {
            let ra = naive_mbqm((a[i] as i64 - zps.0 as i64) * (1 << 20), ma.0 as i64, ma.1 as i64);
            let rb = naive_mbqm((b[i] as i64 - zps.1 as i64) * (1 << 20), mb.0 as i64, mb.1 as i64);
            let want = clamp_act(naive_mbqm(ra + rb, mo.0 as i64, mo.1 as i64) + zps.2 as i64, relu, zps.2 as i64);
            prop_assert_eq!(got[i], want);
        }
        let af: Vec<f32> = a.iter().map(|&v| v as f32 * 0.5).collect();
        let bf: Vec<f32> = b.iter().map(|&v| v as f32 * 0.25).collect();
        let mut gf = vec![0f32; n];
        add_f32(&af, &bf, &mut gf, relu).unwrap();
        for i in 0..n {
            let s = af[i] + bf[i];
            prop_assert_eq!(gf[i], if relu { s.max(0.0) } else { s });
        }
    }

    #[test]
    fn maxpool_bit_exact(wc in window(10, 5, 4), seed in any::<u64>()) {
        let w = wc.win;
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let x: Vec<i8> = (0..w.in_h * w.in_w * w.in_c).map(|_| rng.next_u64() as i8).collect();
        let mut got = vec![0i8; w.out_h * w.out_w * w.in_c];
        maxpool_i8(&w, -128, 127, &x, &mut got).unwrap();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32 * 0.1).collect();
        let mut gotf = vec![0f32; got.len()];
        maxpool_f32(&w, &xf, &mut gotf).unwrap();
        for oy in 0..w.out_h { for ox in 0..w.out_w { for c in 0..w.in_c {
            let mut best: Option<i64> = None;
            for ky in 0..w.kh { for kx in 0..w.kw {
                if let Some((iy, ix)) = tap(&w, oy, ox, ky, kx) {
                    let v = x[(iy * w.in_w + ix) * w.in_c + c] as i64;
                    best = Some(best.map_or(v, |b| b.max(v)));
                }
            }}
            let best = best.expect("pad < k guarantees a tap");
            let i = (oy * w.out_w + ox) * w.in_c + c;
            prop_assert_eq!(got[i] as i64, best);
            prop_assert_eq!(gotf[i], best as f32 * 0.1);
        }}}
    }

    #[test]
    fn mean_bit_exact(hw in 1usize..=64, c in 1usize..=8, seed in any::<u64>(), in_zp in -128i32..=127, out_zp in -128i32..=127, (m, s) in multiplier()) {
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let x: Vec<i8> = (0..hw * c).map(|_| rng.next_u64() as i8).collect();
        let p = MeanI8 { hw, c, in_zp, out_zp, mult: m, shift: s };
        let mut got = vec![0i8; c];
        mean_i8(&p, &x, &mut got).unwrap();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut gotf = vec![0f32; c];
        mean_f32(hw, c, &xf, &mut gotf).unwrap();
        for ch in 0..c {
            let sum: i64 = (0..hw).map(|i| x[i * c + ch] as i64 - in_zp as i64).sum();
            let want = (naive_mbqm(sum, m as i64, s as i64) + out_zp as i64).clamp(-128, 127);
            prop_assert_eq!(got[ch] as i64, want);
            let mean = (0..hw).map(|i| x[i * c + ch] as f64).sum::<f64>() / hw as f64;
            prop_assert!((gotf[ch] as f64 - mean).abs() <= 1e-4 * (1.0 + mean.abs()));
        }
    }

    #[test]
    fn leaky_relu_bit_exact(n in 1usize..=300, seed in any::<u64>(), in_zp in -128i32..=127, out_zp in -128i32..=127,
        mi in multiplier(), ma in multiplier(), alpha in 0.0f32..1.0) {
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let x: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let p = LeakyI8 { in_zp, out_zp, id_mult: mi.0, id_shift: mi.1, alpha_mult: ma.0, alpha_shift: ma.1 };
        let mut got = vec![0i8; n];
        leaky_relu_i8(&p, &x, &mut got).unwrap();
        // The model's path: the load-time table.
        let mut got_lut = vec![0i8; n];
        leaky_relu_i8_lut(&leaky_lut(&p), &x, &mut got_lut).unwrap();
        for i in 0..n {
            let d = x[i] as i64 - in_zp as i64;
            let (m, s) = if d >= 0 { mi } else { ma };
            let want = (naive_mbqm(d, m as i64, s as i64) + out_zp as i64).clamp(-128, 127);
            prop_assert_eq!(got[i] as i64, want);
            prop_assert_eq!(got_lut[i] as i64, want);
        }
        let xf: Vec<f32> = x.iter().map(|&v| v as f32 * 0.1).collect();
        let mut gf = vec![0f32; n];
        leaky_relu_f32(alpha, &xf, &mut gf).unwrap();
        for i in 0..n {
            let want = if xf[i] >= 0.0 { xf[i] as f64 } else { alpha as f64 * xf[i] as f64 };
            prop_assert!((gf[i] as f64 - want).abs() <= 1e-6);
        }
    }
}

#[test]
fn kernels_reject_wrong_lengths() {
    let w = Window {
        in_h: 2,
        in_w: 2,
        in_c: 1,
        out_h: 2,
        out_w: 2,
        kh: 1,
        kw: 1,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
    };
    let mut out = [0i8; 3];
    assert!(maxpool_i8(&w, -128, 127, &[0i8; 4], &mut out).is_err());
    let mut outf = [0f32; 2];
    assert!(mean_f32(2, 2, &[0.0; 3], &mut outf).is_err());
    let (bias, mult, shift) = ([0u8; 8], [0u8; 8], [0u8; 8]);
    let dw = |dm: usize, weights: &'static [i8]| DwConvI8 {
        win: w,
        depth_mult: dm,
        weights,
        bias: I32Le::new(&bias),
        mult: I32Le::new(&mult),
        shift: I32Le::new(&shift),
        in_zp: 0,
        out_zp: 0,
        act_min: -128,
        act_max: 127,
    };
    // dm = 2: two output channels, 8 outputs; a short output, dm = 0, short weights all fail.
    let mut out8 = [0i8; 8];
    assert!(depthwise_i8(&dw(2, &[1, 1]), &[0i8; 4], &mut out8).is_ok());
    assert!(depthwise_i8(&dw(2, &[1, 1]), &[0i8; 4], &mut out).is_err());
    assert!(depthwise_i8(&dw(0, &[]), &[0i8; 4], &mut out8[..0]).is_err());
    assert!(depthwise_i8(&dw(2, &[1]), &[0i8; 4], &mut out8).is_err());
}
