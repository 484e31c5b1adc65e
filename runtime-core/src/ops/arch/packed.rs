//! The packed weights of the SIMD conv kernels (x86-64 AVX-512 VNNI and AVX2, aarch64 NEON
//! `sdot` and `smull`): one type and one packing routine, with the few layout parameters that
//! differ per kernel in a [`Layout`] that each architecture's module names.
//!
//! Layout, made once at load ([`Packed::new`]): output channels in blocks of `lanes` (one
//! register of `i32` accumulators: 16 on x86-64, 4 on aarch64), the reduction padded to a
//! multiple of 4 with zero weights; block `b`, group `q` of 4 taps is `4·lanes` values
//! `[lane 0: w[lanes·b][4q..4q+4], lane 1: …]`. Each kernel broadcasts 4 column values per
//! pixel against one such group. Two kernels want a variant:
//!
//! * x86 AVX2 takes the weights sign-extended to `i16` once here ([`Layout::wide`]), so its
//!   inner loop spends no shuffle port on `vpmovsxbw`; and, where the window fits its row band,
//!   pads each kernel row's `kw·in_c` taps to a multiple of 4 ([`Layout::row_band`]).
//! * x86 VNNI multiplies unsigned columns (`x' + 128`) by signed weights
//!   ([`Layout::unsigned_cols`]): `Σ u·w = Σ x'·w + 128·Σ w`, so the packed bias absorbs
//!   `−128·Σ w` on top of the zero-point fold. Everything wraps modulo 2³², so the result equals
//!   the portable path's (see [`super::super::prepared`]).

use alloc::vec::Vec;

use super::super::conv2d::ConvI8;
use super::super::prepared::ChanQ;

/// Largest padded reduction the kernels take (3×3×512, ResNet-18's last stage): their stack
/// column buffers hold a few pixels of this many values. Larger ones run the portable path.
pub const MAX_K: usize = 4608;

/// What one kernel needs of the packing: the parameters that differ between kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct Layout {
    /// The kernel's name ([`PreparedI8::backend`](super::super::prepared::PreparedI8::backend)).
    pub kernel: &'static str,
    /// Output channels per block.
    pub lanes: usize,
    /// Weights as `i16` (x86 AVX2's `vpmaddwd`) instead of `i8`.
    pub wide: bool,
    /// Columns made unsigned by flipping their sign bit (x86 VNNI's `u8 × i8`): the bias
    /// absorbs `−128·Σ w`.
    pub unsigned_cols: bool,
    /// Each kernel row padded to a multiple of 4 taps on its own (x86 AVX2's row band), so
    /// that `kp = kh · row_kp`.
    pub row_band: bool,
}

/// Weights and per-channel requantisation constants laid out for one SIMD kernel.
#[derive(Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Packed {
    pub(super) layout: Layout,
    /// Reduction padded to a multiple of 4 (row band: `kh · row_kp`).
    pub(super) kp: usize,
    /// Output-channel blocks of `layout.lanes`.
    pub(super) blocks: usize,
    /// `blocks · kp · lanes` weights, see the module docs: `w` for the `i8` kernels, `w16`
    /// for the [`Layout::wide`] ones (the other one empty).
    pub(super) w: Vec<i8>,
    pub(super) w16: Vec<i16>,
    /// Per (padded) channel: `bias'` (`− 128·Σ w` for [`Layout::unsigned_cols`]), `mult`,
    /// `max(shift, 0)` and `max(−shift, 0)`. Padding channels have zero constants but shift
    /// right by 1, so that they never veto x86's right-shift requantisation (their outputs are
    /// computed and dropped).
    pub(super) bias: Vec<i32>,
    pub(super) mult: Vec<i32>,
    pub(super) lshift: Vec<i32>,
    pub(super) rshift: Vec<i32>,
    /// x86 (AVX2's [`Layout::wide`] and VNNI's [`Layout::unsigned_cols`] kernels), where every
    /// channel shifts right: the one-multiply-add requantisation's constants, else `None`.
    #[cfg(target_arch = "x86_64")]
    pub(super) right: Option<super::x86::RightShift8>,
}

