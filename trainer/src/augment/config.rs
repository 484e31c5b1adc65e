//! Augmentation switches: one struct, stored in checkpoints, built from a method's defaults, the
//! paper's Table 1 ablation level, or an `--aug` list.
//!
//! Every switch of the paper's Table 1 (HFlip → +RRC → +ColorJitter → +Grayscale → +Blur) is a
//! field here, so each ablation row is a configuration rather than a code path.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// ImageNet channel means (torchvision's `Normalize` defaults used by MoCo and the supervised
/// baseline).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// torchvision's default RandomResizedCrop aspect-ratio range.
pub const DEFAULT_RRC_RATIO: (f32, f32) = (3.0 / 4.0, 4.0 / 3.0);
/// The image size at which MoCo v2's blur σ range (0.1, 2.0) was chosen.
pub const BLUR_REFERENCE_SIZE: usize = 224;

/// `ColorJitter(brightness, contrast, saturation, hue)` wrapped in `RandomApply(p)`.
///
/// Factors are drawn as torchvision draws them: brightness/contrast/saturation
/// `U[max(0, 1−x), 1+x]`, hue `U[−h, h]`; a zero strength switches that component off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColorJitterCfg {
    pub b: f32,
    pub c: f32,
    pub s: f32,
    pub h: f32,
    /// Probability that the jitter is applied at all (1.0 = always, as in MoCo v1).
    pub p: f32,
}

/// Gaussian blur with σ ~ U(sigma.0, sigma.1), applied with probability `p`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlurCfg {
    pub sigma: (f32, f32),
    pub p: f32,
    /// The image size at which `sigma` is meant. MoCo v2 chose σ ∈ (0.1, 2.0) for 224 px crops;
    /// at our 32–84 px the same σ in pixels would blur away a far larger part of the object. With
    /// `Some(r)` the drawn σ is multiplied by `out_size / r`, keeping the blur's extent relative to
    /// the image; `None` uses σ in output pixels as given.
    #[serde(default)]
    pub reference_size: Option<usize>,
}

/// How an image becomes `out_size × out_size` when RandomResizedCrop is off (and always in the
/// deterministic eval pipeline).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum FixedGeometry {
    /// Resize the whole image to the output square (aspect ratio not kept). Keeps every pixel and
    /// every landmark; right for the already aligned/cropped face and object images.
    #[default]
    Stretch,
    /// Take the centred square of side `fraction · min(H, W)`, then resize it. `fraction = 0.875`
    /// is torchvision's `Resize(S/0.875) + CenterCrop(S)` on square images.
    CenterCrop { fraction: f32 },
}

/// The full augmentation pipeline of one view. Applied in torchvision's MoCo order:
/// crop/resize → ColorJitter → Grayscale (swapped when `gray_before_jitter`, as in MoCo v1)
/// → GaussianBlur → HorizontalFlip → Normalize.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// RandomHorizontalFlip(p = 0.5).
    pub hflip: bool,
    /// RandomResizedCrop with this area `scale` range; `None` = [`FixedGeometry`] instead.
    pub rrc: Option<(f32, f32)>,
    /// RandomResizedCrop aspect-ratio range (log-uniform).
    #[serde(default = "default_ratio")]
    pub rrc_ratio: (f32, f32),
    pub color_jitter: Option<ColorJitterCfg>,
    /// RandomGrayscale probability; 0 = off.
    pub grayscale_p: f32,
    /// MoCo v1 lists RandomGrayscale before ColorJitter; v2 after.
    #[serde(default)]
    pub gray_before_jitter: bool,
    pub blur: Option<BlurCfg>,
    /// Geometry used when `rrc` is off, and by the eval pipeline.
    #[serde(default)]
    pub fixed: FixedGeometry,
    /// Output side in pixels (square).
    pub out_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn default_ratio() -> (f32, f32) {
    DEFAULT_RRC_RATIO
}

