//! Target-specific inner loops of the fast int8 path ([`super::prepared`]). Each computes the
//! same integers as the portable loop; the tests compare them bit for bit.

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) mod aarch64;
#[cfg(rt_dsp)]
pub(crate) mod cortex_m;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(crate) mod x86_add;
