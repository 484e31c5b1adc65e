//! What a bare-metal (`target_os = "none"`) staticlib needs from somewhere, since no std provides
//! it: a global allocator and a panic handler. Compiled only there (on a host, std links in its
//! own); a Rust firmware should depend on runtime-core directly rather than on this crate.
//!
//! * Allocator: forwards to the C library's `malloc` and `free` (newlib, picolibc, Zephyr's
//!   libc; with FreeRTOS, `heap_3` or a `malloc` wrapper over `pvPortMalloc`), so the firmware
//!   keeps one heap it already sizes and monitors, and nothing is hidden: only `rt_model_load`
//!   and `rt_head_fit_*` allocate (see the header). Alignments above 8 are refused (a null
//!   pointer); no type in runtime-core needs more, and `malloc` guarantees 8 on Arm EABI.
//! * Panic handler: runtime-core reports errors instead of panicking, and every entry point
//!   validates its arguments, so the one path to a panic is a failed allocation (a heap too small
//!   for `rt_model_load` or a fit: Rust's collections cannot report it). It executes a permanent
//!   undefined instruction on Arm (`udf`), so the firmware's HardFault handler sees it at once
//!   and a debugger stops there; elsewhere it spins.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
}

/// The C library's heap as Rust's global allocator.
struct LibcHeap;

/// `malloc`'s guaranteed alignment on Arm EABI (8-byte `max_align_t`).
const MALLOC_ALIGN: usize = 8;

// SAFETY: `malloc` returns blocks of at least `size` bytes aligned to MALLOC_ALIGN (or NULL), and
// `free` releases exactly what `malloc` returned; larger alignments are refused.
unsafe impl GlobalAlloc for LibcHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > MALLOC_ALIGN {
            return core::ptr::null_mut();
        }
        // SAFETY: plain C call; a NULL result is handed back as an allocation failure.
        unsafe { malloc(layout.size()) as *mut u8 }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `malloc`.
        unsafe { free(ptr as *mut c_void) }
    }
}

#[global_allocator]
static HEAP: LibcHeap = LibcHeap;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        #[cfg(target_arch = "arm")]
        // SAFETY: `udf` only raises a fault (HardFault/UsageFault); it touches no memory.
        unsafe {
            core::arch::asm!("udf #0")
        };
        #[cfg(not(target_arch = "arm"))]
        core::hint::spin_loop();
    }
}
