//! Cortex-M4 (ARMv7E-M DSP extension) conv kernel, CMSIS-NN style.
//!
//! Two output pixels at a time: each pixel's column (im2col, padded taps = input zero point, or
//! the input itself for 1×1) is widened once into a stack buffer of `i16` pairs in SXTB16 order,
//! `[x0, x2 | x1, x3]` per 4 taps, the two pixels interleaved per group of 4 taps so one pointer
//! walks both. The inner loop then computes 2 pixels × 2 output channels: per 4 taps it loads
//! one weight word of each channel (unaligned `ldr`, weights stay in flash in OHWI order: no
//! packing, no RAM), splits it with two `sxtb16`, and issues 8 `smlad` (two 16×16 products
//! each): 19 instructions per 16 MACs including the loop branch.
//!
//! SMLAD adds two exact 16-bit products to a 32-bit accumulator with wrap-around (it only sets
//! the sticky Q flag on overflow), which is the wrapping `i32` sum the fast path relies on.

use core::arch::asm;

use super::super::conv2d::ConvI8;
use super::super::prepared::{direct_1x1, im2col, pixel_1x1, requant, ChanQ};
use super::super::Window;

/// Largest `kh·kw·in_c` this kernel takes (3×3×64): its stack buffers are `MAX_K` bytes (raw
/// column) + `4·MAX_K` bytes (two widened columns) = 2 880 B. Larger reductions run the
/// portable path.
pub const MAX_K: usize = 576;
const GROUPS: usize = MAX_K.div_ceil(4);

/// Two widened columns, 8-byte aligned for `ldrd`/`strd`.
#[repr(C, align(8))]
struct Cols([i16; 8 * GROUPS]);

pub(crate) fn supports(w: &Window) -> bool {
    w.kh * w.kw * w.in_c <= MAX_K
}

/// Widens `col` into slot `slot` (0 or 1) of `cols`: group `g` of 4 taps becomes the `i16`s
/// `[x0, x2, x1, x3]` at `cols[8g + 4·slot..]`; a last partial group is zero-filled.
#[inline(always)]
fn widen(col: &[i8], cols: &mut Cols, slot: usize) {
    let full = col.len() / 4;
    if full > 0 {
        // SAFETY: `full ≥ 1` groups of 4 bytes are read from `col` (len ≥ 4·full) and written
        // to `cols` at 16-byte strides from the slot start (`8·full ≤ 8·GROUPS` i16s, since
        // `col.len() ≤ MAX_K`); `strd` needs 4-byte alignment: `Cols` is 8-aligned and every
        // address is a multiple of 8 bytes from its start. `ldr` may be unaligned on the M4.
        unsafe {
            asm!(
                "2:",
                "ldr {v}, [{src}], #4",
                "sxtb16 {e}, {v}",
                "sxtb16 {o}, {v}, ror #8",
                "strd {e}, {o}, [{dst}], #16",
                "subs {n}, {n}, #1",
                "bne 2b",
                src = inout(reg) col.as_ptr() => _,
                dst = inout(reg) cols.0.as_mut_ptr().add(4 * slot) => _,
                n = inout(reg) full => _,
                v = out(reg) _,
                e = out(reg) _,
                o = out(reg) _,
                options(nostack),
            );
        }
    }
    let rest = &col[4 * full..];
    if !rest.is_empty() {
        let d = &mut cols.0[8 * full + 4 * slot..][..4];
        let at = |i: usize| rest.get(i).map_or(0, |&x| x as i16);
        d.copy_from_slice(&[at(0), at(2), at(1), at(3)]);
    }
}

/// One group of 4 taps of the 2×2 kernel (see the module docs), as `asm!` template lines:
/// 5 loads, 4 `sxtb16`, 8 `smlad`; advances the column pointer by 16 bytes and each weight
/// pointer by 4.
macro_rules! group_2x2 {
    () => {
        concat!(
            "ldr {t0}, [{w0}], #4\n",
            "sxtb16 {t1}, {t0}\n",
            "sxtb16 {t0}, {t0}, ror #8\n",
            "ldrd {t2}, {t3}, [{a}]\n",
            "smlad {c00}, {t2}, {t1}, {c00}\n",
            "smlad {c00}, {t3}, {t0}, {c00}\n",
            "ldrd {t2}, {t3}, [{a}, #8]\n",
            "smlad {c10}, {t2}, {t1}, {c10}\n",
            "smlad {c10}, {t3}, {t0}, {c10}\n",
            "ldr {t0}, [{w1}], #4\n",
            "sxtb16 {t1}, {t0}\n",
            "sxtb16 {t0}, {t0}, ror #8\n",
            "smlad {c11}, {t2}, {t1}, {c11}\n",
            "smlad {c11}, {t3}, {t0}, {c11}\n",
            "ldrd {t2}, {t3}, [{a}], #16\n",
            "smlad {c01}, {t2}, {t1}, {c01}\n",
            "smlad {c01}, {t3}, {t0}, {c01}\n",
        )
    };
}

