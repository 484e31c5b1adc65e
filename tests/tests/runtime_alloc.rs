//! Parity item 5: a counting global allocator shows zero heap allocations during inference
//! (int8 and f32, every entry point, preprocessing included). Loading may allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use runtime_core::model::zoo;
use runtime_core::{Dtype, Model};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts allocations made by `f` (this binary has a single test, so no other test thread
/// allocates meanwhile).
fn count(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn inference_performs_no_heap_allocation() {
    // The counter works: a Vec allocation is seen.
    assert_eq!(count(|| drop(std::hint::black_box(vec![1u8; 16]))), 1);
    for dtype in [Dtype::Int8, Dtype::F32] {
        let bytes = zoo::resnet8(dtype, 11).unwrap().to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        let mut arena = vec![0u8; m.arena_bytes()];
        let mut out = vec![0f32; m.output_len()];
        let rgb: Vec<u8> = (0..m.input_len()).map(|i| (i % 251) as u8).collect();
        let xq = vec![3i8; m.input_len()];
        let xf = vec![0.25f32; m.input_len()];
        let n = count(|| {
            m.preprocess_rgb8(&rgb, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
            m.load_input_f32(&xf, &mut arena).unwrap();
            m.run(&mut arena, &mut out).unwrap();
            match dtype {
                Dtype::Int8 => {
                    m.run_int8(&xq, &mut arena, &mut out).unwrap();
                    m.run_int8_raw(&xq, &mut arena).unwrap();
                }
                Dtype::F32 => m.run_f32(&xf, &mut arena, &mut out).unwrap(),
            }
        });
        assert_eq!(n, 0, "{dtype:?} inference allocated {n} times");
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
