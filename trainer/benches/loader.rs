//! Loader throughput: augmented images per second with the MoCo-v2 pipeline (two views per
//! image, as MoCo trains) at 32 px and 84 px, over an in-memory synthetic source (no files).
//!
//! `cargo bench -p trainer --bench loader -- --warm-up-time 1 --measurement-time 3`
use std::sync::Arc;

use anyhow::Result;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::RgbImage;
use rand::Rng as _;
use trainer::augment::{AugmentConfig, ImageSource, Loader, LoaderSpec};
use trainer::data::Landmarks;

/// Random images of a fixed size, generated once and cloned on load (a decoded-image cache).
struct InMemory {
    images: Vec<RgbImage>,
}

impl InMemory {
    fn new(n: usize, side: u32) -> Self {
        let mut r = trainer::rng::stream(0, &[123]);
        let images = (0..n)
            .map(|_| {
                let raw: Vec<u8> = (0..side * side * 3).map(|_| r.gen()).collect();
                RgbImage::from_raw(side, side, raw).expect("buffer matches size")
            })
            .collect();
        InMemory { images }
    }
}

impl ImageSource for InMemory {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn load(&self, i: usize) -> Result<(RgbImage, usize, Option<Landmarks>)> {
        Ok((self.images[i].clone(), i, None))
    }
}

fn bench_loader(c: &mut Criterion) {
    let mut g = c.benchmark_group("loader_moco_v2_2views");
    g.sample_size(10);
    // Source images a bit larger than the output, as mini-ImageNet (84) and CelebA crops are.
    for (out, side) in [(32usize, 40u32), (84, 96)] {
        let n = 256;
        let src: Arc<dyn ImageSource> = Arc::new(InMemory::new(n, side));
        let cfg = AugmentConfig::moco_v2(out);
        // Images per second counts augmented views: n images × 2 views per epoch.
        g.throughput(Throughput::Elements(2 * n as u64));
        g.bench_function(format!("{out}px"), |b| {
            b.iter(|| {
                let spec = LoaderSpec::new(64, vec![cfg.clone(), cfg.clone()], 7, 0);
                let loader = Loader::new(src.clone(), (0..n).collect(), spec).expect("valid spec");
                loader
                    .map(|b| b.expect("in-memory source cannot fail").len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_loader);
criterion_main!(benches);
