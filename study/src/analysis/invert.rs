//! Feature inversion with the deep image prior (paper §3, Figure 2; Ulyanov et al. 2018).
//!
//! Given an image `x₀` and a frozen backbone `f`, a randomly initialised convolutional generator
//! `r_θ` is optimised so that the backbone's features of its output match those of the image
//! (paper eq. 1): `min_θ E(f(r_θ(z₀)), f(x₀))`, `z₀` fixed spatial noise. What the reconstruction
//! keeps is what the features keep: the paper finds that contrastive backbones let the whole
//! image be reconstructed, while supervised ones lose regions.
//!
//! As in the paper's appendix D.1: `z₀ ∈ R^{H×W×32}` uniform in [0, 0.1]; an encoder–decoder of
//! Conv-BN-LeakyReLU blocks with 16, 32, 64, 128, 128, 128 channels and 7, 7, 5, 5, 3, 3 kernels,
//! each encoder level a strided `CD` block then a `C` block, each decoder level a `C` block then a
//! `CU` block (nearest 2× upsampling); Adam at lr 0.001; `E` the squared L2 distance, here divided
//! by `‖f(x₀)‖²` so that losses compare across backbones. The paper inverts 224 px images through
//! six levels; a small image gets `⌊log₂ side⌋ − 1` levels (at most six), so the bottleneck is
//! 2×2 or more, and the generator runs at the side rounded up to a multiple of `2^levels` and its
//! output is cropped. The features are the last stage's map before pooling (`layer4`, the
//! paper's "7 × 7 × 2048" at 224 px), or optionally the pooled vector.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng as _;

use trainer::augment::{eval_transform, AugmentConfig, IMAGENET_MEAN, IMAGENET_STD};
use trainer::model::{ops, BnMode, ResNet};
use trainer::rng::{purpose, stream};

/// Channels and kernel sizes of the generator's levels (paper appendix D.1).
const CHANNELS: [usize; 6] = [16, 32, 64, 128, 128, 128];
const KERNELS: [usize; 6] = [7, 7, 5, 5, 3, 3];
/// Channels of the input noise `z₀`.
const NOISE_CHANNELS: usize = 32;
const LEAKY_SLOPE: f64 = 0.2;

/// Which features are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureTarget {
    /// The last stage's map before global pooling (the paper's choice).
    Map,
    /// The globally pooled feature vector (what few-shot classifiers read).
    Pooled,
}

impl std::str::FromStr for FeatureTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "map" => Ok(Self::Map),
            "pooled" => Ok(Self::Pooled),
            o => Err(format!("{o:?}: expected map or pooled")),
        }
    }
}

/// Settings of one inversion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InvertConfig {
    /// Adam steps (paper: 3000).
    pub iterations: usize,
    /// Adam learning rate (paper: 0.001).
    pub lr: f64,
    /// Seeds the generator's weights and `z₀`.
    pub seed: u64,
    pub target: FeatureTarget,
    /// Record the loss every this many iterations (and at the first and last).
    pub log_every: usize,
}

impl InvertConfig {
    /// The paper's settings.
    pub fn paper(seed: u64) -> Self {
        Self {
            iterations: 3000,
            lr: 0.001,
            seed,
            target: FeatureTarget::Map,
            log_every: 100,
        }
    }
}

/// One Conv-BN-LeakyReLU block (the conv has no bias: the BN's shift replaces it).
struct ConvBn {
    w: Var,
    gamma: Var,
    beta: Var,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    fn new(
        rng: &mut trainer::rng::Rng,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            w: Var::from_tensor(&uniform_init(rng, &[c_out, c_in, k, k], dev)?)?,
            gamma: Var::ones(c_out, DType::F32, dev)?,
            beta: Var::zeros(c_out, DType::F32, dev)?,
            stride,
            pad: k / 2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::conv2d(x, self.w.as_tensor(), self.stride, self.pad)?;
        // Training-mode BN, as the deep image prior runs it (batch of one: statistics over the
        // map); the running statistics are never used.
        let (y, _) = ops::batch_norm_train(&y, self.gamma.as_tensor(), self.beta.as_tensor(), 1)?;
        Ok(y.maximum(&(&y * LEAKY_SLOPE)?)?)
    }

