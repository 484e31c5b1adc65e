//! The few-shot episode runner on a host: runtime-core's episode scorer
//! ([`episode_accuracy_pct`], heap-backed heads) over rayon's pool.
//!
//! runtime-core stays free of OS threads (it is the MCU's engine); this is the std side that
//! host-trainer (candle features) and `runtime-cli eval fewshot` (int8 features) both call, so
//! the two sides score the same episodes with the same code and differ only by their features.
use rayon::prelude::*;
use runtime_core::protocol::fewshot::{
    classifier_seed, episode_accuracy_pct, Episode, EpisodeError, FewShotHead,
};

/// Scores the episodes of a `shot`-shot evaluation (episode `e` is `episodes[e]`, its classifier
/// seeded by [`classifier_seed`]`(seed, shot, e)`) in parallel; returns the per-episode
/// accuracies (%) in episode order, so the result does not depend on the thread count.
/// `feature(i)` gives the `dim` features of image `i`; `on_done` runs after each episode
/// (progress bars). On failure, the error of the earliest failing episode.
pub fn run_episodes<'a, F>(
    episodes: &[Episode],
    feature: F,
    dim: usize,
    head: FewShotHead,
    seed: u64,
    shot: usize,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<f64>, EpisodeError>
where
    F: Fn(usize) -> Option<&'a [f32]> + Sync,
{
    let scored: Vec<Result<f64, EpisodeError>> = episodes
        .par_iter()
        .enumerate()
        .map(|(e, ep)| {
            let r = episode_accuracy_pct(
                ep,
                &feature,
                dim,
                head,
                classifier_seed(seed, shot, e as u64),
            );
            on_done();
            r
        })
        .collect();
    scored.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_core::protocol::fewshot::EpisodeSampler;

    fn data() -> (Vec<Vec<usize>>, Vec<Vec<f32>>) {
        // 6 classes × 12 images of 6-dim features: class c is centred on axis c.
        let mut classes = Vec::new();
        let mut feats = Vec::new();
        for c in 0..6 {
            let mut idx = Vec::new();
            for j in 0..12 {
                idx.push(feats.len());
                let mut f = vec![0.05 * ((j * 7 + c * 3) % 5) as f32; 6];
                f[c] += 1.0;
                feats.push(f);
            }
            classes.push(idx);
        }
        (classes, feats)
    }

    #[test]
    fn independent_of_the_thread_count_and_equal_to_the_serial_scorer() {
        let (classes, feats) = data();
        let s = EpisodeSampler {
            way: 5,
            shot: 2,
            query: 3,
            seed: 4,
        };
        let eps: Vec<Episode> = (0..12).map(|e| s.episode(e, &classes).unwrap()).collect();
        let f = |i: usize| feats.get(i).map(|v| &v[..]);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_episodes(&eps, f, 6, FewShotHead::Linear, 4, 2, &|| {}))
                .unwrap()
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one, three);
        for (e, ep) in eps.iter().enumerate() {
            let serial = episode_accuracy_pct(
                ep,
                f,
                6,
                FewShotHead::Linear,
                classifier_seed(4, 2, e as u64),
            )
            .unwrap();
            assert_eq!(one[e], serial);
        }
        // Well-separated classes: the linear head gets most queries right.
        assert!(one.iter().sum::<f64>() / one.len() as f64 > 80.0, "{one:?}");
    }

    #[test]
    fn a_missing_feature_is_the_error_of_the_earliest_failing_episode() {
        let (classes, feats) = data();
        let s = EpisodeSampler {
            way: 5,
            shot: 1,
            query: 2,
            seed: 1,
        };
        let eps: Vec<Episode> = (0..8).map(|e| s.episode(e, &classes).unwrap()).collect();
        // Images of class 0 have no features: the first episode using one fails.
        let missing: Vec<usize> = classes[0].clone();
        let f = |i: usize| {
            if missing.contains(&i) {
                None
            } else {
                feats.get(i).map(|v| &v[..])
            }
        };
        let first_bad = eps
            .iter()
            .position(|ep| ep.classes.contains(&0))
            .expect("some episode draws class 0");
        let expected = episode_accuracy_pct(
            &eps[first_bad],
            f,
            6,
            FewShotHead::Centroid,
            classifier_seed(4, 1, first_bad as u64),
        )
        .unwrap_err();
        let got = run_episodes(&eps, f, 6, FewShotHead::Centroid, 4, 1, &|| {}).unwrap_err();
        assert_eq!(got, expected);
    }
}
