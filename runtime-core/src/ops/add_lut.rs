//! The int8 residual add as byte lookups: the host's fast path, built when a model loads and
//! proven equal to TFLite's formula on every one of its 65 536 input pairs.
//!
//! Why: TFLite's add ([`add_i8_scalar`]) costs three exact requantisations per element, or one
//! with each input's term tabulated; on an AVX-512 core that one, in 64-bit lanes, was the add's
//! whole cost (ResNet-8's three adds: 10 of its 88 µs).
//!
//! The decomposition. Where both inputs scale down (their shifts ≤ 0, so the terms' sum cannot
//! saturate) and the output requantisation is a right shift `e` (`S = 31 + e`), the output is
//! `⌊(A_a·M + N_b − σ·2³¹) / 2^S⌋ + zp`, with `A_a`, `B_b` the two inputs' terms,
//! `N_b = B_b·M + C` and `σ = [A_a + B_b < 0]` ([`RightShift`](super::requant::RightShift)'s one
//! multiply-add form). Split `A_a·M − σ·2³¹ = h^σ_a·2^S + f^σ_a` and `N_b = h_b·2^S + f_b` with
//! remainders in `[0, 2^S)`: the output is `h^σ_a + h_b + zp + [f^σ_a ≥ G_b]`, `G_b = 2^S − f_b`.
//! Both compares are between a value of `a` and one of `b`, so each becomes a compare of ranks:
//! with the 256 `G_b` sorted (`b`'s position `pos_b`) and `r^σ_a = #{b : G_b ≤ f^σ_a}`, the carry
//! is `[pos_b < r^σ_a]`; with the 256 `−B_b` sorted (`π_b`) and `ρ_a = #{b : −B_b ≤ A_a}`,
//! `σ = [π_b ≥ ρ_a]`. (A count of 256 does not fit a byte: `r = 256`, a carry for every `b`,
//! moves into `h`, and `ρ = 256`, `σ = 0` for every `b`, makes both `σ` columns the same.) So
//! each input byte looks up 16-bit whole parts and ranks, and an element costs two byte
//! compares, a select and two 16-bit adds.
//!
//! That is the formula exactly, as long as the whole parts fit `i16` (saturating there) and
//! the saturating narrowing agrees with the reference's clamp; [`AddLut::new`] does not rely
//! on that: it runs the tables' SIMD loop on all 65 536 pairs, compares it with
//! [`add_i8_scalar`], and keeps the tables only if every byte is equal; otherwise the add runs
//! the formula as before.

use alloc::vec::Vec;

use super::add::{add_i8_scalar, AddI8, ADD_LEFT_SHIFT};
use super::requant::multiply_by_quantized_multiplier;

/// An int8 add's lookup tables ([module docs](self)), 2.8 KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddLut {
    /// Indexed by the first input's byte `x as u8`: `h⁰` (low, high byte of an `i16`), `h¹`
    /// (likewise), `r⁰`, `r¹`, `ρ`.
    pub(crate) a: [[u8; 256]; 7],
    /// Indexed by the second input's byte: `h_b + zp` (low, high byte), `pos`, `π`.
    pub(crate) b: [[u8; 256]; 4],
    pub(crate) act_min: i8,
    pub(crate) act_max: i8,
}

impl AddLut {
    /// The tables of `p`, if its scalings have the form above and the tables give
    /// [`add_i8_scalar`]'s byte on every input pair; else `None`.
    ///
    /// Where this CPU runs the tables' SIMD loop ([`AddLut::runs_here`]) the check runs that
    /// very loop on all pairs (what inference will execute; a fifth of a millisecond per add at
    /// load), elsewhere [`AddLut::apply`], the loop's scalar model.
    pub fn new(p: &AddI8) -> Option<AddLut> {
        let lut = AddLut::candidate(p)?;
        let (xs, ys) = all_pairs();
        let mut want = alloc::vec![0i8; xs.len()];
        add_i8_scalar(p, &xs, &ys, &mut want).ok()?;
        let mut got = alloc::vec![0i8; xs.len()];
        if AddLut::runs_here() {
            super::add::add_i8_lut(p, Some(&lut), &xs, &ys, &mut got).ok()?;
        } else {
            lut.apply_slices(&xs, &ys, &mut got);
        }
        (got == want).then_some(lut)
    }

    /// Whether [`add_i8_lut`](super::add::add_i8_lut) runs tables on this build and CPU
    /// (x86-64 with `std`, AVX-512 VBMI); elsewhere it runs the formula.
    pub fn runs_here() -> bool {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        return super::arch::x86_add::lut_available();
        #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
        false
    }

    /// [`AddLut::new`] where this build and CPU run the tables' SIMD loop (x86-64 with `std`,
    /// AVX-512 VBMI), else `None` (the loader's call: elsewhere the tables would only cost
    /// memory and load time).
    pub fn for_this_cpu(p: &AddI8) -> Option<AddLut> {
        if AddLut::runs_here() {
            AddLut::new(p)
        } else {
            None
        }
    }

