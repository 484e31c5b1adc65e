//! The pretraining methods' mathematics (paper §3): supervised cross-entropy, MoCo v1/v2 and
//! Exemplar v1/v2 (paper eq. 2).
//!
//! Exemplar is MoCo whose denominator drops the queue negatives that share the query's label, so
//! both run through the single [`contrastive::contrastive_loss`]; the only difference is whether
//! query labels are passed. This module holds the pieces and the per-method defaults; the training
//! loop (`crate::train`) wires them together with the model.
//!
//! | piece | file |
//! |---|---|
//! | method / version names, defaults table | this file |
//! | label-carrying key queue | [`queue`] |
//! | InfoNCE with the eq. 2 mask, instance accuracy | [`contrastive`] |
//! | projection heads (`fc` / `fc.0`,`fc.2`) | [`heads`] |
//! | momentum (EMA) key-encoder update | [`ema`] |
//! | single-device shuffle-BN permutation | [`shuffle_bn`] |
//! | supervised cross-entropy, top-1 | [`supervised`] |
use std::fmt;
use std::str::FromStr;

use crate::train::schedule::Schedule;

pub mod contrastive;
pub mod ema;
pub mod heads;
pub mod queue;
pub mod shuffle_bn;
pub mod supervised;

pub use heads::HeadKind;

/// MoCo/Exemplar generation: v1 (linear head, τ 0.07, step lr) or v2 (MLP head, cosine lr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

impl FromStr for Version {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            other => anyhow::bail!("unknown version '{other}': expected v1|v2"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// A pretraining method as chosen by `--method` / `--version`.
///
/// Serialised as its [`Display`](fmt::Display) name (`moco-v2`), so checkpoints and records
/// keep the text form while the code holds the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Method {
    /// Cross-entropy over the dataset's labels (object class or face identity).
    Supervised,
    /// Instance discrimination with a momentum key encoder and a queue (He et al. 2020).
    Moco(Version),
    /// MoCo whose denominator drops same-label queue entries (paper eq. 2).
    Exemplar(Version),
}

impl Method {
    /// Parse `--method` and `--version`. `version` is `None` when the flag was not given; MoCo and
    /// Exemplar then default to v2 (the paper's main comparisons, Tables 4 and 5). Giving a
    /// version to `supervised` is an error rather than silently ignored.
    pub fn parse(method: &str, version: Option<&str>) -> anyhow::Result<Method> {
        let version = version.map(Version::from_str).transpose()?;
        match method.trim().to_ascii_lowercase().as_str() {
            "supervised" => match version {
                None => Ok(Method::Supervised),
                Some(v) => anyhow::bail!(
                    "--version {v} applies to moco|exemplar only, not to method 'supervised'"
                ),
            },
            "moco" => Ok(Method::Moco(version.unwrap_or(Version::V2))),
            "exemplar" => Ok(Method::Exemplar(version.unwrap_or(Version::V2))),
            other => anyhow::bail!("unknown method '{other}': expected supervised|moco|exemplar"),
        }
    }

    /// Whether this method trains a key encoder + queue (MoCo and Exemplar).
    pub fn is_contrastive(self) -> bool {
        !matches!(self, Method::Supervised)
    }

    /// Whether the loss consumes labels (supervised CE and the Exemplar mask; MoCo never does).
    pub fn uses_labels(self) -> bool {
        !matches!(self, Method::Moco(_))
    }

    /// The defaults table (see [`MethodDefaults`]).
    pub fn defaults(self) -> MethodDefaults {
        MethodDefaults::for_method(self)
    }
}

/// `supervised`, `moco-v1`, `exemplar-v2`, …: the name used in checkpoints and reports.
impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Supervised => f.write_str("supervised"),
            Method::Moco(v) => write!(f, "moco-{v}"),
            Method::Exemplar(v) => write!(f, "exemplar-{v}"),
        }
    }
}

