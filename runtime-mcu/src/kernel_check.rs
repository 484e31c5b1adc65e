//! The firmware's kernel-check mode (feature `kernel-check`): random int8 convolutions, each run
//! by runtime-core's fast path (on the Cortex-M4 the DSP kernel, `ops::arch::cortex_m`) and by
//! its reference kernel (`conv2d_i8`, which the host tests check against naive i64 formulas),
//! compared byte for byte on the device. Written once and compiled twice, like `app.rs`: the
//! host test (`tests/tests/mcu_parity.rs`, `kernels_match_the_reference_on_the_mcu`) runs the
//! same cases and checks that the device's reference outputs hash to the host's.
//!
//! The cases cover what the fixture models do not: reductions of every length modulo 4, 1×3 and
//! 3×1 windows, pixel counts that are not a multiple of the kernel's 4-pixel block, every output
//! zero point with and without ReLU, multipliers at the edge of the in-register requantisation
//! (`right` = 2) and past it (the portable fallback), `act_max` below 127. Then random residual
//! adds long enough for the tabulated path (on the Cortex-M4 its `asm!` loop where the output
//! constants allow), against the same add computed in pieces short enough for the direct
//! formula.

use alloc::vec::Vec;

use runtime_core::heads::rng::SplitMix64;
use runtime_core::ops::add::{add_i8, AddI8, ADD_TABLE_MIN_LEN};
use runtime_core::ops::conv2d::{conv2d_i8, ConvI8};
use runtime_core::ops::prepared::{conv2d_i8_prepared, PreparedI8};
use runtime_core::ops::{I32Le, Window};

/// Number of random convolutions.
pub const CASES: u32 = 1000;
/// Number of random adds.
pub const ADD_CASES: u32 = 200;
const SEED: u64 = 0xC0DE_C4EC_4B1D_0001;

/// What [`run`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Convolutions run.
    pub cases: u32,
    /// Of those, the ones the fast path ran on the Cortex-M4 DSP kernel (`backend`); 0 on a
    /// host.
    pub dsp: u32,
    /// Convolutions whose fast-path output differs from the reference's.
    pub mismatches: u32,
    /// Adds run.
    pub add_cases: u32,
    /// Adds whose tabulated output differs from the direct formula's.
    pub add_mismatches: u32,
    /// FNV-1a over every case's reference output: equal on the host and the device.
    pub checksum: u32,
}

