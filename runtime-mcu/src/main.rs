//! runtime-core on a Cortex-M4F (QEMU mps2-an386).
//!
//! Output protocol (defmt, decoded on the host by defmt-print): lines starting `RESULT ` carry
//! the values the host test compares bit for bit; lines starting `FOOTPRINT ` carry the
//! measurements `scripts/mcu.sh` prints in its report. The program ends with semihosting exit
//! code 0 only if everything ran.
#![no_std]
#![no_main]

extern crate alloc;

use cortex_m_rt::entry;
use defmt_semihosting as _;

mod fault;
mod heap;
mod icount;
mod stack;

#[entry]
fn main() -> ! {
    stack::paint();
    heap::init();
    let Some(cp) = cortex_m::Peripherals::take() else {
        defmt::error!("core peripherals already taken");
        fault::exit_fail()
    };
    icount::start(cp.SYST);
    let per_tick_milli = icount::calibrate();
    defmt::info!("FOOTPRINT icount_insns_per_tick_x1000 {=u64}", per_tick_milli);
    // Off by more than 0.1 %: not running under `-icount shift=0` on mps2-an386, so every
    // instruction count below would be wrong. Refuse rather than report nonsense.
    if per_tick_milli.abs_diff(icount::INSNS_PER_TICK * 1000) > icount::INSNS_PER_TICK {
        defmt::error!("SysTick does not count instructions (run under qemu -icount shift=0)");
        fault::exit_fail()
    }

    let t0 = icount::now();
    let v: alloc::vec::Vec<u32> = (0..1000u32).collect();
    let s: u32 = v.iter().sum();
    let t1 = icount::now();
    defmt::info!("RESULT dummy_sum {=u32}", s);
    defmt::info!("FOOTPRINT dummy_insns {=u64}", t1 - t0);
    drop(v);

    defmt::info!("FOOTPRINT peak_heap_bytes {=usize}", heap::HEAP.peak());
    defmt::info!("FOOTPRINT heap_capacity_bytes {=usize}", heap::HEAP_BYTES);
    defmt::info!("FOOTPRINT peak_stack_bytes {=usize}", stack::peak());
    defmt::info!("FOOTPRINT stack_capacity_bytes {=usize}", stack::capacity());
    defmt::info!("DONE");
    fault::exit_ok()
}
