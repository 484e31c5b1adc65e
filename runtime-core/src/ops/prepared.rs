//! The fast int8 conv / fully connected path: load-time preparation and the blocked driver.
//!
//! [`conv2d_i8`](super::conv2d::conv2d_i8) and
//! [`fully_connected_i8`](super::fully_connected::fully_connected_i8) stay the reference (they are
//! what the parity tests check against naive i64 formulas); the model executor runs the kernels
//! here instead, which compute the same integers in a different order:
//!
//! * **Bias fold** (once, at load): `bias'[c] = bias[c] − in_zp·Σ_k w[c][k]`, so that
//!   `acc = bias'[c] + Σ_k x'[k]·w[c][k]` where `x'` is the im2col column with *padded taps
//!   holding the input zero point*. Expanding `x' = (x' − zp) + zp` shows this is TFLite's
//!   `bias + Σ (x − zp)·w` over the in-image taps, exactly: the inner loop has no subtraction.
//!   All accumulation is wrapping `i32`: two's-complement addition is exact modulo 2³², and the
//!   loader's bounds (`|bias| ≤ 2³⁰`, `K ≤ 32768`) keep the true accumulator inside `i32`, so the
//!   wrapped sum *is* the true sum whatever the order or the intermediate values.
//! * **im2col of a few pixels** into a stack buffer (1×1 convs read the input in place), then a
//!   small register-blocked GEMM over output channels, then the same
//!   [`multiply_by_quantized_multiplier`] requantisation as the reference.
//!
//! Back ends, chosen per op at run time: x86-64 AVX-512 VNNI or AVX2 (`std` feature, runtime
//! detection, weights packed once at load, [`super::arch::x86`]), aarch64 NEON `sdot` (runtime
//! detection with `std`) or `smull`/`sadalp` (every aarch64 build, `no_std` too; weights packed
//! once at load, [`super::arch::aarch64`]), Cortex-M4 SXTB16/SMLAD ([`super::arch::cortex_m`],
//! thumbv7em targets), and the portable loop below (every other target, and the fallback for
//! shapes a back end's fixed buffers do not hold).

use alloc::vec::Vec;

use super::conv2d::{conv2d_i8, ConvI8};
use super::fully_connected::FcI8;
use super::requant::{multiply_by_quantized_multiplier_split, SHIFT_MAX, SHIFT_MIN};
use super::{check, requant_lens_ok, window_lens_ok, KernelError, Window};

/// Whether this build can choose the x86-64 AVX-512 VNNI kernel (with `std`, by run-time CPU
/// detection); without `std` the host runs the portable loop.
pub const X86_SIMD_BUILD: bool = cfg!(all(feature = "std", target_arch = "x86_64"));

/// Whether this build can choose the aarch64 NEON `sdot` kernel: an aarch64 build with `std`
/// (run-time detection of FEAT_DotProd) or with `+dotprod`. Every aarch64 build has the NEON
/// `smull` kernel.
pub const AARCH64_SDOT_BUILD: bool = cfg!(all(
    target_arch = "aarch64",
    target_feature = "neon",
    any(feature = "std", target_feature = "dotprod")
));

/// Largest `kh·kw·in_c` the portable path im2cols (a stack buffer of this many bytes); larger
/// reductions (never in the zoo or the exported ResNets) run the reference kernel.
pub const PORTABLE_MAX_K: usize = 4608;

/// What [`conv2d_i8_prepared`] needs beyond the op's parameters, computed once by
/// [`PreparedI8::new`] (the model loader does this for every int8 conv and fc).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PreparedI8 {
    /// Per output channel: the folded bias and the requantisation pair, decoded once (the
    /// model file's little-endian bytes cost four byte loads each on a Cortex-M).
    pub(crate) chan: Vec<ChanQ>,
    /// Multipliers `≥ 0`, shifts and the input zero point in the loader's ranges: the fast
    /// path's preconditions (otherwise every run takes the reference kernel).
    in_range: bool,
    /// Weights packed for the x86-64 (AVX-512 VNNI, else AVX2) or aarch64 (NEON `sdot`, else
    /// `smull`) kernel, when the CPU has one and the op fits it.
    #[cfg(any(
        all(feature = "std", target_arch = "x86_64"),
        all(target_arch = "aarch64", target_feature = "neon")
    ))]
    pub(crate) packed: Option<super::arch::Packed>,
}

