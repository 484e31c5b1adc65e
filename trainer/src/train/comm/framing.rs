//! [`Comm::all_gather`](super::Comm::all_gather) (every rank's bytes, any lengths) from a
//! collective that only moves equal-sized blocks, as NCCL's `ncclAllGather` does.
//!
//! Why apart from NCCL: the lengths, padding and slicing are where an off-by-one would hand a
//! rank another rank's bytes, and none of it needs a GPU; written against the small
//! [`EqualAllGather`] trait, it is tested in CI with an in-process fake of several ranks.
//!
//! Two rounds: every rank's length (8 bytes, little-endian u64), then every rank's bytes padded
//! with zeros to the longest; each rank's bytes are cut back to its length. The second round is
//! skipped when every message is empty (all ranks see the same lengths, so all skip it).
use anyhow::{bail, Result};

/// An all-gather of equal-sized blocks: every rank passes `n` bytes (the same `n` on all) and
/// receives `size() * n`, rank `r`'s block at `r * n..(r + 1) * n`.
pub trait EqualAllGather {
    /// How many ranks take part.
    fn size(&self) -> usize;
    /// Every rank's `local` block, concatenated in rank order.
    fn all_gather_equal(&self, local: &[u8]) -> Result<Vec<u8>>;
}

/// Every rank's `local` bytes, in rank order, whatever their lengths.
pub fn all_gather_bytes(g: &dyn EqualAllGather, local: &[u8]) -> Result<Vec<Vec<u8>>> {
    let size = g.size();
    let lens = g.all_gather_equal(&(local.len() as u64).to_le_bytes())?;
    if lens.len() != 8 * size {
        bail!(
            "all-gather of lengths: {} bytes back from {size} ranks, expected {}",
            lens.len(),
            8 * size
        );
    }
    let lens: Vec<usize> = lens
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let longest = lens.iter().copied().max().unwrap_or(0);
    if longest == 0 {
        return Ok(vec![Vec::new(); size]);
    }
    let mut padded = local.to_vec();
    padded.resize(longest, 0);
    let all = g.all_gather_equal(&padded)?;
    if all.len() != longest * size {
        bail!(
            "all-gather of {longest}-byte blocks: {} bytes back from {size} ranks, expected {}",
            all.len(),
            longest * size
        );
    }
    Ok(all
        .chunks_exact(longest)
        .zip(&lens)
        .map(|(block, &len)| block[..len].to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    /// `n` ranks as threads of one process: each round, every rank posts its block, all wait,
    /// each reads all blocks, all wait again (so no rank posts the next round's block early).
    /// It refuses blocks of unequal sizes, as NCCL would misbehave on them.
    struct FakeRank {
        rank: usize,
        slots: Arc<Mutex<Vec<Vec<u8>>>>,
        barrier: Arc<Barrier>,
    }

    impl EqualAllGather for FakeRank {
        fn size(&self) -> usize {
            self.slots.lock().unwrap().len()
        }
        fn all_gather_equal(&self, local: &[u8]) -> Result<Vec<u8>> {
            self.slots.lock().unwrap()[self.rank] = local.to_vec();
            self.barrier.wait();
            let all = self.slots.lock().unwrap().clone();
            self.barrier.wait();
            if all.iter().any(|b| b.len() != local.len()) {
                bail!(
                    "unequal blocks: {:?}",
                    all.iter().map(Vec::len).collect::<Vec<_>>()
                );
            }
            Ok(all.concat())
        }
    }

    /// Every rank's result of gathering `messages[rank]`.
    fn gather(messages: &[Vec<u8>]) -> Vec<Result<Vec<Vec<u8>>>> {
        let n = messages.len();
        let slots = Arc::new(Mutex::new(vec![Vec::new(); n]));
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = messages
            .iter()
            .cloned()
            .enumerate()
            .map(|(rank, m)| {
                let fake = FakeRank {
                    rank,
                    slots: slots.clone(),
                    barrier: barrier.clone(),
                };
                std::thread::spawn(move || all_gather_bytes(&fake, &m))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn every_rank_gets_every_message_exactly() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![b"only".to_vec()],
            vec![b"a".to_vec(), b"bcd".to_vec(), Vec::new()],
            vec![Vec::new(), Vec::new()],
            vec![Vec::new(), vec![0, 0, 0], b"xy".to_vec(), vec![255; 1000]],
            // Trailing zeros survive: padding is cut by length, not by value.
            vec![vec![7, 0, 0], vec![0; 5]],
        ];
        for messages in cases {
            for (rank, got) in gather(&messages).into_iter().enumerate() {
                assert_eq!(got.unwrap(), messages, "rank {rank}");
            }
        }
    }

    /// A collective that returns the wrong amount is reported, not sliced out of bounds.
    #[test]
    fn a_short_answer_is_an_error() {
        struct Short;
        impl EqualAllGather for Short {
            fn size(&self) -> usize {
                2
            }
            fn all_gather_equal(&self, local: &[u8]) -> Result<Vec<u8>> {
                Ok(local.to_vec())
            }
        }
        let err = all_gather_bytes(&Short, b"abc").unwrap_err();
        assert!(
            format!("{err}").contains("8 bytes back from 2 ranks, expected 16"),
            "{err}"
        );
    }
}
