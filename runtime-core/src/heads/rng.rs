//! The on-device PRNG: SplitMix64 (Steele et al. 2014). Tiny, no state beyond a u64, good enough
//! statistics for shuffling and initialisation, and trivially reproducible on the host
//! (documented in `FORMAT.md` so the host's few-shot protocol can reproduce device runs).

/// SplitMix64 generator seeded by the caller.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` without modulo bias (Lemire's multiply-shift with rejection); `n > 0`.
    pub fn below(&mut self, n: u32) -> u32 {
        let n = n.max(1) as u64;
        loop {
            let m = (self.next_u64() >> 32) * n;
            if (m as u32 as u64) >= (1u64 << 32) % n {
                return (m >> 32) as u32;
            }
        }
    }

    /// Uniform f32 in `[0, 1)` from the top 24 bits.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Fisher–Yates shuffle (from the back, as `numpy`'s legacy permutation does).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            v.swap(i, j);
        }
    }
}
