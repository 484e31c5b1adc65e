//! transfer-eval: the host's transfer evaluation of a frozen or fine-tuned backbone (paper §4),
//! the protocols above the trainer (whose backbones, loader and optimiser they use) and below the
//! exporter and the study (which call them); nothing here knows either:
//! - [`fewshot`]: Chen et al.'s few-shot protocol, scored by runtime-core's shared episode
//!   scorer so host and device numbers differ only by their features;
//! - [`probe`]: softmax-regression probes on frozen features: base-class accuracy (Table 4) and
//!   the MoCo-style linear probe;
//! - [`landmarks`]: MAFL facial-landmark fine-tuning (§4.2), scored by [`iod`] (the
//!   inter-ocular error and the mean-face baseline).
//!
//! Every command returns a JSON value (configuration, backbone hash, results); [`write_result`]
//! stores it atomically.
pub mod features;
pub mod fewshot;
pub mod iod;
pub mod landmarks;
pub mod probe;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

use trainer::model::ResNet;

/// FNV-1a 64-bit hash of a file's bytes, as 16 hex digits: identifies which backbone produced
/// a result without adding a cryptographic-hash crate (collisions are not a security concern
/// here, only accidental mix-ups of files). Reported as `backbone_fnv64`.
pub fn fnv64_hex(bytes: &[u8]) -> String {
    format!("{:016x}", trainer::rng::fnv1a64(bytes))
}

/// Opens `--backbone FILE` as a ResNet (clear error naming the file when it is not one) and
/// hashes its bytes.
pub fn open_backbone(path: &Path, device: &Device) -> Result<(ResNet, String)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("--backbone {}: cannot read", path.display()))?;
    let net = ResNet::open(path, device)
        .with_context(|| format!("--backbone {}: not a ResNet backbone file", path.display()))?;
    Ok((net, fnv64_hex(&bytes)))
}

/// Writes `value` as pretty JSON to `dir/name` atomically (creating `dir`).
pub fn write_result(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)? + "\n";
    trainer::fsutil::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64_matches_the_reference_vectors() {
        // Published FNV-1a 64 test vectors: "" and "a".
        assert_eq!(fnv64_hex(b""), "cbf29ce484222325");
        assert_eq!(fnv64_hex(b"a"), "af63dc4c8601ec8c");
    }
}
