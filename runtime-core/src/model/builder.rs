//! `ModelBuilder`: the one way to write a model file, used by the host exporter and by tests.
//!
//! The caller supplies quantised weights with their per-channel scales and the real scale/zero
//! point of every activation; the builder derives every fixed-point multiplier with
//! [`quantize_multiplier`] (so the requantisation recipe lives in one place), writes the graph
//! text of `FORMAT.md`, serialises a safetensors container, and finally re-loads it with
//! [`Model::parse`] so a builder can never emit a file the runtime rejects.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Dtype, Model, ModelError, Task, TensorDesc, FORMAT_VERSION, GRAPH_KEY};
use crate::ops::add::ADD_LEFT_SHIFT;
use crate::ops::requant::quantize_multiplier;
use crate::ops::Window;

/// Real-valued quantisation of an activation: `real = scale · (q − zp)`. Ignored for f32 models.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quant {
    pub scale: f32,
    pub zp: i32,
}

impl Quant {
    /// Placeholder for f32 models, where activations are not quantised.
    pub const NONE: Quant = Quant { scale: 1.0, zp: 0 };
}

/// The quantisation of every int8 softmax output: probabilities in steps of 1/256 from −128.
pub const SOFTMAX_OUTPUT: Quant = Quant {
    scale: 1.0 / 256.0,
    zp: -128,
};

/// An activation tensor of the model being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorId(pub u16);

/// Parameters of a conv or fc layer, in the model's dtype. Weights are OHWI (conv) or
/// `[out][in]` with the input flattened in HWC order (fc).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LayerParams<'x> {
    /// Symmetric int8 weights in [−127, 127] with one scale per output channel, and an i32 bias
    /// at scale `in_scale · w_scale[c]`.
    I8 {
        weights: &'x [i8],
        w_scale: &'x [f32],
        bias: &'x [i32],
    },
    /// f32 weights and bias.
    F32 { weights: &'x [f32], bias: &'x [f32] },
}

/// Why the builder refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BuildError {
    /// Layer parameters of the wrong dtype or length for the declared shape.
    Params,
    /// A shape that cannot be built (window larger than the input, mismatched add, …).
    Shape,
    /// A tensor name that is empty, repeated, or contains whitespace/control characters.
    Name,
    /// `input`/`output` missing or given twice; an unknown tensor id.
    Graph,
    /// The serialised model failed its own validation.
    Invalid(ModelError),
    /// [`write_safetensors`] cannot write the parameters: a dtype safetensors does not know, or
    /// data whose length is not the shape's element count times the dtype size.
    Container,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BuildError::Invalid(e) => return write!(f, "built model is invalid: {e}"),
            BuildError::Params => {
                "layer parameters of the wrong dtype or length: weights must hold out_c·kh·kw·in_c \
                 (conv) or out·in (fc) values of the model's dtype, with one weight scale and one \
                 bias per output channel; LeakyReLU's alpha must be finite and >= 0; softmax's \
                 beta finite and > 0, with beta * input scale in (2^-26, 16); the input takes \
                 one mean and std per channel (at most 64)"
            }
            BuildError::Shape => {
                "a shape that cannot be built: the window does not fit the (padded) input, or \
                 the two inputs of an add differ in shape"
            }
            BuildError::Name => {
                "a parameter tensor name is empty, repeated, or contains whitespace or control \
                 characters; give each layer a distinct plain name"
            }
            BuildError::Graph => {
                "input or output declared twice or never, or a TensorId this builder did not \
                 create (or more than 65536 tensors)"
            }
            BuildError::Container => {
                "cannot write the safetensors container: a tensor dtype safetensors does not \
                 know, or data whose byte length is not the shape's element count times the \
                 dtype size"
            }
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BuildError {}

