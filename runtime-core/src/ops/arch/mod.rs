//! Target-specific inner loops of the fast int8 path ([`super::prepared`]). Each computes the
//! same integers as the portable loop; the tests compare them bit for bit.

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) mod aarch64;
#[cfg(rt_dsp)]
pub(crate) mod cortex_m;
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    all(target_arch = "aarch64", target_feature = "neon")
))]
mod packed;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86_add;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86_lut;

/// This target's packed-weight kernels: `pack` (the best kernel the CPU has) and `conv`.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) use aarch64 as simd;
#[cfg(any(
    all(feature = "std", target_arch = "x86_64"),
    all(target_arch = "aarch64", target_feature = "neon")
))]
pub(crate) use packed::Packed;
/// This target's packed-weight kernels: `pack` (the best kernel the CPU has) and `conv`.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) use x86 as simd;
