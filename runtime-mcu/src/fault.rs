//! Every way the program can end: success, a panic or a hard fault. Each one logs over defmt and
//! ends QEMU with a semihosting exit code, so the host test sees a failure as a non-zero exit
//! rather than a hang.

use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::debug;

/// Ends the program with exit code 0.
pub fn exit_ok() -> ! {
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Ends the program with a non-zero exit code.
pub fn exit_fail() -> ! {
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Set just before [`self_test`]'s deliberate fault: the HardFault handler then reports it as
/// the self-test and exits 0, so a run proves the handler reports (a broken or missing one
/// would spin until the host's timeout, or exit without the line the host test looks for).
#[cfg(feature = "hostile")]
static SELF_TEST: AtomicBool = AtomicBool::new(false);

/// Executes a permanently undefined instruction (what runtime-ffi's bare-metal panic handler
/// does): a UsageFault, escalated to HardFault since UsageFault is not enabled. The handler
/// logs `HARDFAULT self-test` and ends the program with exit code 0.
#[cfg(feature = "hostile")]
pub fn self_test() -> ! {
    SELF_TEST.store(true, Ordering::SeqCst);
    // SAFETY: `udf` only raises a fault; it touches no memory.
    unsafe { core::arch::asm!("udf #0") };
    defmt::error!("HARDFAULT self-test: udf did not fault");
    exit_fail()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // A panic inside the logger would recurse: log only the first one.
    if !PANICKING.swap(true, Ordering::Relaxed) {
        defmt::error!("PANIC {}", defmt::Display2Format(info));
        #[cfg(feature = "hostile")]
        crate::hostile_run::report_case();
    }
    exit_fail()
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    #[cfg(feature = "hostile")]
    if SELF_TEST.swap(false, Ordering::SeqCst) {
        defmt::info!("HARDFAULT self-test pc={=u32:#010x}", frame.pc());
        exit_ok()
    }
    if !PANICKING.swap(true, Ordering::Relaxed) {
        defmt::error!(
            "HARDFAULT pc={=u32:#010x} lr={=u32:#010x}",
            frame.pc(),
            frame.lr()
        );
        #[cfg(feature = "hostile")]
        crate::hostile_run::report_case();
    }
    exit_fail()
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if !PANICKING.swap(true, Ordering::Relaxed) {
        defmt::error!("unexpected exception {=i16}", irqn);
    }
    exit_fail()
}
