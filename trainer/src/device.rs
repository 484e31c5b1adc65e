//! `--device cpu|cuda:N`, with a clear error when CUDA support was not compiled in; and the CPU
//! thread set-up every host-trainer process starts with.
use candle_core::Device;

/// Give candle's own CPU thread pool a single thread, unless `CANDLE_NUM_THREADS` is set.
///
/// Why: candle 0.11 runs its element-wise CPU ops on a private pool whose threads *spin* at a
/// barrier after every op. During pretraining the data loader's rayon threads share the cores,
/// so the spinning threads wait for workers that are not scheduled: `perf` showed 63 % of a
/// MoCo-v2 epoch in `BarrierGuard::drop` and the pool's spin loop. The heavy ops (convolution,
/// batch-norm: [`crate::kernels`]) run on rayon, not on that pool, so one candle thread costs
/// nothing there. Measured on the 2-core machine while it was loaded (load average ≈ 10):
/// one epoch of MoCo-v2 (ResNet-18 ×0.125, 32 px, batch 64) ran at 16.9 img/s with the default
/// and 62.8 img/s with one thread. `.cargo/config.toml` sets the same for `cargo test`/`bench`.
/// Must run before the first candle op (the pool is created once, on first use).
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps glibc's malloc from handing large freed buffers back to the kernel: by default a
/// buffer above the mmap threshold (128 KiB at first) is a fresh `mmap` whose pages fault in on
/// first touch, and the heap top is trimmed as soon as 256 KiB are free. Candle allocates a new
/// buffer for every op, so a loop of mid-sized ops pays page faults on every iteration: `perf`
/// put half of a feature inversion's time in the kernel (`exc_page_fault`); with these settings
/// the same run took 8.4 s instead of 14.2 s and its system time fell from 6.8 s to 0.1 s. Freed
/// memory stays in the process for reuse (at most what the largest step needed). Training steps
/// measured the same with and without (0.26-0.27 s per MoCo-v2 step either way). No effect on
/// results; does nothing on other C libraries.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tuning parameters; it is called before any thread
    // starts allocating, and an unsupported parameter is reported by its return value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Parse a `--device` value into a candle device.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = spec
        .strip_prefix("cuda:")
        .or(if spec == "cuda" { Some("0") } else { None })
    {
        let ordinal: usize = n.parse().map_err(|_| {
            anyhow::anyhow!("--device {spec}: expected cpu or cuda:N with N a GPU index")
        })?;
        if !cfg!(feature = "cuda") {
            anyhow::bail!(
                "--device {spec}: this host-trainer was built without CUDA support; \
                 rebuild with `cargo build --release -p host-trainer --features cuda` (or `cudnn`)"
            );
        }
        // With CUDA compiled in: a dedicated stream, event tracking off, a caching memory pool
        // (kernels::cuda::new_training_device).
        #[cfg(feature = "cuda")]
        let dev = crate::kernels::cuda::new_training_device(ordinal);
        #[cfg(not(feature = "cuda"))]
        let dev = Device::new_cuda(ordinal);
        return dev.map_err(|e| anyhow::anyhow!("--device {spec}: {e}"));
    }
    anyhow::bail!("--device {spec}: expected cpu or cuda:N")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_garbage_is_rejected() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("without CUDA"), "{e}");
        }
    }
}
