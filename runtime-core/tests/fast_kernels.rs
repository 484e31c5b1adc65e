//! The fast int8 path (`ops::prepared`: folded bias, im2col blocks, SIMD kernels where the CPU
//! has them) against the reference kernels, bit for bit, on random shapes and values. The
//! reference kernels are themselves checked against naive i64 formulas in `kernels.rs`.
//!
//! On an x86-64 CPU with AVX-512 VNNI (and the `std` feature) `PreparedI8::new` packs for the
//! VNNI kernel, so `conv_fast_matches_reference` checks that kernel; `new_portable` checks the
//! portable loop on every machine. On aarch64 `PreparedI8::new` packs for the NEON `sdot`
//! kernel where the CPU has FEAT_DotProd (with `std`), else for the `smull`/`sadalp` one, and
//! `new_neon` forces the latter: `scripts/aarch64.sh` runs these tests under qemu-aarch64,
//! whose CPU has DotProd, so both are checked. The Cortex-M4 kernel is checked bit for bit by
//! `tests/tests/mcu_parity.rs` (whole models under QEMU against this host).

use proptest::prelude::*;
use runtime_core::ops::{
    add::{add_i8, add_i8_avx2, add_i8_lut, add_i8_scalar, AddI8, ADD_TABLE_MIN_LEN},
    add_lut::AddLut,
    conv2d::{conv2d_i8, ConvI8},
    fully_connected::{fully_connected_i8, FcI8},
    prepared::{
        add_i8_split, conv2d_i8_prepared, conv2d_i8_prepared_split, fully_connected_i8_prepared,
        PreparedI8, MIN_ADD_PER_TASK,
    },
    requant::{multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_split},
    I32Le, Window,
};

