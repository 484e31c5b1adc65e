//! Sets `cfg(rt_dsp)` on ARMv7E-M targets (`thumbv7em-*`: Cortex-M4/M7), whose DSP extension
//! (SXTB16, SMLAD) the Cortex-M kernels use through `asm!`. Stable Rust does not expose
//! `target_feature = "dsp"` to `cfg`, so the target name decides; every ARMv7E-M core has the
//! DSP extension. `RUNTIME_CORE_NO_DSP=1` builds the portable kernels instead (to measure them).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(rt_dsp)");
    println!("cargo::rerun-if-env-changed=RUNTIME_CORE_NO_DSP");
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let off = std::env::var("RUNTIME_CORE_NO_DSP").is_ok_and(|v| v == "1");
    if target.starts_with("thumbv7em") && !off {
        println!("cargo::rustc-cfg=rt_dsp");
    }
}
