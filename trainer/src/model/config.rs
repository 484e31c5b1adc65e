//! Architecture description: which ResNet, how wide, which stem, whether a classifier.
//!
//! The config is stored as JSON in the safetensors metadata of every saved model (key
//! [`CONFIG_METADATA_KEY`]), so that a file alone is enough to rebuild the network.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Metadata key under which [`ResNetConfig`] JSON is stored in saved safetensors files.
pub const CONFIG_METADATA_KEY: &str = "resnet_config";

/// The ResNet depth variants the paper uses (ResNet-50 for ImageNet-scale runs; 18/34 for the
/// smaller ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

/// The residual block family: basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1 with 4× expansion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl Arch {
    /// Number of blocks in layer1..layer4, as in torchvision.
    pub fn blocks_per_stage(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
        }
    }

    pub fn block_kind(self) -> BlockKind {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => BlockKind::Basic,
            Arch::Resnet50 => BlockKind::Bottleneck,
        }
    }

    /// Output channels of a block relative to its inner width (torchvision's `expansion`).
    pub fn expansion(self) -> usize {
        match self.block_kind() {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    /// Accepts `resnet18`, `ResNet-18`, `resnet_18` … (case, `-` and `_` are ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "resnet18" => Ok(Arch::Resnet18),
            "resnet34" => Ok(Arch::Resnet34),
            "resnet50" => Ok(Arch::Resnet50),
            _ => Err(format!(
                "unknown architecture `{s}`: expected resnet18, resnet34 or resnet50"
            )),
        }
    }
}

/// Everything needed to build the network's shape (not its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub arch: Arch,
    /// Multiplier of torchvision's base width 64; `1.0` is the standard network, `0.25` gives
    /// 16/32/64/128 channels (small enough to train on a CPU in tests).
    pub width: f32,
    /// CIFAR-style stem: 3×3 stride-1 `conv1` and no max-pool, for 32–96 px images where the
    /// ImageNet stem (7×7 stride 2 + max-pool) would throw away most of the resolution.
    pub small_stem: bool,
    /// `Some(n)`: an `fc` layer with `n` outputs; `None`: the network ends at the pooled features.
    pub num_classes: Option<usize>,
}

impl ResNetConfig {
    pub fn new(arch: Arch) -> Self {
        ResNetConfig {
            arch,
            width: 1.0,
            small_stem: false,
            num_classes: None,
        }
    }

    /// Inner widths of layer1..layer4: `round(64·width·{1,2,4,8})`, at least 1.
    pub fn stage_widths(&self) -> [usize; 4] {
        [1.0f32, 2.0, 4.0, 8.0].map(|m| ((64.0 * self.width * m).round() as usize).max(1))
    }

    /// Width of the stem (`conv1`) output: the same as layer1's inner width, as in torchvision.
    pub fn stem_width(&self) -> usize {
        self.stage_widths()[0]
    }

    /// Dimension of the pooled feature vector (input of `fc`): 512·width, or 2048·width for ResNet-50.
    pub fn feature_dim(&self) -> usize {
        self.stage_widths()[3] * self.arch.expansion()
    }

    /// Reject configs that cannot build a network, with a message saying why.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(format!(
                "width multiplier must be a positive number, got {}",
                self.width
            ));
        }
        if self.num_classes == Some(0) {
            return Err("num_classes must be at least 1 (use None for no classifier)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_parses_and_rejects() {
        assert_eq!("resnet18".parse::<Arch>().unwrap(), Arch::Resnet18);
        assert_eq!("ResNet-50".parse::<Arch>().unwrap(), Arch::Resnet50);
        assert_eq!("resnet_34".parse::<Arch>().unwrap(), Arch::Resnet34);
        assert!("resnet101".parse::<Arch>().is_err());
    }

    #[test]
    fn widths_follow_the_multiplier() {
        let mut c = ResNetConfig::new(Arch::Resnet18);
        assert_eq!(c.stage_widths(), [64, 128, 256, 512]);
        assert_eq!(c.feature_dim(), 512);
        c.width = 0.25;
        assert_eq!(c.stage_widths(), [16, 32, 64, 128]);
        c.width = 0.001;
        assert_eq!(c.stage_widths(), [1, 1, 1, 1]);
        let mut c = ResNetConfig::new(Arch::Resnet50);
        assert_eq!(c.feature_dim(), 2048);
        c.width = 0.125;
        assert_eq!(c.feature_dim(), 64 * 4);
    }

    #[test]
    fn config_json_round_trip() {
        let c = ResNetConfig {
            arch: Arch::Resnet34,
            width: 0.5,
            small_stem: true,
            num_classes: Some(7),
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"resnet34\""), "{s}");
        assert_eq!(serde_json::from_str::<ResNetConfig>(&s).unwrap(), c);
    }

    #[test]
    fn bad_width_is_rejected() {
        let mut c = ResNetConfig::new(Arch::Resnet18);
        c.width = 0.0;
        assert!(c.validate().is_err());
        c.width = f32::NAN;
        assert!(c.validate().is_err());
    }
}
