//! Heads that turn backbone outputs into answers on the device: few-shot classification
//! ([`centroid`], [`linear`]) and landmark decoding ([`landmarks`]). All f32, fixed capacity,
//! no heap: capacities are const generics chosen by the firmware.

pub mod centroid;
pub mod landmarks;
pub mod linear;
pub mod rng;

/// Why a head refused its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HeadError {
    /// More classes, support samples or feature dimensions than the head's capacity.
    Capacity,
    /// Buffers whose lengths disagree (features vs labels vs dim), or an empty support set.
    Shape,
    /// A label ≥ the number of classes, or a class without any support sample.
    Label,
}

impl core::fmt::Display for HeadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for HeadError {}

/// Checks a support set: `features.len() == labels.len()·dim`, labels `< n_way`, every class
/// present, within capacities.
pub(crate) fn check_support(
    features: &[f32],
    labels: &[u8],
    n_way: usize,
    dim: usize,
    max_way: usize,
    max_dim: usize,
) -> Result<(), HeadError> {
    if n_way == 0 || dim == 0 || labels.is_empty() {
        return Err(HeadError::Shape);
    }
    if n_way > max_way || dim > max_dim {
        return Err(HeadError::Capacity);
    }
    if labels.len().checked_mul(dim) != Some(features.len()) {
        return Err(HeadError::Shape);
    }
    for c in 0..n_way {
        if !labels.iter().any(|&l| l as usize == c) {
            return Err(HeadError::Label);
        }
    }
    if labels.iter().any(|&l| l as usize >= n_way) {
        return Err(HeadError::Label);
    }
    Ok(())
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