/// Inverse of `Display` (`moco-v2`), so a checkpoint's method name reads back.
impl FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Method> {
        match s.trim().split_once('-') {
            Some((m, v)) => Method::parse(m, Some(v)),
            None => Method::parse(s, None),
        }
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Method {
    type Error = anyhow::Error;
    fn try_from(s: String) -> anyhow::Result<Method> {
        s.parse()
    }
}

/// Which augmentation pipeline a method trains with. Only a name here; the pipelines themselves
/// live in `crate::augment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AugPreset {
    /// Supervised baseline: RandomResizedCrop + HFlip (torchvision ImageNet recipe; the paper's
    /// Table 1 adds colour jitter/grayscale/blur on top as an ablation, switched by the trainer).
    Standard,
    /// MoCo v1: RRC(0.2–1), Grayscale p0.2, ColorJitter(0.4,0.4,0.4,0.4) always, HFlip.
    MocoV1,
    /// MoCo v2: RRC(0.2–1), ColorJitter(0.4,0.4,0.4,0.1) p0.8, Grayscale p0.2, Blur p0.5, HFlip.
    MocoV2,
}

impl AugPreset {
    pub fn as_str(self) -> &'static str {
        match self {
            AugPreset::Standard => "standard",
            AugPreset::MocoV1 => "moco-v1",
            AugPreset::MocoV2 => "moco-v2",
        }
    }
}

/// Hyper-parameters each method uses unless the command line overrides them.
///
/// Sources: MoCo's `main_moco.py` (K 65536, m 0.999, lr 0.03 at batch 256, wd 1e-4, schedule
/// 120,160 of 200 epochs for v1, `--cos` for v2, τ 0.07/0.2), the paper §3 (Exemplar τ 0.07 v1,
/// 0.1 v2), and the torchvision ImageNet recipe for supervised (lr 0.1 at batch 256).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodDefaults {
    /// Softmax temperature τ; `None` for supervised (plain CE over class logits).
    pub tau: Option<f64>,
    /// Projection head on top of the pooled backbone feature; `None` for supervised, which uses
    /// a classifier `fc` Linear(C, classes) built by the trainer instead.
    pub head: Option<HeadKind>,
    /// Embedding dimension of the contrastive head output.
    pub dim: usize,
    /// Queue length K (number of stored negatives). The trainer must keep K % batch == 0.
    pub queue_len: usize,
    /// EMA momentum m for the key encoder: θk ← m·θk + (1−m)·θq.
    pub ema_momentum: f64,
    /// Learning rate at [`MethodDefaults::base_batch`]; [`MethodDefaults::lr_for_batch`] scales it.
    pub base_lr: f64,
    /// The batch size `base_lr` refers to (256 in both MoCo and the supervised recipe).
    pub base_batch: usize,
    pub sgd_momentum: f64,
    pub weight_decay: f64,
    /// Per-epoch lr schedule.
    pub schedule: Schedule,
    /// Number of BN groups for single-device shuffle-BN (MoCo's single-GPU recipe uses 8);
    /// `None` = shuffle-BN not applicable (supervised has no key encoder).
    pub shuffle_bn_groups: Option<usize>,
    pub aug: AugPreset,
}

impl MethodDefaults {
    /// The default lr at `batch` by the linear scaling rule ([`scaled_lr`]).
    ///
    /// [`scaled_lr`]: crate::train::schedule::scaled_lr
    pub fn lr_for_batch(&self, batch: usize) -> f64 {
        crate::train::schedule::scaled_lr(self.base_lr, self.base_batch, batch)
    }