/// MoCo v2's / Table 1's jitter: ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8.
const V2_JITTER: ColorJitterCfg = ColorJitterCfg {
    b: 0.4,
    c: 0.4,
    s: 0.4,
    h: 0.1,
    p: 0.8,
};
/// MoCo v2's blur: σ ∈ U(0.1, 2.0) at 224 px, p 0.5.
const V2_BLUR: BlurCfg = BlurCfg {
    sigma: (0.1, 2.0),
    p: 0.5,
    reference_size: Some(BLUR_REFERENCE_SIZE),
};
/// Contrastive RRC scale (paper Table 1 footnote: 0.2 unsupervised, 0.08 supervised).
pub const RRC_SCALE_UNSUPERVISED: (f32, f32) = (0.2, 1.0);
pub const RRC_SCALE_SUPERVISED: (f32, f32) = (0.08, 1.0);

impl AugmentConfig {
    /// No augmentation: fixed geometry + normalisation (Table 1 level 0; the eval pipeline).
    pub fn none(out_size: usize) -> Self {
        AugmentConfig {
            hflip: false,
            rrc: None,
            rrc_ratio: DEFAULT_RRC_RATIO,
            color_jitter: None,
            grayscale_p: 0.0,
            gray_before_jitter: false,
            blur: None,
            fixed: FixedGeometry::Stretch,
            out_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// MoCo v1: RRC(0.2–1), RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4) always, HFlip.
    pub fn moco_v1(out_size: usize) -> Self {
        AugmentConfig {
            hflip: true,
            rrc: Some(RRC_SCALE_UNSUPERVISED),
            color_jitter: Some(ColorJitterCfg {
                b: 0.4,
                c: 0.4,
                s: 0.4,
                h: 0.4,
                p: 1.0,
            }),
            grayscale_p: 0.2,
            gray_before_jitter: true,
            ..Self::none(out_size)
        }
    }

    /// MoCo v2: RRC(0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, Grayscale p 0.2,
    /// GaussianBlur σ ∈ U(0.1, 2) (at 224 px) p 0.5, HFlip.
    pub fn moco_v2(out_size: usize) -> Self {
        AugmentConfig {
            hflip: true,
            rrc: Some(RRC_SCALE_UNSUPERVISED),
            color_jitter: Some(V2_JITTER),
            grayscale_p: 0.2,
            blur: Some(V2_BLUR),
            ..Self::none(out_size)
        }
    }

    /// Paper Table 1's cumulative ablation for the supervised baseline: level 0 none, 1 HFlip,
    /// 2 +RRC (scale 0.08–1), 3 +ColorJitter, 4 +Grayscale, 5 +Blur. Levels above 5 are 5.
    /// For the unsupervised rows use `.with_rrc_scale(RRC_SCALE_UNSUPERVISED)` (level 5 is then
    /// exactly [`AugmentConfig::moco_v2`]).
    pub fn table1(level: usize, out_size: usize) -> Self {
        let mut c = Self::none(out_size);
        c.hflip = level >= 1;
        if level >= 2 {
            c.rrc = Some(RRC_SCALE_SUPERVISED);
        }
        if level >= 3 {
            c.color_jitter = Some(V2_JITTER);
        }
        if level >= 4 {
            c.grayscale_p = 0.2;
        }
        if level >= 5 {
            c.blur = Some(V2_BLUR);
        }
        c
    }

    /// Same configuration with another RRC scale range (no effect when RRC is off).
    pub fn with_rrc_scale(mut self, scale: (f32, f32)) -> Self {
        if self.rrc.is_some() {
            self.rrc = Some(scale);
        }
        self
    }

    /// Parse an `--aug` list such as `hflip,rrc,jitter,gray,blur` or `none`.
    ///
    /// Listed switches are on, unlisted ones off. A bare name takes its parameters from
    /// `defaults` (the method's own configuration), or MoCo v2's values when the default has that
    /// switch off; parameters may be given inline:
    /// `rrc:MIN:MAX`, `jitter:B:C:S:H[:P]`, `gray:P`, `blur:SMIN:SMAX[:P]`.
    /// Geometry, size, normalisation and the gray/jitter order come from `defaults`.
    pub fn parse_aug_list(list: &str, defaults: &AugmentConfig) -> Result<Self> {
        let mut c = AugmentConfig {
            hflip: false,
            rrc: None,
            color_jitter: None,
            grayscale_p: 0.0,
            blur: None,
            ..defaults.clone()
        };
        let tokens: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            bail!("--aug list {list:?} is empty (use `none` for no augmentation)");
        }
        if tokens == ["none"] {
            c.validate().context("--aug none")?;
            return Ok(c);
        }
        let mut seen: Vec<&str> = Vec::new();
        for tok in tokens {
            let mut parts = tok.split(':');
            let name = parts.next().unwrap_or_default();
            let args: Vec<f32> = parts
                .map(|a| {
                    a.trim()
                        .parse::<f32>()
                        .with_context(|| format!("--aug item {tok:?}: {a:?} is not a number"))
                })
                .collect::<Result<_>>()?;
            if seen.contains(&name) {
                bail!("--aug list {list:?} names {name:?} twice");
            }
            seen.push(name);
            let arity = |allowed: &[usize]| -> Result<()> {
                if allowed.contains(&args.len()) {
                    Ok(())
                } else {
                    bail!(
                        "--aug item {tok:?}: expected {allowed:?} parameters, got {}",
                        args.len()
                    )
                }
            };
            match name {
                "hflip" => {
                    arity(&[0])?;
                    c.hflip = true;
                }
                "rrc" => {
                    arity(&[0, 2])?;
                    c.rrc = Some(match args[..] {
                        [lo, hi] => (lo, hi),
                        _ => defaults.rrc.unwrap_or(RRC_SCALE_UNSUPERVISED),
                    });
                }
                "jitter" => {
                    arity(&[0, 4, 5])?;
                    let d = defaults.color_jitter.unwrap_or(V2_JITTER);
                    c.color_jitter = Some(match args[..] {
                        [b, cc, s, h] => ColorJitterCfg { b, c: cc, s, h, p: d.p },
                        [b, cc, s, h, p] => ColorJitterCfg { b, c: cc, s, h, p },
                        _ => d,
                    });
                }
                "gray" => {
                    arity(&[0, 1])?;
                    let d = if defaults.grayscale_p > 0.0 { defaults.grayscale_p } else { 0.2 };
                    c.grayscale_p = args.first().copied().unwrap_or(d);
                }
                "blur" => {
                    arity(&[0, 2, 3])?;
                    let d = defaults.blur.unwrap_or(V2_BLUR);
                    c.blur = Some(match args[..] {
                        [lo, hi] => BlurCfg { sigma: (lo, hi), ..d },
                        [lo, hi, p] => BlurCfg { sigma: (lo, hi), p, ..d },
                        _ => d,
                    });
                }
                "none" => bail!("--aug list {list:?}: `none` cannot be combined with other items"),
                other => bail!(
                    "--aug list {list:?}: unknown item {other:?} (known: none, hflip, rrc, jitter, gray, blur)"
                ),
            }
        }
        c.validate()
            .with_context(|| format!("--aug list {list:?}"))?;
        Ok(c)
    }

    /// The canonical `--aug` string of the random switches (with parameters), for logs and
    /// run names; [`AugmentConfig::parse_aug_list`] reads it back.
    pub fn to_aug_list(&self) -> String {
        let mut items = Vec::new();
        if self.hflip {
            items.push("hflip".to_string());
        }
        if let Some((lo, hi)) = self.rrc {
            items.push(format!("rrc:{lo}:{hi}"));
        }
        if let Some(j) = self.color_jitter {
            items.push(format!("jitter:{}:{}:{}:{}:{}", j.b, j.c, j.s, j.h, j.p));
        }
        if self.grayscale_p > 0.0 {
            items.push(format!("gray:{}", self.grayscale_p));
        }
        if let Some(b) = self.blur {
            items.push(format!("blur:{}:{}:{}", b.sigma.0, b.sigma.1, b.p));
        }
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(",")
        }
    }

