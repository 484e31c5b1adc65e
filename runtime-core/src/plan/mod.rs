//! Arena planner: gives every activation tensor a byte offset in one buffer so that tensors
//! alive at the same time never overlap (TFLM's greedy planner: largest first, first fit).
//!
//! Runs once at load time (it may allocate); inference then only slices the caller's arena.

use alloc::vec::Vec;

/// Offsets are rounded up to this many bytes so f32 tensors stay aligned.
pub const ALIGN: usize = 4;

/// When a tensor is needed: written by op `first` (or the input, `first = 0`) and last read by
/// op `last` (inclusive). Two tensors conflict iff their `[first, last]` intervals intersect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    /// Whether both tensors must be resident at some op.
    pub fn overlaps(&self, o: &Lifetime) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// Plans `tensors`, writing each offset into `offsets` (same order); returns the arena size in
/// bytes, or `None` if a size overflows `usize` or `offsets` is shorter than `tensors`.
pub fn plan(tensors: &[Lifetime], offsets: &mut [usize]) -> Option<usize> {
    if offsets.len() < tensors.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    // Largest first; ties by birth then index so the plan is deterministic.
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        tb.bytes
            .cmp(&ta.bytes)
            .then(ta.first.cmp(&tb.first))
            .then(a.cmp(&b))
    });
    let mut placed: Vec<usize> = Vec::with_capacity(tensors.len());
    let mut busy: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    for &i in &order {
        let t = &tensors[i];
        let size = t.bytes.checked_add(ALIGN - 1)? / ALIGN * ALIGN;
        busy.clear();
        for &j in &placed {
            if tensors[j].overlaps(t) {
                let sz = tensors[j].bytes.checked_add(ALIGN - 1)? / ALIGN * ALIGN;
                busy.push((offsets[j], offsets[j] + sz));
            }
        }
        busy.sort_unstable();
        // First gap (in offset order) large enough.
        let mut at = 0usize;
        for &(s, e) in &busy {
            if at.checked_add(size)? <= s {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        total = total.max(at.checked_add(size)?);
        placed.push(i);
    }
    Some(total)
}