    fn vars(&self) -> [Var; 3] {
        [self.w.clone(), self.gamma.clone(), self.beta.clone()]
    }
}

/// PyTorch's default conv initialisation: uniform in ±1/√fan_in.
fn uniform_init(rng: &mut trainer::rng::Rng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let fan_in: usize = shape[1..].iter().product();
    let b = 1.0 / (fan_in as f32).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-b..b)).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// Nearest-neighbour 2× upsampling (plain tensor ops, so autograd sees it).
fn upsample2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// The deep-image-prior generator `r_θ` and its fixed input `z₀`.
pub struct DipGenerator {
    down: Vec<(ConvBn, ConvBn)>,
    up: Vec<(ConvBn, ConvBn)>,
    out_w: Var,
    out_b: Var,
    z: Tensor,
    side: usize,
}

impl DipGenerator {
    /// Levels for an image of `side` px: `⌊log₂ side⌋ − 1`, between 1 and 6.
    pub fn levels_for(side: usize) -> usize {
        ((usize::BITS - 1 - side.max(1).leading_zeros()) as usize)
            .saturating_sub(1)
            .clamp(1, CHANNELS.len())
    }

    /// A generator of `side × side` images, its weights and `z₀` drawn from `seed`.
    pub fn new(side: usize, seed: u64, dev: &Device) -> Result<Self> {
        if side < 4 {
            bail!("invert: images must be at least 4 px (got {side})");
        }
        let levels = Self::levels_for(side);
        let unit = 1 << levels;
        let work = side.div_ceil(unit) * unit;
        let mut rng = stream(seed, &[purpose::INVERT]);
        let mut down = Vec::new();
        let mut c_in = NOISE_CHANNELS;
        for l in 0..levels {
            let (c, k) = (CHANNELS[l], KERNELS[l]);
            down.push((
                ConvBn::new(&mut rng, c_in, c, k, 2, dev)?,
                ConvBn::new(&mut rng, c, c, k, 1, dev)?,
            ));
            c_in = c;
        }
        let mut up = Vec::new();
        for l in (0..levels).rev() {
            let (c, k) = (CHANNELS[l], KERNELS[l]);
            up.push((
                ConvBn::new(&mut rng, c_in, c, k, 1, dev)?,
                ConvBn::new(&mut rng, c, c, k, 1, dev)?,
            ));
            c_in = c;
        }
        let out_w = Var::from_tensor(&uniform_init(&mut rng, &[3, c_in, 1, 1], dev)?)?;
        let out_b = Var::zeros((1, 3, 1, 1), DType::F32, dev)?;
        let n = NOISE_CHANNELS * work * work;
        let z: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0..0.1)).collect();
        let z = Tensor::from_vec(z, (1, NOISE_CHANNELS, work, work), dev)?;
        Ok(Self {
            down,
            up,
            out_w,
            out_b,
            z,
            side,
        })
    }

    /// `r_θ(z₀)`: `[1, 3, side, side]`, pixels in (0, 1).
    pub fn forward(&self) -> Result<Tensor> {
        let mut h = self.z.clone();
        for (cd, c) in &self.down {
            h = c.forward(&cd.forward(&h)?)?;
        }
        for (c, cu) in &self.up {
            h = upsample2(&cu.forward(&c.forward(&h)?)?)?;
        }
        let y = ops::conv2d(&h, self.out_w.as_tensor(), 1, 0)?.broadcast_add(&self.out_b)?;
        // sigmoid, in plain ops so that autograd sees it
        let y = (y.neg()?.exp()? + 1.0)?.recip()?;
        Ok(y.narrow(2, 0, self.side)?.narrow(3, 0, self.side)?)
    }

    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self
            .down
            .iter()
            .chain(&self.up)
            .flat_map(|(a, b)| a.vars().into_iter().chain(b.vars()))
            .collect();
        v.extend([self.out_w.clone(), self.out_b.clone()]);
        v
    }
}