/// One output channel's constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct ChanQ {
    /// `bias[c] − in_zp·Σ_k w[c][k]` (wrapping; see the module docs).
    pub bias: i32,
    pub mult: i32,
    /// `max(shift, 0)` and `max(−shift, 0)`.
    pub left: u32,
    pub right: u32,
}

impl PreparedI8 {
    /// Folds the input zero point into the bias (and, with `std` on an x86-64 CPU with AVX-512
    /// VNNI, packs the weights). `p`'s slices must match its geometry (the loader checks this;
    /// otherwise the fold is computed on what is there and the kernel reports the mismatch).
    pub fn new(p: &ConvI8) -> Self {
        let k = p.win.kh * p.win.kw * p.win.in_c;
        let n = p
            .out_c
            .min(p.bias.len())
            .min(p.mult.len())
            .min(p.shift.len());
        let chan: Vec<ChanQ> = (0..n)
            .map(|c| {
                let wsum = p
                    .weights
                    .get(c * k..(c + 1) * k)
                    .unwrap_or(&[])
                    .iter()
                    .fold(0i32, |a, &w| a.wrapping_add(w as i32));
                let shift = p.shift.get(c);
                ChanQ {
                    bias: p.bias.get(c).wrapping_sub(p.in_zp.wrapping_mul(wsum)),
                    mult: p.mult.get(c),
                    left: shift.clamp(0, SHIFT_MAX) as u32,
                    right: (-shift).clamp(0, -SHIFT_MIN) as u32,
                }
            })
            .collect();
        // The split requantisation holds for the loader's ranges; anything else (only a
        // direct caller can pass it) runs the reference kernel.
        let in_range = (0..n)
            .all(|c| p.mult.get(c) >= 0 && (SHIFT_MIN..=SHIFT_MAX).contains(&p.shift.get(c)))
            && (-128..=127).contains(&p.in_zp);
        PreparedI8 {
            #[cfg(any(
                all(feature = "std", target_arch = "x86_64"),
                all(target_arch = "aarch64", target_feature = "neon")
            ))]
            packed: if in_range {
                super::arch::simd::pack(p, &chan)
            } else {
                None
            },
            chan,
            in_range,
        }
    }

    /// Like [`PreparedI8::new`] but never packs for a SIMD kernel: the op then runs the
    /// portable loop (on a Cortex-M4 build, the DSP kernel). For tests and comparisons.
    pub fn new_portable(p: &ConvI8) -> Self {
        #[allow(unused_mut)]
        let mut prep = Self::new(p);
        #[cfg(any(
            all(feature = "std", target_arch = "x86_64"),
            all(target_arch = "aarch64", target_feature = "neon")
        ))]
        {
            prep.packed = None;
        }
        prep
    }

    /// Like [`PreparedI8::new`] but packed for the x86-64 AVX2 kernel even where AVX-512 VNNI
    /// is available; `None` if this build (no `std`, not x86-64) or CPU cannot run it. For tests.
    pub fn new_avx2(p: &ConvI8) -> Option<Self> {
        #[allow(unused_mut)]
        let mut prep = Self::new_portable(p);
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        if prep.in_range {
            prep.packed = Some(super::arch::x86::pack_avx2(p, &prep.chan)?);
            return Some(prep);
        }
        let _ = &mut prep;
        None
    }

    /// Like [`PreparedI8::new`] but packed for the aarch64 NEON `smull`/`sadalp` kernel even
    /// where `sdot` is available; `None` if this build is not for aarch64 (or `p`'s constants
    /// are out of the fast path's ranges, or its reduction too long). For tests.
    pub fn new_neon(p: &ConvI8) -> Option<Self> {
        #[allow(unused_mut)]
        let mut prep = Self::new_portable(p);
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        if prep.in_range {
            prep.packed = Some(super::arch::aarch64::pack_smull(p, &prep.chan)?);
            return Some(prep);
        }
        let _ = &mut prep;
        None
    }

    /// Preparation of a fully connected layer (a 1×1 convolution of a 1×1×`in_len` image).
    pub fn new_fc(p: &FcI8) -> Self {
        Self::new(&fc_as_conv(p))
    }

    /// Heap bytes this preparation holds (folded biases, packed weights): the memory cost of the
    /// fast path on top of the model file.
    pub fn heap_bytes(&self) -> usize {
        let b = self.chan.capacity() * core::mem::size_of::<ChanQ>();
        #[cfg(any(
            all(feature = "std", target_arch = "x86_64"),
            all(target_arch = "aarch64", target_feature = "neon")
        ))]
        let b = b + self.packed.as_ref().map_or(0, |x| x.heap_bytes());
        b
    }

    /// Which kernel runs this op on this machine: `"avx512vnni"`, `"avx2"`, `"neon-sdot"`,
    /// `"neon-smull"`, `"cortex-m4-dsp"` or `"portable"` (shapes too large for the fixed
    /// buffers fall back to `"reference"`).
    pub fn backend(&self, p: &ConvI8) -> &'static str {
        if !self.in_range {
            return "reference";
        }
        #[cfg(any(
            all(feature = "std", target_arch = "x86_64"),
            all(target_arch = "aarch64", target_feature = "neon")
        ))]
        if let Some(x) = &self.packed {
            return x.backend();
        }
        #[cfg(rt_dsp)]
        if super::arch::cortex_m::supports(p, &self.chan) {
            return "cortex-m4-dsp";
        }
        if direct_1x1(&p.win) || p.win.kh * p.win.kw * p.win.in_c <= PORTABLE_MAX_K {
            "portable"
        } else {
            "reference"
        }
    }
}