/// A parameter tensor to serialise: name, safetensors dtype string, shape, little-endian bytes.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Builds a model graph and its parameter tensors; see the module docs.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ModelBuilder {
    dtype: Dtype,
    tensors: Vec<TensorDesc>,
    header: String,
    lines: String,
    params: Vec<RawTensor>,
    input: Option<TensorId>,
    output: Option<TensorId>,
    /// Write each int8 conv/fc's weight scales as `ws=` ([`ModelBuilder::with_weight_scales`]).
    weight_scales: bool,
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The output size of a `k`/`stride`/`pad` window (`pad = [top, left, bottom, right]`) over
/// `x`.
fn window_out(
    x: &TensorDesc,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
) -> Result<(usize, usize), BuildError> {
    let oh = Window::out_dim(x.h, k[0], stride[0], pad[0], pad[2]).ok_or(BuildError::Shape)?;
    let ow = Window::out_dim(x.w, k[1], stride[1], pad[1], pad[3]).ok_or(BuildError::Shape)?;
    Ok((oh, ow))
}

/// A window's fields as the graph text writes them: `k=KH,KW stride=SH,SW pad=T,L,B,R`.
fn window_fields(k: [usize; 2], stride: [usize; 2], pad: [usize; 4]) -> String {
    format!(
        "k={},{} stride={},{} pad={}",
        k[0],
        k[1],
        stride[0],
        stride[1],
        list(&pad)
    )
}

/// The fused-ReLU flag as the graph text writes it at the end of an op line.
fn relu_flag(relu: bool) -> &'static str {
    if relu {
        " relu"
    } else {
        ""
    }
}

/// The descriptor of a layer's `h × w × c` output quantised as `q`.
fn out_desc(h: usize, w: usize, c: usize, q: Quant) -> TensorDesc {
    TensorDesc {
        h,
        w,
        c,
        scale: q.scale,
        zp: q.zp,
    }
}

/// `x`'s quantisation (the pools keep their input's).
fn same_quant(x: &TensorDesc) -> Quant {
    Quant {
        scale: x.scale,
        zp: x.zp,
    }
}

fn list<T: core::fmt::Display>(v: &[T]) -> String {
    let mut s = String::new();
    for (i, x) in v.iter().enumerate() {
        let _ = write!(s, "{}{}", if i > 0 { "," } else { "" }, x);
    }
    s
}

impl ModelBuilder {
    /// A new, empty model of the given dtype and task.
    pub fn new(dtype: Dtype, task: Task) -> Self {
        let d = match dtype {
            Dtype::Int8 => "i8",
            Dtype::F32 => "f32",
        };
        let t = match task {
            Task::Features => "features",
            Task::Landmarks => "landmarks",
        };
        ModelBuilder {
            dtype,
            tensors: Vec::new(),
            header: format!("rtgraph {FORMAT_VERSION}\ndtype {d}\ntask {t}\n"),
            lines: String::new(),
            params: Vec::new(),
            input: None,
            output: None,
            weight_scales: false,
        }
    }

    /// Also store every int8 conv/fc's per-channel weight scales (`ws=`, `{layer}.wscale`,
    /// FORMAT.md) so a reader can recompute each multiplier; the loader then checks them. Off by
    /// default (4 bytes per output channel; the builder-made MCU fixtures stay as they are);
    /// `host-trainer export` turns it on. Call before adding layers.
    pub fn with_weight_scales(mut self) -> Self {
        self.weight_scales = true;
        self
    }

    /// Shape and quantisation of a tensor built so far.
    pub fn desc(&self, t: TensorId) -> Result<TensorDesc, BuildError> {
        self.tensors
            .get(t.0 as usize)
            .copied()
            .ok_or(BuildError::Graph)
    }

    fn int8(&self) -> bool {
        self.dtype == Dtype::Int8
    }

    fn new_tensor(
        &mut self,
        h: usize,
        w: usize,
        c: usize,
        q: Quant,
    ) -> Result<TensorId, BuildError> {
        let id = u16::try_from(self.tensors.len()).map_err(|_| BuildError::Graph)?;
        let q = if self.int8() { q } else { Quant::NONE };
        self.tensors.push(out_desc(h, w, c, q));
        let _ = write!(self.lines, "tensor {id} shape={h},{w},{c}");
        if self.int8() {
            let _ = write!(self.lines, " scale={} zp={}", q.scale, q.zp);
        }
        self.lines.push('\n');
        Ok(TensorId(id))
    }

