//! Deterministic random streams.
//!
//! Every random decision in the project is drawn from a ChaCha8 stream keyed by the run's seed
//! and a *purpose path* (e.g. `[SYNTH_OBJECTS, class, instance]`), never from a shared generator
//! consumed in scheduling order. That is what makes generated datasets and augmented batches
//! identical whatever the number of rayon threads.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere. Its state serialises (serde) for checkpoints.
pub type Rng = ChaCha8Rng;

/// A stream for `seed` and a purpose path. Different paths give independent streams.
pub fn stream(seed: u64, path: &[u64]) -> Rng {
    // SplitMix64-style mixing of the path into a 256-bit key.
    let mut key = [0u8; 32];
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        for &p in path {
            h = mix(h ^ p.wrapping_add(i as u64));
        }
        h = mix(h.wrapping_add(i as u64 + 1));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// FNV-1a 64-bit hash: keys a stream by a name (a parameter's init stream by its tensor name, so
/// the initial weights do not change when another tensor is added) and identifies files in
/// result records. Not a cryptographic hash.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The init stream of the parameter `name`: `stream(seed, [INIT, fnv1a64(name)])`.
pub fn init_stream(seed: u64, name: &str) -> Rng {
    stream(seed, &[purpose::INIT, fnv1a64(name.as_bytes())])
}

/// SplitMix64's output function (one step from state `z`): the one SplitMix of the project is
/// runtime-core's, which the device shuffles and initialises with.
fn mix(z: u64) -> u64 {
    runtime_core::heads::rng::SplitMix64::new(z).next_u64()
}

/// Purpose tags for [`stream`] paths, so that two modules never share a stream by accident.
pub mod purpose {
    pub const SYNTH_OBJECTS: u64 = 1;
    pub const SYNTH_FACES: u64 = 2;
    pub const AUGMENT: u64 = 3;
    pub const SHUFFLE: u64 = 4;
    pub const INIT: u64 = 5;
    pub const QUEUE_INIT: u64 = 6;
    pub const FEWSHOT_EPISODES: u64 = 7;
    pub const FEWSHOT_CLASSIFIER: u64 = 8;
    pub const SHUFFLE_BN: u64 = 9;
    pub const SPLIT: u64 = 10;
    pub const CALIBRATION: u64 = 11;
    pub const INVERT: u64 = 12;
    pub const SUBSET: u64 = 13;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn same_path_same_stream_different_path_different_stream() {
        let a: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(stream(7, &[1, 2]), |r, _: u32| Some(r.gen()))
            .collect();
        let b: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(stream(7, &[1, 2]), |r, _: u32| Some(r.gen()))
            .collect();
        let c: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(stream(7, &[1, 3]), |r, _: u32| Some(r.gen()))
            .collect();
        let d: Vec<u32> = (0..8)
            .map(|_| 0)
            .scan(stream(8, &[1, 2]), |r, _: u32| Some(r.gen()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
