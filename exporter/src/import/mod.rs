//! PyTorch checkpoints in: a torchvision ResNet state dict, a MoCo training checkpoint or any
//! state dict under a prefix, read directly from the `.pth` / `.pth.tar` / `.pt` file (PyTorch's
//! zip + pickle format, through `candle_core::pickle`; no PyTorch needed) and written as our
//! backbone safetensors (torchvision names, `resnet_config` metadata), so `eval fewshot`,
//! `eval landmarks` and `export` take it like a backbone we trained.
//!
//! What is detected from the tensors alone (nothing is guessed from the file name):
//! * where the state dict is: the top-level dict, else under `state_dict` (MoCo's and the
//!   paper's training checkpoints), else `model`; `key` overrides;
//! * the prefix in front of the torchvision names: the one shared by `conv1.weight` and
//!   `layer1.0.conv1.weight`; when several qualify (MoCo's `module.encoder_q.` and
//!   `module.encoder_k.`), the query encoder `encoder_q`, as MoCo's own `main_lincls.py` does;
//!   `prefix` overrides;
//! * the architecture: bottleneck blocks (`layer1.0.conv3.weight`) and blocks per stage
//!   (2,2,2,2 → ResNet-18, 3,4,6,3 → ResNet-34 or, with bottlenecks, ResNet-50);
//! * the width multiplier: `conv1.weight`'s output channels / 64, checked against every stage;
//! * the stem: a 3×3 `conv1` is the CIFAR-style small stem (stride 1, no max pool), a 7×7 one
//!   torchvision's ImageNet stem.
//!
//! The projection or classifier head `fc.*` is always dropped (our backbone files end at the
//! pooled features; MoCo v2's `fc.0`/`fc.2` MLP has no place in them), and reported as such.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::export::IMAGE_SIZE_METADATA_KEY;
use trainer::model::{Arch, LoadOptions, ModelIoError, ResNet, ResNetConfig, CONFIG_METADATA_KEY};

/// Errors of an import; each names the file and, where one is at fault, the key.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {msg}", path.display())]
    Read { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Layout { path: PathBuf, msg: String },
    #[error(transparent)]
    Model(#[from] ModelIoError),
}

/// One import.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportRequest {
    pub from: PathBuf,
    /// The pickled dict entry holding the state dict (default: detected).
    pub key: Option<String>,
    /// The prefix in front of the torchvision names (default: detected; `""` for none).
    pub prefix: Option<String>,
    /// Recorded as the backbone's `image_size` metadata (export's default input size).
    pub image_size: Option<usize>,
}

/// What an import found, kept and dropped (printed by the CLI, `--json` too).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    pub from: PathBuf,
    /// The dict entry the state dict came from (`None`: the top level).
    pub key: Option<String>,
    pub prefix: String,
    pub arch: String,
    pub width: f32,
    pub small_stem: bool,
    pub feature_dim: usize,
    pub parameters: usize,
    /// Tensors loaded into the backbone (file keys).
    pub kept: Vec<String>,
    /// File keys not used: other prefixes (MoCo's key encoder, the queue), the `fc` head.
    pub dropped: Vec<String>,
    /// Backbone tensors the file lacks and which keep their defaults (`num_batches_tracked`).
    pub defaulted: Vec<String>,
}

/// The imported network and what it came from.
#[derive(Debug)]
pub struct Imported {
    pub net: ResNet,
    pub report: ImportReport,
    image_size: Option<usize>,
}

impl Imported {
    /// The backbone file: all tensors with torchvision names, `resnet_config` (and
    /// `image_size` when given) in the metadata, as [`ResNet::open`] reads it.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>, ImportError> {
        let err = |msg: String| ImportError::Layout {
            path: self.report.from.clone(),
            msg,
        };
        let cfg = serde_json::to_string(self.net.config()).map_err(|e| err(e.to_string()))?;
        let mut meta = BTreeMap::from([(CONFIG_METADATA_KEY.to_string(), cfg)]);
        if let Some(s) = self.image_size {
            meta.insert(IMAGE_SIZE_METADATA_KEY.to_string(), s.to_string());
        }
        let tensors: Vec<(String, Tensor)> = self
            .net
            .all_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.contiguous()?)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| err(e.to_string()))?;
        trainer::model::checkpoint::serialize_sorted(tensors, &meta).map_err(|e| err(e.to_string()))
    }
}

