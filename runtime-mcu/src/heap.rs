//! The global heap: embedded-alloc's linked-list allocator over a static buffer, wrapped to
//! record the peak number of bytes in use.
//!
//! Only model loading allocates (safetensors parses the header into a map); inference runs in
//! the static arena, so the peak heap is the price of loading and the footprint report prints it.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

/// Heap bytes reserved in RAM (.bss). Loading the backbone peaks at 48 KiB of requests (plus the
/// allocator's per-block overhead), the pipeline's exports at 55 KiB (landmarks) and 52 KiB
/// (backbone), converting `landmark.tflite` (`tflite-landmark`) at 62 KiB; the other models at
/// 21 KiB or less.
pub const HEAP_BYTES: usize = if cfg!(any(
    mcu_model = "tflite-landmark",
    mcu_model = "fewshot",
    mcu_model = "tiny-landmark",
    mcu_model = "tiny-fewshot"
)) {
    72 * 1024
} else {
    32 * 1024
};

/// embedded-alloc's heap plus live/peak byte counters.
pub struct PeakHeap {
    inner: LlffHeap,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl PeakHeap {
    pub const fn empty() -> Self {
        Self {
            inner: LlffHeap::empty(),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Starts a new peak measurement from the bytes in use now.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Largest number of bytes that were allocated at the same time (requested sizes, without
    /// the allocator's own per-block overhead).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

unsafe impl GlobalAlloc for PeakHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            let now = self.live.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.inner.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
pub static HEAP: PeakHeap = PeakHeap::empty();

/// Hands the static buffer to the allocator. Call once, first thing in `main`.
pub fn init() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    // SAFETY: called once before any allocation; HEAP_MEM is used by nothing else.
    unsafe { HEAP.inner.init(&raw mut HEAP_MEM as usize, HEAP_BYTES) }
}
