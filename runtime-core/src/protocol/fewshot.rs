//! The few-shot episode sampler of Chen et al. (2019), shared by every program that evaluates the
//! protocol (host-trainer on candle features, runtime-cli on int8 features; the MCU firmware runs
//! one fixed episode and does not sample), so the same `seed` gives the same episodes everywhere
//! and results compare number for number.
//!
//! Episode `e` of a `shot`-shot evaluation is drawn from its own stream keyed by
//! `(seed, shot, e)`: `way` distinct classes, then `shot + query` distinct images of each class;
//! the first `shot` are the support set, the rest the queries.
use alloc::vec::Vec;

use crate::heads::centroid::CentroidHead;
use crate::heads::linear::{LinearHead, SgdRecipe};
use crate::heads::rng::SplitMix64;

/// Errors of the sampler: the protocol cannot be run on this split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
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

impl core::fmt::Display for SampleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SampleError::TooFewClasses { classes, way } => write!(
                f,
                "the split has {classes} classes, {way}-way episodes need {way}; lower the way"
            ),
            SampleError::TooFewImages {
                class,
                images,
                needed,
            } => write!(
                f,
                "class {class} has {images} images, episodes need {needed} (shot + query) per \
                 class; lower the shot or query count"
            ),
            SampleError::Empty => f.write_str("way, shot and query must each be at least 1"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SampleError {}

/// One episode: positions are indices into the per-class image lists given to the sampler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Episode {
    /// The `way` classes of the episode, in episode-label order (label `i` = `classes[i]`).
    pub classes: Vec<usize>,
    /// `(episode label, image index)` of the support images, `shot` per class, class-major.
    pub support: Vec<(usize, usize)>,
    /// `(episode label, image index)` of the query images, `query` per class, class-major.
    pub query: Vec<(usize, usize)>,
}

/// Draws episodes over classes whose image lists are given by `class_images[c]` (indices into
/// whatever the caller's dataset is).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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

/// Every episode of a multi-shot evaluation, drawn up front, and the images they use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EpisodePlan {
    /// `episodes[k][e]`: episode `e` of the `shots[k]`-shot setting.
    pub episodes: Vec<Vec<Episode>>,
    /// The image indices some episode uses (support or query), ascending, each once: the only
    /// images that need features.
    pub images: Vec<usize>,
}

/// Why [`plan_episodes`] could not draw the episodes: the sampler's error and the shot setting
/// it arose in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct PlanError {
    pub shot: usize,
    pub query: usize,
    pub error: SampleError,
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.error {
            SampleError::TooFewClasses { classes, way } => {
                write!(
                    f,
                    "the split has {classes} classes, {way}-way episodes need {way}"
                )
            }
            SampleError::TooFewImages {
                class,
                images,
                needed,
            } => write!(
                f,
                "class {class} has {images} images, {}-shot episodes with {} queries need {needed}",
                self.shot, self.query
            ),
            SampleError::Empty => write!(f, "--way, --shot and --query must be at least 1"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PlanError {}

/// Draws episodes `0..episodes` of every shot setting in `shots` (in that order) with the shared
/// [`EpisodeSampler`], checking the split first, and marks which images they use. This is the
/// one planning step of the protocol: host-trainer and runtime-cli embed exactly
/// [`EpisodePlan::images`] and score [`EpisodePlan::episodes`], so with the same arguments they
/// see the same episodes.
pub fn plan_episodes(
    class_images: &[Vec<usize>],
    way: usize,
    shots: &[usize],
    query: usize,
    episodes: u64,
    seed: u64,
) -> Result<EpisodePlan, PlanError> {
    let sizes: Vec<usize> = class_images.iter().map(|c| c.len()).collect();
    let mut all = Vec::with_capacity(shots.len());
    let mut images = Vec::new();
    for &shot in shots {
        let err = |error| PlanError { shot, query, error };
        let sampler = EpisodeSampler {
            way,
            shot,
            query,
            seed,
        };
        sampler.check(&sizes).map_err(err)?;
        let mut eps = Vec::with_capacity(episodes as usize);
        for e in 0..episodes {
            let ep = sampler.episode(e, class_images).map_err(err)?;
            images.extend(ep.support.iter().chain(&ep.query).map(|&(_, i)| i));
            eps.push(ep);
        }
        all.push(eps);
    }
    images.sort_unstable();
    images.dedup();
    Ok(EpisodePlan {
        episodes: all,
        images,
    })
}

/// Groups image indices by class: `labels[i]` is image `i`'s class (below `classes`), the result
/// lists each class's images in index order, the `class_images` [`plan_episodes`] takes.
pub fn class_images(labels: impl IntoIterator<Item = usize>, classes: usize) -> Vec<Vec<usize>> {
    let mut out = alloc::vec![Vec::new(); classes];
    for (i, c) in labels.into_iter().enumerate() {
        if let Some(v) = out.get_mut(c) {
            v.push(i);
        }
    }
    out
}

/// Mixed into the user's seed so the classifier stream differs from the episode stream.
pub const CLASSIFIER_SEED_TAG: u64 = 0x11EA_C1A5_0000_0000;

/// Seed of the linear classifier of episode `e` of a `shot`-shot evaluation: the first output of
/// `episode_rng(seed ^ CLASSIFIER_SEED_TAG, shot, e)`. Depends only on these three numbers, so
/// any program (host-trainer, runtime-cli, the MCU) reproduces it without replaying the sampler:
/// with the same seed, host and device fit the same classifier from the same initial weights.
pub fn classifier_seed(seed: u64, shot: usize, e: u64) -> u64 {
    episode_rng(seed ^ CLASSIFIER_SEED_TAG, shot, e).next_u64()
}

/// The few-shot head fitted on each episode's support set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FewShotHead {
    /// `Linear(dim → way)` fitted by SGD with Chen et al.'s recipe (the paper's protocol).
    Linear,
    /// Cosine nearest centroid.
    Centroid,
}

impl FewShotHead {
    /// The name used on command lines and in JSON results.
    pub fn name(self) -> &'static str {
        match self {
            FewShotHead::Linear => "linear",
            FewShotHead::Centroid => "centroid",
        }
    }
}