/// Dict entries tried, in order, when no key is given.
const KEYS: [Option<&str>; 3] = [None, Some("state_dict"), Some("model")];

fn read_tensors(
    path: &Path,
    key: Option<&str>,
) -> Result<(Option<String>, BTreeMap<String, Tensor>), ImportError> {
    let rd = |msg: String| ImportError::Read {
        path: path.to_owned(),
        msg,
    };
    if !path.is_file() {
        return Err(rd("no such file".into()));
    }
    let tried: Vec<Option<&str>> = match key {
        Some(k) => vec![Some(k)],
        None => KEYS.to_vec(),
    };
    let mut last = String::new();
    for k in &tried {
        let pth = match PthTensors::new(path, *k) {
            Ok(p) => p,
            Err(e) => {
                last = e.to_string();
                // A file that is not a zip is no PyTorch (>= 1.6) file at all: say so at once.
                if k.is_none() && last.to_lowercase().contains("zip") {
                    return Err(rd(format!(
                        "not a PyTorch zip checkpoint (torch.save since 1.6; re-save an old \
                         file with torch.save(obj, path)): {last}"
                    )));
                }
                continue;
            }
        };
        if pth.tensor_infos().is_empty() {
            continue;
        }
        let mut out = BTreeMap::new();
        for name in pth.tensor_infos().keys() {
            let t = pth
                .get(name)
                .map_err(|e| rd(format!("tensor `{name}`: {e}")))?
                .ok_or_else(|| rd(format!("tensor `{name}` vanished while reading")))?;
            out.insert(name.clone(), t);
        }
        return Ok((k.map(str::to_string), out));
    }
    Err(rd(match key {
        Some(k) => format!("no tensors under key `{k}` ({last})"),
        None => "no state dict found: no tensors at the top level nor under `state_dict` or \
                 `model` (name the entry with --key)"
            .into(),
    }))
}