    /// Reject parameters torchvision would reject (or that would make the maths meaningless).
    pub fn validate(&self) -> Result<()> {
        let prob = |name: &str, p: f32| -> Result<()> {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} probability {p} is not in [0, 1]");
            }
            Ok(())
        };
        if self.out_size == 0 {
            bail!("output size must be positive");
        }
        if let Some((lo, hi)) = self.rrc {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                bail!("RandomResizedCrop scale ({lo}, {hi}) must satisfy 0 < min ≤ max ≤ 1");
            }
        }
        let (rlo, rhi) = self.rrc_ratio;
        if !(rlo > 0.0 && rlo <= rhi && rhi.is_finite()) {
            bail!("RandomResizedCrop ratio ({rlo}, {rhi}) must satisfy 0 < min ≤ max");
        }
        if let Some(j) = self.color_jitter {
            for (n, v) in [("brightness", j.b), ("contrast", j.c), ("saturation", j.s)] {
                if !(v >= 0.0 && v.is_finite()) {
                    bail!("ColorJitter {n} {v} must be ≥ 0");
                }
            }
            if !(0.0..=0.5).contains(&j.h) {
                bail!("ColorJitter hue {} must be in [0, 0.5]", j.h);
            }
            prob("ColorJitter", j.p)?;
        }
        prob("RandomGrayscale", self.grayscale_p)?;
        if let Some(b) = self.blur {
            if !(b.sigma.0 > 0.0 && b.sigma.0 <= b.sigma.1 && b.sigma.1.is_finite()) {
                bail!(
                    "GaussianBlur sigma ({}, {}) must satisfy 0 < min ≤ max",
                    b.sigma.0,
                    b.sigma.1
                );
            }
            if b.reference_size == Some(0) {
                bail!("GaussianBlur reference size must be positive");
            }
            prob("GaussianBlur", b.p)?;
        }
        if let FixedGeometry::CenterCrop { fraction } = self.fixed {
            if !(fraction > 0.0 && fraction <= 1.0) {
                bail!("centre-crop fraction {fraction} must be in (0, 1]");
            }
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            bail!("normalisation std {:?} must be positive", self.std);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table1_levels_are_cumulative_and_level5_unsupervised_is_moco_v2() {
        let names: Vec<String> = (0..=5)
            .map(|l| AugmentConfig::table1(l, 32).to_aug_list())
            .collect();
        assert_eq!(names[0], "none");
        assert_eq!(names[1], "hflip");
        assert!(names[2].starts_with("hflip,rrc:0.08:1"));
        for l in 1..=5 {
            assert!(
                names[l].starts_with(&names[l - 1].replace("none", "")),
                "{names:?}"
            );
        }
        let unsup = AugmentConfig::table1(5, 32).with_rrc_scale(RRC_SCALE_UNSUPERVISED);
        assert_eq!(unsup, AugmentConfig::moco_v2(32));
    }

    #[test]
    fn parse_round_trips_and_uses_defaults() {
        for c in [
            AugmentConfig::moco_v1(84),
            AugmentConfig::moco_v2(32),
            AugmentConfig::none(16),
        ] {
            let back = AugmentConfig::parse_aug_list(&c.to_aug_list(), &c).unwrap();
            assert_eq!(back, c);
        }
        let v1 = AugmentConfig::moco_v1(32);
        let c = AugmentConfig::parse_aug_list("hflip, rrc ,blur", &v1).unwrap();
        assert!(c.hflip);
        assert_eq!(c.rrc, Some((0.2, 1.0)));
        assert_eq!(c.color_jitter, None);
        assert_eq!(c.grayscale_p, 0.0);
        assert_eq!(
            c.blur,
            Some(V2_BLUR),
            "v1 has no blur: v2's values are the fallback"
        );
        assert!(c.gray_before_jitter, "order comes from the defaults");
        let c = AugmentConfig::parse_aug_list("jitter:0.1:0.2:0.3:0.05,gray:0.5", &v1).unwrap();
        assert_eq!(
            c.color_jitter,
            Some(ColorJitterCfg {
                b: 0.1,
                c: 0.2,
                s: 0.3,
                h: 0.05,
                p: 1.0
            })
        );
        assert_eq!(c.grayscale_p, 0.5);
    }

    #[test]
    fn parse_rejects_bad_lists_with_the_offending_item() {
        let d = AugmentConfig::moco_v2(32);
        for (list, needle) in [
            ("hflip,spin", "spin"),
            ("hflip,hflip", "twice"),
            ("none,hflip", "none"),
            ("rrc:0.5", "rrc:0.5"),
            ("rrc:x:1", "\"x\""),
            ("gray:1.5", "RandomGrayscale"),
            ("jitter:0.4:0.4:0.4:0.7", "hue"),
            ("rrc:0.9:0.1", "scale"),
            ("", "empty"),
        ] {
            let e = AugmentConfig::parse_aug_list(list, &d).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(needle), "{list:?}: {msg}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let c = AugmentConfig::moco_v1(84);
        let s = serde_json::to_string(&c).unwrap();
        let back: AugmentConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
    }
}
