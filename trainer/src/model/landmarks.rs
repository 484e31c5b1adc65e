//! The facial-landmark regressor of paper §4.2: a ResNet backbone's spatial feature map followed
//! by "a 1×1 convolutional layer that reduces C channels to 128 and a fully connected layer,
//! interleaved with LeakyReLU and batch normalization".
//!
//! Graph: `backbone.forward_map` → `head.conv` (1×1, C→128, no bias) → `head.bn` → LeakyReLU(0.01,
//! PyTorch's default slope) → flatten in NCHW order `(c, y, x)` → `head.fc` Linear(128·h·w → 10).
//!
//! Output convention (shared with runtime-core's `heads::landmarks`): 10 numbers `x0, y0, …, x4,
//! y4` in CelebA order, each **normalised to [0, 1] of the model input** (`x/W`, `y/H`), so the
//! head does not depend on the pixel size and the exported model decodes with the same rule.
//!
//! Files: backbone tensors keep their torchvision names, head tensors are `head.*`; the metadata
//! holds the backbone's `resnet_config` and [`LANDMARK_METADATA_KEY`] (JSON [`LandmarkMeta`]), so
//! [`LandmarkModel::open`] rebuilds the model from the file alone and the exporter can tell a
//! landmark model from a bare backbone.
pub use super::landmarks_io::{LandmarkMeta, LANDMARK_METADATA_KEY};
use super::ops;
use super::resnet::{BnMode, ResNet};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;

/// Hidden channels of the 1×1 conv (paper §4.2).
pub const HIDDEN: usize = 128;
/// PyTorch's `nn.LeakyReLU()` default negative slope.
pub const LEAKY_SLOPE: f64 = 0.01;
/// 5 landmarks × (x, y).
pub const OUTPUTS: usize = 2 * crate::data::NUM_LANDMARKS;

/// Spatial size of the backbone's last feature map for a square `input` side, walking the same
/// [`super::ConvSpec`]s as the forward pass (stem, max-pool, the first conv path of each block).
pub fn feature_map_size(net: &ResNet, input: usize) -> Option<usize> {
    let conv =
        |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).checked_sub(k).map(|v| v / s + 1);
    let st = net.stem();
    let mut n = conv(input, st.kernel, st.stride, st.padding)?;
    if net.has_maxpool() {
        n = conv(n, 3, 2, 1)?;
    }
    for b in net.blocks() {
        for c in &b.convs {
            n = conv(n, c.kernel, c.stride, c.padding)?;
        }
    }
    Some(n)
}

/// `head.conv` → `head.bn` → LeakyReLU → `head.fc`, with its BN running statistics.
pub struct LandmarkHead {
    in_ch: usize,
    pub(super) map: (usize, usize),
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
}

fn sample<D: Distribution<f32>>(seed: u64, name: &str, n: usize, dist: D) -> Vec<f32> {
    // Each tensor's stream is keyed by its name, so the initial weights do not change
    // when, say, `num_classes` does.
    let mut rng = crate::rng::init_stream(seed, name);
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}