/// A fully connected layer seen as a 1×1 convolution over a 1×1×`in_len` image (its weights,
/// `[out][in]`, are then OHWI with H = W = 1).
pub(crate) fn fc_as_conv<'a>(p: &FcI8<'a>) -> ConvI8<'a> {
    ConvI8 {
        win: Window {
            in_h: 1,
            in_w: 1,
            in_c: p.in_len,
            out_h: 1,
            out_w: 1,
            kh: 1,
            kw: 1,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
        },
        out_c: p.out_len,
        weights: p.weights,
        bias: p.bias,
        mult: p.mult,
        shift: p.shift,
        in_zp: p.in_zp,
        out_zp: p.out_zp,
        act_min: p.act_min,
        act_max: p.act_max,
    }
}

/// A 1×1 window that never leaves the image: each pixel's column is `in_c` contiguous input
/// bytes, read in place.
pub(crate) fn direct_1x1(w: &Window) -> bool {
    w.kh == 1
        && w.kw == 1
        && w.pad_top == 0
        && w.pad_left == 0
        && w.out_h.saturating_sub(1) * w.stride_h < w.in_h
        && w.out_w.saturating_sub(1) * w.stride_w < w.in_w
}

/// Writes output pixel `(oy, ox)`'s column (`kh·kw·in_c` values, OHWI tap order) into `dst`,
/// padded taps holding `zp`, each value as the kernel reads it ([`ColumnValue`]). The one
/// im2col of the portable loop and the SIMD kernels (`dst` is the column alone: the SIMD
/// buffers' padding up to `kp` stays the zeros they start with). On a Cortex-M4 (only layers
/// whose `in_c` is not a multiple of 4, e.g. a 3-channel stem, im2col there) one out-of-line
/// copy serves both kernels: flash.
#[cfg_attr(not(rt_dsp), inline(always))]
#[cfg_attr(rt_dsp, inline(never))]
pub(crate) fn im2col<T: ColumnValue>(
    w: &Window,
    input: &[i8],
    oy: usize,
    ox: usize,
    zp: i8,
    dst: &mut [T],
) {
    let (iy0, ky_s, ky_e) = w.rows(oy);
    let (ix0, kx_s, kx_e) = w.cols(ox);
    let ic = w.in_c;
    let row = w.kw * ic;
    let full = ky_s == 0 && ky_e == w.kh && kx_s == 0 && kx_e == w.kw;
    if !full {
        dst.fill(T::from_input(zp));
    }
    let n = (kx_e - kx_s) * ic;
    for ky in ky_s..ky_e {
        let iy = (iy0 + ky as isize) as usize;
        let src = ((iy * w.in_w) as isize + ix0 + kx_s as isize) as usize * ic;
        T::copy_from_input(&mut dst[ky * row + kx_s * ic..][..n], &input[src..][..n]);
    }
}

