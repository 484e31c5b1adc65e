//! Divergence checks: is every value of a set of tensors finite?
//!
//! Why one reduction: a training step checks its gradients and its parameters every step, so the
//! check must cost next to nothing beside the step. Each tensor's sum of squares is computed on
//! its device, the per-tensor sums are stacked, and only their total comes back to the host (one
//! synchronisation). A total that is finite proves every value finite (a NaN or an infinity makes
//! it non-finite); only when it is not are the per-tensor sums read to name the first bad tensor.
//! A sum of squares also overflows when values pass ~1e19 while still finite: such a tensor is
//! reported too ("beyond 1e19"), since a parameter or gradient that large has diverged as surely.
use anyhow::Result;
use candle_core::{DType, Tensor};

/// The first tensor of a set whose values are not all finite (or whose sum of squares overflows).
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// The tensor's name, as the caller gave it.
    pub name: String,
    /// Its NaN or infinite values.
    pub bad: usize,
    /// Its values.
    pub len: usize,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.bad > 0 {
            write!(
                f,
                "`{}` has {} non-finite values (NaN or infinite) of {}",
                self.name, self.bad, self.len
            )
        } else {
            write!(
                f,
                "`{}` has values beyond 1e19 (its sum of squares overflows)",
                self.name
            )
        }
    }
}

/// The first of `tensors` (in the given order) with a non-finite value, or `None` when all are
/// finite. Cost when all are finite: one squared sum per tensor on its device and one scalar
/// read. Integer tensors (e.g. BN's `num_batches_tracked`) cannot be non-finite and are skipped.
pub fn first_non_finite<'a, I>(tensors: I) -> Result<Option<NonFinite>>
where
    I: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let floats: Vec<(&str, &Tensor)> = tensors
        .into_iter()
        .filter(|(_, t)| t.dtype().is_float())
        .collect();
    if floats.is_empty() {
        return Ok(None);
    }
    let sums = floats
        .iter()
        .map(|(_, t)| t.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sums = Tensor::stack(&sums, 0)?;
    if sums.sum_all()?.to_scalar::<f32>()?.is_finite() {
        return Ok(None);
    }
    let per = sums.to_vec1::<f32>()?;
    let Some(i) = per.iter().position(|s| !s.is_finite()) else {
        // The total overflowed although every tensor's sum is finite: values near 1e19 in
        // several tensors. Name the largest.
        let i = per
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        return Ok(Some(describe(floats[i])?));
    };
    Ok(Some(describe(floats[i])?))
}

fn describe((name, t): (&str, &Tensor)) -> Result<NonFinite> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(NonFinite {
        name: name.to_string(),
        bad: v.iter().filter(|x| !x.is_finite()).count(),
        len: v.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_the_first_bad_tensor_and_passes_finite_ones() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1f32, -2.0, 3.0], &dev).unwrap();
        let b = Tensor::new(&[0f32, f32::NAN, f32::INFINITY, 1.0], &dev).unwrap();
        let c = Tensor::new(&[f32::NEG_INFINITY], &dev).unwrap();
        let n = Tensor::new(&[3i64], &dev).unwrap();
        assert_eq!(
            first_non_finite([("a", &a), ("n", &n)]).unwrap(),
            None,
            "finite floats and an integer tensor"
        );
        let bad = first_non_finite([("a", &a), ("b", &b), ("c", &c)])
            .unwrap()
            .unwrap();
        assert_eq!((bad.name.as_str(), bad.bad, bad.len), ("b", 2, 4));
        assert!(bad.to_string().contains("`b` has 2 non-finite"), "{bad}");
        let huge = Tensor::new(&[3e19f32], &dev).unwrap();
        let bad = first_non_finite([("a", &a), ("huge", &huge)])
            .unwrap()
            .unwrap();
        assert_eq!((bad.name.as_str(), bad.bad), ("huge", 0));
        assert!(bad.to_string().contains("beyond 1e19"), "{bad}");
    }
}