fn le(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Multipliers as the exporter makes them (mostly `[2³⁰, 2³¹)` with small negative shifts),
/// plus the whole loader range.
fn multiplier() -> impl Strategy<Value = (i32, i32)> {
    prop_oneof![
        8 => ((1i32 << 30)..=i32::MAX, -14i32..=1),
        1 => (0i32..=i32::MAX, -31i32..=30),
        1 => Just((0, 0)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    win: Window,
    out_c: usize,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i32>,
    mults: Vec<(i32, i32)>,
    in_zp: i32,
    out_zp: i32,
    relu: bool,
    /// `act_max`: 127 in most cases, a lower cap (as ReLU6 gives) in some.
    act_max: i32,
}

/// Geometry: 1×1 to 3×3 kernels (1×1 with strides, the in-place path), strides 1–3, any
/// padding below the kernel size, channel counts across the SIMD blocks (16 or 4 output lanes,
/// 4-byte groups) with remainders. Values: uniform in a quarter of the cases (see [`case_mix`]).
fn case() -> impl Strategy<Value = Case> {
    case_mix(prop_oneof![3 => Just(false), 1 => Just(true)])
}

/// [`case`] with `extreme` deciding whether inputs and weights are mostly the extremes
/// (inputs −128/127, weights −128/−127/127: −128 is outside the exporter's weight range but every
/// kernel must be exact for any `i8`), with the input zero point at an extreme too, so that
/// `x − zp` reaches ±255 and `i16` sums of two products would overflow.
fn case_mix(extreme: impl Strategy<Value = bool>) -> impl Strategy<Value = Case> {
    (
        1usize..=7,
        1usize..=7,
        1usize..=40,
        1usize..=3,
        1usize..=3,
        1usize..=3,
        1usize..=40,
        any::<u64>(),
        extreme,
    )
        .prop_flat_map(|(h, w, ic, kh, kw, s, oc, seed, extreme)| {
            (
                Just((h, w, ic, kh, kw, s, oc, seed, extreme)),
                0..kh,
                0..kh,
                0..kw,
                0..kw,
                proptest::collection::vec(multiplier(), oc),
                -128i32..=127,
                -128i32..=127,
                any::<bool>(),
            )
        })
        .prop_filter_map(
            "window must fit",
            |(
                (h, w, ic, kh, kw, s, oc, seed, extreme),
                pt,
                pb,
                pl,
                pr,
                mults,
                in_zp,
                out_zp,
                relu,
            )| {
                let out_h = Window::out_dim(h, kh, s, pt, pb)?;
                let out_w = Window::out_dim(w, kw, s, pl, pr)?;
                let win = Window {
                    in_h: h,
                    in_w: w,
                    in_c: ic,
                    out_h,
                    out_w,
                    kh,
                    kw,
                    stride_h: s,
                    stride_w: s,
                    pad_top: pt,
                    pad_left: pl,
                };
                let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
                // In extreme cases 7 values in 8 are an extreme, the rest uniform.
                let mut pick = |ends: &[i8], lo: i32| {
                    if extreme && rng.below(8) != 0 {
                        ends[rng.below(ends.len() as u32) as usize]
                    } else {
                        (rng.below((128 - lo) as u32) as i32 + lo) as i8
                    }
                };
                let input = (0..h * w * ic).map(|_| pick(&[-128, 127], -128)).collect();
                let weights = (0..oc * kh * kw * ic)
                    .map(|_| pick(&[-128, -127, 127], -127))
                    .collect();
                let in_zp = if extreme && seed % 2 == 0 {
                    [-128, 127][(seed >> 1) as usize % 2]
                } else {
                    in_zp
                };
                // Half the cases are scaled as an exporter scales a layer (a small bias, the
                // shift bringing sums of `k` products back to about ±128), so that most outputs
                // land inside the int8 range and a value computed right but written to another
                // pixel or channel shows; the other half keep the whole loader range, where
                // most outputs saturate.
                let realistic = rng.below(2) == 0;
                // One case in four caps the activation below 127 (a ReLU6-like range).
                let act_min = if relu { out_zp } else { -128 };
                let act_max = if rng.below(4) == 0 {
                    act_min + rng.below((127 - act_min) as u32 + 1) as i32
                } else {
                    127
                };
                let (bias, mults) = if realistic {
                    let k = kh * kw * ic;
                    let shift = -(k.next_power_of_two().trailing_zeros() as i32 + 6);
                    let bias = (0..oc).map(|_| rng.below(8193) as i32 - 4096).collect();
                    let mults = mults
                        .iter()
                        .map(|&(m, _)| (m.max(1 << 30), shift))
                        .collect();
                    (bias, mults)
                } else {
                    let bias = (0..oc)
                        .map(|_| (rng.below(1 << 31) as i32) - (1 << 30))
                        .collect();
                    (bias, mults)
                };
                Some(Case {
                    win,
                    out_c: oc,
                    input,
                    weights,
                    bias,
                    mults,
                    in_zp,
                    out_zp,
                    relu,
                    act_max,
                })
            },
        )
}

/// `c` as a 3×3 conv with padding 1 and stride `s` on an `h × w × ic` image of random bytes,
/// with random weights and `c`'s first `oc` channels' constants: the wide and tall images that
/// the random [`case`]s never reach.
fn padded_3x3(c: Case, h: usize, w: usize, ic: usize, s: usize, oc: usize, seed: u64) -> Case {
    let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
    let out_h = Window::out_dim(h, 3, s, 1, 1).unwrap();
    let out_w = Window::out_dim(w, 3, s, 1, 1).unwrap();
    let win = Window {
        in_h: h,
        in_w: w,
        in_c: ic,
        out_h,
        out_w,
        kh: 3,
        kw: 3,
        stride_h: s,
        stride_w: s,
        pad_top: 1,
        pad_left: 1,
    };
    let input = (0..h * w * ic).map(|_| rng.next_u64() as i8).collect();
    let weights = (0..oc * 9 * ic).map(|_| rng.next_u64() as i8).collect();
    Case {
        win,
        input,
        weights,
        out_c: oc,
        bias: c.bias[..oc].to_vec(),
        mults: c.mults[..oc].to_vec(),
        ..c
    }
}

/// Which preparation [`run_conv`] uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Prep {
    /// `PreparedI8::new`: the best kernel for this machine.
    Best,
    /// `PreparedI8::new_portable`.
    Portable,
    /// `PreparedI8::new_neon` (aarch64 only; `None` elsewhere).
    Neon,
    /// `PreparedI8::new`, run by `conv2d_i8_prepared_split` in this many tiles.
    Split(usize),
    /// `PreparedI8::new_portable`, run by `conv2d_i8_prepared_split` in this many tiles.
    PortableSplit(usize),
}

/// Reference and fast-path outputs and the fast path's backend; `None` where `prep` is
/// [`Prep::Neon`] and this build has no NEON kernel.
fn try_conv(c: &Case, prep: Prep) -> Option<(Vec<i8>, Vec<i8>, &'static str)> {
    let bias = le(&c.bias);
    let mult = le(&c.mults.iter().map(|m| m.0).collect::<Vec<_>>());
    let shift = le(&c.mults.iter().map(|m| m.1).collect::<Vec<_>>());
    let p = ConvI8 {
        win: c.win,
        out_c: c.out_c,
        weights: &c.weights,
        bias: I32Le::new(&bias),
        mult: I32Le::new(&mult),
        shift: I32Le::new(&shift),
        in_zp: c.in_zp,
        out_zp: c.out_zp,
        act_min: if c.relu { c.out_zp } else { -128 },
        act_max: c.act_max,
    };
    let n = c.win.out_h * c.win.out_w * c.out_c;
    let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
    conv2d_i8(&p, &c.input, &mut want).unwrap();
    let (prepared, tasks) = match prep {
        Prep::Best => (PreparedI8::new(&p), 1),
        Prep::Portable => (PreparedI8::new_portable(&p), 1),
        Prep::Neon => (PreparedI8::new_neon(&p)?, 1),
        Prep::Split(tasks) => (PreparedI8::new(&p), tasks),
        Prep::PortableSplit(tasks) => (PreparedI8::new_portable(&p), tasks),
    };
    if tasks > 1 {
        conv2d_i8_prepared_split(&p, &prepared, &c.input, &mut got, tasks).unwrap();
    } else {
        conv2d_i8_prepared(&p, &prepared, &c.input, &mut got).unwrap();
    }
    Some((want, got, prepared.backend(&p)))
}

fn run_conv(c: &Case, portable: bool) -> (Vec<i8>, Vec<i8>, &'static str) {
    try_conv(c, if portable { Prep::Portable } else { Prep::Best }).unwrap()
}

/// The kernel `PreparedI8::new` should pick on this machine for an op that fits every kernel,
/// from the CPU's own feature detection (`None`: not decided here, the host x86 test below
/// checks VNNI).
fn expected_best() -> Option<&'static str> {
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod =
            cfg!(target_feature = "dotprod") || std::arch::is_aarch64_feature_detected!("dotprod");
        Some(
            if runtime_core::ops::prepared::AARCH64_SDOT_BUILD && dotprod {
                "neon-sdot"
            } else {
                "neon-smull"
            },
        )
    }
    #[cfg(not(target_arch = "aarch64"))]
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn requant_split_matches(x in any::<i32>(), m in 0i32..=i32::MAX, s in -31i32..=30) {
        let (l, r) = (s.max(0) as u32, (-s).max(0) as u32);
        prop_assert_eq!(
            multiply_by_quantized_multiplier_split(x, m, l, r),
            multiply_by_quantized_multiplier(x, m, s)
        );
    }

    #[test]
    fn conv_fast_matches_reference(c in case()) {
        let (want, got, backend) = run_conv(&c, false);
        prop_assert_eq!(want, got, "backend {}", backend);
    }

    /// The threaded driver's split (`threads` feature, x86-64 SIMD kernels; elsewhere it runs
    /// on one thread): any number of contiguous pixel runs gives the reference's bytes.
    #[test]
    fn conv_split_matches_reference(c in case(), tasks in 2usize..=7) {
        let (want, got, backend) = try_conv(&c, Prep::Split(tasks)).unwrap();
        prop_assert_eq!(want, got, "backend {}, {} tasks", backend, tasks);
    }

    /// The portable loop split over the team (`threads` feature) in pixel runs.
    #[test]
    fn conv_portable_split_matches_reference(c in case(), tasks in 2usize..=7) {
        let (want, got, backend) = try_conv(&c, Prep::PortableSplit(tasks)).unwrap();
        prop_assert!(backend == "portable" || backend == "reference", "backend {}", backend);
        prop_assert_eq!(want, got, "backend {}, {} tasks", backend, tasks);
    }

    #[test]
    fn conv_portable_matches_reference(c in case()) {
        let (want, got, backend) = run_conv(&c, true);
        prop_assert!(backend == "portable" || backend == "reference", "backend {}", backend);
        prop_assert_eq!(want, got, "backend {}", backend);
    }

    /// The aarch64 kernels, explicitly: `new` (on an aarch64 CPU with DotProd and a `std`
    /// build, the `sdot` kernel) and `new_neon` (the `smull`/`sadalp` kernel), on shapes with
    /// odd channel counts and, in half the cases, mostly extreme values. Elsewhere `new_neon`
    /// must decline.
    #[test]
    fn conv_aarch64_kernels_match_reference(c in case_mix(any::<bool>())) {
        let neon = try_conv(&c, Prep::Neon);
        if cfg!(target_arch = "aarch64") {
            let (want, got, backend) = neon.expect("aarch64 build: the NEON kernel packs");
            prop_assert_eq!(backend, "neon-smull");
            prop_assert_eq!(want, got, "backend {}", backend);
            let (want, got, backend) = run_conv(&c, false);
            prop_assert_eq!(Some(backend), expected_best());
            prop_assert_eq!(want, got, "backend {}", backend);
        } else {
            prop_assert!(neon.is_none());
        }
    }

    #[test]
    fn fc_fast_matches_reference(
        (in_len, out_len) in (1usize..=300, 1usize..=40), seed in any::<u64>(),
        in_zp in -128i32..=127, out_zp in -128i32..=127, relu in any::<bool>(), (m, s) in multiplier(),
    ) {
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let input: Vec<i8> = (0..in_len).map(|_| rng.next_u64() as i8).collect();
        let weights: Vec<i8> = (0..in_len * out_len).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
        let bias = le(&(0..out_len).map(|_| (rng.next_u64() as i32) >> 2).collect::<Vec<_>>());
        let mult = le(&(0..out_len).map(|o| if o == 0 { m } else { (1 << 30) + rng.below(1 << 30) as i32 }).collect::<Vec<_>>());
        let shift = le(&(0..out_len).map(|o| if o == 0 { s } else { -(rng.below(12) as i32) }).collect::<Vec<_>>());
        let p = FcI8 { in_len, out_len, weights: &weights, bias: I32Le::new(&bias), mult: I32Le::new(&mult),
            shift: I32Le::new(&shift), in_zp, out_zp, act_min: if relu { out_zp } else { -128 }, act_max: 127 };
        let (mut want, mut got) = (vec![0i8; out_len], vec![0i8; out_len]);
        fully_connected_i8(&p, &input, &mut want).unwrap();
        fully_connected_i8_prepared(&p, &PreparedI8::new_fc(&p), &input, &mut got).unwrap();
        prop_assert_eq!(want, got);
    }

    /// Long tensors take the tabulated add; short ones the direct formula (checked against the
    /// naive one in kernels.rs): the same tensor added whole and in short pieces agrees.
    #[test]
    fn add_table_matches_direct(
        seed in any::<u64>(), a_zp in -128i32..=127, b_zp in -128i32..=127, out_zp in -128i32..=127,
        (a_mult, a_shift) in ((1i32 << 30)..=i32::MAX, -8i32..=0),
        (b_mult, b_shift) in ((1i32 << 30)..=i32::MAX, -8i32..=0),
        (out_mult, out_shift) in multiplier(), relu in any::<bool>(),
    ) {
        let n = 2 * ADD_TABLE_MIN_LEN + 37;
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let a: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let b: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let p = AddI8 { a_zp, a_mult, a_shift, b_zp, b_mult, b_shift, out_zp, out_mult, out_shift,
            act_min: if relu { out_zp } else { -128 }, act_max: 127 };
        let mut whole = vec![0i8; n];
        add_i8(&p, &a, &b, &mut whole).unwrap();
        let mut pieces = vec![0i8; n];
        let piece = ADD_TABLE_MIN_LEN / 4;
        for ((y, x1), x2) in pieces.chunks_mut(piece).zip(a.chunks(piece)).zip(b.chunks(piece)) {
            add_i8(&p, x1, x2, y).unwrap();
        }
        prop_assert_eq!(whole, pieces);
    }
}

