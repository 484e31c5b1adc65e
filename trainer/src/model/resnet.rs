//! The ResNet itself: torchvision's graph and parameter names, held in named `Var` maps.
//!
//! The network is described by a list of [`ConvSpec`]s / [`BlockSpec`]s (names, channels, strides)
//! that both the forward pass and other modules (the exporter folding BN into convs, say) walk, so
//! the graph is written down once.
use super::config::{BlockKind, ResNetConfig};
use super::ops::{self, BnTail};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;

/// How batch norm behaves in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    /// Normalise with the running statistics; nothing is updated.
    Eval,
    /// Normalise each of `groups` equal contiguous sub-batches with its own batch statistics and
    /// update the running statistics. `groups = 1` is ordinary BN; `groups = 8` emulates MoCo's
    /// shuffle-BN over 8 GPUs on one device.
    Train { groups: usize },
    /// As `Train`, for replica `replica` of a step whose batch is split over several replicas
    /// running at once (`train::replicas`): the running statistics are not updated here, where
    /// replicas would race on them, but held until [`ResNet::apply_replica_bn_stats`] averages
    /// every replica's, in replica order, and updates once, as one `Train` call on the whole
    /// batch would.
    TrainReplica { groups: usize, replica: usize },
}

impl BnMode {
    /// Ordinary training-mode BN (one group).
    pub const TRAIN: BnMode = BnMode::Train { groups: 1 };
}

/// One convolution followed by its batch norm (torchvision never has one without the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Parameter prefix of the conv, e.g. `layer1.0.conv1` or `layer2.0.downsample.0`.
    pub conv: String,
    /// Parameter prefix of its BN, e.g. `layer1.0.bn1` or `layer2.0.downsample.1`.
    pub bn: String,
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// One residual block: `relu(convs(x) + shortcut(x))`, with a ReLU between the convs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// e.g. `layer3.1`
    pub prefix: String,
    pub convs: Vec<ConvSpec>,
    /// 1×1 strided conv + BN when the shape changes; identity otherwise.
    pub downsample: Option<ConvSpec>,
}

/// Initialisation choices (torchvision's defaults unless changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    pub seed: u64,
    /// Zero the last BN gamma of each block (torchvision's `zero_init_residual`), so every block
    /// starts as the identity. Off by default, as in torchvision.
    pub zero_init_residual: bool,
}

impl InitOptions {
    pub fn seeded(seed: u64) -> Self {
        InitOptions {
            seed,
            zero_init_residual: false,
        }
    }
}

/// A ResNet-18/34/50 with torchvision's parameter names.
pub struct ResNet {
    config: ResNetConfig,
    device: Device,
    stem: ConvSpec,
    blocks: Vec<BlockSpec>,
    /// Trainable: conv weights, BN weight/bias, fc weight/bias.
    params: BTreeMap<String, Var>,
    /// BN `running_mean`, `running_var` (f32) and `num_batches_tracked` (i64 scalar, as torchvision).
    buffers: BTreeMap<String, Var>,
    /// Batch statistics of [`BnMode::TrainReplica`] forwards, by (replica, BN prefix), waiting
    /// for [`ResNet::apply_replica_bn_stats`].
    replica_bn_stats: std::sync::Mutex<BTreeMap<(usize, String), ops::BatchStats>>,
}

/// A summary, not the weights (which would be megabytes of numbers).
impl std::fmt::Debug for ResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self
            .params
            .values()
            .map(|v| v.as_tensor().elem_count())
            .sum();
        f.debug_struct("ResNet")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("trainable_params", &n)
            .finish()
    }
}

fn conv_spec(
    conv: String,
    bn: String,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
) -> ConvSpec {
    ConvSpec {
        conv,
        bn,
        in_ch,
        out_ch,
        kernel,
        stride,
        padding: kernel / 2,
    }
}

