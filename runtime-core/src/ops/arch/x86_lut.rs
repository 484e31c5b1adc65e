//! x86-64 byte-table lookups with AVX-512 VBMI (`std` feature: runtime CPU detection): 64
//! input bytes a step, each mapped through a 256-entry table held in four registers. What the
//! LeakyReLU (a table of its outputs) and the add's tables ([`super::x86_add`]) look up.

use core::arch::x86_64::*;

/// Whether this CPU has the features of [`map_bytes`] (AVX-512 BW and VBMI).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vbmi")
}

/// A 256-byte table in four registers, for [`look`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
pub(crate) unsafe fn table(t: &[u8; 256]) -> [__m512i; 4] {
    core::array::from_fn(|j| _mm512_loadu_si512(t[64 * j..].as_ptr() as *const _))
}

/// `t[v]` for each byte of `v`, `upper` being `v`'s top bits (`_mm512_movepi8_mask(v)`, shared
/// by the lookups of one input): index bits 0–6 pick one of 128 bytes of a register pair, bit 7
/// the pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
pub(crate) unsafe fn look(t: &[__m512i; 4], v: __m512i, upper: __mmask64) -> __m512i {
    let lo = _mm512_permutex2var_epi8(t[0], v, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], v, t[3]);
    _mm512_mask_blend_epi8(upper, lo, hi)
}

/// `output[i] = table[input[i] as u8]`, 64 bytes a step, the tail one by one; `false` (nothing
/// written) where the CPU lacks [`available`]'s features. The caller checked the lengths.
pub(crate) fn map_bytes(table: &[i8; 256], input: &[i8], output: &mut [i8]) -> bool {
    if !available() {
        return false;
    }
    let n = input.len().min(output.len());
    let whole = n / 64 * 64;
    // SAFETY: the features were detected just above; the slices hold `whole ≤ n` bytes.
    unsafe { map_bytes_64(table, &input[..whole], &mut output[..whole]) };
    for (y, &x) in output[whole..n].iter_mut().zip(&input[whole..n]) {
        *y = table[x as u8 as usize];
    }
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn map_bytes_64(t: &[i8; 256], input: &[i8], output: &mut [i8]) {
    // SAFETY: `[i8; 256]` and `[u8; 256]` have the same layout.
    let regs = table(&*(t as *const [i8; 256] as *const [u8; 256]));
    for (x, y) in input.chunks_exact(64).zip(output.chunks_exact_mut(64)) {
        let v = _mm512_loadu_si512(x.as_ptr() as *const _);
        let r = look(&regs, v, _mm512_movepi8_mask(v));
        _mm512_storeu_si512(y.as_mut_ptr() as *mut _, r);
    }
}
