//! Cortex-M4 (ARMv7E-M DSP extension) conv kernel, CMSIS-NN style.
//!
//! Four output pixels at a time: each pixel's column (im2col, padded taps = input zero point, or
//! the input itself for 1×1) is widened once into a stack buffer of `i16` pairs in SXTB16 order,
//! `[x0, x2 | x1, x3]` per 4 taps, the four pixels interleaved per group of 4 taps (32 bytes)
//! so one `ldm` fetches two pixels' taps. The inner loop then computes 4 pixels × 1 output
//! channel: per 4 taps it loads one weight word (unaligned `ldr`, weights stay in flash in OHWI
//! order: no packing, no RAM), splits it with two `sxtb16`, fetches the four columns with two
//! `ldm` and issues 8 `smlad` (two 16×16 products each): 13 instructions per 16 MACs, 28 per
//! 32 unrolled twice with the loop branch (0.875 per MAC; CMSIS-NN's 2×2
//! `arm_nn_mat_mult_kernel_s8_s16` takes 18 per 16). That needs 13 registers: the `asm!` block
//! saves and restores `r6` itself (LLVM keeps it as a base pointer, so it cannot be an operand).
//!
//! SMLAD adds two exact 16-bit products to a 32-bit accumulator with wrap-around (it only sets
//! the sticky Q flag on overflow), which is the wrapping `i32` sum the fast path relies on.
//!
//! The reduction runs over whole groups of 4 taps: a last partial group's column taps are
//! widened as zeros, so the weight word may run into the next channel's row (multiplied by
//! zero). Only the last channel's row, which ends the tensor, is copied into a zero-padded stack
//! buffer.

use core::arch::asm;

use super::super::conv2d::ConvI8;
use super::super::prepared::{direct_1x1, im2col, pixel_1x1, requant, ChanQ};
use super::super::requant::RightShift;
use super::super::Window;

/// Largest `kh·kw·in_c` this kernel takes (3×3×64): its stack buffers are `MAX_K` bytes (raw
/// column) + `8·MAX_K` bytes (four widened columns) + `MAX_K` bytes (a padded weight row) =
/// 5 760 B. Larger reductions run the portable path.
pub const MAX_K: usize = 576;
const GROUPS: usize = MAX_K.div_ceil(4);
/// Pixels per block (columns widened together).
const PX: usize = 4;

/// Four widened columns, 8-byte aligned for `strd`.
#[repr(C, align(8))]
struct Cols([i16; 4 * PX * GROUPS]);

pub(crate) fn supports(w: &Window) -> bool {
    w.kh * w.kw * w.in_c <= MAX_K
}