    fn param(
        &mut self,
        name: String,
        dtype: &'static str,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<String, BuildError> {
        if name.is_empty()
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
            || self.params.iter().any(|p| p.name == name)
        {
            return Err(BuildError::Name);
        }
        self.params.push(RawTensor {
            name: name.clone(),
            dtype,
            shape: shape.to_vec(),
            data,
        });
        Ok(name)
    }

    /// Declares the input `[h, w, c]` with per-channel normalisation (on [0, 1] pixels) and its
    /// quantisation.
    pub fn input(
        &mut self,
        shape: [usize; 3],
        mean: &[f32],
        std: &[f32],
        q: Quant,
    ) -> Result<TensorId, BuildError> {
        if self.input.is_some() {
            return Err(BuildError::Graph);
        }
        if mean.len() != shape[2] || std.len() != shape[2] || shape[2] > super::MAX_INPUT_CHANNELS {
            return Err(BuildError::Params);
        }
        let t = self.new_tensor(shape[0], shape[1], shape[2], q)?;
        let _ = writeln!(
            self.lines,
            "input {} mean={} std={}",
            t.0,
            list(mean),
            list(std)
        );
        self.input = Some(t);
        Ok(t)
    }

    /// Writes the weights/bias (and for int8 the derived multipliers/shifts) of a conv/fc layer
    /// and returns the `w=… b=… [m=… s=…]` fields. One bias, scale and multiplier per output
    /// channel, `out.c`.
    fn layer_params(
        &mut self,
        name: &str,
        x: &TensorDesc,
        out: &TensorDesc,
        wshape: &[usize],
        p: LayerParams,
    ) -> Result<String, BuildError> {
        let n: usize = wshape.iter().product();
        let oc = out.c;
        match (p, self.dtype) {
            (
                LayerParams::I8 {
                    weights,
                    w_scale,
                    bias,
                },
                Dtype::Int8,
            ) => {
                if weights.len() != n || w_scale.len() != oc || bias.len() != oc {
                    return Err(BuildError::Params);
                }
                let (mut m, mut s) = (Vec::with_capacity(oc), Vec::with_capacity(oc));
                for &ws in w_scale {
                    if !(ws.is_finite() && ws > 0.0) {
                        return Err(BuildError::Params);
                    }
                    let (mq, sq) = super::layer_multiplier(x.scale, ws, out.scale);
                    m.push(mq);
                    s.push(sq);
                }
                let wb = weights.iter().map(|&v| v as u8).collect();
                let w = self.param(format!("{name}.weight"), "I8", wshape, wb)?;
                let b = self.param(format!("{name}.bias"), "I32", &[oc], i32_bytes(bias))?;
                let mn = self.param(format!("{name}.mult"), "I32", &[oc], i32_bytes(&m))?;
                let sn = self.param(format!("{name}.shift"), "I32", &[oc], i32_bytes(&s))?;
                if !self.weight_scales {
                    return Ok(format!("w={w} b={b} m={mn} s={sn}"));
                }
                // The weight scales themselves, so a reader can check every multiplier.
                let wsn = self.param(format!("{name}.wscale"), "F32", &[oc], f32_bytes(w_scale))?;
                Ok(format!("w={w} b={b} m={mn} s={sn} ws={wsn}"))
            }
            (LayerParams::F32 { weights, bias }, Dtype::F32) => {
                if weights.len() != n || bias.len() != oc {
                    return Err(BuildError::Params);
                }
                let w = self.param(format!("{name}.weight"), "F32", wshape, f32_bytes(weights))?;
                let b = self.param(format!("{name}.bias"), "F32", &[oc], f32_bytes(bias))?;
                Ok(format!("w={w} b={b}"))
            }
            _ => Err(BuildError::Params),
        }
    }

