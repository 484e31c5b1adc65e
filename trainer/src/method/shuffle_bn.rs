//! Single-device emulation of MoCo's shuffling BN.
//!
//! With one device, BN over the whole key batch lets the query and its key share batch
//! statistics, which leak which sub-batch a positive came from; the model can then "cheat" the
//! pretext task. MoCo's multi-GPU code shuffles the key batch across GPUs before the key forward
//! and un-shuffles after; its single-GPU recipe splits the batch into G BN groups
//! (`SplitBatchNorm`) and shuffles keys with `randperm`. Here: the permutation and its inverse.
//! The model normalises contiguous groups separately (`BnMode::Train { groups }`), so after
//! [`ShuffleBn::shuffle`] each BN group holds keys drawn from the whole batch.
use candle_core::{bail, Device, Result, Tensor};
use rand::seq::SliceRandom;

use crate::rng::{self, purpose, Rng};

/// A batch permutation `perm` and its inverse: `shuffled[i] = x[perm[i]]`,
/// `unshuffled[j] = shuffled[inv[j]]` (MoCo's `idx_shuffle` / `idx_unshuffle = argsort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShuffleBn {
    perm: Vec<u32>,
    inv: Vec<u32>,
    groups: usize,
}

impl ShuffleBn {
    /// A uniformly random permutation of `batch` items. `groups` (≥ 1) must divide `batch`,
    /// because the model splits the shuffled batch into that many equal BN groups.
    pub fn new(batch: usize, groups: usize, rng: &mut Rng) -> Result<ShuffleBn> {
        if groups == 0 || batch == 0 || !batch.is_multiple_of(groups) {
            bail!("shuffle-BN: batch size {batch} must be a positive multiple of the number of BN groups {groups}");
        }
        let mut perm: Vec<u32> = (0..batch as u32).collect();
        perm.shuffle(rng);
        let mut inv = vec![0u32; batch];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as u32;
        }
        Ok(ShuffleBn { perm, inv, groups })
    }

    /// A given permutation (`shuffled[i] = x[perm[i]]`), e.g. one another implementation drew,
    /// to replay its step. `perm` must hold each of `0..perm.len()` once, and `groups` (≥ 1)
    /// divide its length.
    pub fn from_perm(perm: Vec<u32>, groups: usize) -> Result<ShuffleBn> {
        let batch = perm.len();
        if groups == 0 || batch == 0 || !batch.is_multiple_of(groups) {
            bail!("shuffle-BN: batch size {batch} must be a positive multiple of the number of BN groups {groups}");
        }
        let mut inv = vec![u32::MAX; batch];
        for (i, &p) in perm.iter().enumerate() {
            match inv.get_mut(p as usize) {
                Some(slot) if *slot == u32::MAX => *slot = i as u32,
                _ => bail!("shuffle-BN: {perm:?} is not a permutation of 0..{batch}"),
            }
        }
        Ok(ShuffleBn { perm, inv, groups })
    }

    /// The permutation for one training step, from its own stream so that it does not depend on
    /// how many other random draws happened before it.
    pub fn for_step(
        seed: u64,
        epoch: u64,
        step: u64,
        batch: usize,
        groups: usize,
    ) -> Result<ShuffleBn> {
        ShuffleBn::new(
            batch,
            groups,
            &mut rng::stream(seed, &[purpose::SHUFFLE_BN, epoch, step]),
        )
    }

    pub fn perm(&self) -> &[u32] {
        &self.perm
    }

    pub fn inverse(&self) -> &[u32] {
        &self.inv
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    fn select(x: &Tensor, idx: &[u32], device: &Device) -> Result<Tensor> {
        if x.dims().first() != Some(&idx.len()) {
            bail!(
                "shuffle-BN: tensor has shape {:?}, permutation is for a batch of {}",
                x.dims(),
                idx.len()
            );
        }
        x.index_select(&Tensor::from_slice(idx, idx.len(), device)?, 0)
    }

    /// Reorder the key batch before the key forward pass (dim 0 is the batch).
    pub fn shuffle(&self, x: &Tensor) -> Result<Tensor> {
        Self::select(x, &self.perm, x.device())
    }

    /// Restore the original order after the key forward pass.
    pub fn unshuffle(&self, x: &Tensor) -> Result<Tensor> {
        Self::select(x, &self.inv, x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffle_inverts_shuffle() {
        let s = ShuffleBn::for_step(1, 0, 0, 16, 4).unwrap();
        let mut sorted = s.perm().to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..16).collect::<Vec<u32>>());
        for (i, &p) in s.perm().iter().enumerate() {
            assert_eq!(s.inverse()[p as usize] as usize, i);
        }
        let x = Tensor::arange(0f32, 32.0, &Device::Cpu)
            .unwrap()
            .reshape((16, 2))
            .unwrap();
        let sh = s.shuffle(&x).unwrap();
        let first: Vec<f32> = sh.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect();
        let want: Vec<f32> = s.perm().iter().map(|&p| 2.0 * p as f32).collect();
        assert_eq!(first, want, "shuffled[i] = x[perm[i]]");
        assert_eq!(
            s.unshuffle(&sh).unwrap().to_vec2::<f32>().unwrap(),
            x.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn deterministic_per_step_and_mixes_groups() {
        let a = ShuffleBn::for_step(5, 2, 7, 32, 8).unwrap();
        assert_eq!(a, ShuffleBn::for_step(5, 2, 7, 32, 8).unwrap());
        assert_ne!(
            a.perm(),
            ShuffleBn::for_step(5, 2, 8, 32, 8).unwrap().perm()
        );
        // At least one BN group (4 consecutive shuffled slots) holds keys from ≥ 2 original groups.
        let mixed = a
            .perm()
            .chunks(4)
            .any(|g| g.iter().any(|&p| p / 4 != g[0] / 4));
        assert!(mixed);
    }

    #[test]
    fn from_perm_inverts_and_rejects_non_permutations() {
        let s = ShuffleBn::from_perm(vec![2, 0, 3, 1], 2).unwrap();
        assert_eq!(s.inverse(), &[1, 3, 0, 2]);
        assert_eq!(s, ShuffleBn::from_perm(s.perm().to_vec(), 2).unwrap());
        assert!(ShuffleBn::from_perm(vec![0, 0, 1, 2], 2).is_err());
        assert!(ShuffleBn::from_perm(vec![0, 1, 4, 2], 2).is_err());
        assert!(ShuffleBn::from_perm(vec![0, 1, 2], 2).is_err());
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut r = rng::stream(0, &[purpose::SHUFFLE_BN]);
        assert!(ShuffleBn::new(10, 4, &mut r)
            .unwrap_err()
            .to_string()
            .contains("multiple"));
        assert!(ShuffleBn::new(8, 0, &mut r).is_err());
        let s = ShuffleBn::new(8, 2, &mut r).unwrap();
        assert!(s
            .shuffle(&Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap())
            .is_err());
    }
}
