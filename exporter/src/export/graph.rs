//! The exporter's intermediate graph: the model after BN folding, in f32, in PyTorch layouts.
//!
//! One graph serves three purposes, so the network is walked once ([`super::fold`]):
//! 1. [`Graph::eval`] runs it with candle (NCHW, batched) and returns every tensor — what
//!    calibration measures and what the folding tests compare with the unfolded model;
//! 2. [`Graph::emit`] writes it with runtime-core's `ModelBuilder`, in f32 or int8, permuting
//!    to the runtime's layouts on the way (OIHW → OHWI conv weights, CHW → HWC fc inputs);
//! 3. its tensor list is the index calibration ranges and quantisation parameters refer to.
use candle_core::{Device, Tensor};
use runtime_core::{Dtype, LayerParams, ModelBuilder, Quant, Task, TensorId};

use super::quantize::{quantize_bias, quantize_per_channel};
use super::ExportError;

/// Shape of an activation, `[C, H, W]` (batch excluded).
pub type Shape = [usize; 3];

/// One op. `input`/`out` index [`Graph::shapes`]; tensor 0 is the model input.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Conv with folded bias. `w`: OIHW. Square kernel, symmetric padding (all ResNet convs).
    Conv {
        name: String,
        input: usize,
        out: usize,
        w: Vec<f32>,
        b: Vec<f32>,
        k: usize,
        stride: usize,
        pad: usize,
        relu: bool,
    },
    /// Max pool `k×k`, stride, symmetric padding that never wins the max (PyTorch's −∞ padding).
    MaxPool {
        input: usize,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
    /// `a + b`, then ReLU if `relu`.
    Add {
        a: usize,
        b: usize,
        out: usize,
        relu: bool,
    },
    /// Global average pool to `[C, 1, 1]`.
    Mean { input: usize, out: usize },
    /// LeakyReLU with slope `alpha`.
    Leaky {
        input: usize,
        out: usize,
        alpha: f32,
    },
    /// Linear over the input flattened in PyTorch's `(c, y, x)` order; `w`: `[O, C·H·W]`.
    Fc {
        name: String,
        input: usize,
        out: usize,
        w: Vec<f32>,
        b: Vec<f32>,
    },
}

/// A folded network: ops in execution order over tensors `0..shapes.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub task: Task,
    pub shapes: Vec<Shape>,
    pub ops: Vec<Op>,
    pub output: usize,
    /// Input normalisation on [0, 1] pixels (recorded in the model file).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn out_dim(n: usize, k: usize, s: usize, p: usize) -> Result<usize, ExportError> {
    (n + 2 * p)
        .checked_sub(k)
        .map(|v| v / s + 1)
        .ok_or_else(|| {
            ExportError::Graph(format!("a {k}×{k} window does not fit a {n}-pixel side"))
        })
}

/// Builds a [`Graph`], tracking shapes as ops are appended.
#[derive(Debug)]
pub struct GraphBuilder {
    g: Graph,
}

impl GraphBuilder {
    pub fn new(task: Task, input: Shape, mean: [f32; 3], std: [f32; 3]) -> Self {
        GraphBuilder {
            g: Graph {
                task,
                shapes: vec![input],
                ops: Vec::new(),
                output: 0,
                mean,
                std,
            },
        }
    }

    pub fn shape(&self, t: usize) -> Shape {
        self.g.shapes[t]
    }

    fn push(&mut self, shape: Shape, op: Op) -> usize {
        self.g.shapes.push(shape);
        self.g.ops.push(op);
        self.g.shapes.len() - 1
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        input: usize,
        w: Vec<f32>,
        b: Vec<f32>,
        k: usize,
        stride: usize,
        pad: usize,
        relu: bool,
    ) -> Result<usize, ExportError> {
        let [c, h, wd] = self.shape(input);
        let oc = b.len();
        if w.len() != oc * c * k * k {
            return Err(ExportError::Graph(format!(
                "{name}: weight has {} values, expected {oc}×{c}×{k}×{k}",
                w.len()
            )));
        }
        let shape = [
            oc,
            out_dim(h, k, stride, pad)?,
            out_dim(wd, k, stride, pad)?,
        ];
        Ok(self.push(
            shape,
            Op::Conv {
                name: name.into(),
                input,
                out: 0,
                w,
                b,
                k,
                stride,
                pad,
                relu,
            },
        ))
    }

