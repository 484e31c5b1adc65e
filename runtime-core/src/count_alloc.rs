//! A counting global allocator: the proof, in a test binary, that inference does not touch the
//! heap. Install it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and wrap
//! the code under test in [`count_allocations`]. It forwards to the system allocator and counts
//! the `alloc` and `realloc` calls that the counting thread makes while counting is on. Only that
//! thread: the test harness's own threads allocate at moments of their own (its main thread
//! printing the next test's name, say), which made a process-wide count flaky under load.
//! Code under test that hands work to other threads would need counting there too; the
//! runtime's inference runs on the caller's thread.
//!
//! One definition for runtime-ffi's and parity-tests' allocation tests (`alloc-count` feature).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The counting allocator (forwards to [`System`]).
pub struct CountingAlloc;

std::thread_local! {
    /// Whether this thread is counting. A `const` initialiser: reading it never allocates, so the
    /// allocator may consult it.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn counting() -> bool {
    // `try_with`: during thread teardown the flag may be gone; nothing is counted then.
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counter
// is a side effect only.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counting() {
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
        if counting() {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract for `n`.
        unsafe { System.realloc(p, l, n) }
    }
}

/// The number of allocations (and reallocations) this thread made while `f` ran. Meaningful
/// only in a binary whose global allocator is [`CountingAlloc`]; one counting call at a time.
pub fn count_allocations(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::SeqCst)
}
