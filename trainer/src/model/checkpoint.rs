//! Saving and loading ResNet weights as safetensors with torchvision names.
//!
//! Format decisions:
//! - Every parameter and buffer is written, `num_batches_tracked` as an i64 scalar exactly as
//!   torchvision's `state_dict()` has it, so our files convert back to PyTorch unchanged.
//!   On load it may be any int or float dtype (converted), or absent (kept at its current value):
//!   PyTorch never reads it with the default momentum, and older checkpoints lack it.
//! - Float tensors may be stored as f32, f16, bf16 or f64; they are converted to f32.
//! - The [`ResNetConfig`] is stored as JSON in the metadata under [`CONFIG_METADATA_KEY`], so
//!   [`ResNet::open`] can rebuild the network from the file alone.
//! - Loading checks everything before changing anything: on any mismatch the model is untouched
//!   and the error lists every missing, unexpected and mis-shaped tensor by name.
use super::config::{ResNetConfig, CONFIG_METADATA_KEY};
use super::resnet::ResNet;
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How file keys are matched to the model's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keys starting with this prefix are loaded with it removed; keys without it are ignored
    /// (a MoCo checkpoint also holds `module.encoder_k.*` and the queue).
    pub strip_prefix: Option<String>,
    /// The model's `fc.weight`/`fc.bias` may be absent from the file; they keep their current
    /// (freshly initialised) values. For a new classifier on a pretrained backbone.
    pub allow_missing_fc: bool,
    /// File keys (after prefix stripping) starting with any of these are skipped: neither loaded
    /// nor reported as unexpected, e.g. `fc.` for a 1000-class torchvision head.
    pub ignore_unexpected: Vec<String>,
}

impl LoadOptions {
    /// Every tensor must match exactly (files written by [`ResNet::save_safetensors`]).
    pub fn exact() -> Self {
        Self::default()
    }

    /// A torchvision ImageNet checkpoint used as a backbone: its 1000-class `fc` is skipped and
    /// the model's own `fc` (if any) keeps its initialisation.
    pub fn torchvision_backbone() -> Self {
        LoadOptions {
            strip_prefix: None,
            allow_missing_fc: true,
            ignore_unexpected: vec!["fc.".into()],
        }
    }

    /// A MoCo v1/v2 checkpoint (`state_dict` converted to safetensors): keep the query encoder
    /// (`module.encoder_q.`), skip its `fc` (v1 linear / v2 `fc.0`, `fc.2` MLP projection head).
    pub fn moco() -> Self {
        LoadOptions {
            strip_prefix: Some("module.encoder_q.".into()),
            allow_missing_fc: true,
            ignore_unexpected: vec!["fc.".into()],
        }
    }
}

/// What a successful load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model names whose values came from the file.
    pub loaded: Vec<String>,
    /// File keys (original spelling) that were skipped by the options.
    pub ignored: Vec<String>,
    /// Model names absent from the file but allowed to be (fc, num_batches_tracked).
    pub kept: Vec<String>,
}

/// A tensor whose shape differs between the model and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Every way a file's tensors fail to fit the model, gathered before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMismatch {
    pub path: PathBuf,
    /// The model's description (arch, width, stem, classes).
    pub arch: String,
    /// Model names absent from the file (after prefix stripping and ignores).
    pub missing: Vec<String>,
    /// File keys (original spelling) the model does not have.
    pub unexpected: Vec<String>,
    pub misshaped: Vec<ShapeMismatch>,
    /// The human-readable listing used in the error message.
    pub details: String,
}

/// Errors of reading or writing model files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelIoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error(
        "{path}: no `{key}` metadata, so this is not a ResNet saved by host-trainer; \
         build the ResNet from its config and load the file with LoadOptions instead",
        key = CONFIG_METADATA_KEY
    )]
    NoConfig { path: PathBuf },
    #[error("{path}: bad `{key}` metadata: {msg}", key = CONFIG_METADATA_KEY)]
    BadConfig { path: PathBuf, msg: String },
    /// Boxed: the name lists make it large, and it is the rare path.
    #[error("{}: tensors do not match the {} model:{}", .0.path.display(), .0.arch, .0.details)]
    Mismatch(Box<TensorMismatch>),
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
}

const LIST_LIMIT: usize = 25;

fn list_names(out: &mut String, title: &str, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = write!(out, "\n  {title} ({}): ", names.len());
    let shown: Vec<&str> = names.iter().take(LIST_LIMIT).map(|s| s.as_str()).collect();
    out.push_str(&shown.join(", "));
    if names.len() > LIST_LIMIT {
        let _ = write!(out, ", … and {} more", names.len() - LIST_LIMIT);
    }
}

