//! Cortex-M4 (ARMv7E-M DSP extension) conv kernel, CMSIS-NN style.
//!
//! Four output pixels at a time: each pixel's column (the input itself for 1×1, the kernel rows
//! read in place where `in_c % 4 == 0`, else im2col; padded taps = input zero point) is widened once into a stack buffer of `i16` pairs in SXTB16 order,
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
//! zero). Only the last channel, whose row ends the tensor, takes the scalar tail instead.

use core::arch::asm;

use super::super::conv2d::ConvI8;
use super::super::prepared::{direct_1x1, im2col, pixel_1x1, requant, ChanQ};
use super::super::Window;

/// Largest `kh·kw·in_c` this kernel takes (3×3×64): its stack buffers are `MAX_K` bytes (raw
/// column) + `8·MAX_K` bytes (four widened columns) = 5 184 B. Larger reductions run the
/// portable path.
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

/// Widens `col` into slot `slot` (0..4) of `cols` from group `g0` on: group `g0 + g` of 4 taps
/// becomes the `i16`s `[x0, x2, x1, x3]` at `cols[16(g0 + g) + 4·slot..]`; a last partial group
/// is zero-filled.
#[inline(always)]
fn widen(col: &[i8], cols: &mut Cols, slot: usize, g0: usize) {
    let full = col.len() / 4;
    let rest = &col[4 * full..];
    // Group `g` of every slot lies in `cols[16g..16g + 16]`.
    assert!(16 * (g0 + full + usize::from(!rest.is_empty())) <= cols.0.len());
    if full > 0 {
        // SAFETY: `full ≥ 1` groups of 4 bytes are read from `col` (len ≥ 4·full) and written
        // to `cols` at 32-byte strides from group `g0` of the slot, inside `cols` (asserted
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
                dst = inout(reg) cols.0.as_mut_ptr().add(16 * g0 + 4 * slot) => _,
                n = inout(reg) full => _,
                v = out(reg) _,
                e = out(reg) _,
                o = out(reg) _,
                options(nostack),
            );
        }
    }
    if !rest.is_empty() {
        let d = &mut cols.0[16 * (g0 + full) + 4 * slot..][..4];
        let at = |i: usize| rest.get(i).map_or(0, |&x| x as i16);
        d.copy_from_slice(&[at(0), at(2), at(1), at(3)]);
    }
}

/// Slot `slot`'s groups `g0..g0 + n` all hold the input zero point (padded taps).
#[inline(always)]
fn fill(cols: &mut Cols, slot: usize, g0: usize, n: usize, zp: i16) {
    for g in g0..g0 + n {
        cols.0[16 * g + 4 * slot..][..4].fill(zp);
    }
}