    pub fn maxpool(
        &mut self,
        input: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<usize, ExportError> {
        let [c, h, w] = self.shape(input);
        let shape = [c, out_dim(h, k, stride, pad)?, out_dim(w, k, stride, pad)?];
        Ok(self.push(
            shape,
            Op::MaxPool {
                input,
                out: 0,
                k,
                stride,
                pad,
            },
        ))
    }

    pub fn add(&mut self, a: usize, b: usize, relu: bool) -> Result<usize, ExportError> {
        if self.shape(a) != self.shape(b) {
            return Err(ExportError::Graph(format!(
                "add of shapes {:?} and {:?}",
                self.shape(a),
                self.shape(b)
            )));
        }
        Ok(self.push(self.shape(a), Op::Add { a, b, out: 0, relu }))
    }

    pub fn mean(&mut self, input: usize) -> usize {
        let [c, _, _] = self.shape(input);
        self.push([c, 1, 1], Op::Mean { input, out: 0 })
    }

    pub fn leaky(&mut self, input: usize, alpha: f32) -> usize {
        self.push(
            self.shape(input),
            Op::Leaky {
                input,
                out: 0,
                alpha,
            },
        )
    }

    pub fn fc(
        &mut self,
        name: &str,
        input: usize,
        w: Vec<f32>,
        b: Vec<f32>,
    ) -> Result<usize, ExportError> {
        let [c, h, wd] = self.shape(input);
        if w.len() != b.len() * c * h * wd {
            return Err(ExportError::Graph(format!(
                "{name}: weight has {} values, expected {}×{}",
                w.len(),
                b.len(),
                c * h * wd
            )));
        }
        Ok(self.push(
            [b.len(), 1, 1],
            Op::Fc {
                name: name.into(),
                input,
                out: 0,
                w,
                b,
            },
        ))
    }

    /// Finishes with `output` as the model output; fills each op's `out` index.
    pub fn finish(mut self, output: usize) -> Graph {
        for (i, op) in self.g.ops.iter_mut().enumerate() {
            let o = i + 1;
            match op {
                Op::Conv { out, .. }
                | Op::MaxPool { out, .. }
                | Op::Add { out, .. }
                | Op::Mean { out, .. }
                | Op::Leaky { out, .. }
                | Op::Fc { out, .. } => *out = o,
            }
        }
        self.g.output = output;
        self.g
    }
}

impl Op {
    /// The tensor this op writes.
    pub fn out(&self) -> usize {
        match self {
            Op::Conv { out, .. }
            | Op::MaxPool { out, .. }
            | Op::Add { out, .. }
            | Op::Mean { out, .. }
            | Op::Leaky { out, .. }
            | Op::Fc { out, .. } => *out,
        }
    }
}

fn t(v: &[f32], shape: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, shape, dev)
}