impl LandmarkHead {
    /// PyTorch-style init: conv kaiming_normal (fan_out, relu) like the backbone, BN 1/0 with
    /// running 0/1, fc `nn.Linear`'s uniform ±1/√fan_in; one [`crate::rng::init_stream`] per tensor name.
    pub fn new(
        in_ch: usize,
        map_h: usize,
        map_w: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let var = |d: Vec<f32>, s: &[usize]| Var::from_tensor(&Tensor::from_vec(d, s, device)?);
        let std = (2.0 / HIDDEN as f32).sqrt();
        let normal =
            Normal::new(0.0f32, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let fan_in = HIDDEN * map_h * map_w;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut params = BTreeMap::new();
        params.insert(
            "head.conv.weight".to_string(),
            var(
                sample(seed, "head.conv.weight", HIDDEN * in_ch, normal),
                &[HIDDEN, in_ch, 1, 1],
            )?,
        );
        params.insert(
            "head.bn.weight".to_string(),
            var(vec![1.0; HIDDEN], &[HIDDEN])?,
        );
        params.insert(
            "head.bn.bias".to_string(),
            var(vec![0.0; HIDDEN], &[HIDDEN])?,
        );
        let u = Uniform::new(-bound, bound);
        params.insert(
            "head.fc.weight".to_string(),
            var(
                sample(seed, "head.fc.weight", OUTPUTS * fan_in, u),
                &[OUTPUTS, fan_in],
            )?,
        );
        params.insert(
            "head.fc.bias".to_string(),
            var(sample(seed, "head.fc.bias", OUTPUTS, u), &[OUTPUTS])?,
        );
        let mut buffers = BTreeMap::new();
        buffers.insert(
            "head.bn.running_mean".to_string(),
            var(vec![0.0; HIDDEN], &[HIDDEN])?,
        );
        buffers.insert(
            "head.bn.running_var".to_string(),
            var(vec![1.0; HIDDEN], &[HIDDEN])?,
        );
        buffers.insert(
            "head.bn.num_batches_tracked".to_string(),
            Var::from_tensor(&Tensor::zeros((), DType::I64, device)?)?,
        );
        Ok(LandmarkHead {
            in_ch,
            map: (map_h, map_w),
            params,
            buffers,
        })
    }

    /// Make the head predict `mean` (10 normalised coordinates) for every input: fc bias = `mean`,
    /// fc weights = 0. Zeroing the weights matters as much as the bias: with `nn.Linear`'s init
    /// the fc sums 128·h·w unit-variance BN outputs with weights ±1/√fan_in, so the start is the
    /// mean face plus noise of ≈0.3–0.6 of the image side per coordinate — a first epoch that
    /// blows up (loss 3.3 on coordinates in [0, 1]) or, at a safe learning rate, many epochs
    /// spent undoing the noise. Gradients still reach the rest of the head after the first step.
    pub fn start_at_mean_face(&self, mean: &[f32]) -> Result<()> {
        if mean.len() != OUTPUTS {
            candle_core::bail!("mean face has {} numbers, expected {OUTPUTS}", mean.len());
        }
        let w = self.get("head.fc.weight")?;
        let b = self.get("head.fc.bias")?;
        w.set(&w.as_tensor().zeros_like()?)?;
        b.set(&Tensor::from_slice(mean, OUTPUTS, b.device())?)
    }

    /// Input channels C of the 1×1 conv.
    pub fn in_channels(&self) -> usize {
        self.in_ch
    }

    /// Backbone feature map `(h, w)` the fc layer was sized for.
    pub fn map_size(&self) -> (usize, usize) {
        self.map
    }

    /// A parameter or buffer by name (`head.conv.weight`, `head.bn.running_var`, …).
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.params.get(name).or_else(|| self.buffers.get(name))
    }

    pub(super) fn get(&self, name: &str) -> Result<&Var> {
        self.var(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("internal: {name} missing")))
    }

    /// Trainable parameters, sorted by name.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Parameters and buffers, sorted by name (what a file holds).
    pub fn all_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .params
            .iter()
            .chain(&self.buffers)
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `map`: [B, C, h, w] backbone features → [B, 10].
    pub fn forward(&self, map: &Tensor, mode: BnMode) -> Result<Tensor> {
        let (_, c, h, w) = map.dims4()?;
        if c != self.in_ch || (h, w) != self.map {
            candle_core::bail!(
                "landmark head expects a [B, {}, {}, {}] feature map, got {:?}",
                self.in_ch,
                self.map.0,
                self.map.1,
                map.dims()
            );
        }
        let y = ops::conv2d(map, self.get("head.conv.weight")?.as_tensor(), 1, 0)?;
        let gamma = self.get("head.bn.weight")?.as_tensor();
        let beta = self.get("head.bn.bias")?.as_tensor();
        let rm = self.get("head.bn.running_mean")?;
        let rv = self.get("head.bn.running_var")?;
        let y = match mode {
            BnMode::Eval => ops::batch_norm_eval(
                &y,
                gamma,
                beta,
                &rm.as_detached_tensor(),
                &rv.as_detached_tensor(),
            )?,
            BnMode::Train { groups } => {
                let (y, stats) = ops::batch_norm_train(&y, gamma, beta, groups)?;
                ops::update_bn_buffers(rm, rv, self.get("head.bn.num_batches_tracked")?, &stats)?;
                y
            }
            BnMode::TrainReplica { .. } => candle_core::bail!(
                "the landmark head trains on one replica (BnMode::Train), not split over several"
            ),
        };
        let y = candle_nn::ops::leaky_relu(&y, LEAKY_SLOPE)?.flatten_from(1)?;
        ops::linear(
            &y,
            self.get("head.fc.weight")?.as_tensor(),
            self.get("head.fc.bias")?.as_tensor(),
        )
    }
}