/// Widens `col` into slot `slot` (0..4) of `cols`: group `g` of 4 taps becomes the `i16`s
/// `[x0, x2, x1, x3]` at `cols[16g + 4·slot..]`; a last partial group
/// is zero-filled.
#[inline(always)]
fn widen(col: &[i8], cols: &mut Cols, slot: usize) {
    let full = col.len() / 4;
    let rest = &col[4 * full..];
    // Group `g` of every slot lies in `cols[16g..16g + 16]`.
    assert!(16 * (full + usize::from(!rest.is_empty())) <= cols.0.len());
    if full > 0 {
        // SAFETY: `full ≥ 1` groups of 4 bytes are read from `col` (len ≥ 4·full) and written
        // to `cols` at 32-byte strides from the slot start, inside `cols` (asserted
        // above); `strd` needs 4-byte alignment: `Cols` is 8-aligned and every address is a
        // multiple of 8 bytes from its start. `ldr` may be unaligned on the M4.
        unsafe {
            asm!(
                "2:",
                "ldr {v}, [{src}], #4",
                "sxtb16 {e}, {v}",
                "sxtb16 {o}, {v}, ror #8",
                "strd {e}, {o}, [{dst}], #32",
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
    if !rest.is_empty() {
        let d = &mut cols.0[16 * full + 4 * slot..][..4];
        let at = |i: usize| rest.get(i).map_or(0, |&x| x as i16);
        d.copy_from_slice(&[at(0), at(2), at(1), at(3)]);
    }
}

/// One group of 4 taps of the 4×1 kernel (see the module docs), as `asm!` template lines:
/// column pointer `r0` (advances 32 bytes), weight pointer `r1` (advances 4), accumulators
/// `r9`..`r12` (pixels 0..3), scratch `r2`..`r6`, `r8`.
macro_rules! group_4x1 {
    () => {
        concat!(
            "ldr r6, [r1], #4\n",
            "sxtb16 r8, r6\n",
            "sxtb16 r6, r6, ror #8\n",
            "ldm r0!, {{r2, r3, r4, r5}}\n",
            "smlad r9, r2, r8, r9\n",
            "smlad r9, r3, r6, r9\n",
            "smlad r10, r4, r8, r10\n",
            "smlad r10, r5, r6, r10\n",
            "ldm r0!, {{r2, r3, r4, r5}}\n",
            "smlad r11, r2, r8, r11\n",
            "smlad r11, r3, r6, r11\n",
            "smlad r12, r4, r8, r12\n",
            "smlad r12, r5, r6, r12\n",
        )
    };
}

/// `[Σ_k col_s[k]·w[k] for s in 0..4]` over `groups ≥ 1` groups of 4 taps of `cols` and the
/// weight row `w`: pairs of groups per loop iteration, an odd count entering at the second.
///
/// # Safety
/// `cols` holds `groups` widened groups; `w` is readable for `4·groups` bytes.
#[inline(always)]
unsafe fn smlad_4x1(cols: *const i16, w: *const i8, groups: usize) -> [i32; 4] {
    let (mut c0, mut c1, mut c2, mut c3) = (0i32, 0i32, 0i32, 0i32);
    let end = cols.add(16 * groups);
    // `r6` is saved and restored around its use as scratch (not an allowed operand).
    asm!(
        "push {{r6}}",
        "cmp r2, #0",
        "bne 3f",
        "2:",
        group_4x1!(),
        "3:",
        group_4x1!(),
        "cmp r0, lr",
        "bne 2b",
        "pop {{r6}}",
        inout("r0") cols => _,
        inout("r1") w => _,
        inout("r2") groups % 2 => _,
        in("lr") end,
        out("r3") _,
        out("r4") _,
        out("r5") _,
        out("r8") _,
        inout("r9") c0,
        inout("r10") c1,
        inout("r11") c2,
        inout("r12") c3,
        options(readonly),
    );
    [c0, c1, c2, c3]
}

/// The conv with `chan`'s folded biases (see [`super::super::prepared`]); the caller checked the
/// slice lengths and [`supports`].
pub(crate) fn conv(p: &ConvI8, chan: &[ChanQ], input: &[i8], output: &mut [i8]) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let (full, ceil) = (k / 4, k.div_ceil(4));
    let direct = direct_1x1(w);
    let zp = p.in_zp.clamp(-128, 127) as i8;
    let (out_zp, act_min, act_max) = (p.out_zp, p.act_min, p.act_max);
    let mut raw = [0i8; MAX_K];
    let mut cols = Cols([0; 4 * PX * GROUPS]);
    let n_px = w.out_h * w.out_w;
    let oc_n = p.out_c.min(chan.len());
    // Channels whose row can be read in whole groups without leaving the tensor (see the
    // module docs): all when `k % 4 = 0`, else all but the last (the last 3 when `k = 1`),
    // whose row is copied, zero-padded, into `last`.
    let mut last = [0i8; MAX_K.next_multiple_of(4)];
    let whole = match p.weights.len().checked_sub(4 * ceil) {
        _ if k == 4 * full => oc_n,
        Some(r) => (r / k + 1).min(oc_n),
        None => 0,
    };
    let mut px = 0;
    while px < n_px {
        // Past the last pixel the slots repeat it: computed, never written.
        let live = (n_px - px).min(PX);
        for slot in 0..PX {
            let q = px + slot.min(live - 1);
            let (oy, ox) = (q / w.out_w, q % w.out_w);
            let col: &[i8] = if direct {
                pixel_1x1(w, input, oy, ox)
            } else {
                im2col(w, input, oy, ox, zp, &mut raw[..k]);
                &raw[..k]
            };
            widen(col, &mut cols, slot);
        }
        let out = &mut output[px * oc_n..][..live * oc_n];
        for (oc, q) in chan.iter().enumerate().take(oc_n) {
            let row = if oc < whole {
                &p.weights[oc * k..]
            } else {
                last[..k].copy_from_slice(&p.weights[oc * k..][..k]);
                &last[..]
            };
            let mut acc = [0; 4];
            if ceil > 0 {
                // SAFETY: `cols` holds `ceil` widened groups (widen above); `row` has `4·ceil`
                // readable bytes (`whole` above, or `last`: `4·ceil ≤ MAX_K` rounded up to 4).
                acc = unsafe { smlad_4x1(cols.0.as_ptr(), row.as_ptr(), ceil) };
            }
            // SAFETY (both loops): `s < live`, `oc < oc_n`, `out` has `live·oc_n` bytes.
            let o = out.as_mut_ptr();
            if q.left == 0 && q.right > 0 {
                // The common case, in one multiply-add per output (see `RightShift`).
                let r = RightShift::new(q.mult, q.right);
                for (s, &a) in acc.iter().enumerate().take(live) {
                    let v = r.apply(a.wrapping_add(q.bias));
                    let v = v.saturating_add(out_zp).clamp(act_min, act_max) as i8;
                    unsafe { *o.add(s * oc_n + oc) = v };
                }
            } else {
                for (s, &a) in acc.iter().enumerate().take(live) {
                    let v = requant(p, q, a.wrapping_add(q.bias));
                    unsafe { *o.add(s * oc_n + oc) = v };
                }
            }
        }
        px += PX;
    }
}