/// An im2col column value: an input byte as a kernel multiplies it.
pub(crate) trait ColumnValue: Copy {
    /// The value of input byte `v`.
    fn from_input(v: i8) -> Self;
    /// `dst[i] = from_input(src[i])` (equal lengths).
    #[inline(always)]
    fn copy_from_input(dst: &mut [Self], src: &[i8]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_input(s);
        }
    }
}

/// The byte itself (the portable loop, NEON, the Cortex-M DSP kernel).
impl ColumnValue for i8 {
    #[inline(always)]
    fn from_input(v: i8) -> i8 {
        v
    }
    #[inline(always)]
    fn copy_from_input(dst: &mut [i8], src: &[i8]) {
        dst.copy_from_slice(src);
    }
}

/// Sign-extended (x86 AVX2's `vpmaddwd`).
impl ColumnValue for i16 {
    #[inline(always)]
    fn from_input(v: i8) -> i16 {
        v as i16
    }
}

/// Sign bit flipped, `x + 128` (x86 VNNI's unsigned `vpdpbusd` operand).
impl ColumnValue for u8 {
    #[inline(always)]
    fn from_input(v: i8) -> u8 {
        v as u8 ^ 0x80
    }
}

/// The input slice of pixel `(oy, ox)` of a [`direct_1x1`] conv.
#[inline(always)]
pub(crate) fn pixel_1x1<'x>(w: &Window, input: &'x [i8], oy: usize, ox: usize) -> &'x [i8] {
    let px = oy * w.stride_h * w.in_w + ox * w.stride_w;
    &input[px * w.in_c..][..w.in_c]
}

/// `clamp(MBQM(acc, mult, shift) + out_zp, act_min, act_max)`: the reference's epilogue.
#[inline(always)]
pub(crate) fn requant(p: &ConvI8, c: &ChanQ, acc: i32) -> i8 {
    multiply_by_quantized_multiplier_split(acc, c.mult, c.left, c.right)
        .saturating_add(p.out_zp)
        .clamp(p.act_min, p.act_max) as i8
}

fn lens_ok(p: &ConvI8, prep: &PreparedI8, input: usize, output: usize) -> bool {
    let w = &p.win;
    window_lens_ok(w, p.out_c, w.in_c, input, output, p.weights.len())
        && requant_lens_ok(p.out_c, p.bias, p.mult, p.shift)
        && prep.chan.len() == p.out_c
}

/// int8 convolution on the fast path; bit-identical to [`conv2d_i8`] for any `prep` made by
/// [`PreparedI8::new`] from the same `p`. Multipliers must be `≥ 0` (the loader's rule).
pub fn conv2d_i8_prepared(
    p: &ConvI8,
    prep: &PreparedI8,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    check(lens_ok(p, prep, input.len(), output.len()))?;
    if !prep.in_range {
        return conv2d_i8(p, input, output);
    }
    #[cfg(any(
        all(feature = "std", target_arch = "x86_64"),
        all(target_arch = "aarch64", target_feature = "neon")
    ))]
    if let Some(pk) = &prep.packed {
        if super::arch::simd::conv(p, pk, input, output) {
            return Ok(());
        }
    }
    #[cfg(rt_dsp)]
    if super::arch::cortex_m::supports(p, &prep.chan) {
        super::arch::cortex_m::conv(p, &prep.chan, input, output);
        return Ok(());
    }
    conv_portable(p, &prep.chan, input, output)
}

