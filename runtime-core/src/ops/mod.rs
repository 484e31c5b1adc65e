//! Kernels: one file per operator, each with an int8 (TFLite rules) and an f32 twin.
//!
//! Kernels read parameters straight out of the model file: per-channel int32/f32 values are
//! wrapped in [`I32Le`]/[`F32Le`], which decode little-endian bytes on access, so tensor data is
//! borrowed without copying and without any alignment requirement on the caller's buffer.
//! Every kernel checks its slice lengths against its geometry first and returns
//! [`KernelError`] instead of panicking.

pub mod add;
pub mod add_lut;
mod arch;
pub mod avgpool;
pub mod conv2d;
pub mod depthwise;
pub mod fully_connected;
pub mod leaky_relu;
pub mod maxpool;
pub mod mean;
pub mod prepared;
pub mod requant;
pub mod softmax;

/// A kernel was handed slices that do not match its geometry (a caller bug, never user data:
/// the model loader validates geometry before any kernel runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct KernelError;

impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(
            "kernel input, output or parameter slices whose lengths do not match its geometry \
             (size them from the op's shapes, as the model loader does)",
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

pub(crate) fn check(ok: bool) -> Result<(), KernelError> {
    if ok {
        Ok(())
    } else {
        Err(KernelError)
    }
}

/// Whether a windowed op's slices have their lengths: input `in_h·in_w·in_c`, output
/// `out_h·out_w·out_c`, weights `out_c·kh·kw·per_tap`, where `per_tap` is the input channels
/// each output channel reads at one tap (`in_c` for a conv, 1 for a depthwise conv).
pub(crate) fn window_lens_ok(
    w: &Window,
    out_c: usize,
    per_tap: usize,
    input: usize,
    output: usize,
    weights: usize,
) -> bool {
    input == w.in_h * w.in_w * w.in_c
        && output == w.out_h * w.out_w * out_c
        && weights == out_c * w.kh * w.kw * per_tap
}

/// Whether an int8 op has one bias, multiplier and shift per each of its `n` output channels.
pub(crate) fn requant_lens_ok(n: usize, bias: I32Le, mult: I32Le, shift: I32Le) -> bool {
    bias.len() == n && mult.len() == n && shift.len() == n
}

/// A borrowed little-endian `i32` array (e.g. a bias or per-channel multiplier tensor).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct I32Le<'a>(&'a [u8]);

impl<'a> I32Le<'a> {
    /// Wraps raw bytes; a trailing partial element is ignored.
    pub fn new(bytes: &'a [u8]) -> Self {
        I32Le(bytes)
    }
    /// Number of whole elements.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    /// True if there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i`; the caller keeps `i < len()` (kernels check lengths up front).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        let b = &self.0[4 * i..4 * i + 4];
        i32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = i32> + 'a {
        let b = self.0;
        b.chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A borrowed little-endian `f32` array (f32 weights and biases).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct F32Le<'a>(&'a [u8]);

impl<'a> F32Le<'a> {
    /// Wraps raw bytes; a trailing partial element is ignored.
    pub fn new(bytes: &'a [u8]) -> Self {
        F32Le(bytes)
    }
    /// Number of whole elements.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    /// True if there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i`; the caller keeps `i < len()`.
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        let b = &self.0[4 * i..4 * i + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        let b = self.0;
        b.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reinterprets bytes as `i8` (same size and alignment, every bit pattern valid).
pub fn bytes_as_i8(b: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have identical size/alignment and no invalid values.
    unsafe { core::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
}

/// Mutable twin of [`bytes_as_i8`].
pub fn bytes_as_i8_mut(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `bytes_as_i8`; the borrow is carried over unchanged.
    unsafe { core::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut i8, b.len()) }
}

/// Spatial geometry shared by conv and max pool: NHWC input `in_h×in_w×in_c`, a `kh×kw` window
/// moved by `stride_h/stride_w`, with `pad_top/pad_left` implicit zero-point rows/columns before the
/// image (bottom/right padding is implied by `out_h/out_w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Window {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Window {
    /// Padding `[top, left, bottom, right]`. Bottom and right are the least that give
    /// `out_h`/`out_w` (the file may have declared more, but taps past the image contribute
    /// nothing, so every padding with the same output size computes the same values).
    pub fn pads(&self) -> [usize; 4] {
        let extra = |out: usize, k: usize, s: usize, input: usize, pad_a: usize| {
            ((out - 1) * s + k).saturating_sub(input + pad_a)
        };
        [
            self.pad_top,
            self.pad_left,
            extra(self.out_h, self.kh, self.stride_h, self.in_h, self.pad_top),
            extra(self.out_w, self.kw, self.stride_w, self.in_w, self.pad_left),
        ]
    }
    /// Output size along one axis: `(in + pad_a + pad_b − k) / stride + 1`, or `None` if the
    /// window never fits or the sum overflows.
    pub fn out_dim(
        input: usize,
        k: usize,
        stride: usize,
        pad_a: usize,
        pad_b: usize,
    ) -> Option<usize> {
        let padded = input.checked_add(pad_a)?.checked_add(pad_b)?;
        if stride == 0 || k == 0 || padded < k {
            return None;
        }
        Some((padded - k) / stride + 1)
    }

    /// The range of kernel rows `ky` that land inside the image for output row `oy`, and the
    /// input row of `ky = 0` (may be negative).
    #[inline(always)]
    pub(crate) fn rows(&self, oy: usize) -> (isize, usize, usize) {
        clip(oy, self.stride_h, self.pad_top, self.kh, self.in_h)
    }

    #[inline(always)]
    pub(crate) fn cols(&self, ox: usize) -> (isize, usize, usize) {
        clip(ox, self.stride_w, self.pad_left, self.kw, self.in_w)
    }
}

#[inline(always)]
fn clip(o: usize, stride: usize, pad: usize, k: usize, n: usize) -> (isize, usize, usize) {
    let origin = (o * stride) as isize - pad as isize;
    let start = if origin < 0 { (-origin) as usize } else { 0 }.min(k);
    let end_lim = n as isize - origin;
    let end = if end_lim <= 0 {
        0
    } else {
        (end_lim as usize).min(k)
    };
    (origin, start, end.max(start))
}