/// Widens output pixel `(oy, ox)`'s column straight from the input, without the `im2col` copy:
/// with `in_c % 4 == 0` every in-image run of a kernel row is whole groups of 4 taps, and every
/// padded tap is the zero point.
#[inline(always)]
fn widen_window(
    w: &Window,
    input: &[i8],
    oy: usize,
    ox: usize,
    zp: i16,
    cols: &mut Cols,
    slot: usize,
) {
    let (iy0, ky_s, ky_e) = w.rows(oy);
    let (ix0, kx_s, kx_e) = w.cols(ox);
    let ic4 = w.in_c / 4;
    let row = w.kw * ic4;
    for ky in 0..w.kh {
        let g = ky * row;
        if ky < ky_s || ky >= ky_e {
            fill(cols, slot, g, row, zp);
            continue;
        }
        fill(cols, slot, g, kx_s * ic4, zp);
        let iy = (iy0 + ky as isize) as usize;
        let src = ((iy * w.in_w) as isize + ix0 + kx_s as isize) as usize * w.in_c;
        widen(
            &input[src..][..(kx_e - kx_s) * w.in_c],
            cols,
            slot,
            g + kx_s * ic4,
        );
        fill(cols, slot, g + kx_e * ic4, (w.kw - kx_e) * ic4, zp);
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
/// weight row `w`: pairs of groups per loop iteration, then the odd group.
///
/// # Safety
/// `cols` holds `groups` widened groups; `w` is readable for `4·groups` bytes.
#[inline(always)]
unsafe fn smlad_4x1(cols: *const i16, w: *const i8, groups: usize) -> [i32; 4] {
    let (mut c0, mut c1, mut c2, mut c3) = (0i32, 0i32, 0i32, 0i32);
    let (mut a, mut w) = (cols, w);
    if groups % 2 == 1 {
        // `r6` is saved and restored around its use as scratch (not an allowed operand).
        asm!(
            "push {{r6}}",
            group_4x1!(),
            "pop {{r6}}",
            inout("r0") a,
            inout("r1") w,
            out("r2") _,
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
    }
    let pairs = groups / 2;
    if pairs > 0 {
        let end = a.add(32 * pairs);
        asm!(
            "push {{r6}}",
            "2:",
            group_4x1!(),
            group_4x1!(),
            "cmp r0, lr",
            "bne 2b",
            "pop {{r6}}",
            inout("r0") a => _,
            inout("r1") w => _,
            in("lr") end,
            out("r2") _,
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
    }
    [c0, c1, c2, c3]
}

/// The conv with `chan`'s folded biases (see [`super::super::prepared`]); the caller checked the
/// slice lengths and [`supports`].
pub(crate) fn conv(p: &ConvI8, chan: &[ChanQ], input: &[i8], output: &mut [i8]) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let (full, tail) = (k / 4, k % 4);
    let ceil = k.div_ceil(4);
    let direct = direct_1x1(w);
    let rowwise = w.in_c % 4 == 0;
    let zp = p.in_zp.clamp(-128, 127) as i8;
    let mut raw = [0i8; MAX_K];
    let mut cols = Cols([0; 4 * PX * GROUPS]);
    let n_px = w.out_h * w.out_w;
    let oc_n = p.out_c;
    let mut px = 0;
    while px < n_px {
        // Past the last pixel the slots repeat it: computed, never written.
        let live = (n_px - px).min(PX);
        for slot in 0..PX {
            let q = px + slot.min(live - 1);
            let (oy, ox) = (q / w.out_w, q % w.out_w);
            if direct {
                widen(pixel_1x1(w, input, oy, ox), &mut cols, slot, 0);
            } else if rowwise {
                widen_window(w, input, oy, ox, zp as i16, &mut cols, slot);
            } else {
                im2col(w, input, oy, ox, zp, &mut raw[..k]);
                widen(&raw[..k], &mut cols, slot, 0);
            }
        }
        let out = &mut output[px * oc_n..][..live * oc_n];
        for (oc, q) in chan.iter().enumerate().take(oc_n) {
            let row = oc * k;
            // Whole groups run into the next row's first bytes (times the zero-filled taps);
            // the tensor's last row stops at its end and takes the scalar tail.
            let groups = if row + 4 * ceil <= p.weights.len() {
                ceil
            } else {
                full
            };
            let wr = &p.weights[row..];
            let mut acc = if groups > 0 {
                // SAFETY: `cols` holds `ceil ≥ groups` widened groups (widen above); `wr` has
                // `4·groups` readable bytes (checked just above, or `4·full ≤ k`).
                unsafe { smlad_4x1(cols.0.as_ptr(), wr.as_ptr(), groups) }
            } else {
                [0; 4]
            };
            if groups == full {
                for j in 0..tail {
                    let x = wr[4 * full + j] as i32;
                    let pos = 16 * full + [0, 2, 1][j];
                    for (s, a) in acc.iter_mut().enumerate() {
                        *a = a.wrapping_add(cols.0[pos + 4 * s] as i32 * x);
                    }
                }
            }
            for (s, &a) in acc.iter().enumerate().take(live) {
                out[s * oc_n + oc] = requant(p, q, a.wrapping_add(q.bias));
            }
        }
        px += PX;
    }
}
