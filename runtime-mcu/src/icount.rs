//! Executed-instruction counter for QEMU's `-icount shift=0`.
//!
//! QEMU does not emulate DWT.CYCCNT. With `-icount shift=0` the virtual clock advances exactly
//! 1 ns per executed instruction, and SysTick (clock source = processor clock, which QEMU's
//! mps2-an386 runs at 25 MHz) counts that virtual clock: one tick per 40 instructions. SysTick is
//! 24 bits wide, so its exception counts wraps. `calibrate` checks the ratio against a loop whose
//! instruction count is known exactly, so a QEMU that clocks SysTick differently is caught rather
//! than silently mis-reported. Without `-icount` the numbers are host time and mean nothing.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// A short period (2.6 M instructions) so that the wrap logic is exercised by every run,
/// calibration included; the interrupt costs ~20 instructions per wrap (< 0.001 %).
const RELOAD: u32 = 0xFFFF;
/// Virtual ns per SysTick tick on mps2-an386 (25 MHz SYSCLK) = instructions per tick at shift=0.
pub const INSNS_PER_TICK: u64 = 40;

static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Starts SysTick free-running with its wrap interrupt.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_counter();
    // After a write, CVR reads 0 until the first tick reloads it: wait for that so the count
    // starts from RELOAD, then count wraps from here.
    while SYST::get_current() == 0 {}
    WRAPS.store(0, Ordering::SeqCst);
    syst.enable_interrupt();
}

/// Ticks since `start`, wraps included (re-read if a wrap lands between the two reads).
pub fn ticks() -> u64 {
    loop {
        let w0 = WRAPS.load(Ordering::SeqCst);
        let cvr = SYST::get_current();
        let w1 = WRAPS.load(Ordering::SeqCst);
        if w0 == w1 {
            return u64::from(w0) * u64::from(RELOAD + 1) + u64::from(RELOAD - cvr);
        }
    }
}

/// Instructions executed since `start` (resolution: `INSNS_PER_TICK`).
pub fn now() -> u64 {
    ticks() * INSNS_PER_TICK
}

/// Runs exactly `2 * n` instructions (`subs` + `bne` per iteration).
#[inline(never)]
pub fn spin(n: u32) {
    if n == 0 {
        return;
    }
    // SAFETY: register-only loop.
    unsafe {
        core::arch::asm!("2:", "subs {0}, {0}, #1", "bne 2b", inout(reg) n => _, options(nomem, nostack));
    }
}

/// Measures instructions per tick from the difference of two known loops (so call overhead
/// cancels); returns it ×1000. Expect `INSNS_PER_TICK * 1000`.
pub fn calibrate() -> u64 {
    let (small, large) = (100_000u32, 1_100_000u32);
    let t0 = ticks();
    spin(small);
    let t1 = ticks();
    spin(large);
    let t2 = ticks();
    let extra_insns = 2 * u64::from(large - small);
    let extra_ticks = (t2 - t1).saturating_sub(t1 - t0).max(1);
    extra_insns * 1000 / extra_ticks
}