/// Why an episode could not be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EpisodeError {
    /// The head refused the support set (shapes, labels).
    Head(crate::heads::HeadError),
    /// The caller has no feature row (of length `dim`) for this image index.
    MissingFeature(usize),
    /// More classes than the heads' `u8` labels can name ([`MAX_EPISODE_WAY`]).
    TooLarge { way: usize, dim: usize },
}

/// Most classes per episode [`episode_accuracy_pct`] scores: support labels are `u8`.
pub const MAX_EPISODE_WAY: usize = u8::MAX as usize + 1;

impl core::fmt::Display for EpisodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EpisodeError::Head(e) => write!(f, "the few-shot head refused the support set: {e}"),
            EpisodeError::MissingFeature(i) => write!(
                f,
                "no feature row of the expected length for image {i}: embed every image the \
                 episode plan lists (EpisodePlan::images) with the same feature dimension"
            ),
            EpisodeError::TooLarge { way, dim } => write!(
                f,
                "{way}-way episodes (of {dim} features): the few-shot heads take at most \
                 {MAX_EPISODE_WAY} classes per episode; use a smaller --way"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EpisodeError {}

/// Accuracy (%) of one episode: fit `head` on the support features, classify the queries.
/// `feature(i)` gives the `dim` features of image index `i`. This is THE episode scorer of the
/// protocol, so host and device numbers differ only by their features. It uses the heap-backed
/// heads ([`LinearHead`], [`CentroidHead`]: any feature dimension, up to [`MAX_EPISODE_WAY`]
/// classes), whose results are bit-identical to the MCU's fixed-capacity heads, and runs on any
/// thread with an ordinary stack.
pub fn episode_accuracy_pct<'a, F>(
    ep: &Episode,
    feature: F,
    dim: usize,
    head: FewShotHead,
    seed: u64,
) -> Result<f64, EpisodeError>
where
    F: Fn(usize) -> Option<&'a [f32]>,
{
    let way = ep.classes.len();
    if way > MAX_EPISODE_WAY {
        return Err(EpisodeError::TooLarge { way, dim });
    }
    let feat = |i: usize| {
        feature(i)
            .filter(|f| f.len() == dim)
            .ok_or(EpisodeError::MissingFeature(i))
    };
    let mut xs = Vec::with_capacity(ep.support.len() * dim);
    let mut labels = Vec::with_capacity(ep.support.len());
    for &(label, i) in &ep.support {
        xs.extend_from_slice(feat(i)?);
        labels.push(u8::try_from(label).map_err(|_| EpisodeError::TooLarge { way, dim })?);
    }
    let mut correct = 0usize;
    match head {
        FewShotHead::Linear => {
            let h = LinearHead::fit(&xs, &labels, way, dim, &SgdRecipe::default(), seed)
                .map_err(EpisodeError::Head)?;
            for &(label, i) in &ep.query {
                correct += (h.predict(feat(i)?).map_err(EpisodeError::Head)? == label) as usize;
            }
        }
        FewShotHead::Centroid => {
            let h = CentroidHead::fit(&xs, &labels, way, dim).map_err(EpisodeError::Head)?;
            for &(label, i) in &ep.query {
                correct += (h.predict(feat(i)?).map_err(EpisodeError::Head)? == label) as usize;
            }
        }
    }
    Ok(100.0 * correct as f64 / ep.query.len().max(1) as f64)
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

    /// The plan is, shot by shot, exactly the sampler's episodes 0..n, and its image list is the
    /// sorted union of their images (computed here naively with a bitmap).
    #[test]
    fn plan_is_the_samplers_episodes_and_their_image_union() {
        let labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 3, 0, 1, 2, 3];
        let cls = class_images(labels.iter().copied(), 4);
        assert_eq!(cls[0], vec![0, 3, 6, 12]);
        assert_eq!(cls[3], vec![9, 10, 11, 15]);
        let plan = plan_episodes(&cls, 3, &[1, 2], 1, 4, 7).unwrap();
        assert_eq!(plan.episodes.len(), 2);
        let mut used = vec![false; labels.len()];
        for (k, shot) in [1usize, 2].into_iter().enumerate() {
            let s = EpisodeSampler {
                way: 3,
                shot,
                query: 1,
                seed: 7,
            };
            assert_eq!(plan.episodes[k].len(), 4);
            for e in 0..4 {
                let ep = s.episode(e, &cls).unwrap();
                for &(_, i) in ep.support.iter().chain(&ep.query) {
                    used[i] = true;
                }
                assert_eq!(plan.episodes[k][e as usize], ep);
            }
        }
        let want: Vec<usize> = (0..labels.len()).filter(|&i| used[i]).collect();
        assert_eq!(plan.images, want);
        // A split too small for one of the shot settings names that setting.
        let e = plan_episodes(&cls, 3, &[1, 4], 1, 2, 7).unwrap_err();
        assert_eq!(
            e,
            PlanError {
                shot: 4,
                query: 1,
                error: SampleError::TooFewImages {
                    class: 0,
                    images: 4,
                    needed: 5
                }
            }
        );
        assert_eq!(
            alloc::format!("{e}"),
            "class 0 has 4 images, 4-shot episodes with 1 queries need 5"
        );
        assert!(plan_episodes(&cls, 5, &[1], 1, 2, 7).is_err());
    }

    #[test]
    fn classifier_seed_depends_on_all_three_numbers_only() {
        let s = classifier_seed(7, 5, 3);
        assert_eq!(s, classifier_seed(7, 5, 3));
        assert_ne!(s, classifier_seed(8, 5, 3));
        assert_ne!(s, classifier_seed(7, 1, 3));
        assert_ne!(s, classifier_seed(7, 5, 4));
        // Not the episode stream itself (that one picks the classes).
        assert_ne!(s, episode_rng(7, 5, 3).next_u64());
    }

    /// Image i: class i / 10 of 4, features = a noisy one-hot of the class (linearly separable).
    fn separable(n_classes: usize, per: usize, dim: usize) -> (Vec<Vec<usize>>, Vec<Vec<f32>>) {
        let mut rng = SplitMix64::new(5);
        let mut feats = Vec::new();
        let mut cls = alloc::vec![Vec::new(); n_classes];
        for c in 0..n_classes {
            for _ in 0..per {
                let mut f: Vec<f32> = (0..dim).map(|_| 0.2 * rng.unit_f32()).collect();
                f[c % dim] += 2.0;
                cls[c].push(feats.len());
                feats.push(f);
            }
        }
        (cls, feats)
    }

    #[test]
    fn both_heads_are_perfect_on_separable_features_and_a_relabel_scores_zero() {
        let (cls, feats) = separable(6, 8, 8);
        let s = EpisodeSampler {
            way: 5,
            shot: 1,
            query: 3,
            seed: 2,
        };
        for e in 0..5 {
            let ep = s.episode(e, &cls).unwrap();
            for head in [FewShotHead::Linear, FewShotHead::Centroid] {
                let a = episode_accuracy_pct(&ep, |i| feats.get(i).map(|f| &f[..]), 8, head, 1)
                    .unwrap();
                assert_eq!(a, 100.0, "{head:?} episode {e}");
            }
            // Every query labelled with the next class: nothing can be right.
            let way = ep.classes.len();
            let wrong = Episode {
                query: ep.query.iter().map(|&(l, i)| ((l + 1) % way, i)).collect(),
                ..ep.clone()
            };
            let a = episode_accuracy_pct(
                &wrong,
                |i| feats.get(i).map(|f| &f[..]),
                8,
                FewShotHead::Centroid,
                1,
            )
            .unwrap();
            assert_eq!(a, 0.0);
        }
    }

    /// Beyond the old fixed-capacity limits (20 classes, 4096 features) on the test harness's
    /// ordinary thread stack: the heads are heap-backed.
    #[test]
    fn episodes_score_any_dim_and_way_without_a_big_stack() {
        let (cls, feats) = separable(25, 3, 5000);
        let s = EpisodeSampler {
            way: 25,
            shot: 1,
            query: 2,
            seed: 6,
        };
        let ep = s.episode(0, &cls).unwrap();
        for head in [FewShotHead::Linear, FewShotHead::Centroid] {
            let a =
                episode_accuracy_pct(&ep, |i| feats.get(i).map(|f| &f[..]), 5000, head, 3).unwrap();
            assert_eq!(a, 100.0, "{head:?}");
        }
        // Labels are u8: 257 classes cannot be named.
        let big = Episode {
            classes: (0..257).collect(),
            support: alloc::vec![(256, 0)],
            query: alloc::vec![],
        };
        assert_eq!(
            episode_accuracy_pct(&big, |_| Some(&[0.0][..]), 1, FewShotHead::Centroid, 0),
            Err(EpisodeError::TooLarge { way: 257, dim: 1 })
        );
    }
}
