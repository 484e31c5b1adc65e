//! Cortex-M4 (ARMv7E-M DSP extension) conv kernel, CMSIS-NN style, and the add's element loop.
//!
//! Four output pixels at a time: each pixel's column is widened once into a stack buffer of
//! `i16` pairs in SXTB16 order, `[x0, x2 | x1, x3]` per 4 taps, the four pixels interleaved per
//! group of 4 taps (32 bytes) so one `ldm` fetches two pixels' taps. The column is read where it
//! lies: a 1×1 conv's pixel, or (`in_c` a multiple of 4) each kernel row of the window straight
//! from its input row, padded taps holding the input zero point; only other shapes (a
//! 3-channel stem) im2col into a byte buffer first. The inner loop then computes 4 pixels × 1
//! output channel: per 4 taps it loads one weight word (unaligned `ldr`, weights stay in flash
//! in OHWI order: no packing, no RAM), splits it with two `sxtb16`, fetches the four columns with
//! two `ldm` and issues 8 `smlad` (two 16×16 products each): 13 instructions per 16 MACs,
//! unrolled four times (0.84 per MAC with the loop branch; CMSIS-NN's 2×2
//! `arm_nn_mat_mult_kernel_s8_s16` takes 18 per 16). The same `asm!` block then requantises
//! the four accumulators and stores them (10 instructions an output, see
//! [`smlad_4x1_requant`]). That needs 13 registers: the block saves and restores `r6` itself
//! (LLVM keeps it as a base pointer, so it cannot be an operand).
//!
//! SMLAD adds two exact 16-bit products to a 32-bit accumulator with wrap-around (it only sets
//! the sticky Q flag on overflow), which is the wrapping `i32` sum the fast path relies on.
//!
//! The reduction runs over whole groups of 4 taps: a last partial group's column taps are
//! widened as zeros, so the weight word may run into the next channel's row (multiplied by
//! zero). Only the last channel's row, which ends the tensor, is copied into a zero-padded stack
//! buffer.
//!
//! The residual add's tabulated element loop is here too ([`add_tabulated`]), with the same
//! in-register output scaling.

use core::arch::asm;

use super::super::add::AddI8;
use super::super::conv2d::ConvI8;
use super::super::prepared::{direct_1x1, im2col, pixel_1x1, ChanQ};
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

