//! The resumable training state in one safetensors file (`last.safetensors`).
//!
//! Tensor names say what they are: `encoder_q.<torchvision name>`, `head_q.fc.0.weight`,
//! `encoder_k.*`, `head_k.*`, `queue`, `queue_labels`, `queue_ptr`,
//! `optim.<param>.momentum_buffer`. The metadata holds ONE key, `host_trainer`, a JSON object with
//! the run's config and progress; one key because safetensors writes its metadata map in hash
//! order, and a single key keeps the file byte-identical between identical runs.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The metadata key of a training checkpoint.
pub const META_KEY: &str = "host_trainer";
/// Bumped when the checkpoint layout changes.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Progress and configuration stored beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta<C> {
    pub format: u32,
    pub config: C,
    /// The next epoch to run (epochs already finished).
    pub next_epoch: usize,
    /// Optimiser steps taken so far.
    pub global_step: u64,
}

/// The metadata as stored: [`CheckpointMeta`]'s fields and the tensors' [`digest`] in one JSON
/// object (one metadata key, see the module docs).
#[derive(Serialize)]
struct Stored<'a, C> {
    #[serde(flatten)]
    meta: &'a CheckpointMeta<C>,
    checksum: String,
}

/// The checksum field alone, read beside [`CheckpointMeta`] (absent in checkpoints written
/// before it existed, which are read unchecked).
#[derive(Deserialize)]
struct StoredChecksum {
    #[serde(default)]
    checksum: Option<String>,
}

/// A 64-bit digest of a checkpoint's tensors: every tensor in name order, its name, dtype, shape
/// and bytes, hashed in 8-byte words (FNV-1a's multiply-xor over words: about 1 GB/s).
///
/// Why: safetensors checks the header and that the offsets cover the file, not the data, so a
/// bit flip in a tensor (a damaged disk, a bad copy) would resume silently from corrupt weights.
/// Not a cryptographic hash: it catches damage, not tampering.
pub fn digest<'a>(
    tensors: impl IntoIterator<Item = (&'a str, String, Vec<usize>, &'a [u8])>,
) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(a)).wrapping_mul(PRIME);
        }
        for &b in words.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // The length separates fields ("ab"+"c" from "a"+"bc").
        h = (h ^ bytes.len() as u64).wrapping_mul(PRIME);
    };
    let mut all: Vec<_> = tensors.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in all {
        eat(name.as_bytes());
        eat(dtype.as_bytes());
        for d in shape {
            eat(&(d as u64).to_le_bytes());
        }
        eat(data);
    }
    h
}

/// Serialise named tensors and the metadata to safetensors bytes, with the tensors' [`digest`].
pub fn to_bytes<C: Serialize>(
    tensors: &[(String, Tensor)],
    meta: &CheckpointMeta<C>,
) -> Result<Vec<u8>> {
    use safetensors::View;
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let data: Vec<_> = cpu.iter().map(|(_, t)| t.data()).collect();
    let sum = digest(cpu.iter().zip(&data).map(|((n, t), d)| {
        (
            n.as_str(),
            format!("{:?}", View::dtype(t)),
            t.dims().to_vec(),
            &d[..],
        )
    }));
    drop(data);
    let json = serde_json::to_string(&Stored {
        meta,
        checksum: format!("{sum:016x}"),
    })?;
    Ok(safetensors::serialize(
        cpu,
        Some(HashMap::from([(META_KEY.to_string(), json)])),
    )?)
}

/// Read a checkpoint written by [`to_bytes`]: its tensors (on `device`) and metadata.
pub fn read<C: for<'de> Deserialize<'de>>(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, CheckpointMeta<C>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .with_context(|| {
            format!(
                "{}: not a host-trainer training checkpoint (no `{META_KEY}` metadata)",
                path.display()
            )
        })?;
    let meta: CheckpointMeta<C> = serde_json::from_str(json)
        .with_context(|| format!("{}: unreadable `{META_KEY}` metadata", path.display()))?;
    if meta.format != CHECKPOINT_FORMAT {
        bail!(
            "{}: checkpoint format {} (this build reads {CHECKPOINT_FORMAT})",
            path.display(),
            meta.format
        );
    }
    let stored: StoredChecksum = serde_json::from_str(json)
        .with_context(|| format!("{}: unreadable `{META_KEY}` metadata", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    if let Some(want) = stored.checksum {
        let views = st.tensors();
        let got = digest(views.iter().map(|(n, v)| {
            (
                n.as_str(),
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data(),
            )
        }));
        if format!("{got:016x}") != want {
            bail!(
                "{}: damaged checkpoint: its tensors do not match the checksum it was written \
                 with (a bit flip or a bad copy); restore the file from a backup or start the \
                 run again",
                path.display()
            );
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: reading tensors", path.display()))?;
    Ok((tensors, meta))
}

/// The tensors whose names start with `prefix`, with the prefix removed.
pub fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|rest| (rest.to_string(), v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_meta_and_is_byte_stable() {
        let dev = Device::Cpu;
        let t = vec![
            (
                "b.x".to_string(),
                Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap(),
            ),
            ("a.y".to_string(), Tensor::new(&[7i64], &dev).unwrap()),
        ];
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            config: "cfg".to_string(),
            next_epoch: 3,
            global_step: 42,
        };
        let bytes = to_bytes(&t, &meta).unwrap();
        assert_eq!(bytes, to_bytes(&t, &meta).unwrap());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let (back, m): (_, CheckpointMeta<String>) = read(&p, &dev).unwrap();
        assert_eq!(m, meta);
        assert_eq!(back["b.x"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(with_prefix(&back, "a.").len(), 1);
        // One flipped bit in a tensor's data is refused, naming the file.
        let mut flipped = bytes.clone();
        let end = flipped.len() - 1;
        flipped[end] ^= 0x04;
        std::fs::write(&p, &flipped).unwrap();
        let e = format!("{:#}", read::<String>(&p, &dev).unwrap_err());
        assert!(e.contains("c.safetensors") && e.contains("damaged"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        let e = read::<String>(&p, &dev).unwrap_err().to_string();
        assert!(e.contains("c.safetensors"), "{e}");
    }
}