/// The prefix of the torchvision names (see the module doc).
fn detect_prefix(path: &Path, keys: &BTreeSet<&str>) -> Result<String, ImportError> {
    let mut cands: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("conv1.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .filter(|p| keys.contains(format!("{p}layer1.0.conv1.weight").as_str()))
        .collect();
    cands.sort();
    match cands[..] {
        [p] => Ok(p.to_string()),
        [] => Err(ImportError::Layout {
            path: path.to_owned(),
            msg: format!(
                "no ResNet found: no key ends in `conv1.weight` with a matching \
                 `layer1.0.conv1.weight` (first keys: {})",
                keys.iter().take(8).copied().collect::<Vec<_>>().join(", ")
            ),
        }),
        _ => match cands
            .iter()
            .filter(|p| p.contains("encoder_q"))
            .collect::<Vec<_>>()[..]
        {
            [p] => Ok(p.to_string()),
            _ => Err(ImportError::Layout {
                path: path.to_owned(),
                msg: format!(
                    "several ResNets in the file (prefixes {}); choose one with --prefix",
                    cands
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        },
    }
}

/// The config the tensors under `prefix` describe.
fn detect_config(
    path: &Path,
    prefix: &str,
    t: &BTreeMap<String, Tensor>,
) -> Result<ResNetConfig, ImportError> {
    let lay = |msg: String| ImportError::Layout {
        path: path.to_owned(),
        msg,
    };
    let get = |name: &str| -> Result<&Tensor, ImportError> {
        t.get(&format!("{prefix}{name}"))
            .ok_or_else(|| lay(format!("missing key `{prefix}{name}`")))
    };
    let conv1 = get("conv1.weight")?;
    let d = conv1.dims();
    let [c, 3, k, k2] = d[..] else {
        return Err(lay(format!(
            "`{prefix}conv1.weight` has shape {d:?}, expected [C, 3, k, k]"
        )));
    };
    let small_stem = match (k, k2) {
        (3, 3) => true,
        (7, 7) => false,
        _ => {
            return Err(lay(format!(
                "`{prefix}conv1.weight` is a {k}×{k2} kernel: expected 7×7 (ImageNet stem) or \
                 3×3 (small stem)"
            )))
        }
    };
    let bottleneck = t.contains_key(&format!("{prefix}layer1.0.conv3.weight"));
    let mut blocks = [0usize; 4];
    for (s, n) in blocks.iter_mut().enumerate() {
        let p = format!("{prefix}layer{}.", s + 1);
        let idx: BTreeSet<usize> = t
            .keys()
            .filter_map(|k| k.strip_prefix(&p))
            .filter_map(|r| r.split('.').next()?.parse().ok())
            .collect();
        *n = idx.len();
        if idx.iter().copied().ne(0..idx.len()) {
            return Err(lay(format!(
                "blocks of `{p}` are numbered {idx:?}: expected 0..{}",
                idx.len()
            )));
        }
    }
    let arch = match (bottleneck, blocks) {
        (false, [2, 2, 2, 2]) => Arch::Resnet18,
        (false, [3, 4, 6, 3]) => Arch::Resnet34,
        (true, [3, 4, 6, 3]) => Arch::Resnet50,
        _ => {
            return Err(lay(format!(
                "{} blocks per stage {blocks:?} under `{prefix}`: not ResNet-18 (2,2,2,2 basic), \
                 -34 (3,4,6,3 basic) or -50 (3,4,6,3 bottleneck)",
                if bottleneck { "bottleneck" } else { "basic" }
            )))
        }
    };
    let cfg = ResNetConfig {
        arch,
        width: c as f32 / 64.0,
        small_stem,
        num_classes: None,
    };
    // Every stage's inner width must follow the multiplier (the loader names any other
    // mis-shaped tensor; this names the first place the widths disagree).
    for (s, w) in cfg.stage_widths().iter().enumerate() {
        let name = format!("layer{}.0.conv1.weight", s + 1);
        let found = get(&name)?.dims()[0];
        if found != *w {
            return Err(lay(format!(
                "`{prefix}{name}` has {found} output channels; a {arch} whose conv1 has {c} \
                 (width {}) needs {w}",
                cfg.width
            )));
        }
    }
    Ok(cfg)
}

/// Reads, detects and loads; nothing is written.
pub fn import(req: &ImportRequest) -> Result<Imported, ImportError> {
    let path = &req.from;
    let (key, tensors) = read_tensors(path, req.key.as_deref())?;
    let names: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    let prefix = match &req.prefix {
        Some(p) => p.clone(),
        None => detect_prefix(path, &names)?,
    };
    let cfg = detect_config(path, &prefix, &tensors)?;
    let net = ResNet::new(&cfg, 0, &Device::Cpu).map_err(|e| ImportError::Layout {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    // The tensors as safetensors bytes, so the one checked loader (every missing, unexpected
    // and mis-shaped key named) does the loading.
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v.clone())), None)
        .map_err(|e| ImportError::Read {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let opts = LoadOptions {
        strip_prefix: if prefix.is_empty() {
            None
        } else {
            Some(prefix.clone())
        },
        allow_missing_fc: true,
        ignore_unexpected: vec!["fc.".into()],
    };
    let r = net.load_safetensors_bytes(&bytes, path, &opts)?;
    let kept = r.loaded.iter().map(|n| format!("{prefix}{n}")).collect();
    let report = ImportReport {
        from: path.clone(),
        key,
        prefix,
        arch: cfg.arch.to_string(),
        width: cfg.width,
        small_stem: cfg.small_stem,
        feature_dim: cfg.feature_dim(),
        parameters: net
            .named_params()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum(),
        kept,
        dropped: r.ignored,
        defaulted: r.kept,
    };
    Ok(Imported {
        net,
        report,
        image_size: req.image_size,
    })
}