/// Fewest MACs one task of the threaded conv gets: below this the hand-off costs more than it
/// saves. A hand-off to a spinning helper costs a few hundred ns, and the small convs of the
/// study's models run at 10–15 G MACs/s on one AVX2 core, so 8 K MACs (≈ 0.6 µs) is about where
/// a second tile starts to pay. Measured on the 2-core Zen 3 (AVX2), study backbone at 2
/// threads: 47.5 µs unsplit, 36.8 µs with 16 K, 34.5 µs with 8 K, 34.4 µs with 4 K.
pub const MIN_MACS_PER_TASK: usize = 1 << 13;

/// The team an inference holds (`threads` feature), or nothing: then every conv runs on the
/// calling thread.
#[cfg(feature = "threads")]
pub type Team<'t> = Option<&'t crate::team::Engaged>;
/// The team an inference holds (`threads` feature), or nothing: then every conv runs on the
/// calling thread.
#[cfg(not(feature = "threads"))]
pub type Team<'t> = Option<&'t core::convert::Infallible>;

/// [`conv2d_i8_prepared`] split over the held `team`, in as many tasks as the conv has
/// [`MIN_MACS_PER_TASK`] MACs for, at most `threads` ([`conv2d_i8_prepared_split`]): one
/// equal tile per thread (four per thread measured 8 % slower on the loaded 2-core Zen 3, where
/// a helper that claims a tile and is then descheduled makes the owner wait).
pub fn conv2d_i8_prepared_threads(
    p: &ConvI8,
    prep: &PreparedI8,
    input: &[i8],
    output: &mut [i8],
    team: Team,
    threads: usize,
) -> Result<(), KernelError> {
    split(p, prep, input, output, team, conv_tasks(p, threads))
}

/// Tiles [`conv2d_i8_prepared_threads`] splits this conv into over up to `threads` threads
/// (1: it runs on the calling thread), before the team's size bounds it further.
pub fn conv_tasks(p: &ConvI8, threads: usize) -> usize {
    let w = &p.win;
    let macs = w.out_h * w.out_w * p.out_c * w.kh * w.kw * w.in_c;
    threads.min(macs / MIN_MACS_PER_TASK)
}

/// [`conv2d_i8_prepared`] with the output split into up to `tasks` tiles run at once by the
/// process's helper team (`threads` feature; the x86-64 and aarch64 SIMD kernels and the
/// portable loop): contiguous runs of whole 4-pixel blocks, or, on x86-64 where a layer has too
/// few pixels to share (ResNet-18's last stage at 84 px has 9), runs of 16-channel blocks,
/// whichever balances better. Every output byte is computed exactly as on one thread.
/// Everything else (another path, `tasks ≤ 1`, every helper busy with other inferences) runs
/// on the calling thread. Public so that tests can split convs of any
/// size; the executor goes through [`conv2d_i8_prepared_threads`].
pub fn conv2d_i8_prepared_split(
    p: &ConvI8,
    prep: &PreparedI8,
    input: &[i8],
    output: &mut [i8],
    tasks: usize,
) -> Result<(), KernelError> {
    #[cfg(feature = "threads")]
    {
        let team = crate::team::engage(tasks);
        split(p, prep, input, output, team.as_ref(), tasks)
    }
    #[cfg(not(feature = "threads"))]
    {
        let _ = tasks;
        conv2d_i8_prepared(p, prep, input, output)
    }
}