/// Whether this kernel runs `p`: a reduction of at most [`MAX_K`] taps (its stack buffers), at
/// least one tap, at least one block of 4 output pixels (a fully connected layer, one pixel,
/// takes the portable loop), and output constants in the range of its in-register
/// requantisation ([`smlad_4x1_requant`]): every channel scaling down (`left = 0`, `right ≥ 2`:
/// `QuantizeMultiplier` of any real multiplier below 1/4), the output zero point and `act_min`
/// int8 values, `act_max = 127` (no activation, or ReLU). Anything else runs the portable loop,
/// which computes the same integers.
pub(crate) fn supports(p: &ConvI8, chan: &[ChanQ]) -> bool {
    let k = p.win.kh * p.win.kw * p.win.in_c;
    let i8_range = -128..=127;
    (1..=MAX_K).contains(&k)
        && p.win.out_h * p.win.out_w >= PX
        && i8_range.contains(&p.out_zp)
        && i8_range.contains(&p.act_min)
        && p.act_max == 127
        && chan
            .iter()
            .all(|q| q.left == 0 && (2..=31).contains(&q.right) && q.mult >= 0)
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

/// Output pixel `(oy, ox)`'s column widened into slot `slot` straight from the input, for
/// `in_c % 4 = 0` (every group of 4 taps then lies in one kernel row): the kernel rows inside the
/// image, each from the input row itself, in one `asm!` block (no im2col copy, no call per row);
/// a window that leaves the image first gets its `groups` groups filled with the input zero point
/// (what a padded tap holds, see [`super::super::prepared`]).
#[inline(always)]
fn widen_window(
    w: &Window,
    input: &[i8],
    (oy, ox): (usize, usize),
    zp: i8,
    cols: &mut Cols,
    slot: usize,
    groups: usize,
) {
    let (iy0, ky_s, ky_e) = w.rows(oy);
    let (ix0, kx_s, kx_e) = w.cols(ox);
    let ic = w.in_c;
    if !(ky_s == 0 && ky_e == w.kh && kx_s == 0 && kx_e == w.kw) {
        for g in cols.0.chunks_exact_mut(16).take(groups) {
            g[4 * slot..][..4].fill(zp as i16);
        }
    }
    // Per row `g` groups of 4 taps; between rows the input advances one image row and the
    // columns one kernel row (`kw·ic / 4` groups of 32 bytes).
    let (rows, g) = (ky_e - ky_s, (kx_e - kx_s) * ic / 4);
    if rows == 0 || g == 0 {
        return;
    }
    let src = ((iy0 + ky_s as isize) as usize * w.in_w) as isize + ix0 + kx_s as isize;
    let src = src as usize * ic;
    let row = w.in_w * ic;
    let g0 = (ky_s * w.kw + kx_s) * ic / 4;
    let g_row = w.kw * ic / 4;
    assert!(src + (rows - 1) * row + 4 * g <= input.len());
    assert!(16 * (g0 + (rows - 1) * g_row + g) <= cols.0.len());
    // SAFETY: rows `0..rows` read `4·g` bytes at `src + r·row` of `input` and write `g` groups
    // from group `g0 + r·g_row` of the slot, all inside (asserted above); alignment as in
    // [`widen`].
    unsafe {
        asm!(
            "2:",
            "mov {n}, {g}",
            "3:",
            "ldr {v}, [{src}], #4",
            "sxtb16 {e}, {v}",
            "sxtb16 {o}, {v}, ror #8",
            "strd {e}, {o}, [{dst}], #32",
            "subs {n}, {n}, #1",
            "bne 3b",
            "add {src}, {src}, {src_skip}",
            "add {dst}, {dst}, {dst_skip}",
            "subs {rows}, {rows}, #1",
            "bne 2b",
            src = inout(reg) input.as_ptr().add(src) => _,
            dst = inout(reg) cols.0.as_mut_ptr().add(16 * g0 + 4 * slot) => _,
            rows = inout(reg) rows => _,
            g = in(reg) g,
            src_skip = in(reg) row - 4 * g,
            dst_skip = in(reg) 32 * (g_row - g),
            n = out(reg) _,
            v = out(reg) _,
            e = out(reg) _,
            o = out(reg) _,
            options(nostack),
        );
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

/// Where [`smlad_4x1_requant`] stores a channel's four outputs (`out`, `out + stride`, …) and
/// the op's output constants; read by the `asm!` block through its address.
#[repr(C)]
struct Epi {
    out: *mut i8,
    stride: usize,
    zp: i32,
    act_min: i32,
}

/// One output of [`smlad_4x1_requant`]: the accumulator `$acc` (bias included) requantised
/// into `r4` with `mult` `r1`, `e − 1` in `r5`, `2^(e−2)` in `r8`, the zero point `r3`,
/// `act_min` `r6`; scratch `lr`. [`RightShift::apply`](super::super::requant::RightShift::apply) (one 64-bit multiply-add and a shift):
/// its constant `2³⁰ + 2^(30+e) − [x < 0]·2³¹` is formed in `lr:r4` from the sign of `x` (no
/// carry between the words: the low word is `2³⁰` or `3·2³⁰`), then `smlal`, `asr`, the zero
/// point, `ssat` to `[−128, 127]` and the lower clamp: 10 instructions.
macro_rules! requant_one {
    ($acc:literal) => {
        concat!(
            "and lr, ",
            $acc,
            ", #0x80000000\n",
            "orr lr, lr, #0x40000000\n",
            "add r4, r8, ",
            $acc,
            ", asr #31\n",
            "smlal lr, r4, ",
            $acc,
            ", r1\n",
            "asr r4, r4, r5\n",
            "add r4, r4, r3\n",
            "ssat r4, #8, r4\n",
            "cmp r4, r6\n",
            "it lt\n",
            "movlt r4, r6\n",
        )
    };
}

/// `[bias + Σ_k col_s[k]·w[k] for s in 0..4]` over `groups ≥ 1` groups of 4 taps of `cols` and
/// the weight row `w` (four groups per loop iteration, `groups mod 4` entering the first pass
/// late), then the four outputs requantised and stored from the same `asm!` block, the
/// accumulators never leaving their registers (LLVM's own epilogue spilled them and took about
/// twice the instructions). [`supports`] holds: `q.left = 0`, `q.right ∈ 2..=31`, `mult ≥ 0`,
/// `zp` and `act_min` in `[−128, 127]`, `act_max = 127`. Then every step is exact (see
/// [`RightShift`](super::super::requant::RightShift); `|x·mult| < 2⁶²` keeps the shifted value
/// and the zero point's sum far inside `i32`, where `saturating_add` is `add`), and the result is
/// the reference's `clamp(MBQM(acc, mult, −right) + zp, act_min, 127)`.
///
/// # Safety
/// `cols` holds `groups` widened groups; `w` is readable for `4·groups` bytes;
/// `epi.out + s·epi.stride` is writable for `s` in 0..4.
// Out of line: the caller's loop state then lives in callee-saved registers across the call
// (the block clobbers nearly every register, so inlined it spilled and reloaded all of it).
#[inline(never)]
unsafe fn smlad_4x1_requant(cols: *const i16, w: *const i8, groups: usize, q: &ChanQ, epi: &Epi) {
    let end = cols.add(16 * groups);
    // `r3` (`epi`) and `r4` (`q`) are pushed with `r6` (not an allowed operand) and popped
    // after the loop, whose scratch they are.
    asm!(
        "push {{r3, r4, r6}}",
        // Entry by `groups mod 4`: bit 1 into C, bit 0 into N.
        "lsls r2, r2, #31",
        "bcc 6f",
        "bmi 3f",
        "b 4f",
        "6:",
        "bmi 5f",
        "2:",
        group_4x1!(),
        "3:",
        group_4x1!(),
        "4:",
        group_4x1!(),
        "5:",
        group_4x1!(),
        "cmp r0, lr",
        "bne 2b",
        "pop {{r3, r4}}",
        "ldr r1, [r4, #{mult}]",
        "ldr r5, [r4, #{right}]",
        "ldm r3, {{r0, r2, r3, r6}}",
        "subs r5, r5, #1",
        "subs r4, r5, #1",
        "mov r8, #1",
        "lsl r8, r8, r4",
        requant_one!("r9"),
        "strb r4, [r0]",
        requant_one!("r10"),
        "strb r4, [r0, r2]",
        "add r0, r0, r2, lsl #1",
        requant_one!("r11"),
        "strb r4, [r0]",
        requant_one!("r12"),
        "strb r4, [r0, r2]",
        "pop {{r6}}",
        inout("r0") cols => _,
        inout("r1") w => _,
        // 0, 1, 2, 3: enter the first pass at its 1st, 4th, 3rd, 2nd group.
        inout("r2") groups % 4 => _,
        inout("r3") epi as *const Epi => _,
        inout("r4") q as *const ChanQ => _,
        inout("lr") end => _,
        out("r5") _,
        out("r8") _,
        inout("r9") q.bias => _,
        inout("r10") q.bias => _,
        inout("r11") q.bias => _,
        inout("r12") q.bias => _,
        mult = const core::mem::offset_of!(ChanQ, mult),
        right = const core::mem::offset_of!(ChanQ, right),
    );
}

/// The conv with `chan`'s folded biases (see [`super::super::prepared`]); the caller checked the
/// slice lengths and [`supports`].
pub(crate) fn conv(p: &ConvI8, chan: &[ChanQ], input: &[i8], output: &mut [i8]) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let (full, ceil) = (k / 4, k.div_ceil(4));
    let direct = direct_1x1(w);
    // Rows straight from the input when every group of 4 taps lies in one kernel row.
    let rows_in_place = !direct && w.in_c.is_multiple_of(4);
    let zp = p.in_zp.clamp(-128, 127) as i8;
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
        // A last block of fewer than 4 pixels ends at the last pixel: it recomputes (and
        // rewrites, with the same bytes) some of the previous block's (`n_px ≥ 4`: `supports`).
        px = px.min(n_px - PX);
        for slot in 0..PX {
            let (oy, ox) = ((px + slot) / w.out_w, (px + slot) % w.out_w);
            if direct {
                widen(pixel_1x1(w, input, oy, ox), &mut cols, slot, 0);
            } else if rows_in_place {
                widen_window(w, input, (oy, ox), zp, &mut cols, slot, ceil);
            } else {
                im2col(w, input, oy, ox, zp, &mut raw[..k]);
                widen(&raw[..k], &mut cols, slot, 0);
            }
        }
        let out = &mut output[px * oc_n..][..PX * oc_n];
        let mut epi = Epi {
            out: out.as_mut_ptr(),
            stride: oc_n,
            zp: p.out_zp,
            act_min: p.act_min,
        };
        // Rows read in place, by pointer, with no bounds checks in the loop; one call site.
        let mut row = p.weights.as_ptr();
        for (oc, q) in chan[..oc_n].iter().enumerate() {
            let w = if oc < whole {
                row
            } else {
                last[..k].copy_from_slice(&p.weights[oc * k..][..k]);
                last.as_ptr()
            };
            // SAFETY: `cols` holds `ceil ≥ 1` widened groups (widen above); `w` has `4·ceil`
            // readable bytes: channel `oc < whole`'s row at `weights + oc·k` (`whole` above),
            // or `last` (`4·ceil ≤ MAX_K` rounded up to 4); `out` has `PX·oc_n` bytes and
            // `oc < oc_n`.
            unsafe {
                epi.out = out.as_mut_ptr().add(oc);
                smlad_4x1_requant(cols.0.as_ptr(), w, ceil, q, &epi);
            }
            row = row.wrapping_add(k);
        }
        px += PX;
    }
}

/// The tabulated residual add's element loop (`add_i8_scalar`, `ta`/`tb` holding each input
/// value's rescaled term) in one `asm!` block, 17 instructions an element (LLVM's, with
/// [`RightShift`](super::super::requant::RightShift), about 33): the two table loads, `qadd`
/// (the saturating sum), the output scaling as in [`smlad_4x1_requant`] with the zero point
/// folded into the constant's top word, `ssat` and the lower clamp. Returns `false`, having
/// written nothing, unless `p` is in its range: `out_mult ≥ 0`, `out_shift ∈ −23..=−2` (`e − 1 ≤
/// 22` keeps `zp·2^(e−1)` plus the product's top word, below 2³⁰, inside `i32`), `out_zp` and
/// `act_min` int8 values, `act_max = 127`, all lengths equal.
pub(crate) fn add_tabulated(
    p: &AddI8,
    ta: &[i32; 256],
    tb: &[i32; 256],
    a: &[i8],
    b: &[i8],
    out: &mut [i8],
) -> bool {
    let i8_range = -128..=127;
    if !(p.out_mult >= 0
        && (-23..=-2).contains(&p.out_shift)
        && i8_range.contains(&p.out_zp)
        && i8_range.contains(&p.act_min)
        && p.act_max == 127
        && a.len() == out.len()
        && b.len() == out.len()
        && !out.is_empty())
    {
        return false;
    }
    let e1 = p.out_shift.unsigned_abs() - 1;
    // `2^(e−2) + zp·2^(e−1)`: the constant's top word with the zero point (see the docs above).
    let chi = (1i32 << (e1 - 1)) + (p.out_zp << e1);
    let end = out.as_mut_ptr_range().end;
    // SAFETY: `a`, `b` and `out` have `out.len() ≥ 1` elements (checked above), read and written
    // once each by post-incremented pointers until `out` reaches `end`; the tables are indexed
    // by a byte. `r6` is saved and restored around its use (not an allowed operand).
    unsafe {
        asm!(
            "push {{r6}}",
            "2:",
            "ldrb lr, [r0], #1",
            "ldrb r6, [r1], #1",
            "ldr r12, [r4, lr, lsl #2]",
            "ldr r6, [r5, r6, lsl #2]",
            "qadd r12, r12, r6",
            "and lr, r12, #0x80000000",
            "orr lr, lr, #0x40000000",
            "add r6, r9, r12, asr #31",
            "smlal lr, r6, r12, r8",
            "asr r6, r6, r10",
            "ssat r6, #8, r6",
            "cmp r6, r11",
            "it lt",
            "movlt r6, r11",
            "strb r6, [r2], #1",
            "cmp r2, r3",
            "bne 2b",
            "pop {{r6}}",
            inout("r0") a.as_ptr() => _,
            inout("r1") b.as_ptr() => _,
            inout("r2") out.as_mut_ptr() => _,
            in("r3") end,
            in("r4") ta.as_ptr(),
            in("r5") tb.as_ptr(),
            in("r8") p.out_mult,
            in("r9") chi,
            in("r10") e1,
            in("r11") p.act_min,
            out("r12") _,
            out("lr") _,
        );
    }
    true
}