/// Hand case: a 3×3 conv whose every output sits on the border (2×2 image, pad 1), input zero
/// point −128 so padded taps differ from zero inputs: fast path == reference.
#[test]
fn border_taps_hold_the_zero_point() {
    let win = Window {
        in_h: 2,
        in_w: 2,
        in_c: 5,
        out_h: 2,
        out_w: 2,
        kh: 3,
        kw: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
    };
    let c = Case {
        win,
        out_c: 17,
        input: (0..20).map(|i| (i * 13 % 256) as u8 as i8).collect(),
        weights: (0..17 * 45)
            .map(|i: i32| i * 7 % 255 - 127)
            .map(|v| v as i8)
            .collect(),
        bias: (0..17).map(|i| i * 1000 - 8000).collect(),
        mults: vec![(1 << 30, -3); 17],
        in_zp: -128,
        out_zp: 3,
        relu: false,
        act_max: 127,
    };
    for prep in [Prep::Best, Prep::Portable, Prep::Neon] {
        let Some((want, got, backend)) = try_conv(&c, prep) else {
            continue;
        };
        assert_eq!(want, got, "backend {backend}");
        // Non-trivial: the outputs are not all one value.
        assert!(want.iter().any(|&v| v != want[0]));
    }
}

/// Hand case at the magnitude limits: every input −128 with input zero point 127 (`x − zp =
/// −255`), weights −128 and 127 in runs, a 3×3 window over 37 channels (a reduction of 333, not
/// a multiple of 4) with padding, 13 output channels (blocks of 4 and 16 with remainders),
/// every kernel this build has against the reference.
#[test]
fn extreme_values_every_kernel() {
    let (ic, oc) = (37, 13);
    let win = Window {
        in_h: 3,
        in_w: 4,
        in_c: ic,
        out_h: 3,
        out_w: 4,
        kh: 3,
        kw: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
    };
    let input: Vec<i8> = (0..3 * 4 * ic)
        .map(|i| if i % 11 == 0 { 127 } else { -128 })
        .collect();
    let weights: Vec<i8> = (0..oc * 9 * ic)
        .map(|i| if (i / 7) % 3 == 0 { 127 } else { -128 })
        .collect();
    let c = Case {
        win,
        out_c: oc,
        input,
        weights,
        bias: (0..oc as i32).map(|i| (i - 6) * 150_000).collect(),
        mults: (0..oc as i32)
            .map(|i| (1 << 30 | i << 20, -12 - i % 3))
            .collect(),
        in_zp: 127,
        out_zp: -5,
        relu: false,
        act_max: 127,
    };
    let mut ran = Vec::new();
    for prep in [Prep::Best, Prep::Portable, Prep::Neon] {
        let Some((want, got, backend)) = try_conv(&c, prep) else {
            continue;
        };
        assert_eq!(want, got, "backend {backend}");
        assert!(want.iter().any(|&v| v != want[0]), "{want:?}");
        ran.push(backend);
    }
    if let Some(best) = expected_best() {
        assert!(
            ran.contains(&best) && ran.contains(&"neon-smull"),
            "{ran:?}"
        );
    }
}

