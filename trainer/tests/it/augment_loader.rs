//! The batch loader: thread-count independence, batching, landmark plumbing, error propagation.
use std::sync::Arc;

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use trainer::augment::loader::load_batch;
use trainer::augment::{
    augment, epoch_order, view_rng, AugmentConfig, Batch, ImageSource, Loader, LoaderSpec,
};
use trainer::data::Landmarks;

/// Images generated from their index; index `fail_at` fails to load, `panic_at` panics.
struct Synthetic {
    n: usize,
    side: u32,
    fail_at: Option<usize>,
    landmarks: bool,
}

impl ImageSource for Synthetic {
    fn len(&self) -> usize {
        self.n
    }
    fn load(&self, i: usize) -> Result<(RgbImage, usize, Option<Landmarks>)> {
        if Some(i) == self.fail_at {
            bail!("synthetic/{i:05}.png: not a PNG file");
        }
        let img = RgbImage::from_fn(self.side + (i % 3) as u32, self.side, |x, y| {
            Rgb([
                (x * 7 + i as u32 * 13) as u8,
                (y * 5 + x) as u8,
                (i * 31) as u8,
            ])
        });
        let lm = self.landmarks.then(|| {
            let b = (i % 5) as f32;
            [
                [5.0 + b, 6.0],
                [20.0, 6.0 + b],
                [12.0, 12.0],
                [6.0, 20.0],
                [19.0, 20.0],
            ]
        });
        Ok((img, i % 4, lm))
    }
}

fn source(n: usize, landmarks: bool) -> Arc<dyn ImageSource> {
    Arc::new(Synthetic {
        n,
        side: 28,
        fail_at: None,
        landmarks,
    })
}

fn collect(loader: Loader) -> Vec<Batch> {
    loader.collect::<Result<Vec<_>>>().unwrap()
}

fn spec_with_pool(threads: usize, batch: usize) -> LoaderSpec {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let cfg = AugmentConfig::moco_v2(16);
    LoaderSpec {
        pool: Some(Arc::new(pool)),
        ..LoaderSpec::new(batch, vec![cfg.clone(), cfg], 42, 3)
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let order = epoch_order(37, 42, 3);
    let one = collect(Loader::new(source(37, true), order.clone(), spec_with_pool(1, 8)).unwrap());
    let two = collect(Loader::new(source(37, true), order.clone(), spec_with_pool(2, 8)).unwrap());
    let four = collect(Loader::new(source(37, true), order, spec_with_pool(4, 8)).unwrap());
    assert_eq!(one.len(), 5);
    assert_eq!(one, two);
    assert_eq!(one, four);
}

/// Each image's views are exactly `augment` with its own `(seed, epoch, index, view)` stream:
/// batch composition cannot leak into the augmentation.
#[test]
fn batch_contents_are_per_image_augmentations() {
    let src = source(10, true);
    let cfg = AugmentConfig::moco_v1(12);
    let views = vec![cfg.clone(), cfg.clone()];
    let b = load_batch(&*src, &[7, 2, 9], &views, 5, 1).unwrap();
    assert_eq!(b.indices, vec![7, 2, 9]);
    assert_eq!(b.labels, vec![3, 2, 1]);
    let per = 3 * 12 * 12;
    for (pos, &i) in b.indices.iter().enumerate() {
        let (img, _, lm) = src.load(i).unwrap();
        for v in 0..2 {
            let a = augment(
                &img,
                lm.as_ref(),
                &cfg,
                &mut view_rng(5, 1, i as u64, v as u64),
            )
            .unwrap();
            assert_eq!(&b.views[v][pos * per..(pos + 1) * per], &a.pixels[..]);
            assert_eq!(b.landmarks.as_ref().unwrap()[v][pos], a.landmarks.unwrap());
        }
    }
    let t = b.view_tensor(1, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 3, 12, 12]);
    let l = b
        .landmarks_tensor(0, &candle_core::Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(l.dims(), &[3, 10]);
    assert_eq!(
        b.labels_tensor(&candle_core::Device::Cpu)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        [3, 2, 1]
    );
}

#[test]
fn drop_last_controls_the_short_batch() {
    let order: Vec<usize> = (0..10).collect();
    let cfg = vec![AugmentConfig::none(8)];
    let keep = Loader::new(
        source(10, false),
        order.clone(),
        LoaderSpec::new(4, cfg.clone(), 0, 0),
    )
    .unwrap();
    assert_eq!(keep.num_batches(), 3);
    let sizes: Vec<usize> = collect(keep).iter().map(Batch::len).collect();
    assert_eq!(sizes, [4, 4, 2]);
    let spec = LoaderSpec {
        drop_last: true,
        ..LoaderSpec::new(4, cfg.clone(), 0, 0)
    };
    let drop = collect(Loader::new(source(10, false), order.clone(), spec).unwrap());
    assert_eq!(drop.iter().map(Batch::len).collect::<Vec<_>>(), [4, 4]);
    assert_eq!(drop[1].indices, [4, 5, 6, 7]);
    assert!(drop[0].landmarks.is_none());
    // Exact multiple: drop_last changes nothing.
    let spec = LoaderSpec {
        drop_last: true,
        ..LoaderSpec::new(5, cfg, 0, 0)
    };
    assert_eq!(
        collect(Loader::new(source(10, false), order, spec).unwrap()).len(),
        2
    );
}

#[test]
fn a_source_error_is_passed_through_and_ends_the_epoch() {
    let src: Arc<dyn ImageSource> = Arc::new(Synthetic {
        n: 12,
        side: 20,
        fail_at: Some(6),
        landmarks: false,
    });
    let order: Vec<usize> = (0..12).collect();
    let mut loader = Loader::new(
        src,
        order,
        LoaderSpec::new(4, vec![AugmentConfig::moco_v2(8)], 1, 0),
    )
    .unwrap();
    assert!(loader.next().unwrap().is_ok());
    let err = loader.next().unwrap().unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("dataset image 6") && msg.contains("synthetic/00006.png"),
        "{msg}"
    );
    assert!(loader.next().is_none(), "nothing after the error");
}

#[test]
fn bad_specs_are_rejected_up_front() {
    let order: Vec<usize> = (0..5).collect();
    let e = |spec: LoaderSpec, order: Vec<usize>| match Loader::new(source(5, false), order, spec) {
        Ok(_) => panic!("accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e(
        LoaderSpec::new(0, vec![AugmentConfig::none(8)], 0, 0),
        order.clone()
    )
    .contains("batch size"));
    assert!(e(LoaderSpec::new(2, vec![], 0, 0), order.clone()).contains("at least one view"));
    let mixed = vec![AugmentConfig::none(8), AugmentConfig::none(16)];
    assert!(e(LoaderSpec::new(2, mixed, 0, 0), order).contains("view 1 is 16 px"));
    assert!(e(
        LoaderSpec::new(2, vec![AugmentConfig::none(8)], 0, 0),
        vec![0, 9]
    )
    .contains("image 9"));
}

#[test]
fn dropping_a_loader_early_stops_its_worker() {
    let order: Vec<usize> = (0..64).collect();
    let spec = LoaderSpec {
        prefetch: 1,
        ..LoaderSpec::new(2, vec![AugmentConfig::none(8)], 0, 0)
    };
    let mut loader = Loader::new(source(64, false), order, spec).unwrap();
    assert!(loader.next().unwrap().is_ok());
    drop(loader); // must return (join) rather than hang on a full channel
}
