//! Landmark model files: the backbone's torchvision-named tensors, the head's `head.*` tensors
//! and a [`LandmarkMeta`] JSON in the safetensors metadata. Saving is atomic; loading names the
//! file and the key at fault.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    config_from_bytes, metadata_entry, read_bytes, write_model, LoadOptions, ModelIoError,
};
use super::config::{ResNetConfig, CONFIG_METADATA_KEY};
use super::landmarks::{LandmarkModel, HIDDEN, LEAKY_SLOPE};
use super::resnet::ResNet;

/// Metadata key of the [`LandmarkMeta`] JSON in saved landmark models.
pub const LANDMARK_METADATA_KEY: &str = "landmark_model";

/// What the file records about the head, beside the backbone config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandmarkMeta {
    /// Square model input side in pixels (the fc size depends on it).
    pub input_size: usize,
    pub hidden: usize,
    /// Backbone feature map size at `input_size`.
    pub map_h: usize,
    pub map_w: usize,
    pub leaky_slope: f64,
}

/// The backbone's [`ResNetConfig`] from a file's metadata (validated).
fn backbone_config(path: &Path, bytes: &[u8]) -> std::result::Result<ResNetConfig, ModelIoError> {
    config_from_bytes(path, bytes)?.ok_or_else(|| ModelIoError::NoConfig {
        path: path.to_owned(),
    })
}

impl LandmarkModel {
    /// The head's description as stored in the file.
    pub fn meta(&self) -> LandmarkMeta {
        LandmarkMeta {
            input_size: self.input_size,
            hidden: HIDDEN,
            map_h: self.head.map.0,
            map_w: self.head.map.1,
            leaky_slope: LEAKY_SLOPE,
        }
    }

    /// Safetensors bytes: every backbone and head tensor, both configs in the metadata.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let msg = |e: serde_json::Error| candle_core::Error::Msg(e.to_string());
        let meta = BTreeMap::from([
            (
                CONFIG_METADATA_KEY.to_string(),
                serde_json::to_string(self.backbone.config()).map_err(msg)?,
            ),
            (
                LANDMARK_METADATA_KEY.to_string(),
                serde_json::to_string(&self.meta()).map_err(msg)?,
            ),
        ]);
        let tensors: Vec<(String, Tensor)> = self
            .backbone
            .all_tensors()
            .into_iter()
            .chain(self.head.all_tensors())
            .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        super::checkpoint::serialize_sorted(tensors, &meta)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Writes the model atomically.
    pub fn save(&self, path: &Path) -> std::result::Result<(), ModelIoError> {
        write_model(path, self.to_safetensors_bytes())
    }

    /// The [`LandmarkMeta`] of a file, `None` when it is not a landmark model.
    pub fn read_meta(
        path: &Path,
        bytes: &[u8],
    ) -> std::result::Result<Option<LandmarkMeta>, ModelIoError> {
        let Some(json) = metadata_entry(path, bytes, LANDMARK_METADATA_KEY)? else {
            return Ok(None);
        };
        let bad = |msg: String| ModelIoError::Tensor {
            path: path.to_owned(),
            name: LANDMARK_METADATA_KEY.into(),
            msg,
        };
        let meta: LandmarkMeta =
            serde_json::from_str(&json).map_err(|e| bad(format!("bad metadata: {e}")))?;
        if meta.hidden != HIDDEN || meta.leaky_slope != LEAKY_SLOPE {
            return Err(bad(format!("unsupported head (hidden {}, slope {}); this build has hidden {HIDDEN}, slope {LEAKY_SLOPE}", meta.hidden, meta.leaky_slope)));
        }
        Ok(Some(meta))
    }

    /// Rebuilds a model saved by [`Self::save`]; every tensor must be present with its shape.
    pub fn open(path: &Path, device: &Device) -> std::result::Result<LandmarkModel, ModelIoError> {
        Self::from_bytes(&read_bytes(path)?, path, device)
    }

    /// As [`Self::open`] from bytes already read (`path` names the file in errors).
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        device: &Device,
    ) -> std::result::Result<LandmarkModel, ModelIoError> {
        let meta = Self::read_meta(path, bytes)?.ok_or_else(|| ModelIoError::Format {
            path: path.to_owned(),
            msg: format!(
                "no `{LANDMARK_METADATA_KEY}` metadata: not a landmark model saved by host-trainer"
            ),
        })?;
        let bad_cfg = |msg: String| ModelIoError::BadConfig {
            path: path.to_owned(),
            msg,
        };
        let cfg = backbone_config(path, bytes)?;
        let backbone = ResNet::new(&cfg, 0, device).map_err(|e| bad_cfg(e.to_string()))?;
        let model =
            LandmarkModel::new(backbone, meta.input_size, 0).map_err(|e| bad_cfg(e.to_string()))?;
        if model.meta() != meta {
            return Err(bad_cfg(format!(
                "{LANDMARK_METADATA_KEY} {meta:?} does not match its backbone (expected map {:?})",
                model.head.map
            )));
        }
        let opts = LoadOptions {
            ignore_unexpected: vec!["head.".into()],
            ..LoadOptions::exact()
        };
        model.backbone.load_safetensors_bytes(bytes, path, &opts)?;
        model.load_head(bytes, path)?;
        Ok(model)
    }

    /// Loads every `head.*` tensor, checking names and shapes before setting anything.
    fn load_head(&self, bytes: &[u8], path: &Path) -> std::result::Result<(), ModelIoError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelIoError::Format {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        let err = |name: &str, msg: String| ModelIoError::Tensor {
            path: path.to_owned(),
            name: name.into(),
            msg,
        };
        let mut staged = Vec::new();
        for (name, t) in self.head.all_tensors() {
            let view = st
                .tensor(&name)
                .map_err(|_| err(&name, "missing from the file".into()))?;
            if view.shape() != t.dims() {
                return Err(err(
                    &name,
                    format!("shape {:?}, expected {:?}", view.shape(), t.dims()),
                ));
            }
            use candle_core::safetensors::Load;
            let v = view
                .load(&Device::Cpu)
                .and_then(|v| v.to_dtype(t.dtype()))
                .and_then(|v| v.to_device(t.device()))
                .map_err(|e| err(&name, e.to_string()))?;
            staged.push((name, v));
        }
        for (name, v) in staged {
            self.head
                .get(&name)
                .and_then(|var| var.set(&v))
                .map_err(|e| err(&name, e.to_string()))?;
        }
        Ok(())
    }
}