    /// Conv2d `k = [kh, kw]`, `stride = [sh, sw]`, `pad = [top, left, bottom, right]`; parameter
    /// tensors are named `{name}.weight|bias|mult|shift`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: TensorId,
        out_c: usize,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        relu: bool,
        p: LayerParams,
        out_q: Quant,
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let (oh, ow) = window_out(&xd, k, stride, pad)?;
        let od = out_desc(oh, ow, out_c, out_q);
        let fields = self.layer_params(name, &xd, &od, &[out_c, k[0], k[1], xd.c], p)?;
        let y = self.new_tensor(oh, ow, out_c, out_q)?;
        let _ = writeln!(
            self.lines,
            "conv in={} out={} {} {fields}{}",
            x.0,
            y.0,
            window_fields(k, stride, pad),
            relu_flag(relu)
        );
        Ok(y)
    }

    /// Depthwise conv (TFLite DEPTHWISE_CONV_2D): output channel `ic·depth_mult + m` filters
    /// input channel `ic` alone; weights `[1, kh, kw, in_c·depth_mult]` (TFLite's layout), one
    /// scale and bias per output channel; `k`, `stride`, `pad` as for [`ModelBuilder::conv`].
    #[allow(clippy::too_many_arguments)]
    pub fn dwconv(
        &mut self,
        name: &str,
        x: TensorId,
        depth_mult: usize,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        relu: bool,
        p: LayerParams,
        out_q: Quant,
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let (oh, ow) = window_out(&xd, k, stride, pad)?;
        let out_c = xd.c.checked_mul(depth_mult).ok_or(BuildError::Shape)?;
        if out_c == 0 {
            return Err(BuildError::Shape);
        }
        let od = out_desc(oh, ow, out_c, out_q);
        let fields = self.layer_params(name, &xd, &od, &[1, k[0], k[1], out_c], p)?;
        let y = self.new_tensor(oh, ow, out_c, out_q)?;
        let _ = writeln!(
            self.lines,
            "dwconv in={} out={} {} dm={depth_mult} {fields}{}",
            x.0,
            y.0,
            window_fields(k, stride, pad),
            relu_flag(relu)
        );
        Ok(y)
    }

    /// Fully connected `in_len → out_len` over the input flattened in HWC order.
    pub fn fc(
        &mut self,
        name: &str,
        x: TensorId,
        out_len: usize,
        relu: bool,
        p: LayerParams,
        out_q: Quant,
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let od = out_desc(1, 1, out_len, out_q);
        let fields = self.layer_params(name, &xd, &od, &[out_len, xd.len()], p)?;
        let y = self.new_tensor(1, 1, out_len, out_q)?;
        let _ = writeln!(
            self.lines,
            "fc in={} out={} {fields}{}",
            x.0,
            y.0,
            relu_flag(relu)
        );
        Ok(y)
    }

    /// Residual add `a + b` (same shape), optional fused ReLU.
    pub fn add(
        &mut self,
        a: TensorId,
        b: TensorId,
        relu: bool,
        out_q: Quant,
    ) -> Result<TensorId, BuildError> {
        let (da, db) = (self.desc(a)?, self.desc(b)?);
        if (da.h, da.w, da.c) != (db.h, db.w, db.c) {
            return Err(BuildError::Shape);
        }
        let y = self.new_tensor(da.h, da.w, da.c, out_q)?;
        let _ = write!(self.lines, "add a={} b={} out={}", a.0, b.0, y.0);
        if self.int8() {
            let twice_max = 2.0 * (da.scale as f64).max(db.scale as f64);
            let (ma, sa) = quantize_multiplier(da.scale as f64 / twice_max);
            let (mb, sb) = quantize_multiplier(db.scale as f64 / twice_max);
            let (m, s) = quantize_multiplier(
                twice_max / ((1i64 << ADD_LEFT_SHIFT) as f64 * out_q.scale as f64),
            );
            let _ = write!(self.lines, " ma={ma} sa={sa} mb={mb} sb={sb} m={m} s={s}");
        }
        let _ = writeln!(self.lines, "{}", relu_flag(relu));
        Ok(y)
    }

    /// Max pool; the output keeps the input's quantisation.
    pub fn maxpool(
        &mut self,
        x: TensorId,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let (oh, ow) = window_out(&xd, k, stride, pad)?;
        let y = self.new_tensor(oh, ow, xd.c, same_quant(&xd))?;
        let _ = writeln!(
            self.lines,
            "maxpool in={} out={} {}",
            x.0,
            y.0,
            window_fields(k, stride, pad)
        );
        Ok(y)
    }

    /// Average pool over the window's in-image taps (TFLite AVERAGE_POOL_2D); the output keeps
    /// the input's quantisation; `relu` clamps at its zero point.
    pub fn avgpool(
        &mut self,
        x: TensorId,
        k: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        relu: bool,
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let (oh, ow) = window_out(&xd, k, stride, pad)?;
        let y = self.new_tensor(oh, ow, xd.c, same_quant(&xd))?;
        let _ = writeln!(
            self.lines,
            "avgpool in={} out={} {}{}",
            x.0,
            y.0,
            window_fields(k, stride, pad),
            relu_flag(relu)
        );
        Ok(y)
    }

    /// Softmax over the channels with inverse temperature `beta > 0` (TFLite SOFTMAX). int8: the
    /// output has TFLite's fixed quantisation, scale 1/256 and zero point −128
    /// ([`SOFTMAX_OUTPUT`]); the input multiplier is TFLite's
    /// ([`softmax_multiplier`](crate::ops::softmax::softmax_multiplier)), and an input scale it
    /// cannot represent (`beta·scale` ≤ 2⁻²⁶ or ≥ about 16) is [`BuildError::Params`].
    pub fn softmax(&mut self, x: TensorId, beta: f32) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        if !(beta.is_finite() && beta > 0.0) {
            return Err(BuildError::Params);
        }
        let requant = if self.int8() {
            let (m, s) = crate::ops::softmax::softmax_multiplier(beta, xd.scale)
                .ok_or(BuildError::Params)?;
            format!(" m={m} s={s}")
        } else {
            String::new()
        };
        let y = self.new_tensor(xd.h, xd.w, xd.c, SOFTMAX_OUTPUT)?;
        let _ = writeln!(
            self.lines,
            "softmax in={} out={} beta={beta}{requant}",
            x.0, y.0
        );
        Ok(y)
    }

    /// Global average pool `h×w×c → 1×1×c`; for int8 the `1/(h·w)` is folded into the multiplier.
    pub fn mean(&mut self, x: TensorId, out_q: Quant) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        let y = self.new_tensor(1, 1, xd.c, out_q)?;
        let _ = write!(self.lines, "mean in={} out={}", x.0, y.0);
        if self.int8() {
            let (m, s) =
                quantize_multiplier(xd.scale as f64 / (out_q.scale as f64 * (xd.h * xd.w) as f64));
            let _ = write!(self.lines, " m={m} s={s}");
        }
        self.lines.push('\n');
        Ok(y)
    }

    /// LeakyReLU with slope `alpha ≥ 0` for negative inputs.
    pub fn leaky_relu(
        &mut self,
        x: TensorId,
        alpha: f32,
        out_q: Quant,
    ) -> Result<TensorId, BuildError> {
        let xd = self.desc(x)?;
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(BuildError::Params);
        }
        let y = self.new_tensor(xd.h, xd.w, xd.c, out_q)?;
        let _ = write!(self.lines, "leaky in={} out={} alpha={alpha}", x.0, y.0);
        if self.int8() {
            let r = xd.scale as f64 / out_q.scale as f64;
            let (mi, si) = quantize_multiplier(r);
            let (ma, sa) = quantize_multiplier(alpha as f64 * r);
            let _ = write!(self.lines, " mi={mi} si={si} ma={ma} sa={sa}");
        }
        self.lines.push('\n');
        Ok(y)
    }

    /// Marks the model output.
    pub fn output(&mut self, t: TensorId) -> Result<(), BuildError> {
        self.desc(t)?;
        if self.output.is_some() {
            return Err(BuildError::Graph);
        }
        self.output = Some(t);
        Ok(())
    }

    /// The graph text as it will be stored under `rt.graph`.
    pub fn graph_text(&self) -> Result<String, BuildError> {
        let out = self.output.ok_or(BuildError::Graph)?;
        self.input.ok_or(BuildError::Graph)?;
        Ok(format!("{}{}output {}\n", self.header, self.lines, out.0))
    }

    /// Parameter tensors written so far.
    pub fn params(&self) -> &[RawTensor] {
        &self.params
    }

    /// Serialises the model and checks it loads.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BuildError> {
        let bytes = write_safetensors(&self.graph_text()?, &self.params)?;
        Model::parse(&bytes).map_err(BuildError::Invalid)?;
        Ok(bytes)
    }

    /// [`ModelBuilder::to_bytes`], consuming the builder: its parameter copies are freed before
    /// the check loads the file, so the peak heap is the larger of (parameters + file) and
    /// (file + loaded model) rather than their sum (what converting a `.tflite` on an MCU
    /// needs).
    pub fn into_bytes(self) -> Result<Vec<u8>, BuildError> {
        let bytes = write_safetensors(&self.graph_text()?, &self.params)?;
        drop(self);
        Model::parse(&bytes).map_err(BuildError::Invalid)?;
        Ok(bytes)
    }
}

