//! Peak stack by painting: fill the free RAM between the end of .bss/heap and the stack pointer
//! with a pattern at boot, and later find the lowest word that is no longer the pattern.

const PAINT: u32 = 0xDEAD_BEEF;
/// Bytes just below the current stack pointer left unpainted (the painting code's own frame).
const MARGIN: usize = 64;

extern "C" {
    static mut __sheap: u32; // end of .bss (cortex-m-rt): the lowest address the stack may reach
    static _stack_start: u32; // top of RAM: the initial stack pointer
}

/// `(end of .bss, top of RAM)`: the stack may use `[end of .bss, top of RAM)`.
pub fn bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken, never their contents.
    (
        &raw const __sheap as usize,
        &raw const _stack_start as usize,
    )
}

/// Paints the unused stack. Call first thing in `main`, before interrupts are enabled.
#[inline(never)]
pub fn paint() {
    let (lo, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize - MARGIN;
    let mut p = lo;
    while p + 4 <= sp {
        // SAFETY: [lo, sp) is RAM that nothing uses yet (below the live stack, above .bss).
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack used so far (top of RAM down to the lowest overwritten word).
pub fn peak() -> usize {
    let (lo, hi) = bounds();
    let mut p = lo;
    // SAFETY: reads RAM between the end of .bss and the top of the stack.
    while p < hi && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    hi - p
}

/// Bytes available for the stack (top of RAM down to the end of .bss).
pub fn capacity() -> usize {
    let (lo, hi) = bounds();
    hi - lo
}