/// Narrow convs (1–9 output channels: the AVX2 kernels' one-register and two-pixel epilogue
/// paths) with outputs that vary from pixel to pixel: the random cases above mostly saturate
/// (their biases reach ±2³⁰), where two pixels' outputs written to each other's place would go
/// unnoticed. Both requantisation forms (every channel shifting right, and one channel with
/// shift 0), in the row band (3×3 on 5×6) and in the im2col kernel (a 1×520 row of 32 channels
/// is too wide for the band), whole and split over threads.
#[test]
fn narrow_convs_keep_each_pixel_in_its_place() {
    let mut rng = runtime_core::heads::rng::SplitMix64::new(7);
    let geometries = [
        Window {
            in_h: 5,
            in_w: 6,
            in_c: 7,
            out_h: 5,
            out_w: 6,
            kh: 3,
            kw: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: 1,
            pad_left: 1,
        },
        Window {
            in_h: 1,
            in_w: 520,
            in_c: 32,
            out_h: 1,
            out_w: 520,
            kh: 1,
            kw: 1,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
        },
    ];
    for win in geometries {
        for oc in 1..=9 {
            for right_only in [true, false] {
                let k = win.kh * win.kw * win.in_c;
                let c = Case {
                    win,
                    out_c: oc,
                    input: (0..win.in_h * win.in_w * win.in_c)
                        .map(|_| rng.next_u64() as i8)
                        .collect(),
                    weights: (0..oc * k)
                        .map(|_| (rng.below(41) as i32 - 20) as i8)
                        .collect(),
                    bias: (0..oc).map(|_| rng.below(4001) as i32 - 2000).collect(),
                    // Scale about 2⁻¹⁰: sums of a few thousand land inside the int8 range.
                    mults: (0..oc)
                        .map(|c| {
                            let shift = if !right_only && c == 0 { 0 } else { -9 };
                            let m = (1 << 30) + rng.below(1 << 29) as i32;
                            (if shift == 0 { m >> 9 } else { m }, shift)
                        })
                        .collect(),
                    in_zp: 3,
                    out_zp: -7,
                    relu: false,
                    act_max: 127,
                };
                for prep in [Prep::Best, Prep::Split(3)] {
                    let (want, got, backend) = try_conv(&c, prep).unwrap();
                    assert_eq!(
                        want, got,
                        "{oc} channels, right_only {right_only}, {prep:?}, backend {backend}"
                    );
                    // Unsaturated and varying between pixels, so a misplaced pixel shows.
                    let pixels: Vec<&[i8]> = want.chunks(oc).collect();
                    let differ = pixels.windows(2).filter(|p| p[0] != p[1]).count();
                    assert!(
                        differ * 3 > (pixels.len() - 1) * 2,
                        "{oc} channels: {differ} of {} neighbours differ",
                        pixels.len() - 1
                    );
                    let clipped = want.iter().filter(|&&v| v == -128 || v == 127).count();
                    assert!(
                        clipped * 10 < want.len(),
                        "{clipped} of {} clipped",
                        want.len()
                    );
                }
            }
        }
    }
}