/// A safetensors dtype from its header name (`"I8"`, `"I32"`, `"F32"`, …).
fn st_dtype(name: &str) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match name {
        "BOOL" => D::BOOL,
        "U8" => D::U8,
        "I8" => D::I8,
        "I16" => D::I16,
        "U16" => D::U16,
        "F16" => D::F16,
        "BF16" => D::BF16,
        "I32" => D::I32,
        "U32" => D::U32,
        "F32" => D::F32,
        "F64" => D::F64,
        "I64" => D::I64,
        "U64" => D::U64,
        _ => return None,
    })
}

/// A [`RawTensor`] as safetensors' serialiser sees it.
struct StView<'p> {
    dtype: safetensors::Dtype,
    t: &'p RawTensor,
}

impl safetensors::View for StView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.t.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.t.data)
    }
    fn data_len(&self) -> usize {
        self.t.data.len()
    }
}

/// A tensor name that sorts by its position in the caller's list. `safetensors::serialize`
/// orders tensors by descending dtype, then by key: with this key, tensors of one dtype keep
/// the caller's order (the name itself is what `Display` writes into the header).
struct InOrder<'p> {
    index: usize,
    name: &'p str,
}

impl PartialEq for InOrder<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.index == o.index
    }
}
impl Eq for InOrder<'_> {}
impl PartialOrd for InOrder<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InOrder<'_> {
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        self.index.cmp(&o.index)
    }
}
impl AsRef<str> for InOrder<'_> {
    fn as_ref(&self) -> &str {
        self.name
    }
}
impl core::fmt::Display for InOrder<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

/// Writes a safetensors container with `safetensors::serialize` (8-byte LE header length, JSON
/// header padded with spaces to a multiple of 8, then the tensor data), with `graph` under
/// `__metadata__["rt.graph"]`. Tensors are stored by descending dtype (so 4-byte tensors come
/// before 1-byte ones and stay 4-aligned when the buffer is), and in the order of `params`
/// within a dtype. Public so tests and tools can write deliberately odd graphs with the same
/// container code; the container itself is always well formed, so a tensor safetensors cannot
/// describe (unknown dtype name, data length ≠ element count × dtype size) is
/// [`BuildError::Container`].
pub fn write_safetensors(graph: &str, params: &[RawTensor]) -> Result<Vec<u8>, BuildError> {
    let mut tensors = Vec::with_capacity(params.len());
    for (index, t) in params.iter().enumerate() {
        let dtype = st_dtype(t.dtype).ok_or(BuildError::Container)?;
        let key = InOrder {
            index,
            name: &t.name,
        };
        tensors.push((key, StView { dtype, t }));
    }
    let meta = core::iter::once((GRAPH_KEY.to_string(), graph.to_string())).collect();
    safetensors::serialize(tensors, Some(meta)).map_err(|_| BuildError::Container)
}