/// The network's graph for a config, in execution order: stem, then blocks of layer1..layer4.
fn build_graph(cfg: &ResNetConfig) -> (ConvSpec, Vec<BlockSpec>) {
    let widths = cfg.stage_widths();
    let stem_k = if cfg.small_stem { 3 } else { 7 };
    let stem_s = if cfg.small_stem { 1 } else { 2 };
    let stem = conv_spec(
        "conv1".into(),
        "bn1".into(),
        3,
        cfg.stem_width(),
        stem_k,
        stem_s,
    );
    let expansion = cfg.arch.expansion();
    let mut blocks = Vec::new();
    let mut in_ch = cfg.stem_width();
    for (stage, (&n, &w)) in cfg
        .arch
        .blocks_per_stage()
        .iter()
        .zip(widths.iter())
        .enumerate()
    {
        let out_ch = w * expansion;
        for i in 0..n {
            let stride = if i == 0 && stage > 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{}", stage + 1, i);
            let c = |j: usize| (format!("{prefix}.conv{j}"), format!("{prefix}.bn{j}"));
            let convs = match cfg.arch.block_kind() {
                BlockKind::Basic => {
                    let (c1, b1) = c(1);
                    let (c2, b2) = c(2);
                    vec![
                        conv_spec(c1, b1, in_ch, w, 3, stride),
                        conv_spec(c2, b2, w, w, 3, 1),
                    ]
                }
                // torchvision (v1.5) puts the stride on the 3×3 conv.
                BlockKind::Bottleneck => {
                    let (c1, b1) = c(1);
                    let (c2, b2) = c(2);
                    let (c3, b3) = c(3);
                    vec![
                        conv_spec(c1, b1, in_ch, w, 1, 1),
                        conv_spec(c2, b2, w, w, 3, stride),
                        conv_spec(c3, b3, w, out_ch, 1, 1),
                    ]
                }
            };
            let downsample = (stride != 1 || in_ch != out_ch).then(|| {
                conv_spec(
                    format!("{prefix}.downsample.0"),
                    format!("{prefix}.downsample.1"),
                    in_ch,
                    out_ch,
                    1,
                    stride,
                )
            });
            blocks.push(BlockSpec {
                prefix,
                convs,
                downsample,
            });
            in_ch = out_ch;
        }
    }
    (stem, blocks)
}

fn sample<D: Distribution<f32>>(seed: u64, name: &str, n: usize, dist: D) -> Vec<f32> {
    // Each tensor's stream is keyed by its name, so the initial weights do not change
    // when, say, `num_classes` does.
    let mut rng = crate::rng::init_stream(seed, name);
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}

impl ResNet {
    /// A freshly initialised network (torchvision init) from `seed`.
    pub fn new(config: &ResNetConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::with_init(config, InitOptions::seeded(seed), device)
    }