impl Graph {
    /// Runs the graph on `x` ([B, C, H, W], normalised) with candle; returns every tensor
    /// (index = tensor id, batch first).
    pub fn eval(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let dev = x.device();
        let mut v: Vec<Tensor> = vec![x.clone()];
        for op in &self.ops {
            let y = match op {
                Op::Conv {
                    input,
                    w,
                    b,
                    k,
                    stride,
                    pad,
                    relu,
                    ..
                } => {
                    let ic = self.shapes[*input][0];
                    let y = v[*input]
                        .conv2d(&t(w, &[b.len(), ic, *k, *k], dev)?, *pad, *stride, 1, 1)?
                        .broadcast_add(&t(b, &[1, b.len(), 1, 1], dev)?)?;
                    if *relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Op::MaxPool {
                    input,
                    k,
                    stride,
                    pad,
                    ..
                } => {
                    // Replicating the border is the same as −∞ padding for a max: every window
                    // that reaches into the padding also covers the border pixel it replicates
                    // (pad < k).
                    v[*input]
                        .pad_with_same(3, *pad, *pad)?
                        .pad_with_same(2, *pad, *pad)?
                        .max_pool2d_with_stride(*k, *stride)?
                }
                Op::Add { a, b, relu, .. } => {
                    let y = (&v[*a] + &v[*b])?;
                    if *relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Op::Mean { input, .. } => v[*input].mean_keepdim(3)?.mean_keepdim(2)?,
                Op::Leaky { input, alpha, .. } => {
                    candle_nn::ops::leaky_relu(&v[*input], *alpha as f64)?
                }
                Op::Fc { input, w, b, .. } => {
                    let xf = v[*input].flatten_from(1)?;
                    let y = xf
                        .matmul(&t(w, &[b.len(), xf.dim(1)?], dev)?.t()?)?
                        .broadcast_add(&t(b, &[b.len()], dev)?)?;
                    y.reshape((y.dim(0)?, b.len(), 1, 1))?
                }
            };
            v.push(y);
        }
        Ok(v)
    }

    /// Number of conv/fc layers.
    pub fn layer_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Conv { .. } | Op::Fc { .. }))
            .count()
    }

    /// Writes the graph with runtime-core's builder. `quant` (one per tensor) is required for
    /// int8 and ignored for f32; returns the builder and the number of biases that had to be
    /// clamped to the runtime's ±2³⁰ (0 in any sane model).
    pub fn emit(
        &self,
        dtype: Dtype,
        quant: Option<&[Quant]>,
    ) -> Result<(ModelBuilder, usize), ExportError> {
        let q = |i: usize| -> Result<Quant, ExportError> {
            match dtype {
                Dtype::F32 => Ok(Quant::NONE),
                Dtype::Int8 => quant
                    .and_then(|q| q.get(i))
                    .copied()
                    .ok_or_else(|| ExportError::Graph(format!("no quantisation for tensor {i}"))),
            }
        };
        let be = |e: runtime_core::BuildError| ExportError::Build(e.to_string());
        let mut mb = ModelBuilder::new(dtype, self.task).with_weight_scales();
        let [c, h, w] = self.shapes[0];
        let mut ids: Vec<TensorId> = vec![mb
            .input([h, w, c], &self.mean, &self.std, q(0)?)
            .map_err(be)?];
        let mut clamped = 0usize;
        // Converts f32 weights (out channel outermost, runtime layout) into layer parameters.
        let mut layer = |w: Vec<f32>,
                         b: &[f32],
                         in_scale: f32,
                         f: &mut dyn FnMut(LayerParams) -> Result<TensorId, ExportError>|
         -> Result<TensorId, ExportError> {
            match dtype {
                Dtype::F32 => f(LayerParams::F32 {
                    weights: &w,
                    bias: b,
                }),
                Dtype::Int8 => {
                    let (wq, ws) = quantize_per_channel(&w, b.len());
                    let (bq, n) = quantize_bias(b, in_scale, &ws);
                    clamped += n;
                    f(LayerParams::I8 {
                        weights: &wq,
                        w_scale: &ws,
                        bias: &bq,
                    })
                }
            }
        };
        for op in &self.ops {
            let id = match op {
                Op::Conv {
                    name,
                    input,
                    out,
                    w,
                    b,
                    k,
                    stride,
                    pad,
                    relu,
                } => {
                    let ic = self.shapes[*input][0];
                    let x = ids[*input];
                    let oq = q(*out)?;
                    let in_scale = q(*input)?.scale;
                    layer(oihw_to_ohwi(w, b.len(), ic, *k), b, in_scale, &mut |p| {
                        mb.conv(
                            name,
                            x,
                            b.len(),
                            [*k, *k],
                            [*stride, *stride],
                            [*pad; 4],
                            *relu,
                            p,
                            oq,
                        )
                        .map_err(be)
                    })?
                }
                Op::Fc {
                    name,
                    input,
                    out,
                    w,
                    b,
                } => {
                    let [c, h, wd] = self.shapes[*input];
                    let x = ids[*input];
                    let oq = q(*out)?;
                    let in_scale = q(*input)?.scale;
                    layer(
                        chw_to_hwc_rows(w, b.len(), c, h, wd),
                        b,
                        in_scale,
                        &mut |p| mb.fc(name, x, b.len(), false, p, oq).map_err(be),
                    )?
                }
                Op::MaxPool {
                    input,
                    k,
                    stride,
                    pad,
                    ..
                } => mb
                    .maxpool(ids[*input], [*k, *k], [*stride, *stride], [*pad; 4])
                    .map_err(be)?,
                Op::Add { a, b, out, relu } => {
                    mb.add(ids[*a], ids[*b], *relu, q(*out)?).map_err(be)?
                }
                Op::Mean { input, out } => mb.mean(ids[*input], q(*out)?).map_err(be)?,
                Op::Leaky { input, out, alpha } => {
                    mb.leaky_relu(ids[*input], *alpha, q(*out)?).map_err(be)?
                }
            };
            ids.push(id);
        }
        mb.output(ids[self.output]).map_err(be)?;
        Ok((mb, clamped))
    }
}