#[allow(unused_variables)]
fn split(
    p: &ConvI8,
    prep: &PreparedI8,
    input: &[i8],
    output: &mut [i8],
    team: Team,
    tasks: usize,
) -> Result<(), KernelError> {
    #[cfg(feature = "threads")]
    if let Some(team) = team {
        let tasks = tasks.min(team.size());
        if tasks > 1 && prep.in_range && lens_ok(p, prep, input.len(), output.len()) {
            let n_px = p.win.out_h * p.win.out_w;
            let out = OutPtr(output.as_mut_ptr());
            #[cfg(target_arch = "x86_64")]
            if let Some(pk) = prep.packed.as_ref().filter(|pk| pk.fits(p)) {
                let tiles = Tiles::new(n_px, pk.blocks(), tasks);
                let task = |i: usize| {
                    let (pixels, blocks) = tiles.tile(i);
                    // SAFETY: `supports`; `out` is the whole output (lengths checked above),
                    // alive until `run` returns; the tiles are disjoint.
                    unsafe { super::arch::x86::conv_tile(p, pk, input, out.get(), pixels, blocks) }
                };
                team.run(tiles.count, &task);
                return Ok(());
            }
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            if let Some(pk) = prep.packed.as_ref().filter(|pk| pk.fits(p)) {
                pixel_tiles(team, n_px, p.out_c, tasks, &out, &|pixels, dst| {
                    // Lengths checked above and by `pixel_tiles`: it cannot refuse.
                    let _ = super::arch::aarch64::conv_pixels(p, pk, input, dst, pixels);
                });
                return Ok(());
            }
            if portable_runs(p, prep) {
                pixel_tiles(team, n_px, p.out_c, tasks, &out, &|pixels, dst| {
                    conv_portable_pixels(p, &prep.chan, input, dst, pixels)
                });
                return Ok(());
            }
        }
    }
    conv2d_i8_prepared(p, prep, input, output)
}

/// Runs `kernel(pixels, dst)` over up to `tasks` tiles of whole 4-pixel blocks on the held
/// `team`, `dst` being the tile's own bytes of the output behind `out` (`n_px·oc` bytes): the
/// split for kernels that write whole pixels (the portable loop, aarch64's NEON kernels).
#[cfg(feature = "threads")]
fn pixel_tiles(
    team: &crate::team::Engaged,
    n_px: usize,
    oc: usize,
    tasks: usize,
    out: &OutPtr,
    kernel: &(dyn Fn(core::ops::Range<usize>, &mut [i8]) + Sync),
) {
    // Whole pixels, so each tile's output bytes are one contiguous run.
    let tiles = Tiles::new(n_px, 1, tasks);
    let task = |i: usize| {
        let (pixels, _) = tiles.tile(i);
        // SAFETY: `out` is the whole output (`n_px·oc` bytes, checked by the caller), alive
        // until `run` returns; the tiles' pixel ranges, hence byte ranges, are disjoint.
        let dst = unsafe {
            core::slice::from_raw_parts_mut(out.get().add(pixels.start * oc), pixels.len() * oc)
        };
        kernel(pixels, dst);
    };
    team.run(tiles.count, &task);
}

/// Whether [`conv2d_i8_prepared`] runs `p` on the portable loop (no SIMD back end took it, and
/// its column fits the stack buffer).
#[cfg(feature = "threads")]
fn portable_runs(p: &ConvI8, prep: &PreparedI8) -> bool {
    #[cfg(any(
        all(feature = "std", target_arch = "x86_64"),
        all(target_arch = "aarch64", target_feature = "neon")
    ))]
    if prep.packed.is_some() {
        return false;
    }
    #[cfg(rt_dsp)]
    if super::arch::cortex_m::supports(p, &prep.chan) {
        return false;
    }
    direct_1x1(&p.win) || p.win.kh * p.win.kw * p.win.in_c <= PORTABLE_MAX_K
}

/// Fewest elements one task of a split add gets (a few µs of work: less costs more to hand off
/// than it saves).
pub const MIN_ADD_PER_TASK: usize = 2048;

/// Runs [`add_i8_threads`] splits an add of `len` elements into over up to `threads` threads
/// (1: it runs on the calling thread).
pub fn add_tasks(len: usize, threads: usize) -> usize {
    threads.min(len / MIN_ADD_PER_TASK)
}