/// Where the CPU has AVX-512 VNNI (and the build has `std`), `PreparedI8::new` does pick that
/// kernel; on aarch64 it picks `sdot` where the CPU has it (with `std`), else the NEON `smull`
/// kernel (so the property tests above check them, not only the portable loop).
#[test]
fn the_simd_kernel_is_the_one_tested() {
    let c = Case {
        win: Window {
            in_h: 3,
            in_w: 3,
            in_c: 8,
            out_h: 3,
            out_w: 3,
            kh: 1,
            kw: 1,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
        },
        out_c: 4,
        input: vec![1; 72],
        weights: vec![2; 32],
        bias: vec![0; 4],
        mults: vec![(1 << 30, 0); 4],
        in_zp: 0,
        out_zp: 0,
        relu: false,
        act_max: 127,
    };
    let (want, got, backend) = run_conv(&c, false);
    assert_eq!(want, got);
    // 8 taps · 1 · 2 = 16, times 0.5.
    assert!(want.iter().all(|&v| v == 8), "{want:?}");
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = runtime_core::ops::prepared::X86_SIMD_BUILD
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        assert_eq!(backend == "avx512vnni", vnni, "backend {backend}");
    }
    if let Some(best) = expected_best() {
        assert_eq!(backend, best);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The AVX2 kernel (what CPUs without AVX-512 VNNI run), forced on machines that have VNNI.
    #[test]
    fn conv_avx2_matches_reference(c in case()) {
        let bias = le(&c.bias);
        let mult = le(&c.mults.iter().map(|m| m.0).collect::<Vec<_>>());
        let shift = le(&c.mults.iter().map(|m| m.1).collect::<Vec<_>>());
        let p = ConvI8 { win: c.win, out_c: c.out_c, weights: &c.weights, bias: I32Le::new(&bias),
            mult: I32Le::new(&mult), shift: I32Le::new(&shift), in_zp: c.in_zp, out_zp: c.out_zp,
            act_min: if c.relu { c.out_zp } else { -128 }, act_max: c.act_max };
        let n = c.win.out_h * c.win.out_w * c.out_c;
        let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
        conv2d_i8(&p, &c.input, &mut want).unwrap();
        #[cfg(target_arch = "x86_64")]
        let expect = runtime_core::ops::prepared::X86_SIMD_BUILD && std::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let expect = false;
        match PreparedI8::new_avx2(&p) {
            Some(prep) => {
                prop_assert_eq!(prep.backend(&p), "avx2");
                conv2d_i8_prepared(&p, &prep, &c.input, &mut got).unwrap();
                prop_assert_eq!(want, got);
            }
            None => prop_assert!(!expect, "AVX2 available but not packed"),
        }
    }
}