/// Writes a model file's serialised `bytes` to `path` atomically; a serialisation error is
/// reported against the file like a write error.
pub(super) fn write_model(
    path: &Path,
    bytes: candle_core::Result<Vec<u8>>,
) -> Result<(), ModelIoError> {
    let bytes = bytes.map_err(|e| ModelIoError::Tensor {
        path: path.to_owned(),
        name: "(all)".into(),
        msg: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|source| ModelIoError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>, ModelIoError> {
    std::fs::read(path).map_err(|source| ModelIoError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The text stored under `key` in the metadata of the safetensors file `path` (its `bytes`),
/// `None` when it has no such entry.
pub(super) fn metadata_entry(
    path: &Path,
    bytes: &[u8],
    key: &str,
) -> Result<Option<String>, ModelIoError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| ModelIoError::Format {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    Ok(meta.metadata().as_ref().and_then(|m| m.get(key)).cloned())
}

/// The validated [`ResNetConfig`] in the metadata of `path` (its `bytes`), `None` if it has none.
pub(super) fn config_from_bytes(
    path: &Path,
    bytes: &[u8],
) -> Result<Option<ResNetConfig>, ModelIoError> {
    let Some(json) = metadata_entry(path, bytes, CONFIG_METADATA_KEY)? else {
        return Ok(None);
    };
    let cfg: ResNetConfig = serde_json::from_str(&json).map_err(|e| ModelIoError::BadConfig {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    cfg.validate().map_err(|msg| ModelIoError::BadConfig {
        path: path.to_owned(),
        msg,
    })?;
    Ok(Some(cfg))
}

/// The [`ResNetConfig`] stored in a safetensors file's metadata, `None` if it has none.
pub fn read_config(path: &Path) -> Result<Option<ResNetConfig>, ModelIoError> {
    config_from_bytes(path, &read_bytes(path)?)
}

/// `safetensors::serialize` with the metadata entries written in key order. The crate takes
/// the metadata as a `HashMap` and writes it in the map's iteration order, which is random per
/// map, so a file with two or more entries (a landmark model's two configs, an imported
/// checkpoint's image size) would come out with different bytes from run to run. The header
/// starts with `{"__metadata__":{…}` and the sorted object has exactly the bytes of the
/// unsorted one rearranged, so it is rewritten in place; the tensors' offsets do not move.
pub fn serialize_sorted<S, V, I>(
    tensors: I,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: safetensors::View,
    I: IntoIterator<Item = (S, V)>,
{
    let map: HashMap<String, String> = meta.clone().into_iter().collect();
    let mut bytes = safetensors::serialize(tensors, Some(map))?;
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let sorted = serde_json::to_string(meta)?;
    let start = 8 + PREFIX.len();
    let span = start..start + sorted.len();
    let same_entries = bytes.get(8..start) == Some(PREFIX)
        && bytes
            .get(span.clone())
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(b).ok())
            .as_ref()
            == Some(meta);
    if same_entries {
        bytes[span].copy_from_slice(sorted.as_bytes());
    }
    Ok(bytes)
}

fn is_fc(name: &str) -> bool {
    name == "fc.weight" || name == "fc.bias"
}

impl ResNet {
    /// The model as safetensors bytes: all tensors with torchvision names, config in metadata.
    pub fn to_safetensors_bytes(&self) -> candle_core::Result<Vec<u8>> {
        let cfg = serde_json::to_string(self.config())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let meta = HashMap::from([(CONFIG_METADATA_KEY.to_string(), cfg)]);
        let tensors: Vec<(String, Tensor)> = self
            .all_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<candle_core::Result<_>>()?;
        safetensors::serialize(tensors, Some(meta))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Write all tensors (and the config) to `path`, atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelIoError> {
        write_model(path, self.to_safetensors_bytes())
    }

    /// Load weights from a safetensors file into this model (see [`LoadOptions`]).
    pub fn load_safetensors(
        &self,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<LoadReport, ModelIoError> {
        let bytes = read_bytes(path)?;
        self.load_safetensors_bytes(&bytes, path, opts)
    }

    /// As [`Self::load_safetensors`] from bytes already read; `path` is only used in errors.
    pub fn load_safetensors_bytes(
        &self,
        bytes: &[u8],
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<LoadReport, ModelIoError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelIoError::Format {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        let mut file: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
        let mut report = LoadReport::default();
        for (key, view) in st.tensors() {
            let name = match &opts.strip_prefix {
                Some(p) => match key.strip_prefix(p.as_str()) {
                    Some(rest) => rest.to_string(),
                    None => {
                        report.ignored.push(key);
                        continue;
                    }
                },
                None => key.clone(),
            };
            if opts
                .ignore_unexpected
                .iter()
                .any(|p| name.starts_with(p.as_str()))
            {
                report.ignored.push(key);
                continue;
            }
            let t = view.load(&Device::Cpu).map_err(|e| ModelIoError::Tensor {
                path: path.to_owned(),
                name: key.clone(),
                msg: e.to_string(),
            })?;
            file.insert(name, (key, t));
        }
        report.ignored.sort();
        self.load_named(file, path, opts, report)
    }

    /// Load from a map `model name → (file key, tensor)`; checks everything first, then sets.
    fn load_named(
        &self,
        file: BTreeMap<String, (String, Tensor)>,
        path: &Path,
        opts: &LoadOptions,
        mut report: LoadReport,
    ) -> Result<LoadReport, ModelIoError> {
        let model: BTreeMap<String, candle_core::Var> = self
            .named_params()
            .into_iter()
            .chain(self.named_buffers())
            .collect();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, var) in &model {
            match file.get(name) {
                None if (opts.allow_missing_fc && is_fc(name))
                    || name.ends_with(".num_batches_tracked") =>
                {
                    report.kept.push(name.clone())
                }
                None => missing.push(name.clone()),
                Some((_, t)) if t.dims() != var.as_tensor().dims() => {
                    misshaped.push(ShapeMismatch {
                        name: name.clone(),
                        expected: var.as_tensor().dims().to_vec(),
                        found: t.dims().to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        let unexpected: Vec<String> = file
            .iter()
            .filter(|(n, _)| !model.contains_key(*n))
            .map(|(_, (key, _))| key.clone())
            .collect();
        if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
            let mut details = String::new();
            list_names(&mut details, "missing", &missing);
            list_names(&mut details, "unexpected", &unexpected);
            if !misshaped.is_empty() {
                let lines: Vec<String> = misshaped
                    .iter()
                    .map(|m| format!("{} expected {:?} found {:?}", m.name, m.expected, m.found))
                    .collect();
                list_names(&mut details, "mis-shaped", &lines);
            }
            if !report.ignored.is_empty() {
                let _ = write!(
                    details,
                    "\n  ({} file keys were ignored by the load options)",
                    report.ignored.len()
                );
            }
            let c = self.config();
            return Err(ModelIoError::Mismatch(Box::new(TensorMismatch {
                path: path.to_owned(),
                arch: format!(
                    "{} (width {}, small_stem {}, num_classes {:?})",
                    c.arch, c.width, c.small_stem, c.num_classes
                ),
                missing,
                unexpected,
                misshaped,
                details,
            })));
        }
        // Convert everything before setting anything, so a failure leaves the model untouched.
        let mut converted = Vec::with_capacity(file.len());
        for (name, (key, t)) in file {
            let var = &model[&name];
            let want = var.dtype();
            let ok_dtype = match want {
                DType::I64 => true,
                _ => matches!(
                    t.dtype(),
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64
                ),
            };
            let err = |msg: String| ModelIoError::Tensor {
                path: path.to_owned(),
                name: key.clone(),
                msg,
            };
            if !ok_dtype {
                return Err(err(format!(
                    "dtype {:?} where a float tensor was expected",
                    t.dtype()
                )));
            }
            let t = t
                .to_dtype(want)
                .and_then(|t| t.to_device(self.device()))
                .map_err(|e| err(e.to_string()))?;
            converted.push((name, var.clone(), t));
        }
        for (name, var, t) in converted {
            var.set(&t).map_err(|e| ModelIoError::Tensor {
                path: path.to_owned(),
                name: name.clone(),
                msg: e.to_string(),
            })?;
            report.loaded.push(name);
        }
        Ok(report)
    }

    /// Build a ResNet from a file saved by [`Self::save_safetensors`] (config from its metadata,
    /// every tensor required). This is how `--backbone FILE` is opened.
    pub fn open(path: &Path, device: &Device) -> Result<ResNet, ModelIoError> {
        let bytes = read_bytes(path)?;
        let cfg = config_from_bytes(path, &bytes)?.ok_or_else(|| ModelIoError::NoConfig {
            path: path.to_owned(),
        })?;
        let model = ResNet::new(&cfg, 0, device).map_err(|e| ModelIoError::BadConfig {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        model.load_safetensors_bytes(&bytes, path, &LoadOptions::exact())?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_written_in_key_order_every_time() {
        let meta: BTreeMap<String, String> = ["zeta", "alpha", "mid", "beta\"q", "omega"]
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), format!("{{\"v\":{i}}}")))
            .collect();
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let write = || serialize_sorted([("w", t.clone())], &meta).unwrap();
        let first = write();
        // Fresh HashMaps iterate in different orders; the bytes must not follow them.
        for _ in 0..20 {
            assert_eq!(write(), first);
        }
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
        let at = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
        assert!(at("alpha") < at("beta\\\"q") && at("beta\\\"q") < at("mid"));
        assert!(
            at("mid") < at("omega") && at("omega") < at("zeta"),
            "{header}"
        );
        // Still a valid file with the same metadata and tensor.
        let (_, read) = SafeTensors::read_metadata(&first).unwrap();
        let got: BTreeMap<String, String> = read.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(got, meta);
        let st = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("w").unwrap().shape(), &[2, 3]);
    }
}
