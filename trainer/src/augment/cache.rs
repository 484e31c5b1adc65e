//! Decode each image once per run: an [`ImageSource`] wrapper that keeps the decoded u8 images
//! in memory, so the second and later epochs augment from RAM instead of decoding the PNG/JPEG
//! again (the loader used to decode every image every epoch).
//!
//! The first read of image `i` decodes it through the wrapped source (in whatever loader thread
//! asks, so the first epoch's decoding still overlaps the step) and stores it if the cache's byte
//! budget allows. The budget counts decoded pixels (`3·W·H` bytes per image);
//! [`DEFAULT_BUDGET_BYTES`] (1 GiB) holds the study's sets many times over (5 000 images of
//! 48 px are 35 MB; all of mini-ImageNet's 38 400 base images at 84 px are 0.8 GB). Above the
//! budget the images read first stay cached and the rest are decoded on every read, exactly as
//! without the cache, so a large set (full CelebA) costs no more memory than the budget.
//!
//! The pixels, labels and landmarks handed out are the wrapped source's, so training is
//! bit-identical with and without the cache; only decoding errors move (an image that decoded
//! once is not read from disk again).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Result;

use super::loader::ImageSource;
use crate::data::Landmarks;

/// Decoded bytes a [`DecodedCache`] keeps by default (1 GiB).
pub const DEFAULT_BUDGET_BYTES: usize = 1 << 30;

type Item = (image::RgbImage, usize, Option<Landmarks>);

/// What slot `i` holds once image `i` has been read.
enum Slot {
    Kept(Item),
    /// Over the budget: decode on every read.
    Uncached,
}

/// An [`ImageSource`] that decodes each image at most once while its byte budget lasts.
pub struct DecodedCache {
    inner: Arc<dyn ImageSource>,
    slots: Vec<OnceLock<Slot>>,
    budget: usize,
    used: AtomicUsize,
}

impl DecodedCache {
    /// Cache `inner` with [`DEFAULT_BUDGET_BYTES`].
    pub fn new(inner: Arc<dyn ImageSource>) -> Self {
        Self::with_budget(inner, DEFAULT_BUDGET_BYTES)
    }

    /// Cache `inner`, keeping at most `budget` bytes of decoded pixels.
    pub fn with_budget(inner: Arc<dyn ImageSource>, budget: usize) -> Self {
        let slots = (0..inner.len()).map(|_| OnceLock::new()).collect();
        DecodedCache {
            inner,
            slots,
            budget,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes of decoded pixels held now.
    pub fn bytes_held(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Images held now.
    pub fn images_held(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.get(), Some(Slot::Kept(_))))
            .count()
    }

    /// Reserve `bytes` of the budget; false (nothing reserved) when they do not fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(bytes).filter(|&t| t <= self.budget)
            })
            .is_ok()
    }
}

impl ImageSource for DecodedCache {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn load(&self, i: usize) -> Result<Item> {
        let Some(slot) = self.slots.get(i) else {
            // Out of range: let the wrapped source word the error.
            return self.inner.load(i);
        };
        match slot.get() {
            Some(Slot::Kept(item)) => return Ok(item.clone()),
            Some(Slot::Uncached) => return self.inner.load(i),
            None => {}
        }
        let item = self.inner.load(i)?;
        let bytes = item.0.as_raw().len();
        let new = if self.reserve(bytes) {
            Slot::Kept(item.clone())
        } else {
            Slot::Uncached
        };
        let kept = matches!(new, Slot::Kept(_));
        // Two threads reading the same new image race here; the loser gives its bytes back.
        if slot.set(new).is_err() && kept {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// `n` 2×3 images whose pixels encode the index; counts the decodes.
    struct Counting {
        n: usize,
        decodes: AtomicUsize,
    }

    impl ImageSource for Counting {
        fn len(&self) -> usize {
            self.n
        }
        fn load(&self, i: usize) -> Result<Item> {
            if i >= self.n {
                anyhow::bail!("image {i} of {}", self.n);
            }
            self.decodes.fetch_add(1, Ordering::Relaxed);
            let raw = (0..18).map(|k| (i * 7 + k) as u8).collect();
            let img = image::RgbImage::from_raw(2, 3, raw).expect("2·3·3 bytes");
            Ok((img, i % 3, None))
        }
    }

    fn counting(n: usize) -> Arc<Counting> {
        Arc::new(Counting {
            n,
            decodes: AtomicUsize::new(0),
        })
    }

    #[test]
    fn decodes_once_and_returns_the_same_items() {
        let inner = counting(5);
        let cache = DecodedCache::new(inner.clone());
        for _epoch in 0..3 {
            for i in [3, 0, 4, 1, 2] {
                assert_eq!(cache.load(i).unwrap(), inner.load(i).unwrap());
            }
        }
        // 5 decodes through the cache + 15 direct reads for the comparison.
        assert_eq!(inner.decodes.load(Ordering::Relaxed), 5 + 15);
        assert_eq!(cache.images_held(), 5);
        assert_eq!(cache.bytes_held(), 5 * 18);
    }

    #[test]
    fn above_the_budget_the_rest_is_decoded_every_time() {
        let inner = counting(5);
        // Room for two images of 18 bytes.
        let cache = DecodedCache::with_budget(inner.clone(), 40);
        for _epoch in 0..3 {
            for i in 0..5 {
                let (img, label, _) = cache.load(i).unwrap();
                assert_eq!(img.as_raw()[0], (i * 7) as u8);
                assert_eq!(label, i % 3);
            }
        }
        // Images 0 and 1 once, images 2..5 every epoch.
        assert_eq!(inner.decodes.load(Ordering::Relaxed), 2 + 3 * 3);
        assert_eq!(cache.images_held(), 2);
        assert_eq!(cache.bytes_held(), 36);
    }

    #[test]
    fn errors_pass_through() {
        let cache = DecodedCache::new(counting(2));
        let e = cache.load(7).unwrap_err().to_string();
        assert!(e.contains("image 7 of 2"), "{e}");
    }
}
