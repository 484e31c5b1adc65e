//! Reference architectures with random weights, built with [`ModelBuilder`], for benchmarks,
//! footprint reports and tests: MLPerf Tiny's ResNet-8 (32×32×3, 16/32/64 filters, FC 10) and a
//! torchvision-shaped ResNet-18 (basic blocks 2-2-2-2, any input size and base width).
//!
//! Weights are He-initialised f32 from [`SplitMix64`], then (for int8) quantised per output
//! channel; the f32 model gets the *dequantised* weights, so both dtypes compute the same
//! function up to activation quantisation. Activation scales are fixed guesses (not
//! calibrated): this is about speed and memory, not accuracy.
//!
//! Needs the `zoo` cargo feature (off by default).

use alloc::vec::Vec;

use super::builder::{BuildError, LayerParams, ModelBuilder, Quant, TensorId};
use super::{Dtype, Task};
use crate::heads::rng::SplitMix64;

/// Activation quantisation used after ReLU (range [0, 16)) and elsewhere (range ±16): wide
/// enough that He-initialised random ResNets rarely saturate.
const Q_RELU: Quant = Quant {
    scale: 16.0 / 255.0,
    zp: -128,
};
const Q_LIN: Quant = Quant {
    scale: 16.0 / 127.0,
    zp: 0,
};

struct Gen {
    b: ModelBuilder,
    rng: SplitMix64,
    dtype: Dtype,
}

impl Gen {
    fn normal(&mut self) -> f32 {
        // Irwin–Hall(12) − 6: cheap, deterministic, close enough to N(0, 1) for random weights.
        (0..12).map(|_| self.rng.unit_f32()).sum::<f32>() - 6.0
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &mut self,
        name: &str,
        x: TensorId,
        out_c: usize,
        k: usize,
        stride: usize,
        pad: usize,
        relu: bool,
        fc: bool,
    ) -> Result<TensorId, BuildError> {
        let xd = self.b.desc(x)?;
        let fan_in = if fc { xd.len() } else { k * k * xd.c };
        // He init; the last conv of a residual branch is damped (as zero-init-residual does,
        // but not to zero) so activations do not grow block after block.
        let damp = if name.ends_with("conv2") { 0.3 } else { 1.0 };
        let std = damp * libm::sqrtf(2.0 / fan_in as f32);
        let w: Vec<f32> = (0..out_c * fan_in).map(|_| self.normal() * std).collect();
        let bias_f: Vec<f32> = (0..out_c).map(|_| 0.1 * self.normal()).collect();
        let out_q = if relu { Q_RELU } else { Q_LIN };
        let (wq, ws, bq, wdq);
        let p = match self.dtype {
            Dtype::Int8 => {
                let mut q = Vec::with_capacity(w.len());
                let mut s = Vec::with_capacity(out_c);
                let mut bi = Vec::with_capacity(out_c);
                for (oc, row) in w.chunks(fan_in).enumerate() {
                    let amax = row.iter().fold(1e-8f32, |m, v| m.max(v.abs()));
                    let sc = amax / 127.0;
                    q.extend(
                        row.iter()
                            .map(|v| libm::roundf(v / sc).clamp(-127.0, 127.0) as i8),
                    );
                    s.push(sc);
                    bi.push(libm::roundf(bias_f[oc] / (xd.scale * sc)) as i32);
                }
                (wq, ws, bq) = (q, s, bi);
                LayerParams::I8 {
                    weights: &wq,
                    w_scale: &ws,
                    bias: &bq,
                }
            }
            Dtype::F32 => {
                wdq = w;
                LayerParams::F32 {
                    weights: &wdq,
                    bias: &bias_f,
                }
            }
        };
        if fc {
            self.b.fc(name, x, out_c, relu, p, out_q)
        } else {
            self.b.conv(
                name,
                x,
                out_c,
                [k, k],
                [stride, stride],
                [pad; 4],
                relu,
                p,
                out_q,
            )
        }
    }

    fn conv(
        &mut self,
        name: &str,
        x: TensorId,
        out_c: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> Result<TensorId, BuildError> {
        self.layer(name, x, out_c, k, stride, k / 2, relu, false)
    }

    /// Basic block: conv3×3-ReLU-conv3×3, plus identity or 1×1 strided projection, add, ReLU.
    fn block(
        &mut self,
        name: &str,
        x: TensorId,
        out_c: usize,
        stride: usize,
    ) -> Result<TensorId, BuildError> {
        let in_c = self.b.desc(x)?.c;
        let h = self.conv(&alloc::format!("{name}.conv1"), x, out_c, 3, stride, true)?;
        let h = self.conv(&alloc::format!("{name}.conv2"), h, out_c, 3, 1, false)?;
        let sc = if stride != 1 || in_c != out_c {
            self.conv(
                &alloc::format!("{name}.downsample.0"),
                x,
                out_c,
                1,
                stride,
                false,
            )?
        } else {
            x
        };
        self.b.add(h, sc, true, Q_RELU)
    }
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const Q_INPUT: Quant = Quant {
    scale: 5.0 / 127.0,
    zp: 0,
};

/// MLPerf Tiny image-classification ResNet-8 (≈12.5 M MACs): 32×32×3 → 10 logits.
pub fn resnet8(dtype: Dtype, seed: u64) -> Result<ModelBuilder, BuildError> {
    let mut g = Gen {
        b: ModelBuilder::new(dtype, Task::Features),
        rng: SplitMix64::new(seed),
        dtype,
    };
    let x =
        g.b.input([32, 32, 3], &IMAGENET_MEAN, &IMAGENET_STD, Q_INPUT)?;
    let mut h = g.conv("conv1", x, 16, 3, 1, true)?;
    h = g.block("stack1", h, 16, 1)?;
    h = g.block("stack2", h, 32, 2)?;
    h = g.block("stack3", h, 64, 2)?;
    h = g.b.mean(h, Q_RELU)?;
    let y = g.layer("fc", h, 10, 1, 1, 0, false, true)?;
    g.b.output(y)?;
    Ok(g.b)
}

/// torchvision ResNet-18 layout at `px × px` input with base `width` (64 = standard): conv 7×7/2,
/// max pool 3×3/2, four stages of two basic blocks, global average pool → `8·width` features.
pub fn resnet18(
    dtype: Dtype,
    px: usize,
    width: usize,
    seed: u64,
) -> Result<ModelBuilder, BuildError> {
    let mut g = Gen {
        b: ModelBuilder::new(dtype, Task::Features),
        rng: SplitMix64::new(seed),
        dtype,
    };
    let x =
        g.b.input([px, px, 3], &IMAGENET_MEAN, &IMAGENET_STD, Q_INPUT)?;
    let mut h = g.conv("conv1", x, width, 7, 2, true)?;
    h = g.b.maxpool(h, [3, 3], [2, 2], [1; 4])?;
    for (stage, mult) in [1usize, 2, 4, 8].into_iter().enumerate() {
        for blk in 0..2 {
            let stride = if stage > 0 && blk == 0 { 2 } else { 1 };
            h = g.block(
                &alloc::format!("layer{}.{blk}", stage + 1),
                h,
                width * mult,
                stride,
            )?;
        }
    }
    let y = g.b.mean(h, Q_RELU)?;
    g.b.output(y)?;
    Ok(g.b)
}