    /// The defaults for `method`.
    ///
    /// Supervised uses lr 0.1 at batch 256 (the standard ImageNet recipe, Goyal et al. linear
    /// scaling) and a cosine schedule, so that it shares the lr shape of the v2 methods it is
    /// compared with in the paper's Tables 4 and 5.
    pub fn for_method(method: Method) -> MethodDefaults {
        let contrastive = |tau: f64, v: Version| MethodDefaults {
            tau: Some(tau),
            head: Some(match v {
                Version::V1 => HeadKind::Linear,
                Version::V2 => HeadKind::Mlp,
            }),
            dim: 128,
            queue_len: 65536,
            ema_momentum: 0.999,
            base_lr: 0.03,
            base_batch: 256,
            sgd_momentum: 0.9,
            weight_decay: 1e-4,
            schedule: match v {
                Version::V1 => Schedule::moco_v1_step(),
                Version::V2 => Schedule::Cosine,
            },
            shuffle_bn_groups: Some(8),
            aug: match v {
                Version::V1 => AugPreset::MocoV1,
                Version::V2 => AugPreset::MocoV2,
            },
        };
        match method {
            Method::Supervised => MethodDefaults {
                tau: None,
                head: None,
                dim: 128,
                queue_len: 0,
                ema_momentum: 0.0,
                base_lr: 0.1,
                base_batch: 256,
                sgd_momentum: 0.9,
                weight_decay: 1e-4,
                schedule: Schedule::Cosine,
                shuffle_bn_groups: None,
                aug: AugPreset::Standard,
            },
            Method::Moco(Version::V1) => contrastive(0.07, Version::V1),
            Method::Moco(Version::V2) => contrastive(0.2, Version::V2),
            Method::Exemplar(Version::V1) => contrastive(0.07, Version::V1),
            Method::Exemplar(Version::V2) => contrastive(0.1, Version::V2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods_and_versions() {
        assert_eq!(
            Method::parse("supervised", None).unwrap(),
            Method::Supervised
        );
        assert_eq!(
            Method::parse("moco", Some("v1")).unwrap(),
            Method::Moco(Version::V1)
        );
        assert_eq!(
            Method::parse("MoCo", None).unwrap(),
            Method::Moco(Version::V2)
        );
        assert_eq!(
            Method::parse("exemplar", Some("v2")).unwrap(),
            Method::Exemplar(Version::V2)
        );
        let e = Method::parse("simclr", None).unwrap_err().to_string();
        assert!(
            e.contains("unknown method 'simclr'") && e.contains("supervised|moco|exemplar"),
            "{e}"
        );
        let e = Method::parse("moco", Some("v3")).unwrap_err().to_string();
        assert!(
            e.contains("unknown version 'v3'") && e.contains("v1|v2"),
            "{e}"
        );
        assert!(Method::parse("supervised", Some("v1")).is_err());
    }

    #[test]
    fn display_round_trips() {
        for m in [
            Method::Supervised,
            Method::Moco(Version::V1),
            Method::Moco(Version::V2),
            Method::Exemplar(Version::V1),
            Method::Exemplar(Version::V2),
        ] {
            assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
        }
        assert_eq!(Method::Exemplar(Version::V1).to_string(), "exemplar-v1");
    }

    #[test]
    fn defaults_follow_the_paper_and_moco() {
        let t = |m: Method| m.defaults().tau;
        assert_eq!(t(Method::Moco(Version::V1)), Some(0.07));
        assert_eq!(t(Method::Moco(Version::V2)), Some(0.2));
        assert_eq!(t(Method::Exemplar(Version::V1)), Some(0.07));
        assert_eq!(t(Method::Exemplar(Version::V2)), Some(0.1));
        assert_eq!(t(Method::Supervised), None);
        let d = Method::Exemplar(Version::V2).defaults();
        assert_eq!((d.dim, d.queue_len, d.ema_momentum), (128, 65536, 0.999));
        assert_eq!((d.base_lr, d.base_batch, d.weight_decay), (0.03, 256, 1e-4));
        assert_eq!(d.head, Some(HeadKind::Mlp));
        assert_eq!(d.schedule, Schedule::Cosine);
        assert_eq!(d.shuffle_bn_groups, Some(8));
        let d1 = Method::Moco(Version::V1).defaults();
        assert_eq!(d1.head, Some(HeadKind::Linear));
        assert_eq!(d1.schedule, Schedule::moco_v1_step());
        assert_eq!(d1.aug, AugPreset::MocoV1);
        assert_eq!(Method::Supervised.defaults().base_lr, 0.1);
        assert!(Method::Exemplar(Version::V1).uses_labels());
        assert!(!Method::Moco(Version::V1).uses_labels());
    }
}