/// [`add_i8`](super::add::add_i8) split over the held `team` in contiguous runs of at least
/// [`MIN_ADD_PER_TASK`] elements, at most `threads`; the same bytes as on one thread.
pub fn add_i8_threads(
    p: &super::add::AddI8,
    lut: Option<&super::add_lut::AddLut>,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
    team: Team,
    threads: usize,
) -> Result<(), KernelError> {
    check(a.len() == output.len() && b.len() == output.len())?;
    #[cfg(feature = "threads")]
    if let Some(team) = team {
        let n = output.len();
        let tasks = add_tasks(n, threads.min(team.size()));
        if tasks > 1 {
            // Runs of whole 16-element steps (the SIMD loop's), the last one taking the rest.
            let per = n.div_ceil(tasks).div_ceil(16) * 16;
            let count = n.div_ceil(per);
            let out = OutPtr(output.as_mut_ptr());
            let task = |i: usize| {
                let r = (i * per).min(n)..((i + 1) * per).min(n);
                // SAFETY: `out` is `output` (length `n`), alive until `run` returns; the runs
                // are disjoint.
                let dst =
                    unsafe { core::slice::from_raw_parts_mut(out.get().add(r.start), r.len()) };
                // Equal lengths by construction: no error to report.
                let _ = super::add::add_i8_lut(p, lut, &a[r.clone()], &b[r], dst);
            };
            team.run(count, &task);
            return Ok(());
        }
    }
    let _ = (team, threads);
    super::add::add_i8_lut(p, lut, a, b, output)
}

/// [`add_i8_threads`] on the process's helper team (`threads` feature) in up to `tasks` runs,
/// taken for this call (else on the calling thread). For tests; the executor holds the team for
/// a whole inference.
pub fn add_i8_split(
    p: &super::add::AddI8,
    lut: Option<&super::add_lut::AddLut>,
    a: &[i8],
    b: &[i8],
    output: &mut [i8],
    tasks: usize,
) -> Result<(), KernelError> {
    #[cfg(feature = "threads")]
    {
        let team = crate::team::engage(tasks);
        add_i8_threads(p, lut, a, b, output, team.as_ref(), tasks)
    }
    #[cfg(not(feature = "threads"))]
    add_i8_threads(p, lut, a, b, output, None, tasks)
}

/// The output pointer shared by a split conv's tasks (each writes only its own tile).
#[cfg(feature = "threads")]
struct OutPtr(*mut i8);
// SAFETY: the tasks write disjoint tiles (`Tiles`) and the owner waits for all of them.
#[cfg(feature = "threads")]
unsafe impl Sync for OutPtr {}
#[cfg(feature = "threads")]
impl OutPtr {
    fn get(&self) -> *mut i8 {
        self.0
    }
}

/// How a split conv is tiled: `count` tiles of `per` 4-pixel blocks (all channels) or of `per`
/// channel blocks (all pixels).
#[cfg(any(test, feature = "threads"))]
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tiles {
    n_px: usize,
    blocks: usize,
    by_pixels: bool,
    per: usize,
    count: usize,
}

#[cfg(any(test, feature = "threads"))]
impl Tiles {
    /// The tiling of `tasks` tasks by pixels unless its largest tile (pixel blocks × channel
    /// blocks) has over 25 % more work than the channel tiling's: channel tiles each im2col
    /// every pixel, pixel tiles read disjoint inputs.
    fn new(n_px: usize, blocks: usize, tasks: usize) -> Tiles {
        let px_blocks = n_px.div_ceil(4);
        let per_px = px_blocks.div_ceil(tasks);
        let per_ch = blocks.div_ceil(tasks);
        let by_pixels = 4 * per_px * blocks <= 5 * px_blocks * per_ch;
        let (per, of) = if by_pixels {
            (per_px, px_blocks)
        } else {
            (per_ch, blocks)
        };
        Tiles {
            n_px,
            blocks,
            by_pixels,
            per,
            count: of.div_ceil(per),
        }
    }

    /// Tile `i`: (output pixels, channel blocks).
    fn tile(&self, i: usize) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        if self.by_pixels {
            let px = (i * self.per * 4).min(self.n_px)..((i + 1) * self.per * 4).min(self.n_px);
            (px, 0..self.blocks)
        } else {
            let b = (i * self.per).min(self.blocks)..((i + 1) * self.per).min(self.blocks);
            (0..self.n_px, b)
        }
    }
}