/// PyTorch conv weights `[O][I][K][K]` → the runtime's `[O][K][K][I]`.
pub fn oihw_to_ohwi(w: &[f32], o: usize, i: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for oc in 0..o {
        for ic in 0..i {
            for y in 0..k {
                for x in 0..k {
                    out[((oc * k + y) * k + x) * i + ic] = w[((oc * i + ic) * k + y) * k + x];
                }
            }
        }
    }
    out
}

/// fc weights over a `(c, y, x)`-flattened input → over the runtime's `(y, x, c)` flattening.
pub fn chw_to_hwc_rows(w: &[f32], o: usize, c: usize, h: usize, wd: usize) -> Vec<f32> {
    let n = c * h * wd;
    let mut out = vec![0f32; w.len()];
    for r in 0..o {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..wd {
                    out[r * n + (y * wd + x) * c + ch] = w[r * n + (ch * h + y) * wd + x];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_permutations_by_hand() {
        // o=1, i=2, k=2: OIHW [a00 a01 a10 a11 | b00 b01 b10 b11] → OHWI [a00 b00 a01 b01 a10 b10 a11 b11].
        let w = [1., 2., 3., 4., 10., 20., 30., 40.];
        assert_eq!(
            oihw_to_ohwi(&w, 1, 2, 2),
            vec![1., 10., 2., 20., 3., 30., 4., 40.]
        );
        // c=2, h=1, w=2: CHW [c0x0 c0x1 c1x0 c1x1] → HWC [c0x0 c1x0 c0x1 c1x1], per row.
        let f = [1., 2., 3., 4., 5., 6., 7., 8.];
        assert_eq!(
            chw_to_hwc_rows(&f, 2, 2, 1, 2),
            vec![1., 3., 2., 4., 5., 7., 6., 8.]
        );
    }

    #[test]
    fn maxpool_padding_never_wins() {
        // A negative image: zero padding would give 0 at the border, −∞ padding the real max.
        let mut b = GraphBuilder::new(Task::Features, [1, 2, 2], [0.0; 3], [1.0; 3]);
        let p = b.maxpool(0, 3, 2, 1).unwrap();
        let g = b.finish(p);
        let x = Tensor::from_vec(vec![-4f32, -3., -2., -1.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = g.eval(&x).unwrap()[1]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![-1.0]);
    }
}