fn fnv(mut h: u32, bytes: &[i8]) -> u32 {
    for &b in bytes {
        h = (h ^ u32::from(b as u8)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Runs the [`CASES`] convolutions and the [`ADD_CASES`] adds; `mismatch(case)` is called for
/// each that differs (adds numbered from [`CASES`] on).
pub fn run(mut mismatch: impl FnMut(u32)) -> Summary {
    let mut rng = SplitMix64::new(SEED);
    let mut s = Summary {
        cases: 0,
        dsp: 0,
        mismatches: 0,
        add_cases: 0,
        add_mismatches: 0,
        checksum: 0x811C_9DC5,
    };
    let pick = |rng: &mut SplitMix64, lo: i32, hi: i32| lo + rng.below((hi - lo + 1) as u32) as i32;
    while s.cases < CASES {
        let kh = [1, 3][rng.below(2) as usize];
        let kw = if rng.below(4) == 0 { 4 - kh } else { kh };
        let in_c = if rng.below(3) == 0 {
            1 + rng.below(7) as usize
        } else {
            4 * (1 + rng.below(6) as usize)
        };
        let (in_h, in_w) = (1 + rng.below(9) as usize, 1 + rng.below(9) as usize);
        let (stride_h, stride_w) = (1 + rng.below(2) as usize, 1 + rng.below(2) as usize);
        let (pad_top, pad_left) = (rng.below(kh as u32) as usize, rng.below(kw as u32) as usize);
        let (Some(out_h), Some(out_w)) = (
            Window::out_dim(in_h, kh, stride_h, pad_top, pad_top),
            Window::out_dim(in_w, kw, stride_w, pad_left, pad_left),
        ) else {
            continue;
        };
        let win = Window {
            in_h,
            in_w,
            in_c,
            out_h,
            out_w,
            kh,
            kw,
            stride_h,
            stride_w,
            pad_top,
            pad_left,
        };
        let out_c = 1 + rng.below(10) as usize;
        let k = kh * kw * in_c;
        let input: Vec<i8> = (0..in_h * in_w * in_c)
            .map(|_| rng.next_u64() as i8)
            .collect();
        // One op in 4 makes rounding ties common: small weights and biases (accumulators of a
        // few thousand) and a multiplier of exactly 1/2 or 3/8 times 2⁻² to 2⁻⁶.
        let ties = rng.below(4) == 0;
        let w_max = if ties { 3 } else { 127 };
        let weights: Vec<i8> = (0..out_c * k)
            .map(|_| pick(&mut rng, -w_max, w_max) as i8)
            .collect();
        // One op in 8 has a channel scaling by 1/4 or more (`right ≤ 1`: the portable loop).
        let big = rng.below(8) == 0;
        let (mut bias, mut mult, mut shift) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..out_c {
            let b_max = if ties { 100 } else { 1 << 16 };
            let b = pick(&mut rng, -b_max, b_max);
            // `QuantizeMultiplier`'s form: `m ∈ [2³⁰, 2³¹)`, real multiplier `m·2^sh / 2³¹`.
            let (m, sh) = if ties {
                (
                    [1 << 30, 3 << 28][rng.below(2) as usize],
                    pick(&mut rng, -6, -2),
                )
            } else if big && c == 0 {
                (
                    (1 << 30) | (rng.next_u64() as i32 & 0x3FFF_FFFF),
                    pick(&mut rng, -1, 1),
                )
            } else {
                // `right` from 2 (the kernel's edge) to 14.
                (
                    (1 << 30) | (rng.next_u64() as i32 & 0x3FFF_FFFF),
                    pick(&mut rng, -14, -2),
                )
            };
            bias.extend_from_slice(&b.to_le_bytes());
            mult.extend_from_slice(&m.to_le_bytes());
            shift.extend_from_slice(&sh.to_le_bytes());
        }
        let out_zp = pick(&mut rng, -128, 127);
        let (act_min, act_max) = match rng.below(8) {
            0..=3 => (-128, 127),
            4..=6 => (out_zp, 127),
            _ => (pick(&mut rng, -128, 0), pick(&mut rng, 1, 126)),
        };
        let p = ConvI8 {
            win,
            out_c,
            weights: &weights,
            bias: I32Le::new(&bias),
            mult: I32Le::new(&mult),
            shift: I32Le::new(&shift),
            in_zp: pick(&mut rng, -128, 127),
            out_zp,
            act_min,
            act_max,
        };
        let n_out = out_h * out_w * out_c;
        let (mut want, mut got) = (alloc::vec![0i8; n_out], alloc::vec![1i8; n_out]);
        let prep = PreparedI8::new(&p);
        let ok = conv2d_i8(&p, &input, &mut want).is_ok()
            && conv2d_i8_prepared(&p, &prep, &input, &mut got).is_ok();
        if !ok || want != got {
            s.mismatches += 1;
            mismatch(s.cases);
        }
        if prep.backend(&p) == "cortex-m4-dsp" {
            s.dsp += 1;
        }
        s.checksum = fnv(s.checksum, &want);
        s.cases += 1;
    }
    while s.add_cases < ADD_CASES {
        let n = ADD_TABLE_MIN_LEN + rng.below(600) as usize;
        // Inputs scaled down by up to 2⁻⁸ (`QuantizeMultiplier` form), the output by 2⁻¹⁶ to
        // 2⁻²⁴ (the asm loop's range ends at 2⁻²³) or, one add in 8, by 2⁻¹ to 2¹. One add in
        // 4 makes rounding ties common instead: terms of a few hundred (inputs scaled by about
        // 2⁻¹⁹) and an output multiplier of exactly 1/2 or 3/8 times 2⁻² to 2⁻⁵.
        let m = |rng: &mut SplitMix64| (1 << 30) | (rng.next_u64() as i32 & 0x3FFF_FFFF);
        let ties = rng.below(4) == 0;
        let (a_mult, b_mult) = (m(&mut rng), m(&mut rng));
        let (out_mult, out_shift, in_shift) = if ties {
            let half = [1 << 30, 3 << 28][rng.below(2) as usize];
            (half, pick(&mut rng, -5, -2), (-19, -17))
        } else if rng.below(8) == 0 {
            (m(&mut rng), pick(&mut rng, -1, 1), (-8, 0))
        } else {
            (m(&mut rng), pick(&mut rng, -24, -16), (-8, 0))
        };
        let out_zp = pick(&mut rng, -128, 127);
        let (act_min, act_max) = match rng.below(8) {
            0..=3 => (-128, 127),
            4..=6 => (out_zp, 127),
            _ => (pick(&mut rng, -128, 0), pick(&mut rng, 1, 126)),
        };
        let p = AddI8 {
            a_zp: pick(&mut rng, -128, 127),
            a_mult,
            a_shift: pick(&mut rng, in_shift.0, in_shift.1),
            b_zp: pick(&mut rng, -128, 127),
            b_mult,
            b_shift: pick(&mut rng, in_shift.0, in_shift.1),
            out_zp,
            out_mult,
            out_shift,
            act_min,
            act_max,
        };
        let a: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let b: Vec<i8> = (0..n).map(|_| rng.next_u64() as i8).collect();
        let (mut whole, mut pieces) = (alloc::vec![0i8; n], alloc::vec![1i8; n]);
        let mut ok = add_i8(&p, &a, &b, &mut whole).is_ok();
        let piece = ADD_TABLE_MIN_LEN / 4;
        for ((y, x1), x2) in pieces
            .chunks_mut(piece)
            .zip(a.chunks(piece))
            .zip(b.chunks(piece))
        {
            ok &= add_i8(&p, x1, x2, y).is_ok();
        }
        if !ok || whole != pieces {
            s.add_mismatches += 1;
            mismatch(CASES + s.add_cases);
        }
        s.checksum = fnv(s.checksum, &pieces);
        s.add_cases += 1;
    }
    s
}
