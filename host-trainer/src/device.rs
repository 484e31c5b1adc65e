//! `--device cpu|cuda:N`, with a clear error when CUDA support was not compiled in.
use candle_core::Device;

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
        return Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device {spec}: {e}"));
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