/// Multipliers whose shift is a right shift (`−31..=−1`, what nearly every exported conv has):
/// where every channel of a conv has one, the AVX2 kernel requantises with one multiply-add.
fn right_multiplier() -> impl Strategy<Value = (i32, i32)> {
    prop_oneof![
        8 => ((1i32 << 30)..=i32::MAX, -31i32..=-1),
        1 => (0i32..=i32::MAX, -31i32..=-1),
        1 => (Just(0), -31i32..=-1),
    ]
}

/// Add parameters over the loader's whole ranges (input multipliers shift right or not at all,
/// the output's any way), mostly as the exporter makes them.
fn add_params() -> impl Strategy<Value = AddI8> {
    // Mostly TFLite's input scalings (a multiplier below one: shift ≤ 0), some above one,
    // where the two terms' sum can saturate.
    let input = prop_oneof![
        6 => ((1i32 << 30)..=i32::MAX, -31i32..=0),
        1 => (0i32..=i32::MAX, -31i32..=0),
        1 => (0i32..=i32::MAX, 1i32..=12),
    ];
    (
        input.clone(),
        input,
        multiplier(),
        (-128i32..=127, -128i32..=127, -128i32..=127),
        any::<bool>(),
    )
        .prop_map(
            |(
                (a_mult, a_shift),
                (b_mult, b_shift),
                (out_mult, out_shift),
                (a_zp, b_zp, out_zp),
                relu,
            )| AddI8 {
                a_zp,
                a_mult,
                a_shift,
                b_zp,
                b_mult,
                b_shift,
                out_zp,
                out_mult,
                out_shift,
                act_min: if relu { out_zp } else { -128 },
                act_max: 127,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The AVX2 conv where every channel shifts right (its one-multiply-add requantisation),
    /// including zero multipliers and every shift count.
    #[test]
    fn conv_right_shift_requant_matches_reference(
        c in case_mix(any::<bool>()), mults in proptest::collection::vec(right_multiplier(), 40),
    ) {
        let c = Case { mults: mults[..c.out_c].to_vec(), ..c };
        let (want, got, backend) = run_conv(&c, false);
        prop_assert_eq!(want, got, "backend {}", backend);
    }

    /// Wide images (a row band of `3·(w + 2)·c` values over the AVX2 kernel's 16 Ki) take the
    /// AVX2 im2col kernel instead of the row band: it stays exact too.
    #[test]
    fn conv_wide_rows_match_reference(
        c in case_mix(any::<bool>()), w in 150usize..=170, ic in 38usize..=40, seed in any::<u64>(),
    ) {
        let h = c.win.in_h.min(3);
        let oc = c.out_c;
        let c = padded_3x3(c, h, w, ic, 1, oc, seed);
        let (want, got, backend) = run_conv(&c, false);
        prop_assert_eq!(want, got, "backend {}", backend);
    }

    /// The scalar add's tabulated path (what a Cortex-M4 runs on a residual add; its usual
    /// output scaling takes the one-multiply form) equals its direct formula on short pieces,
    /// for any parameters (positive output shifts and zero multipliers included), with values
    /// mostly at the extremes in half the cases.
    #[test]
    fn add_scalar_table_matches_direct(p in add_params(), extra in 0usize..=40, seed in any::<u64>(), extreme in any::<bool>()) {
        let n = ADD_TABLE_MIN_LEN + extra;
        let (a, b) = add_inputs(n, seed, extreme);
        let (mut whole, mut pieces) = (vec![0i8; n], vec![0i8; n]);
        add_i8_scalar(&p, &a, &b, &mut whole).unwrap();
        let piece = ADD_TABLE_MIN_LEN / 8;
        for ((y, x1), x2) in pieces.chunks_mut(piece).zip(a.chunks(piece)).zip(b.chunks(piece)) {
            add_i8_scalar(&p, x1, x2, y).unwrap();
        }
        prop_assert_eq!(whole, pieces);
    }

    /// `add_i8` (AVX2 on x86-64 with `std`, 16 elements a step; AVX-512, and from 4 096
    /// elements 64 a step with VBMI) equals the scalar loop on any length (tails included) and
    /// parameters; values mostly at the extremes in half the cases.
    #[test]
    fn add_simd_matches_scalar(
        p in add_params(), n in prop_oneof![3 => 1usize..=300, 1 => 4096usize..=4300],
        seed in any::<u64>(), extreme in any::<bool>(),
    ) {
        let (a, b) = add_inputs(n, seed, extreme);
        let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
        add_i8_scalar(&p, &a, &b, &mut want).unwrap();
        add_i8(&p, &a, &b, &mut got).unwrap();
        prop_assert_eq!(want, got);
    }

    /// The AVX2 add loop (what AVX2-only machines run) equals the scalar loop too, on machines
    /// whose `add_i8` takes the AVX-512 loop as well (nothing to check without AVX2).
    #[test]
    fn add_avx2_matches_scalar(p in add_params(), n in 1usize..=300, seed in any::<u64>(), extreme in any::<bool>()) {
        let (a, b) = add_inputs(n, seed, extreme);
        let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
        add_i8_scalar(&p, &a, &b, &mut want).unwrap();
        if add_i8_avx2(&p, &a, &b, &mut got).unwrap() {
            prop_assert_eq!(want, got);
        }
    }

    /// The add split over the team in runs gives the same bytes.
    #[test]
    fn add_split_matches(p in add_params(), extra in 0usize..=3000, tasks in 2usize..=5, seed in any::<u64>()) {
        let n = 2 * MIN_ADD_PER_TASK + extra;
        let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
        let a: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let b: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
        add_i8_scalar(&p, &a, &b, &mut want).unwrap();
        add_i8_split(&p, None, &a, &b, &mut got, tasks).unwrap();
        prop_assert_eq!(want, got);
    }

    /// The add by its lookup tables (`AddLut`, the loader's choice on AVX-512 VBMI CPUs: 64
    /// elements a step, the tail element by element) equals the scalar loop on any length, for
    /// adds scaled as the exporter scales them, whole or split over the team; the tables are
    /// built by `AddLut::new` (which checked them on all 65 536 pairs) and must exist for nearly
    /// all such adds.
    #[test]
    fn add_lut_matches_scalar(
        p in exported_add(), n in prop_oneof![3 => 1usize..=300, 1 => 4096usize..=4300],
        tasks in 1usize..=3, seed in any::<u64>(), extreme in any::<bool>(),
    ) {
        let lut = AddLut::new(&p);
        prop_assume!(lut.is_some(), "no tables");
        let (a, b) = add_inputs(n, seed, extreme);
        let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
        add_i8_scalar(&p, &a, &b, &mut want).unwrap();
        add_i8_lut(&p, lut.as_ref(), &a, &b, &mut got).unwrap();
        prop_assert_eq!(&want, &got);
        let mut split = vec![0i8; n];
        add_i8_split(&p, lut.as_ref(), &a, &b, &mut split, tasks).unwrap();
        prop_assert_eq!(want, split);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The table add on every input pair at once (65 536 elements, `x` outer): the few pairs
    /// where the rounding's sign term or a rank tie decides the byte are all among them.
    #[test]
    fn add_lut_is_exact_on_every_pair(p in exported_add()) {
        let lut = AddLut::new(&p);
        prop_assume!(lut.is_some(), "no tables");
        let (a, b) = all_pairs();
        let (mut want, mut got) = (vec![0i8; a.len()], vec![0i8; a.len()]);
        add_i8_scalar(&p, &a, &b, &mut want).unwrap();
        add_i8_lut(&p, lut.as_ref(), &a, &b, &mut got).unwrap();
        prop_assert_eq!(want, got);
    }

    /// The SIMD loop computes `AddLut::apply` exactly, for any tables: on every pair, with
    /// unchecked candidate tables of adds whose small output shifts make the rounding's sign
    /// term and rank ties decide many bytes (input terms of about ±2¹⁰, output shifts 1–6).
    /// (Nothing to check where the CPU has no VBMI: there `add_i8_lut` runs the formula.)
    #[test]
    fn add_lut_simd_is_apply(
        (a_mult, b_mult, out_mult) in ((1i32 << 30)..=i32::MAX, (1i32 << 30)..=i32::MAX, (1i32 << 30)..=i32::MAX),
        (a_shift, b_shift, out_shift) in (-20i32..=-16, -20i32..=-16, -6i32..=-1),
        (a_zp, b_zp, out_zp) in (-128i32..=127, -128i32..=127, -128i32..=127), relu in any::<bool>(),
        cap in activation_cap(),
    ) {
        let act_min = if relu { out_zp } else { -128 };
        let p = AddI8 { a_zp, a_mult, a_shift, b_zp, b_mult, b_shift, out_zp, out_mult, out_shift,
            act_min, act_max: cap.max(act_min) };
        if !AddLut::runs_here() {
            return Ok(());
        }
        let lut = AddLut::candidate(&p).unwrap();
        let (a, b) = all_pairs();
        let mut want = vec![0i8; a.len()];
        lut.apply_slices(&a, &b, &mut want);
        let mut got = vec![0i8; a.len()];
        add_i8_lut(&p, Some(&lut), &a, &b, &mut got).unwrap();
        prop_assert_eq!(want, got);
    }
}

/// Two add inputs of `n` bytes (SplitMix64 from `seed`), with 3 values in 4 at −128 or 127 if
/// `extreme`.
fn add_inputs(n: usize, seed: u64, extreme: bool) -> (Vec<i8>, Vec<i8>) {
    let mut rng = runtime_core::heads::rng::SplitMix64::new(seed);
    let mut v = || {
        if extreme && rng.below(4) != 0 {
            [-128i8, 127][rng.below(2) as usize]
        } else {
            rng.next_u64() as i8
        }
    };
    let a = (0..n).map(|_| v()).collect();
    let b = (0..n).map(|_| v()).collect();
    (a, b)
}

/// Every pair of add input bytes once, `a` outer.
fn all_pairs() -> (Vec<i8>, Vec<i8>) {
    let a = (0..1usize << 16).map(|i| (i >> 8) as u8 as i8).collect();
    let b = (0..1usize << 16).map(|i| i as u8 as i8).collect();
    (a, b)
}

/// The upper end of an activation range: 127 in most cases, else any byte (a ReLU6-like cap;
/// the caller keeps it at or above the lower end).
fn activation_cap() -> impl Strategy<Value = i32> {
    prop_oneof![3 => Just(127i32), 1 => -128i32..=127]
}

/// An add as the exporter makes one: input multipliers `s/(2·max)`, output
/// `2·max/(2²⁰·s_out)`, for scales within a factor of ten of each other, any zero points, with
/// or without a fused ReLU, with a capped activation in some cases.
fn exported_add() -> impl Strategy<Value = AddI8> {
    (
        (0.005f64..0.5, 0.1f64..10.0, 0.1f64..10.0),
        (-128i32..=127, -128i32..=127, -128i32..=127),
        any::<bool>(),
        activation_cap(),
    )
        .prop_map(|((sa, rb, ro), (a_zp, b_zp, out_zp), relu, cap)| {
            let (sb, so) = (sa * rb, sa * ro);
            let max = sa.max(sb);
            let q = runtime_core::ops::requant::quantize_multiplier;
            let ((a_mult, a_shift), (b_mult, b_shift)) = (q(sa / (2.0 * max)), q(sb / (2.0 * max)));
            let (out_mult, out_shift) = q(2.0 * max / ((1u64 << 20) as f64 * so));
            AddI8 {
                a_zp,
                a_mult,
                a_shift,
                b_zp,
                b_mult,
                b_shift,
                out_zp,
                out_mult,
                out_shift,
                act_min: if relu { out_zp } else { -128 },
                act_max: cap.max(if relu { out_zp } else { -128 }),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Rows too wide for the VNNI kernel's 64 KiB row band (`3·(w + 2)·c` bytes) take its im2col
    /// kernel (on AVX2 machines: the AVX2 im2col kernel again): exact too.
    #[test]
    fn conv_vnni_wide_rows_match_reference(
        c in case_mix(any::<bool>()), w in 560usize..=580, ic in 38usize..=40, seed in any::<u64>(),
    ) {
        let h = c.win.in_h.min(2);
        let oc = c.out_c;
        let c = padded_3x3(c, h, w, ic, 1, oc, seed);
        let (want, got, backend) = run_conv(&c, false);
        prop_assert_eq!(want, got, "backend {}", backend);
    }

    /// Images taller than the VNNI row band holds (`(rows − 1)·s + 3` padded rows of
    /// `(w + 2)·c` bytes within 64 KiB) run in several runs of output rows, each converting its
    /// own rows, split over threads or not: exact too.
    #[test]
    fn conv_vnni_band_runs_match_reference(
        c in case_mix(any::<bool>()), h in 12usize..=16, w in 150usize..=170, ic in 38usize..=40,
        s in 1usize..=2, tasks in 1usize..=3, seed in any::<u64>(),
    ) {
        let oc = c.out_c.min(8);
        let c = padded_3x3(c, h, w, ic, s, oc, seed);
        let prep = if tasks > 1 { Prep::Split(tasks) } else { Prep::Best };
        let (want, got, backend) = try_conv(&c, prep).unwrap();
        prop_assert_eq!(want, got, "backend {}", backend);
    }
}

/// A whole model on 1, 2 and 3 threads (`Model::set_threads`): the same output bytes, on the
/// ResNet-18 backbone at 64 px, whose convs are large enough to split.
#[cfg(all(feature = "threads", feature = "zoo"))]
#[test]
fn model_threads_give_the_same_bytes() {
    use runtime_core::{model::zoo, Dtype, Model};
    let bytes = zoo::resnet18(Dtype::Int8, 64, 16, 7)
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut m = Model::parse(&bytes).unwrap();
    let mut rng = runtime_core::heads::rng::SplitMix64::new(3);
    let rgb: Vec<u8> = (0..64 * 64 * 3).map(|_| rng.next_u64() as u8).collect();
    let run = |m: &Model| {
        let mut arena = vec![0u8; m.arena_bytes()];
        m.preprocess_rgb8(&rgb, &mut arena).unwrap();
        m.run_i8_in_arena(&mut arena).unwrap().to_vec()
    };
    let one = run(&m);
    assert!(
        one.iter().any(|&v| v != one[0]),
        "a constant output proves little"
    );
    for n in [2, 3] {
        m.set_threads(n);
        assert_eq!(m.threads(), n);
        assert_eq!(run(&m), one, "{n} threads");
    }
}