/// Sizes only: a model's `Debug` output should not list megabytes of packed weights.
impl core::fmt::Debug for Packed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("Packed");
        d.field("kernel", &self.layout.kernel)
            .field("kp", &self.kp)
            .field("blocks", &self.blocks)
            .field("heap_bytes", &self.heap_bytes());
        #[cfg(target_arch = "x86_64")]
        d.field("right_shift_requant", &self.right.is_some());
        d.finish()
    }
}

impl Packed {
    /// Packs `p` (with its folded bias `chan`) in `layout`, if the op fits the kernels' buffers
    /// and its slices match its geometry: `None` leaves the op to the portable path. The caller
    /// checked the loader's ranges (`mult ≥ 0`, shifts within TFLite's range).
    pub(crate) fn new(p: &ConvI8, chan: &[ChanQ], layout: Layout) -> Option<Packed> {
        let w = &p.win;
        let k = w.kh * w.kw * w.in_c;
        let row_k = w.kw * w.in_c;
        let row_kp = row_k.div_ceil(4) * 4;
        let kp = if layout.row_band {
            w.kh * row_kp
        } else {
            k.div_ceil(4) * 4
        };
        let oc = p.out_c;
        let lens = p.weights.len() == oc * k && chan.len() == oc;
        if kp > MAX_K || oc == 0 || !lens {
            return None;
        }
        let lanes = layout.lanes;
        let blocks = oc.div_ceil(lanes);
        let ocp = blocks * lanes;
        let mut pw = alloc::vec![0i8; blocks * kp * lanes];
        for c in 0..oc {
            let (b, lane) = (c / lanes, c % lanes);
            for (kk, &v) in p.weights[c * k..][..k].iter().enumerate() {
                // Row band: tap `kk` of kernel row `kk / row_k` sits at `row_kp` per row.
                let kk = if layout.row_band {
                    kk / row_k * row_kp + kk % row_k
                } else {
                    kk
                };
                pw[(b * kp + (kk / 4) * 4) * lanes + lane * 4 + kk % 4] = v;
            }
        }
        let pad = |f: &dyn Fn(usize, &ChanQ) -> i32, padding: i32| -> Vec<i32> {
            (0..ocp)
                .map(|c| chan.get(c).map_or(padding, |q| f(c, q)))
                .collect()
        };
        let wsum = |c: usize| {
            p.weights[c * k..][..k]
                .iter()
                .fold(0i32, |a, &v| a.wrapping_add(v as i32))
        };
        let flip = if layout.unsigned_cols { 128 } else { 0 };
        let bias = pad(&|c, q| q.bias.wrapping_sub(wsum(c).wrapping_mul(flip)), 0);
        let lshift = pad(&|_, q| q.left as i32, 0);
        let rshift = pad(&|_, q| q.right as i32, 1);
        let (w, w16) = if layout.wide {
            (Vec::new(), pw.iter().map(|&v| v as i16).collect())
        } else {
            (pw, Vec::new())
        };
        Some(Packed {
            layout,
            kp,
            blocks,
            w,
            w16,
            bias,
            mult: pad(&|_, q| q.mult, 0),
            #[cfg(target_arch = "x86_64")]
            right: if layout.wide || layout.unsigned_cols {
                super::x86::RightShift8::new(&lshift, &rshift, p.out_zp)
            } else {
                None
            },
            lshift,
            rshift,
        })
    }

    /// The kernel this packing is for.
    pub fn backend(&self) -> &'static str {
        self.layout.kernel
    }

    /// Output channel blocks (the threaded driver tiles over them; only x86's tiles by block).
    #[cfg(all(feature = "threads", target_arch = "x86_64"))]
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Whether the kernels can run `p` with this packing (made for `p`'s geometry).
    pub(crate) fn fits(&self, p: &ConvI8) -> bool {
        self.kp <= MAX_K && self.blocks == p.out_c.div_ceil(self.layout.lanes)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let right = self.right.as_ref().map_or(0, |r| r.heap_bytes());
        #[cfg(not(target_arch = "x86_64"))]
        let right = 0;
        self.w.capacity()
            + 2 * self.w16.capacity()
            + right
            + 4 * (self.bias.capacity()
                + self.mult.capacity()
                + self.lshift.capacity()
                + self.rshift.capacity())
    }
}