/// Backbone + landmark head at a fixed square input size.
pub struct LandmarkModel {
    pub backbone: ResNet,
    pub head: LandmarkHead,
    pub input_size: usize,
}

impl std::fmt::Debug for LandmarkModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandmarkModel")
            .field("backbone", &self.backbone)
            .field("input_size", &self.input_size)
            .field("map", &self.head.map)
            .finish()
    }
}

impl LandmarkModel {
    /// A fresh head (from `seed`) on `backbone` for `input_size`×`input_size` inputs.
    pub fn new(backbone: ResNet, input_size: usize, seed: u64) -> Result<Self> {
        let n = feature_map_size(&backbone, input_size)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "input size {input_size} is too small for this ResNet"
                ))
            })?;
        let c = backbone.config().feature_dim();
        let head = LandmarkHead::new(c, n, n, seed, backbone.device())?;
        Ok(LandmarkModel {
            backbone,
            head,
            input_size,
        })
    }

    /// `x`: [B, 3, S, S] normalised images, S = `input_size` → [B, 10] normalised coordinates.
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != (self.input_size, self.input_size) {
            candle_core::bail!(
                "landmark model input must be {0}×{0}, got {h}×{w}",
                self.input_size
            );
        }
        self.head
            .forward(&self.backbone.forward_map(x, mode)?, mode)
    }

    /// Backbone parameters (torchvision names) then head parameters (`head.*`).
    pub fn named_params(&self) -> Vec<(String, Var)> {
        let mut v = self.backbone.named_params();
        v.extend(self.head.named_params());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ResNetConfig};

    fn tiny(small_stem: bool) -> ResNet {
        let cfg = ResNetConfig {
            arch: Arch::Resnet18,
            width: 0.0625,
            small_stem,
            num_classes: None,
        };
        ResNet::new(&cfg, 1, &Device::Cpu).unwrap()
    }

    fn input(b: usize, s: usize) -> Tensor {
        let v: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu).unwrap()
    }

    #[test]
    fn map_size_matches_the_forward_pass() {
        for (small, s) in [
            (true, 32),
            (true, 20),
            (false, 64),
            (false, 48),
            (false, 37),
        ] {
            let net = tiny(small);
            let got = net.forward_map(&input(1, s), BnMode::Eval).unwrap().dims()[2];
            assert_eq!(
                feature_map_size(&net, s),
                Some(got),
                "small {small} size {s}"
            );
        }
    }

    #[test]
    fn shapes_names_and_input_check() {
        let m = LandmarkModel::new(tiny(true), 32, 3).unwrap();
        assert_eq!(m.head.map_size(), (4, 4));
        assert_eq!(
            m.forward(&input(2, 32), BnMode::Eval).unwrap().dims(),
            &[2, 10]
        );
        assert!(m.forward(&input(2, 24), BnMode::Eval).is_err());
        let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
        for n in [
            "conv1.weight",
            "layer4.1.bn2.bias",
            "head.conv.weight",
            "head.bn.weight",
            "head.fc.weight",
            "head.fc.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        assert_eq!(
            m.head.var("head.fc.weight").unwrap().as_tensor().dims(),
            &[10, 128 * 16]
        );
    }

    /// The eval-mode output of `m` on `x`, flattened.
    fn eval_out(m: &LandmarkModel, x: &Tensor) -> Vec<f32> {
        m.forward(x, BnMode::Eval)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Eval mode computes the head by hand: conv1×1, BN with running stats, leaky, fc (c,y,x order).
    #[test]
    fn eval_forward_matches_a_naive_head() {
        let m = LandmarkModel::new(tiny(true), 16, 5).unwrap();
        let dev = Device::Cpu;
        let set = |n: &str, v: Vec<f32>| {
            let var = m.head.var(n).unwrap();
            var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &dev).unwrap())
                .unwrap();
        };
        set(
            "head.bn.running_mean",
            (0..128).map(|i| (i as f32 - 64.0) / 200.0).collect(),
        );
        set(
            "head.bn.running_var",
            (0..128).map(|i| 0.5 + i as f32 / 100.0).collect(),
        );
        set(
            "head.bn.weight",
            (0..128).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect(),
        );
        set(
            "head.bn.bias",
            (0..128).map(|i| ((i % 5) as f32 - 2.0) / 10.0).collect(),
        );
        let x = input(1, 16);
        let map = m.backbone.forward_map(&x, BnMode::Eval).unwrap();
        let (_, c, h, w) = map.dims4().unwrap();
        let fm: Vec<f32> = map.flatten_all().unwrap().to_vec1().unwrap();
        let get = |n: &str| {
            m.head
                .var(n)
                .unwrap()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (cw, g, b, rm, rv, fw, fb) = (
            get("head.conv.weight"),
            get("head.bn.weight"),
            get("head.bn.bias"),
            get("head.bn.running_mean"),
            get("head.bn.running_var"),
            get("head.fc.weight"),
            get("head.fc.bias"),
        );
        let mut hidden = vec![0f64; 128 * h * w];
        for o in 0..128 {
            for p in 0..h * w {
                let s: f64 = (0..c)
                    .map(|i| cw[o * c + i] as f64 * fm[i * h * w + p] as f64)
                    .sum();
                let v =
                    (s - rm[o] as f64) / (rv[o] as f64 + 1e-5).sqrt() * g[o] as f64 + b[o] as f64;
                hidden[o * h * w + p] = if v >= 0.0 { v } else { 0.01 * v };
            }
        }
        let want: Vec<f64> = (0..10)
            .map(|k| {
                fb[k] as f64
                    + (0..hidden.len())
                        .map(|j| fw[k * hidden.len() + j] as f64 * hidden[j])
                        .sum::<f64>()
            })
            .collect();
        let got = eval_out(&m, &x);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }

    /// A head started at the mean face predicts exactly it, whatever the image and BN mode (the
    /// default fc init alone would add noise of a good fraction of the image: see the doc).
    #[test]
    fn started_head_predicts_the_mean_face() {
        let m = LandmarkModel::new(tiny(true), 16, 5).unwrap();
        let mean: Vec<f32> = (0..10).map(|k| 0.3 + k as f32 / 50.0).collect();
        let spread = |y: &Tensor| {
            let v: Vec<Vec<f32>> = y.to_vec2().unwrap();
            v.iter()
                .flatten()
                .zip(mean.iter().cycle())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        // Before: the default init is far from any chosen layout.
        assert!(spread(&m.forward(&input(4, 16), BnMode::Eval).unwrap()) > 0.05);
        m.head.start_at_mean_face(&mean).unwrap();
        for mode in [BnMode::Eval, BnMode::TRAIN] {
            assert!(spread(&m.forward(&input(4, 16), mode).unwrap()) < 1e-6);
        }
        assert!(m.head.start_at_mean_face(&mean[..9]).is_err());
    }

    #[test]
    fn train_mode_updates_running_stats_and_eval_does_not() {
        let m = LandmarkModel::new(tiny(true), 16, 5).unwrap();
        let rm = || {
            m.head
                .var("head.bn.running_mean")
                .unwrap()
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap()
        };
        let before = rm();
        m.forward(&input(2, 16), BnMode::Eval).unwrap();
        assert_eq!(rm(), before);
        let y = m.forward(&input(2, 16), BnMode::TRAIN).unwrap();
        assert_eq!(y.dims(), &[2, 10]);
        assert_ne!(rm(), before);
        let n = m
            .head
            .var("head.bn.num_batches_tracked")
            .unwrap()
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(n, 1);
        // Train mode with 2 BN groups on a batch of 3 is refused, not a panic.
        assert!(m
            .forward(&input(3, 16), BnMode::Train { groups: 2 })
            .is_err());
    }

    #[test]
    fn save_open_round_trip_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let m = LandmarkModel::new(tiny(false), 48, 9).unwrap();
        m.forward(&input(2, 48), BnMode::TRAIN).unwrap(); // non-trivial running stats
        let p = d.path().join("lm.safetensors");
        m.save(&p).unwrap();
        let back = LandmarkModel::open(&p, &Device::Cpu).unwrap();
        assert_eq!(back.meta(), m.meta());
        let x = input(1, 48);
        assert_eq!(eval_out(&m, &x), eval_out(&back, &x));
        for (n, t) in m.head.all_tensors() {
            let u = back
                .head
                .var(&n)
                .unwrap()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            assert_eq!(
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                u,
                "{n}"
            );
        }
        // A bare backbone is not a landmark model, and a landmark model is not a bare backbone.
        let bb = d.path().join("bb.safetensors");
        m.backbone.save_safetensors(&bb).unwrap();
        let e = LandmarkModel::open(&bb, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bb.safetensors") && e.contains("landmark"),
            "{e}"
        );
        assert!(ResNet::open(&p, &Device::Cpu).is_err());
    }
}
