//! Heads that turn backbone outputs into answers on the device: few-shot classification
//! ([`centroid`], [`linear`]) and landmark decoding ([`landmarks`]). All f32.
//!
//! Each few-shot head comes in two storage flavours that share one implementation (over flat
//! row-major slices with a row stride) and so give bit-identical results: a fixed-capacity type
//! with no heap, capacities chosen by the firmware as const generics
//! ([`centroid::NearestCentroid`], [`linear::LinearClassifier`]), and a heap-backed twin for any
//! number of classes and feature dimensions ([`centroid::CentroidHead`],
//! [`linear::LinearHead`]), which the host's episode scorer uses.

pub mod centroid;
pub mod landmarks;
pub mod linear;
pub mod rng;

/// Why a head refused its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
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
        f.write_str(match self {
            HeadError::Capacity => {
                "more classes, support samples or feature dimensions than the head was built \
                 to hold (raise its capacity or use the heap-backed head), or an SGD batch of 0"
            }
            HeadError::Shape => {
                "feature buffer length does not match the number of labels times the feature \
                 dimension (or the support set, class count or dimension is empty)"
            }
            HeadError::Label => {
                "a support label is not below the number of classes, or some class has no \
                 support sample"
            }
        })
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
    argmax_by(v.len(), |i| v[i])
}

/// [`argmax`] of `value(0..n)` without a buffer: the same comparisons in the same order, so
/// the same index (first on ties; a NaN never wins over an earlier value).
pub(crate) fn argmax_by(n: usize, mut value: impl FnMut(usize) -> f32) -> usize {
    let (mut best, mut best_v) = (0, f32::NAN);
    for i in 0..n {
        let x = value(i);
        if i == 0 || x > best_v {
            best = i;
            best_v = x;
        }
    }
    best
}