    /// The tables of `p` before [`AddLut::new`]'s check (`None` where the scalings do not have
    /// the form above). For tests: the check must reject the candidates that differ.
    pub fn candidate(p: &AddI8) -> Option<AddLut> {
        let scales_down = |m: i32, s: i32| m >= 0 && (-31..=0).contains(&s);
        if !(scales_down(p.a_mult, p.a_shift)
            && scales_down(p.b_mult, p.b_shift)
            && p.out_mult >= 0
            && (-31..=-1).contains(&p.out_shift)
            && (-128..=127).contains(&p.out_zp)
            && (-128..=p.act_max).contains(&p.act_min)
            && p.act_max <= 127)
        {
            return None;
        }
        let e = p.out_shift.unsigned_abs();
        let s = 31 + e;
        let term = |x: i32, zp: i32, m: i32, sh: i32| {
            // |x − zp| ≤ 255: the shift by 20 cannot overflow.
            multiply_by_quantized_multiplier((x - zp) << ADD_LEFT_SHIFT, m, sh) as i64
        };
        let m = p.out_mult as i64;
        let c = (1i64 << 30) + (1i64 << (30 + e));
        // |term| ≤ 2²⁸ and m < 2³¹: every product and sum below fits i64.
        let whole = |n: i64| n >> s;
        let rest = |n: i64| n & ((1i64 << s) - 1);
        let byte = |u: usize| u as u8 as i8 as i32;
        let ta: [i64; 256] = core::array::from_fn(|u| term(byte(u), p.a_zp, p.a_mult, p.a_shift));
        let tb: [i64; 256] = core::array::from_fn(|u| term(byte(u), p.b_zp, p.b_mult, p.b_shift));
        let nb: [i64; 256] = core::array::from_fn(|u| tb[u] * m + c);
        // `b`'s values sorted ascending, and each `b`'s position among them.
        let ranked = |v: [i64; 256]| -> ([i64; 256], [u8; 256]) {
            let mut order: [u8; 256] = core::array::from_fn(|u| u as u8);
            order.sort_unstable_by_key(|&u| v[u as usize]);
            let mut pos = [0u8; 256];
            for (k, &u) in order.iter().enumerate() {
                pos[u as usize] = k as u8;
            }
            (core::array::from_fn(|k| v[order[k] as usize]), pos)
        };
        let (g_sorted, g_pos) = ranked(core::array::from_fn(|u| (1i64 << s) - rest(nb[u])));
        let (v_sorted, v_pos) = ranked(core::array::from_fn(|u| -tb[u]));
        // How many of the sorted values are ≤ x.
        let count = |sorted: &[i64; 256], x: i64| sorted.partition_point(|&v| v <= x);
        let mut lut = AddLut {
            a: [[0; 256]; 7],
            b: [[0; 256]; 4],
            act_min: p.act_min as i8,
            act_max: p.act_max as i8,
        };
        let i16_bytes = |h: i64| (h.clamp(i16::MIN.into(), i16::MAX.into()) as i16).to_le_bytes();
        for u in 0..256 {
            let na = ta[u] * m;
            let col = |sigma: i64| {
                let n = na - sigma * (1i64 << 31);
                let (h, r) = (whole(n), count(&g_sorted, rest(n)));
                if r == 256 {
                    (h + 1, 0)
                } else {
                    (h, r)
                }
            };
            let (mut h1, mut r1) = col(1);
            let (h0, r0) = col(0);
            let mut rho = count(&v_sorted, ta[u]);
            if rho == 256 {
                (h1, r1, rho) = (h0, r0, 0);
            }
            let ([l0, u0], [l1, u1]) = (i16_bytes(h0), i16_bytes(h1));
            for (k, v) in [l0, u0, l1, u1, r0 as u8, r1 as u8, rho as u8]
                .into_iter()
                .enumerate()
            {
                lut.a[k][u] = v;
            }
            let [lo, hi] = i16_bytes(whole(nb[u]) + p.out_zp as i64);
            for (k, v) in [lo, hi, g_pos[u], v_pos[u]].into_iter().enumerate() {
                lut.b[k][u] = v;
            }
        }
        Some(lut)
    }

    /// One element as the SIMD loop computes it: the whole parts and the carry summed with
    /// `i16` saturation, narrowed to `i8` with saturation, clamped to the activation range.
    #[inline]
    pub fn apply(&self, x1: i8, x2: i8) -> i8 {
        let (u, v) = (x1 as u8 as usize, x2 as u8 as usize);
        let a = |k: usize| self.a[k][u];
        let b = |k: usize| self.b[k][v];
        let sigma = b(3) >= a(6);
        let (h, r) = if sigma {
            (i16::from_le_bytes([a(2), a(3)]), a(5))
        } else {
            (i16::from_le_bytes([a(0), a(1)]), a(4))
        };
        let carry = i16::from(b(2) < r);
        let y = h
            .saturating_add(i16::from_le_bytes([b(0), b(1)]))
            .saturating_add(carry);
        (y.clamp(-128, 127) as i8).clamp(self.act_min, self.act_max)
    }

