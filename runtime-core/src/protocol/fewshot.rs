//! The few-shot episode sampler of Chen et al. (2019), shared by every program that evaluates the
//! protocol (host-trainer on candle features, runtime-cli and runtime-mcu on int8 features), so the
//! same `seed` gives the same episodes everywhere and results compare number for number.
//!
//! Episode `e` of a `shot`-shot evaluation is drawn from its own stream keyed by
//! `(seed, shot, e)`: `way` distinct classes, then `shot + query` distinct images of each class;
//! the first `shot` are the support set, the rest the queries.
use alloc::vec::Vec;

use crate::heads::rng::SplitMix64;

/// Errors of the sampler: the protocol cannot be run on this split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SampleError {
    /// Fewer classes than `way`.
    TooFewClasses { classes: usize, way: usize },
    /// Class `class` has `images` images, fewer than `shot + query`.
    TooFewImages {
        class: usize,
        images: usize,
        needed: usize,
    },
    /// `way`, `shot` or `query` is zero.
    Empty,
}

/// One episode: positions are indices into the per-class image lists given to the sampler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// The `way` classes of the episode, in episode-label order (label i = classes[i]).
    pub classes: Vec<usize>,
    /// `(episode label, image index)` of the support images, `shot` per class, class-major.
    pub support: Vec<(usize, usize)>,
    /// `(episode label, image index)` of the query images, `query` per class, class-major.
    pub query: Vec<(usize, usize)>,
}

/// Draws episodes over classes whose image lists are given by `class_images[c]` (indices into
/// whatever the caller's dataset is).
#[derive(Debug, Clone, Copy)]
pub struct EpisodeSampler {
    pub way: usize,
    pub shot: usize,
    pub query: usize,
    pub seed: u64,
}

impl EpisodeSampler {
    /// Checks the split can serve every episode before any work starts.
    pub fn check(&self, class_sizes: &[usize]) -> Result<(), SampleError> {
        if self.way == 0 || self.shot == 0 || self.query == 0 {
            return Err(SampleError::Empty);
        }
        if class_sizes.len() < self.way {
            return Err(SampleError::TooFewClasses {
                classes: class_sizes.len(),
                way: self.way,
            });
        }
        let needed = self.shot + self.query;
        for (class, &images) in class_sizes.iter().enumerate() {
            if images < needed {
                return Err(SampleError::TooFewImages {
                    class,
                    images,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// Episode number `e`; `class_images[c]` lists the image indices of class `c`.
    pub fn episode(&self, e: u64, class_images: &[Vec<usize>]) -> Result<Episode, SampleError> {
        let sizes: Vec<usize> = class_images.iter().map(|c| c.len()).collect();
        self.check(&sizes)?;
        let mut rng = episode_rng(self.seed, self.shot, e);
        let classes = choose_distinct(&mut rng, class_images.len(), self.way);
        let mut support = Vec::with_capacity(self.way * self.shot);
        let mut query = Vec::with_capacity(self.way * self.query);
        for (label, &c) in classes.iter().enumerate() {
            let picks = choose_distinct(&mut rng, class_images[c].len(), self.shot + self.query);
            for (i, &p) in picks.iter().enumerate() {
                let item = (label, class_images[c][p]);
                if i < self.shot {
                    support.push(item);
                } else {
                    query.push(item);
                }
            }
        }
        Ok(Episode {
            classes,
            support,
            query,
        })
    }
}

/// The stream of episode `e` of a `shot`-shot evaluation: SplitMix64 seeded by mixing the three
/// numbers, so episodes are independent of each other and of the order they are drawn in.
pub fn episode_rng(seed: u64, shot: usize, e: u64) -> SplitMix64 {
    let mut s = SplitMix64::new(seed ^ 0xFE57_0000_0000_0000);
    let a = s.next_u64() ^ (shot as u64);
    let mut s = SplitMix64::new(a);
    let b = s.next_u64() ^ e;
    SplitMix64::new(b)
}

/// `k` distinct values of `0..n` in draw order (a partial Fisher-Yates shuffle); needs `k <= n`
/// and `n < 2^32`, which [`EpisodeSampler::check`] guarantees for the sampler's calls.
pub fn choose_distinct(rng: &mut SplitMix64, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below((n - i) as u32) as usize;
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn classes(sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut next = 0;
        sizes
            .iter()
            .map(|&n| {
                let v: Vec<usize> = (next..next + n).collect();
                next += n;
                v
            })
            .collect()
    }

    #[test]
    fn episodes_have_distinct_classes_and_images_from_the_right_class() {
        let data = classes(&[25, 30, 21, 40, 22, 35, 28]);
        let s = EpisodeSampler {
            way: 5,
            shot: 5,
            query: 15,
            seed: 3,
        };
        for e in 0..50 {
            let ep = s.episode(e, &data).unwrap();
            let mut cls = ep.classes.clone();
            cls.sort_unstable();
            cls.dedup();
            assert_eq!(cls.len(), 5);
            assert_eq!(ep.support.len(), 25);
            assert_eq!(ep.query.len(), 75);
            let mut all: Vec<usize> = ep
                .support
                .iter()
                .chain(ep.query.iter())
                .map(|&(_, i)| i)
                .collect();
            for &(label, img) in ep.support.iter().chain(ep.query.iter()) {
                assert!(
                    data[ep.classes[label]].contains(&img),
                    "image from another class"
                );
            }
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 100, "an image repeats within the episode");
        }
    }

    #[test]
    fn same_seed_same_episodes_other_seed_other_episodes() {
        let data = classes(&[20; 10]);
        let a = EpisodeSampler {
            way: 5,
            shot: 1,
            query: 15,
            seed: 9,
        };
        let b = EpisodeSampler { seed: 10, ..a };
        assert_eq!(a.episode(4, &data).unwrap(), a.episode(4, &data).unwrap());
        assert_ne!(a.episode(4, &data).unwrap(), b.episode(4, &data).unwrap());
        assert_ne!(a.episode(4, &data).unwrap(), a.episode(5, &data).unwrap());
    }

    #[test]
    fn too_small_splits_are_rejected_up_front() {
        let s = EpisodeSampler {
            way: 5,
            shot: 5,
            query: 15,
            seed: 0,
        };
        assert_eq!(
            s.check(&[30; 4]),
            Err(SampleError::TooFewClasses { classes: 4, way: 5 })
        );
        assert_eq!(
            s.check(&[30, 30, 19, 30, 30]),
            Err(SampleError::TooFewImages {
                class: 2,
                images: 19,
                needed: 20
            })
        );
        assert!(s.episode(0, &classes(&[30, 30, 19, 30, 30])).is_err());
        assert_eq!(
            EpisodeSampler { shot: 0, ..s }.check(&[30; 5]),
            Err(SampleError::Empty)
        );
    }

    #[test]
    fn every_class_and_image_can_be_drawn() {
        let data = classes(&[3, 3, 3]);
        let s = EpisodeSampler {
            way: 2,
            shot: 1,
            query: 1,
            seed: 1,
        };
        let mut seen = vec![false; 9];
        for e in 0..200 {
            for &(_, i) in s.episode(e, &data).unwrap().support.iter() {
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&b| b), "{seen:?}");
    }
}