/// Adam (Kingma & Ba 2015, no weight decay), one pass over each variable's values per step.
///
/// Why not candle-nn's `AdamW`: it runs about a dozen tensor ops per variable per step, each
/// allocating a new buffer; over the generator's 1.5 M parameters that was 60% of an
/// inversion's time. This is the same formula on plain slices (tested against `AdamW`).
pub struct Adam {
    vars: Vec<Var>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    lr: f64,
    t: i32,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    pub fn new(vars: Vec<Var>, lr: f64) -> Self {
        let zeros = |v: &Var| vec![0f32; v.elem_count()];
        Self {
            m: vars.iter().map(zeros).collect(),
            v: vars.iter().map(zeros).collect(),
            vars,
            lr,
            t: 0,
        }
    }

    /// Backpropagates `loss` and updates every variable (one with no gradient is left as is).
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.t += 1;
        let (b1, b2) = (Self::BETA1, Self::BETA2);
        let step = self.lr * (1.0 - b2.powi(self.t)).sqrt() / (1.0 - b1.powi(self.t));
        let (b1, b2, step, eps) = (b1 as f32, b2 as f32, step as f32, Self::EPS as f32);
        // ε is added to √v̂ = √v / √(1 − β₂ᵗ): in terms of √v that is ε·√(1 − β₂ᵗ).
        let eps_hat = eps * (1.0 - Self::BETA2.powi(self.t)).sqrt() as f32;
        for ((var, m), v) in self.vars.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            // Zipped iterators: no bounds checks, so the loop vectorises.
            for (((t, m), v), g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&g) {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *t -= step * *m / (v.sqrt() + eps_hat);
            }
            var.set(&Tensor::from_vec(theta, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Pixels in [0, 1] → the backbones' input normalisation.
fn normalise(x: &Tensor) -> Result<Tensor> {
    let dev = x.device();
    let mean = Tensor::from_slice(&IMAGENET_MEAN, (1, 3, 1, 1), dev)?;
    let std = Tensor::from_slice(&IMAGENET_STD, (1, 3, 1, 1), dev)?;
    Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

/// An image as the inversion sees it: the eval transform at `side` px.
#[derive(Debug, Clone)]
pub struct InversionInput {
    pub side: usize,
    /// Planar `[3, side, side]` pixels in [0, 1].
    pub pixels: Vec<f32>,
}

impl InversionInput {
    /// The evaluation transform (stretch to `side`), as the backbones saw images in evaluation.
    pub fn from_image(img: &image::RgbImage, side: usize) -> Result<Self> {
        let cfg = AugmentConfig::none(side);
        let a = eval_transform(img, None, &cfg)?;
        let n = side * side;
        let mut pixels = a.pixels;
        for c in 0..3 {
            pixels[c * n..(c + 1) * n]
                .iter_mut()
                .for_each(|v| *v = *v * cfg.std[c] + cfg.mean[c]);
        }
        Ok(Self { side, pixels })
    }

    /// `[1, 3, side, side]` pixels in [0, 1].
    pub fn tensor(&self, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.pixels,
            (1, 3, self.side, self.side),
            dev,
        )?)
    }

    /// Normalised, as the backbones take it.
    pub fn normalised(&self, dev: &Device) -> Result<Tensor> {
        normalise(&self.tensor(dev)?)
    }
}

/// What one inversion produced.
#[derive(Debug, Clone)]
pub struct Inversion {
    /// Planar `[3, side, side]` reconstruction in [0, 1].
    pub reconstruction: Vec<f32>,
    /// (iteration, relative feature loss) at iteration 0, every `log_every`, and after the last.
    pub losses: Vec<(usize, f64)>,
}

impl Inversion {
    pub fn initial_loss(&self) -> f64 {
        self.losses.first().map_or(f64::NAN, |l| l.1)
    }

    pub fn final_loss(&self) -> f64 {
        self.losses.last().map_or(f64::NAN, |l| l.1)
    }
}

fn features(net: &ResNet, x: &Tensor, target: FeatureTarget) -> Result<Tensor> {
    let x = normalise(x)?;
    Ok(match target {
        FeatureTarget::Map => net.forward_map(&x, BnMode::Eval)?,
        FeatureTarget::Pooled => net.forward_features(&x, BnMode::Eval)?,
    })
}

/// Inverts `net`'s features of `input` (eval-mode BN; the backbone is never updated).
/// `on_iter(i, loss)` is called after each step (progress bars).
pub fn invert(
    net: &ResNet,
    input: &InversionInput,
    cfg: &InvertConfig,
    on_iter: &mut dyn FnMut(usize, f64),
) -> Result<Inversion> {
    if cfg.iterations == 0 {
        bail!("invert: need at least one iteration");
    }
    let dev = net.device().clone();
    let target = features(net, &input.tensor(&dev)?, cfg.target)?.detach();
    let norm = target.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    if !norm.is_finite() || norm <= 0.0 {
        bail!("invert: the backbone's features of this image are all zero; nothing to match");
    }
    let gen = DipGenerator::new(input.side, cfg.seed, &dev)?;
    let mut opt = Adam::new(gen.vars(), cfg.lr);
    let loss_of = |x: &Tensor| -> Result<Tensor> {
        let f = features(net, x, cfg.target)?;
        Ok(((f - &target)?.sqr()?.sum_all()? / norm)?)
    };
    let mut losses = Vec::new();
    let every = cfg.log_every.max(1);
    for i in 0..cfg.iterations {
        let loss = loss_of(&gen.forward()?).context("inversion forward pass")?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("invert: the loss is {l} at iteration {i}");
        }
        if i % every == 0 {
            losses.push((i, l));
        }
        opt.backward_step(&loss)?;
        on_iter(i + 1, l);
    }
    let x = gen.forward()?;
    losses.push((cfg.iterations, loss_of(&x)?.to_scalar::<f32>()? as f64));
    let reconstruction = x.flatten_all()?.to_vec1::<f32>()?;
    Ok(Inversion {
        reconstruction,
        losses,
    })
}

/// How close a reconstruction is to its image (see [`super::similarity`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReconstructionScores {
    pub ssim: f64,
    pub ssim_worst_quarter: f64,
    pub random_feature_distance: f64,
}