    /// [`AddLut::apply`] over slices of equal length.
    pub fn apply_slices(&self, a: &[i8], b: &[i8], out: &mut [i8]) {
        for ((y, &x1), &x2) in out.iter_mut().zip(a).zip(b) {
            *y = self.apply(x1, x2);
        }
    }

    /// Heap bytes of a boxed table set.
    pub const BYTES: usize = core::mem::size_of::<AddLut>();
}

/// Every input pair once: `(x, y)` over all bytes, `x` outer.
fn all_pairs() -> (Vec<i8>, Vec<i8>) {
    let xs = (0..1usize << 16).map(|i| (i >> 8) as u8 as i8).collect();
    let ys = (0..1usize << 16).map(|i| i as u8 as i8).collect();
    (xs, ys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::rng::SplitMix64;

    /// An add as the exporter makes one: input multipliers `s/(2·max)`, output
    /// `2·max/(2²⁰·s_out)`, from scales drawn around each other.
    fn exported(rng: &mut SplitMix64) -> AddI8 {
        let scale = |rng: &mut SplitMix64| 0.01 + (rng.next_u64() % 1000) as f64 * 1e-4;
        let (sa, sb, so) = (scale(rng), scale(rng), scale(rng));
        let max = sa.max(sb);
        let q = |r: f64| crate::ops::requant::quantize_multiplier(r);
        let ((a_mult, a_shift), (b_mult, b_shift)) = (q(sa / (2.0 * max)), q(sb / (2.0 * max)));
        let (out_mult, out_shift) = q(2.0 * max / ((1u64 << 20) as f64 * so));
        let zp = |rng: &mut SplitMix64| (rng.next_u64() % 256) as i32 - 128;
        let (a_zp, b_zp, out_zp) = (zp(rng), zp(rng), zp(rng));
        let relu = rng.next_u64().is_multiple_of(2);
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
            act_max: 127,
        }
    }

    /// Exported adds nearly always pass the check (else the fast path would rarely run), and
    /// every kept table set gives the scalar formula's bytes (on a strided sample here; `new`
    /// checked all pairs).
    #[test]
    fn exported_adds_get_exact_tables() {
        let mut rng = SplitMix64::new(3);
        let mut kept = 0;
        for _ in 0..40 {
            let p = exported(&mut rng);
            let Some(lut) = AddLut::new(&p) else { continue };
            kept += 1;
            let (xs, ys) = all_pairs();
            let mut want = alloc::vec![0i8; xs.len()];
            add_i8_scalar(&p, &xs, &ys, &mut want).unwrap();
            for i in (0..xs.len()).step_by(97) {
                assert_eq!(lut.apply(xs[i], ys[i]), want[i], "{p:?} pair {i}");
            }
        }
        assert_eq!(
            kept, 40,
            "only {kept} of 40 exported adds kept their tables"
        );
    }

    /// The check is what makes the tables exact: where the whole parts overflow `i16` (tiny
    /// output shifts: huge outputs, of which the pairs that nearly cancel land in range), the
    /// candidates differ from the formula, and `new` refuses exactly those.
    #[test]
    fn the_check_refuses_candidates_that_differ() {
        let mut rng = SplitMix64::new(11);
        let (mut refused, mut kept) = (0, 0);
        for case in 0..60 {
            let mut p = exported(&mut rng);
            if case % 2 == 0 {
                p.out_shift = -1 - (rng.next_u64() % 8) as i32;
            }
            let Some(cand) = AddLut::candidate(&p) else {
                continue;
            };
            let (xs, ys) = all_pairs();
            let mut want = alloc::vec![0i8; xs.len()];
            add_i8_scalar(&p, &xs, &ys, &mut want).unwrap();
            let differs = (0..xs.len()).any(|i| cand.apply(xs[i], ys[i]) != want[i]);
            assert_eq!(AddLut::new(&p).is_none(), differs, "{p:?}");
            if differs {
                refused += 1;
            } else {
                kept += 1;
            }
        }
        assert!(refused > 0 && kept > 0, "refused {refused}, kept {kept}");
    }

    /// Scalings outside the decomposition's form (an input scaling up, a left-shifting
    /// output) get no tables.
    #[test]
    fn other_scalings_get_none() {
        let mut rng = SplitMix64::new(5);
        let p = exported(&mut rng);
        assert!(AddLut::candidate(&AddI8 { a_shift: 2, ..p }).is_none());
        assert!(AddLut::candidate(&AddI8 { out_shift: 0, ..p }).is_none());
        assert!(AddLut::candidate(&AddI8 { out_shift: 3, ..p }).is_none());
    }
}
