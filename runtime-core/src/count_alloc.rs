//! A counting global allocator: the proof, in a test binary, that inference does not touch the
//! heap. Install it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and wrap
//! the code under test in [`count_allocations`]. It forwards to the system allocator and counts
//! `alloc` and `realloc` calls made while counting is on (from any thread, so a binary that
//! counts should run its counted code with no other test thread allocating).
//!
//! One definition for runtime-ffi's and parity-tests' allocation tests (`alloc-count` feature).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The counting allocator (forwards to [`System`]).
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counter
// is a side effect only.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `l`.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l` (every allocation goes there).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract for `n`.
        unsafe { System.realloc(p, l, n) }
    }
}

/// The number of allocations (and reallocations) made while `f` ran. Meaningful only in a
/// binary whose global allocator is [`CountingAlloc`].
pub fn count_allocations(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}