/// Scores `reconstruction` against `input`.
pub fn score(
    input: &InversionInput,
    reconstruction: &[f32],
    dist: &super::similarity::RandomFeatureDistance,
    dev: &Device,
) -> Result<ReconstructionScores> {
    let s = super::similarity::ssim(&input.pixels, reconstruction, input.side, input.side)?;
    let rec = Tensor::from_slice(reconstruction, (1, 3, input.side, input.side), dev)?;
    let d = dist.distance(&input.normalised(dev)?, &normalise(&rec)?)?;
    Ok(ReconstructionScores {
        ssim: s.mean,
        ssim_worst_quarter: s.worst_quarter,
        random_feature_distance: d,
    })
}

/// Planar `[3, side, side]` pixels in [0, 1] as an RGB image.
pub fn to_rgb(pixels: &[f32], side: usize) -> Result<image::RgbImage> {
    if pixels.len() != 3 * side * side {
        bail!("to_rgb: {} values for a {side}×{side} image", pixels.len());
    }
    let n = side * side;
    let px = |c: usize, i: usize| (pixels[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(image::RgbImage::from_fn(
        side as u32,
        side as u32,
        |x, y| {
            let i = y as usize * side + x as usize;
            image::Rgb([px(0, i), px(1, i), px(2, i)])
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;
    use trainer::model::{Arch, ResNetConfig};

    fn mean_sq(t: &Tensor) -> f64 {
        let m = t
            .sqr()
            .unwrap()
            .flatten_all()
            .unwrap()
            .mean(D::Minus1)
            .unwrap();
        m.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn adam_matches_candle_nns_adamw_without_weight_decay() {
        use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
        let dev = Device::Cpu;
        let init =
            Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0, 3.0, -0.25], (2, 3), &dev).unwrap();
        let target = Tensor::from_vec(vec![1f32, 2.0, -1.0, 0.5, 0.0, 1.0], (2, 3), &dev).unwrap();
        let (a, b) = (
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
        );
        let loss = |x: &Var| {
            // A loss with different gradient scales per element.
            let d = (x.as_tensor() - &target).unwrap();
            (d.sqr().unwrap().sum_all().unwrap() + d.sum_all().unwrap().sqr().unwrap()).unwrap()
        };
        let mut ours = Adam::new(vec![a.clone()], 0.05);
        let params = ParamsAdamW {
            lr: 0.05,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut theirs = AdamW::new(vec![b.clone()], params).unwrap();
        for _ in 0..50 {
            ours.backward_step(&loss(&a)).unwrap();
            theirs.backward_step(&loss(&b)).unwrap();
        }
        let (x, y): (Vec<f32>, Vec<f32>) = (
            a.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            b.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
        );
        // Same formula, different f32 operation order: equal to a few ulps per step.
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-4, "{x:?} vs {y:?}");
        }
        assert_ne!(x, init.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn levels_keep_the_bottleneck_at_two_pixels_or_more() {
        assert_eq!(DipGenerator::levels_for(16), 3);
        assert_eq!(DipGenerator::levels_for(32), 4);
        assert_eq!(DipGenerator::levels_for(84), 5);
        assert_eq!(DipGenerator::levels_for(224), 6);
        assert_eq!(DipGenerator::levels_for(4), 1);
    }

    #[test]
    fn upsampling_repeats_each_pixel_in_a_2x2_block() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y: Vec<f32> = upsample2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            y,
            [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
    }

    #[test]
    fn generator_output_has_the_image_shape_for_odd_sides() {
        for side in [12, 21, 32] {
            let g = DipGenerator::new(side, 1, &Device::Cpu).unwrap();
            let y = g.forward().unwrap();
            assert_eq!(y.dims(), [1, 3, side, side]);
            let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }

    #[test]
    fn the_inversion_loss_falls_and_is_seeded() {
        let dev = Device::Cpu;
        let cfg = ResNetConfig {
            arch: Arch::Resnet18,
            width: 0.0625,
            small_stem: true,
            num_classes: None,
        };
        let net = ResNet::new(&cfg, 3, &dev).unwrap();
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, if x > 8 { 200 } else { 30 }])
        });
        let input = InversionInput::from_image(&img, 16).unwrap();
        let c = InvertConfig {
            iterations: 40,
            lr: 0.01,
            seed: 5,
            target: FeatureTarget::Map,
            log_every: 10,
        };
        let mut calls = 0;
        let a = invert(&net, &input, &c, &mut |_, _| calls += 1).unwrap();
        assert_eq!(calls, 40);
        assert_eq!(
            a.losses.iter().map(|l| l.0).collect::<Vec<_>>(),
            [0, 10, 20, 30, 40]
        );
        assert!(a.final_loss() < 0.5 * a.initial_loss(), "{:?}", a.losses);
        let b = invert(&net, &input, &c, &mut |_, _| {}).unwrap();
        assert_eq!(a.reconstruction, b.reconstruction);
        // The relative loss is exactly the formula on the final reconstruction.
        let rec = Tensor::from_slice(&a.reconstruction, (1, 3, 16, 16), &dev).unwrap();
        let (f, f0) = (
            features(&net, &rec, c.target).unwrap(),
            features(&net, &input.tensor(&dev).unwrap(), c.target).unwrap(),
        );
        let want = mean_sq(&(f - &f0).unwrap()) / mean_sq(&f0);
        assert!(
            (a.final_loss() - want).abs() < 1e-5 * want.max(1e-3),
            "{} {want}",
            a.final_loss()
        );
    }

    #[test]
    fn to_rgb_round_trips_the_eval_transform_at_the_same_size() {
        let img =
            image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 7]));
        let input = InversionInput::from_image(&img, 8).unwrap();
        assert_eq!(to_rgb(&input.pixels, 8).unwrap(), img);
    }
}