/// `acc[2·s + j] += Σ_k col_s[k]·w_j[k]` over `groups ≥ 1` full groups of 4 taps, for slot
/// `s ∈ {0, 1}` of `cols` and weight rows `w0`, `w1`: pairs of groups per loop iteration
/// (36 instructions per 32 MACs), then the odd group.
///
/// # Safety
/// `cols` holds `groups` widened groups; `w0` and `w1` are readable for `4·groups` bytes.
#[inline(always)]
unsafe fn smlad_2x2(cols: *const i16, w0: *const i8, w1: *const i8, groups: usize) -> [i32; 4] {
    let (mut c00, mut c01, mut c10, mut c11) = (0i32, 0i32, 0i32, 0i32);
    let (mut a, mut w0, mut w1) = (cols, w0, w1);
    let pairs = groups / 2;
    if pairs > 0 {
        let end = a.add(16 * pairs);
        asm!(
            "2:",
            group_2x2!(),
            group_2x2!(),
            "cmp {a}, {end}",
            "bne 2b",
            a = inout(reg) a,
            w0 = inout(reg) w0,
            w1 = inout(reg) w1,
            end = in(reg) end,
            c00 = inout(reg) c00,
            c01 = inout(reg) c01,
            c10 = inout(reg) c10,
            c11 = inout(reg) c11,
            t0 = out(reg) _,
            t1 = out(reg) _,
            t2 = out(reg) _,
            t3 = out(reg) _,
            options(nostack, readonly),
        );
    }
    if groups % 2 == 1 {
        asm!(
            group_2x2!(),
            a = inout(reg) a => _,
            w0 = inout(reg) w0 => _,
            w1 = inout(reg) w1 => _,
            c00 = inout(reg) c00,
            c01 = inout(reg) c01,
            c10 = inout(reg) c10,
            c11 = inout(reg) c11,
            t0 = out(reg) _,
            t1 = out(reg) _,
            t2 = out(reg) _,
            t3 = out(reg) _,
            options(nostack, readonly),
        );
    }
    [c00, c01, c10, c11]
}

/// The conv with `chan`'s folded biases (see [`super::super::prepared`]); the caller checked the
/// slice lengths and [`supports`].
pub(crate) fn conv(p: &ConvI8, chan: &[ChanQ], input: &[i8], output: &mut [i8]) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let (full, tail) = (k / 4, k % 4);
    let direct = direct_1x1(w);
    let zp = p.in_zp.clamp(-128, 127) as i8;
    let mut raw = [0i8; MAX_K];
    let mut cols = Cols([0; 8 * GROUPS]);
    let n_px = w.out_h * w.out_w;
    let oc_n = p.out_c;
    let mut px = 0;
    while px < n_px {
        // The last pixel of an odd count is computed twice (slot 1 duplicates slot 0) and
        // written once.
        let second = px + 1 < n_px;
        for slot in 0..2 {
            let q = if slot == 1 && second { px + 1 } else { px };
            let (oy, ox) = (q / w.out_w, q % w.out_w);
            let col: &[i8] = if direct {
                pixel_1x1(w, input, oy, ox)
            } else {
                im2col(w, input, oy, ox, zp, &mut raw[..k]);
                &raw[..k]
            };
            widen(col, &mut cols, slot);
        }
        let (out0, rest) = output[px * oc_n..].split_at_mut(oc_n);
        let mut out1 = if second {
            Some(&mut rest[..oc_n])
        } else {
            None
        };
        let mut oc = 0;
        while oc < oc_n {
            let oc1 = if oc + 1 < oc_n { oc + 1 } else { oc };
            let w0 = &p.weights[oc * k..][..k];
            let w1 = &p.weights[oc1 * k..][..k];
            let mut acc = if full > 0 {
                // SAFETY: `cols` holds `full` widened groups (widen above), each weight row
                // has `k ≥ 4·full` bytes.
                unsafe { smlad_2x2(cols.0.as_ptr(), w0.as_ptr(), w1.as_ptr(), full) }
            } else {
                [0; 4]
            };
            for j in 0..tail {
                let kk = 4 * full + j;
                let pos = [0, 2, 1][j];
                let a0 = cols.0[8 * full + pos] as i32;
                let a1 = cols.0[8 * full + 4 + pos] as i32;
                let (x0, x1) = (w0[kk] as i32, w1[kk] as i32);
                acc[0] = acc[0].wrapping_add(a0 * x0);
                acc[1] = acc[1].wrapping_add(a0 * x1);
                acc[2] = acc[2].wrapping_add(a1 * x0);
                acc[3] = acc[3].wrapping_add(a1 * x1);
            }
            let (q0, q1) = (&chan[oc], &chan[oc1]);
            out0[oc] = requant(p, q0, acc[0].wrapping_add(q0.bias));
            if oc1 != oc {
                out0[oc1] = requant(p, q1, acc[1].wrapping_add(q1.bias));
            }
            if let Some(out1) = out1.as_deref_mut() {
                out1[oc] = requant(p, q0, acc[2].wrapping_add(q0.bias));
                if oc1 != oc {
                    out1[oc1] = requant(p, q1, acc[3].wrapping_add(q1.bias));
                }
            }
            oc += 2;
        }
        px += 2;
    }
}