    /// torchvision's init: convs kaiming_normal_(mode=fan_out, relu), BN weight 1 / bias 0,
    /// running mean 0 / var 1, `fc` as `nn.Linear`'s default (uniform ±1/√fan_in for both).
    /// Every tensor is drawn from its own [`crate::rng::stream`], so the result is the same on
    /// any device and thread count.
    pub fn with_init(config: &ResNetConfig, init: InitOptions, device: &Device) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let (stem, blocks) = build_graph(config);
        let mut params = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        let f32_var = |data: Vec<f32>, shape: &[usize]| -> Result<Var> {
            Var::from_tensor(&Tensor::from_vec(data, shape, device)?)
        };
        let mut add_conv_bn = |spec: &ConvSpec, zero_gamma: bool| -> Result<()> {
            let (o, i, k) = (spec.out_ch, spec.in_ch, spec.kernel);
            let std = (2.0 / (o * k * k) as f32).sqrt();
            let dist =
                Normal::new(0.0f32, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let w = sample(init.seed, &spec.conv, o * i * k * k, dist);
            params.insert(format!("{}.weight", spec.conv), f32_var(w, &[o, i, k, k])?);
            let gamma = if zero_gamma { 0.0 } else { 1.0 };
            params.insert(
                format!("{}.weight", spec.bn),
                f32_var(vec![gamma; o], &[o])?,
            );
            params.insert(format!("{}.bias", spec.bn), f32_var(vec![0.0; o], &[o])?);
            buffers.insert(
                format!("{}.running_mean", spec.bn),
                f32_var(vec![0.0; o], &[o])?,
            );
            buffers.insert(
                format!("{}.running_var", spec.bn),
                f32_var(vec![1.0; o], &[o])?,
            );
            buffers.insert(
                format!("{}.num_batches_tracked", spec.bn),
                Var::from_tensor(&Tensor::zeros((), DType::I64, device)?)?,
            );
            Ok(())
        };
        add_conv_bn(&stem, false)?;
        for b in &blocks {
            let last = b.convs.len() - 1;
            for (j, c) in b.convs.iter().enumerate() {
                add_conv_bn(c, init.zero_init_residual && j == last)?;
            }
            if let Some(d) = &b.downsample {
                add_conv_bn(d, false)?;
            }
        }
        if let Some(n) = config.num_classes {
            let fan_in = config.feature_dim();
            let bound = 1.0 / (fan_in as f32).sqrt();
            let w = sample(
                init.seed,
                "fc.weight",
                n * fan_in,
                Uniform::new(-bound, bound),
            );
            let b = sample(init.seed, "fc.bias", n, Uniform::new(-bound, bound));
            params.insert("fc.weight".into(), f32_var(w, &[n, fan_in])?);
            params.insert("fc.bias".into(), f32_var(b, &[n])?);
        }
        Ok(ResNet {
            config: config.clone(),
            device: device.clone(),
            stem,
            blocks,
            params,
            buffers,
            replica_bn_stats: Default::default(),
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The stem conv + BN (`conv1`, `bn1`).
    pub fn stem(&self) -> &ConvSpec {
        &self.stem
    }

    /// Whether the stem is followed by the 3×3/2 max-pool (false for the small-image stem).
    pub fn has_maxpool(&self) -> bool {
        !self.config.small_stem
    }

    /// Residual blocks in execution order (layer1.0, layer1.1, …, layer4.last).
    pub fn blocks(&self) -> &[BlockSpec] {
        &self.blocks
    }

    /// Trainable parameters with torchvision names, sorted by name.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The trainable `Var`s alone (for an optimiser), in [`Self::named_params`] order.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.params.values().cloned().collect()
    }

    /// BN running statistics and `num_batches_tracked`, sorted by name.
    pub fn named_buffers(&self) -> Vec<(String, Var)> {
        self.buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every tensor of the model (params and buffers), sorted by name; what a checkpoint holds.
    /// The tensors are detached but share the variables' storage: a later training step shows
    /// through them (call `.copy()` for a snapshot).
    pub fn all_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .params
            .iter()
            .chain(self.buffers.iter())
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A parameter or buffer by its torchvision name.
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.params.get(name).or_else(|| self.buffers.get(name))
    }

    /// Copy every parameter and buffer from `other` (same config), e.g. to start MoCo's key
    /// encoder as a copy of the query encoder.
    pub fn copy_from(&self, other: &ResNet) -> Result<()> {
        if other.config != self.config {
            candle_core::bail!(
                "copy_from: configs differ ({:?} vs {:?})",
                self.config,
                other.config
            );
        }
        for (name, v) in self.params.iter().chain(self.buffers.iter()) {
            let src = other
                .var(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("copy_from: {name} missing")))?;
            v.set(&src.as_detached_tensor().to_device(&self.device)?.copy()?)?;
        }
        Ok(())
    }

    fn param(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("internal: parameter {name} missing")))
    }

    fn buffer(&self, name: &str) -> Result<&Var> {
        self.buffers
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("internal: buffer {name} missing")))
    }

    /// Batch norm `bn` on `x`; in training mode also updates that BN's running statistics
    /// (outside the autograd graph).
    ///
    /// `tail` (a ReLU, or the block's residual add and ReLU) follows the BN; in training mode on
    /// the CPU it is fused into the BN op ([`ops::batch_norm_train_tail`]).
    fn batch_norm(&self, x: &Tensor, bn: &str, mode: BnMode, tail: BnTail<'_>) -> Result<Tensor> {
        let gamma = self.param(&format!("{bn}.weight"))?;
        let beta = self.param(&format!("{bn}.bias"))?;
        let rm = self.buffer(&format!("{bn}.running_mean"))?;
        let rv = self.buffer(&format!("{bn}.running_var"))?;
        match mode {
            BnMode::Eval => tail.apply_unfused(ops::batch_norm_eval(
                x,
                gamma,
                beta,
                &rm.as_detached_tensor(),
                &rv.as_detached_tensor(),
            )?),
            BnMode::Train { groups } => {
                let (y, stats) = ops::batch_norm_train_tail(x, gamma, beta, groups, tail)?;
                self.update_running_stats(bn, &stats)?;
                Ok(y)
            }
            BnMode::TrainReplica { groups, replica } => {
                let (y, stats) = ops::batch_norm_train_tail(x, gamma, beta, groups, tail)?;
                self.replica_bn_stats
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("replica BN statistics poisoned".into()))?
                    .insert((replica, bn.to_owned()), stats);
                Ok(y)
            }
        }
    }

    /// PyTorch's running-statistics update of BN `bn` with one call's batch statistics.
    fn update_running_stats(&self, bn: &str, stats: &ops::BatchStats) -> Result<()> {
        ops::update_bn_buffers(
            self.buffer(&format!("{bn}.running_mean"))?,
            self.buffer(&format!("{bn}.running_var"))?,
            self.buffer(&format!("{bn}.num_batches_tracked"))?,
            stats,
        )
    }

    /// The batch statistics the step's [`BnMode::TrainReplica`] forwards held, by (replica, BN),
    /// taken out (the next step starts empty).
    pub fn take_replica_bn_stats(&self) -> Result<BTreeMap<(usize, String), ops::BatchStats>> {
        Ok(std::mem::take(&mut *self.replica_bn_stats.lock().map_err(
            |_| candle_core::Error::Msg("replica BN statistics poisoned".into()),
        )?))
    }

    /// After a step's `replicas` [`BnMode::TrainReplica`] forwards (their statistics `held`, of
    /// every replica, [`ResNet::take_replica_bn_stats`]): each BN's statistics averaged over the
    /// replicas in replica order (every replica holds the same number of equal BN groups, so this
    /// is the mean over all the groups, as `Train` computes it), then one running-statistics
    /// update. Errors unless every replica reported every BN it ran.
    pub fn apply_replica_bn_stats(
        &self,
        held: BTreeMap<(usize, String), ops::BatchStats>,
        replicas: usize,
    ) -> Result<()> {
        let bns: std::collections::BTreeSet<&String> = held.keys().map(|(_, bn)| bn).collect();
        for bn in bns {
            let per_replica = (0..replicas)
                .map(|r| {
                    held.get(&(r, bn.clone())).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "internal: replica {r} has no batch statistics for {bn}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let n = replicas as f64;
            let stats = ops::BatchStats {
                mean: (ops::sum_in_order(per_replica.iter().map(|s| &s.mean))? / n)?,
                var_unbiased: (ops::sum_in_order(per_replica.iter().map(|s| &s.var_unbiased))?
                    / n)?,
            };
            self.update_running_stats(bn, &stats)?;
        }
        Ok(())
    }

    /// `tail(bn(conv(x)))`.
    fn conv_bn(
        &self,
        x: &Tensor,
        spec: &ConvSpec,
        mode: BnMode,
        tail: BnTail<'_>,
    ) -> Result<Tensor> {
        let w = self.param(&format!("{}.weight", spec.conv))?;
        let y = ops::conv2d(x, w, spec.stride, spec.padding)?;
        self.batch_norm(&y, &spec.bn, mode, tail)
    }

    /// The last feature map, [B, C, h, w], before global pooling (what a dense head such as the
    /// landmark regressor reads). `x`: [B, 3, H, W], already normalised.
    pub fn forward_map(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.run_blocks(x, mode, |_, _| {})
    }

    /// The output of every stage (`layer1` … `layer4`), in order: the maps a perceptual distance
    /// compares (`analysis::similarity`). The last one is [`Self::forward_map`].
    pub fn forward_stage_maps(&self, x: &Tensor, mode: BnMode) -> Result<Vec<Tensor>> {
        let mut maps = Vec::new();
        let last = self.run_blocks(x, mode, |stage_end, h| {
            if stage_end {
                maps.push(h.clone());
            }
        })?;
        if maps.last().map(|m| m.dims()) != Some(last.dims()) {
            candle_core::bail!("internal: the last block does not end a stage");
        }
        Ok(maps)
    }

    /// Stem and blocks; `visit(ends_stage, h)` sees each block's output.
    fn run_blocks(
        &self,
        x: &Tensor,
        mode: BnMode,
        mut visit: impl FnMut(bool, &Tensor),
    ) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            candle_core::bail!(
                "ResNet input must have 3 channels, got shape {:?}",
                x.dims()
            );
        }
        let mut h = self.conv_bn(x, &self.stem, mode, BnTail::Relu)?;
        if self.has_maxpool() {
            h = ops::max_pool_3x3_s2_after_relu(&h)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let shortcut = match &block.downsample {
                Some(d) => self.conv_bn(&h, d, mode, BnTail::Identity)?,
                None => h.clone(),
            };
            let mut y = h;
            let last = block.convs.len() - 1;
            // relu(bn(conv)) between the convs; the last BN takes the residual add and ReLU.
            for (j, c) in block.convs.iter().enumerate() {
                let tail = if j < last {
                    BnTail::Relu
                } else {
                    BnTail::AddRelu(&shortcut)
                };
                y = self.conv_bn(&y, c, mode, tail)?;
            }
            h = y;
            let stage = |b: &BlockSpec| b.prefix.split('.').next().map(str::to_owned);
            let ends_stage = self
                .blocks
                .get(i + 1)
                .is_none_or(|next| stage(next) != stage(block));
            visit(ends_stage, &h);
        }
        Ok(h)
    }

    /// Pooled features [B, feature_dim]: after global average pool, before `fc`.
    pub fn forward_features(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        ops::global_avg_pool(&self.forward_map(x, mode)?)
    }

    /// `fc` logits [B, num_classes] when the config has a classifier, else the pooled features.
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let f = self.forward_features(x, mode)?;
        match self.config.num_classes {
            Some(_) => ops::linear(&f, self.param("fc.weight")?, self.param("fc.bias")?),
            None => Ok(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    fn tiny(arch: Arch, small_stem: bool, num_classes: Option<usize>) -> ResNetConfig {
        ResNetConfig {
            arch,
            width: 0.125,
            small_stem,
            num_classes,
        }
    }

    #[test]
    fn torchvision_names_and_counts() {
        let m = ResNet::new(
            &ResNetConfig {
                num_classes: Some(1000),
                ..ResNetConfig::new(Arch::Resnet18)
            },
            0,
            &Device::Cpu,
        )
        .unwrap();
        let names: Vec<String> = m.all_tensors().into_iter().map(|(n, _)| n).collect();
        for n in [
            "conv1.weight",
            "bn1.running_mean",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_var",
            "layer4.1.bn2.bias",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing");
        }
        assert!(!names.iter().any(|x| x == "layer1.0.downsample.0.weight"));
        // torchvision resnet18: 11,689,512 trainable parameters; state_dict = 20 convs + 20 BNs × 5
        // (weight, bias, running_mean, running_var, num_batches_tracked) + fc weight/bias = 122.
        let count: usize = m
            .named_params()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum();
        assert_eq!(count, 11_689_512);
        assert_eq!(names.len(), 122);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn resnet50_param_count_matches_torchvision() {
        let m = ResNet::new(
            &ResNetConfig {
                num_classes: Some(1000),
                ..ResNetConfig::new(Arch::Resnet50)
            },
            0,
            &Device::Cpu,
        )
        .unwrap();
        let count: usize = m
            .named_params()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum();
        assert_eq!(count, 25_557_032);
        // 53 convs + 53 BNs × 5 + 2 fc tensors.
        assert_eq!(m.all_tensors().len(), 320);
        // layer1.0 of the bottleneck needs a projection (64 → 256 channels) even with stride 1.
        assert!(m.var("layer1.0.downsample.0.weight").is_some());
        assert_eq!(
            m.var("layer3.0.conv2.weight").unwrap().as_tensor().dims(),
            &[256, 256, 3, 3]
        );
    }

    #[test]
    fn init_is_deterministic_and_kaiming_scaled() {
        let c = tiny(Arch::Resnet18, true, Some(5));
        let a = ResNet::new(&c, 3, &Device::Cpu).unwrap();
        let b = ResNet::new(&c, 3, &Device::Cpu).unwrap();
        let d = ResNet::new(&c, 4, &Device::Cpu).unwrap();
        let get = |m: &ResNet, n: &str| {
            m.var(n)
                .unwrap()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(
            get(&a, "layer3.0.conv1.weight"),
            get(&b, "layer3.0.conv1.weight")
        );
        assert_ne!(
            get(&a, "layer3.0.conv1.weight"),
            get(&d, "layer3.0.conv1.weight")
        );
        // Backbone init does not depend on the classifier.
        let e = ResNet::new(&tiny(Arch::Resnet18, true, None), 3, &Device::Cpu).unwrap();
        assert_eq!(
            get(&a, "layer3.0.conv1.weight"),
            get(&e, "layer3.0.conv1.weight")
        );
        // kaiming fan_out: std = sqrt(2 / (out·k·k)); layer4.0.conv2 has 64 outputs at width 1/8.
        let w = get(&a, "layer4.0.conv2.weight");
        let var = w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64;
        let expect = 2.0 / (64.0 * 9.0);
        assert!((var / expect - 1.0).abs() < 0.1, "var {var} vs {expect}");
        let fc = get(&a, "fc.weight");
        let bound = 1.0 / (64f32).sqrt();
        assert!(fc.iter().all(|x| x.abs() <= bound));
        assert_eq!(get(&a, "bn1.weight"), vec![1.0; 8]);
    }

    #[test]
    fn zero_init_residual_zeroes_last_bn_only() {
        let c = tiny(Arch::Resnet50, false, None);
        let m = ResNet::with_init(
            &c,
            InitOptions {
                seed: 1,
                zero_init_residual: true,
            },
            &Device::Cpu,
        )
        .unwrap();
        let sum = |n: &str| {
            m.var(n)
                .unwrap()
                .as_tensor()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(sum("layer1.0.bn3.weight"), 0.0);
        assert!(sum("layer1.0.bn2.weight") > 0.0);
        assert!(sum("layer1.0.downsample.1.weight") > 0.0);
    }

    #[test]
    fn output_shapes_for_both_stems() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &dev).unwrap();
        let m = ResNet::new(&tiny(Arch::Resnet18, true, Some(10)), 0, &dev).unwrap();
        assert_eq!(
            m.forward_map(&x, BnMode::Eval).unwrap().dims(),
            &[2, 64, 4, 4]
        );
        assert_eq!(
            m.forward_features(&x, BnMode::Eval).unwrap().dims(),
            &[2, 64]
        );
        assert_eq!(m.forward(&x, BnMode::Eval).unwrap().dims(), &[2, 10]);
        let m = ResNet::new(&tiny(Arch::Resnet50, false, None), 0, &dev).unwrap();
        let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &dev).unwrap();
        assert_eq!(
            m.forward_map(&x, BnMode::Eval).unwrap().dims(),
            &[1, 256, 2, 2]
        );
        assert_eq!(m.forward(&x, BnMode::Eval).unwrap().dims(), &[1, 256]);
        let bad = Tensor::zeros((1, 1, 32, 32), DType::F32, &dev).unwrap();
        assert!(m.forward(&bad, BnMode::Eval).is_err());
    }
}