/// int8 fully connected on the fast path (see [`conv2d_i8_prepared`]); `prep` from
/// [`PreparedI8::new_fc`].
pub fn fully_connected_i8_prepared(
    p: &FcI8,
    prep: &PreparedI8,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    conv2d_i8_prepared(&fc_as_conv(p), prep, input, output)
}

/// The portable path (the host without SIMD, any target): one pixel at a time, every output
/// channel a straight dot product of the column with the channel's OHWI row.
pub(crate) fn conv_portable(
    p: &ConvI8,
    chan: &[ChanQ],
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    let w = &p.win;
    if !direct_1x1(w) && w.kh * w.kw * w.in_c > PORTABLE_MAX_K {
        return conv2d_i8(p, input, output);
    }
    conv_portable_pixels(p, chan, input, output, 0..w.out_h * w.out_w);
    Ok(())
}

/// Output pixels `pixels` (row-major) of the portable path into `out` (their
/// `pixels.len()·out_c` bytes). The caller checked the lengths and that the column fits
/// [`PORTABLE_MAX_K`] (or the conv is [`direct_1x1`]).
fn conv_portable_pixels(
    p: &ConvI8,
    chan: &[ChanQ],
    input: &[i8],
    out: &mut [i8],
    pixels: core::ops::Range<usize>,
) {
    let w = &p.win;
    let k = w.kh * w.kw * w.in_c;
    let direct = direct_1x1(w);
    let mut scratch = [0i8; PORTABLE_MAX_K];
    let zp = p.in_zp.clamp(-128, 127) as i8;
    for (q, out_px) in pixels.zip(out.chunks_exact_mut(p.out_c)) {
        let (oy, ox) = (q / w.out_w, q % w.out_w);
        let col: &[i8] = if direct {
            pixel_1x1(w, input, oy, ox)
        } else {
            let dst = &mut scratch[..k];
            im2col(w, input, oy, ox, zp, dst);
            dst
        };
        for (oc, (o, c)) in out_px.iter_mut().zip(chan).enumerate() {
            let acc = c.bias.wrapping_add(dot(col, &p.weights[oc * k..][..k]));
            *o = requant(p, c, acc);
        }
    }
}

/// `Σ x·w`, wrapping (exact: see the module docs); written so the compiler vectorises it.
#[inline(always)]
fn dot(xs: &[i8], ws: &[i8]) -> i32 {
    xs.iter()
        .zip(ws)
        .fold(0i32, |a, (&x, &w)| a.wrapping_add(x as i32 * w as i32))
}

#[cfg(test)]
mod tests {
    use super::Tiles;

    /// The tiles cover every (pixel, channel block) exactly once.
    #[test]
    fn tiles_partition_the_output() {
        for n_px in [1, 3, 4, 9, 36, 441, 1024] {
            for blocks in [1, 2, 3, 4, 32] {
                for tasks in 1..=7 {
                    let t = Tiles::new(n_px, blocks, tasks);
                    assert!(t.count >= 1 && t.count <= tasks, "{t:?}");
                    let mut seen = alloc::vec![0u8; n_px * blocks];
                    for i in 0..t.count {
                        let (px, bl) = t.tile(i);
                        assert!(!px.is_empty() && !bl.is_empty(), "{t:?} tile {i}");
                        for q in px {
                            for b in bl.clone() {
                                seen[q * blocks + b] += 1;
                            }
                        }
                    }
                    assert!(seen.iter().all(|&c| c == 1), "{t:?}");
                }
            }
        }
    }

    /// ResNet-18's last stage at 84 px (9 pixels, 32 channel blocks) splits its channels.
    #[test]
    fn few_pixels_split_channels() {
        let t = Tiles::new(9, 32, 2);
        assert!(!t.by_pixels);
        assert_eq!((t.per, t.count), (16, 2));
        let t = Tiles::new(441, 4, 2);
        assert!(t.by_pixels);
    }
}
