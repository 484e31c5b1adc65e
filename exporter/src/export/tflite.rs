//! TFLite out: an exported int8 runtime model, written again as a standard TFLite flatbuffer
//! (schema version 3, file identifier `TFL3`) that TFLite Micro runs with its builtin ops.
//!
//! Why convert the runtime file (as [`super::onnx`] does): the `.tflite` then carries exactly
//! the parameters runtime-core runs — the same int8 weights, int32 biases, per-channel weight
//! scales, activation scales and zero points. runtime-core follows TFLite's int8 arithmetic
//! (`MultiplyByQuantizedMultiplier`, ADD's 2²⁰ headroom, per-channel conv), so the only way the
//! two engines can disagree is where TFLite derives its fixed-point multipliers from the float
//! scales differently from runtime-core's exporter; [`TfliteModel::notes`] names every such op
//! (none on the fixtures: `exporter/tests/it/tflite_micro.rs` checks bit-for-bit agreement in
//! TFLite Micro).
//!
//! The model takes runtime-core's **quantised** input: int8 `[1, H, W, C]` (NHWC) with the
//! input tensor's scale and zero point (quantise `(pixel/255 − mean)/std`; mean and std are in
//! the model metadata `rt.mean`, `rt.std`), and gives int8 `[1, N]` in runtime-core's output
//! order (HWC flattened), with the output tensor's scale and zero point. Only int8 models
//! convert; an f32 model is an error.
//!
//! Op mapping (runtime-core `FORMAT.md` op → TFLite builtin):
//!
//! | runtime op | TFLite |
//! |---|---|
//! | `conv` | `CONV_2D` (OHWI int8 weights, per-channel scales on dimension 0; int32 bias at scale `in_scale·w_scale[c]`, zero point 0), fused `RELU`; `PAD` first when the padding is not TFLite's `SAME` or `VALID` |
//! | `dwconv` | `DEPTHWISE_CONV_2D` (`[1, KH, KW, OC]` int8 weights, per-channel scales on dimension 3, `depth_multiplier`), bias, `RELU` and padding as for `conv` |
//! | `fc` | `FULLY_CONNECTED` (per-channel, `[N, H·W·C]` weights: TFLite flattens NHWC, which is runtime-core's HWC order), fused `RELU` |
//! | `add` | `ADD`, fused `RELU` |
//! | `maxpool` | `MAX_POOL_2D`; `PADV2` with −128 first when the padding is not `SAME`/`VALID` |
//! | `mean` | `MEAN` over axes `[1, 2]`, `keep_dims` |
//! | `leaky` | `LEAKY_RELU` |
//! | `avgpool` | `AVERAGE_POOL_2D` (`SAME` or `VALID` padding only: padding is not counted), fused `RELU` |
//! | `softmax` | `SOFTMAX` over the last axis, `beta` (output scale 1/256, zero point −128) |
//! | output | `RESHAPE` to `[1, N]` (unless the last op already gives `[1, N]`) |
//!
//! Padding: runtime-core pads like PyTorch (`pad_top`, `pad_left` given; bottom/right implied by
//! the output size). TFLite has only `VALID` and `SAME`, where `SAME` puts
//! `total = max((out − 1)·s + k − in, 0)` padding as `top = total/2`, `bottom = total − top`
//! with `out = ⌈in/s⌉`. A 3×3 stride-2 pad-1 window on an even size has `top = 1` where `SAME`
//! has `top = 0`, so it becomes an explicit pad and a `VALID` op. conv pads with `PAD`, which
//! fills the input zero point: those taps contribute `(zp − zp)·w = 0`, exactly as runtime-core
//! skips them. Max pool ignores padding in both engines (TFLite's `SAME` max pool, too, only
//! visits in-image taps), so where an explicit pad is needed it is `PADV2` with −128: a −128 tap
//! can never exceed a window's in-image maximum, so the result is the same.
//!
//! Where TFLite (Micro) derives its fixed-point parameters (checked against TFLite Micro's
//! kernels, `tensorflow/lite/micro/kernels/*`):
//! * conv / fc: `QuantizeMultiplier(f64(in_scale)·f64(w_scale[c])/f64(out_scale))` — runtime-core's
//!   `layer_multiplier`, so identical whenever the file stores the weight scales (`ws=`, which
//!   every export writes; otherwise they are recovered from the multipliers as the ONNX writer
//!   does, and any channel whose multiplier then differs is noted).
//! * add: `2·max(s_a, s_b)` in f64, `s_a/(2·max)`, `s_b/(2·max)`, `2·max/(2²⁰·s_out)` — the
//!   runtime's builder formula, identical.
//! * mean: `QuantizeMultiplier(in/out)`, then `1/n` folded in as `(m << k)/n` (integer, truncated)
//!   with `k = ⌊log2 n⌋`, shift − k; runtime-core folds `1/n` into one `QuantizeMultiplier(in/(out·n))`.
//!   For a power-of-two `n = H·W` (the fixtures' 2×2) both give the same `(m, shift)`; otherwise
//!   the multiplier can differ in its last bit or so, and where that changes the output for some
//!   reachable sum `Σ(x − zp)` (counted exhaustively) the note says for how many sums and by how
//!   much. Rare and 1 LSB: the test's sweep over 3×3 means (`tflite_micro.rs`) first meets one at
//!   scales 0.0363/0.0401, 1 of the 2 296 reachable sums, and TFLite Micro shows exactly that.
//! * leaky: `QuantizeMultiplier(in/out)` and `QuantizeMultiplier(alpha·in/out)`. The TFLite Micro
//!   wheel the tests run (`tflite-micro` 0.dev20261023, g8f6596d) derives them as runtime-core
//!   does in f64: on 40 random scale pairs where an **f32** `in/out`, `in·alpha/out` would change
//!   an output, it gave runtime-core's outputs every time, and
//!   `tflite_micro_differs_only_where_the_notes_say` checks one such pair. The TFLM source read
//!   for this writer (`leaky_relu_common.cc` at 90b983c, 2026-08; the f64 fix of 2022 was
//!   reverted in 2023) computes both in f32, so a build of *that* source can differ from
//!   runtime-core by 1 LSB on a few of the 256 int8 inputs for some scales (not on the
//!   fixtures' one leaky op, whose f32 and f64 multipliers give the same 256 outputs: checked in
//!   `tflite_micro_agrees_bit_for_bit`). No note is written for it.
//!
//! * avgpool: no parameters (TFLite Micro's `AveragePool` averages the stored values with the
//!   same rounding, `(acc ± n/2)/n`); softmax: `PreprocessSoftmaxScaling(β, in_scale)`, which is
//!   runtime-core's `softmax_multiplier`, identical (a file whose `m=`/`s=` are not is noted).
//!   Both run bit for bit in TFLite Micro over a sweep of scales and β
//!   (`tflite_micro_runs_avgpool_and_softmax_bit_for_bit`).
//!
//! Flatbuffer layout: written with the `flatbuffers` crate's builder, tables by hand against
//! `tensorflow/compiler/mlir/lite/schema/schema.fbs` (= `tensorflow/lite/schema/schema.fbs`);
//! the field ids used are listed at [`fb`]. Buffers' data is 4-byte aligned (the builder's
//! vector alignment), not the 16 the schema's `force_align` asks for: enough for the int8 and
//! int32 data here, and TFLite Micro runs the files as written.
use std::collections::HashMap;

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use runtime_core::ops::requant::multiply_by_quantized_multiplier;
use runtime_core::ops::{F32Le, I32Le, Window};
use runtime_core::{layer_multiplier, quantize_multiplier, Dtype, Model, Op, Task, TensorDesc};

/// TFLite schema version the file declares (`TFLITE_SCHEMA_VERSION`).
pub const SCHEMA_VERSION: u32 = 3;
/// The flatbuffer file identifier of `.tflite` files.
pub const FILE_IDENTIFIER: &str = "TFL3";

/// Why a runtime model could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    /// The runtime's loader rejected the file (the message names the graph line or tensor).
    #[error("not a runtime-core model: {0}")]
    Model(String),
    /// The model or one op has no exact TFLite int8 form (the message names the op).
    #[error("cannot write as TFLite: {0}")]
    Unsupported(String),
}

/// The written `.tflite` and what it cannot reproduce exactly.
#[derive(Debug, Clone)]
pub struct TfliteModel {
    /// The flatbuffer.
    pub bytes: Vec<u8>,
    /// One line for each op where TFLite derives fixed-point parameters different from
    /// runtime-core's (named by op and output tensor, with the measured effect); empty when the
    /// model runs bit for bit the same in TFLite (Micro) as in runtime-core.
    pub notes: Vec<String>,
}

/// Schema constants: enum values and table field ids (the vtable slot of field `i` is
/// `4 + 2·i`; a union field takes two ids, its type then its value).
pub use runtime_core::tflite::schema as fb;

/// Quantisation of one tensor: per-tensor (one scale) or per-channel along `dim`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub dim: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub ty: i8,
    /// Index into the buffers (0: the empty buffer, i.e. an activation).
    pub buffer: u32,
    pub quant: Option<Quant>,
}

/// Builtin options of one operator.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Options {
    Conv {
        padding: i8,
        stride: [i32; 2],
        act: i8,
    },
    DepthwiseConv {
        padding: i8,
        stride: [i32; 2],
        depth_multiplier: i32,
        act: i8,
    },
    Pool {
        padding: i8,
        stride: [i32; 2],
        filter: [i32; 2],
        act: i8,
    },
    Softmax {
        beta: f32,
    },
    FullyConnected {
        act: i8,
    },
    Add {
        act: i8,
    },
    Reducer {
        keep_dims: bool,
    },
    LeakyRelu {
        alpha: f32,
    },
    Pad,
    PadV2,
    Reshape {
        new_shape: Vec<i32>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub code: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Options,
}

/// The TFLite graph before serialisation (the unit tests inspect it).
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub tensors: Vec<Tensor>,
    /// `buffers[0]` is the empty buffer every activation points at.
    pub buffers: Vec<Vec<u8>>,
    pub ops: Vec<Operator>,
    pub input: i32,
    pub output: i32,
    /// Runtime tensor id → TFLite tensor index (`t<id>`).
    act: HashMap<u16, i32>,
    /// Runtime tensor id → its 4-D `[1, 1, 1, N]` view, for an fc output (`[1, N]`) that a
    /// later op reads as NHWC.
    act4: HashMap<u16, i32>,
    pub notes: Vec<String>,
    pub metadata: Vec<(String, u32)>,
}

fn per_tensor(scale: f32, zp: i32) -> Option<Quant> {
    Some(Quant {
        scale: vec![scale],
        zero_point: vec![zp as i64],
        dim: 0,
    })
}

fn nhwc(d: &TensorDesc) -> Vec<i32> {
    vec![1, d.h as i32, d.w as i32, d.c as i32]
}

impl Graph {
    fn buffer(&mut self, data: Vec<u8>) -> u32 {
        self.buffers.push(data);
        (self.buffers.len() - 1) as u32
    }

    fn tensor(&mut self, t: Tensor) -> i32 {
        self.tensors.push(t);
        (self.tensors.len() - 1) as i32
    }

    /// The int8 activation tensor `t<id>` (shape `shape`).
    fn activation(&mut self, id: u16, d: &TensorDesc, shape: Vec<i32>) -> i32 {
        let i = self.tensor(Tensor {
            name: format!("t{id}"),
            shape,
            ty: fb::INT8,
            buffer: 0,
            quant: per_tensor(d.scale, d.zp),
        });
        self.act.insert(id, i);
        i
    }

    /// A constant int32 tensor (shapes, paddings, axes).
    fn const_i32(&mut self, name: String, shape: Vec<i32>, v: &[i32]) -> i32 {
        let buffer = self.buffer(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        self.tensor(Tensor {
            name,
            shape,
            ty: fb::INT32,
            buffer,
            quant: None,
        })
    }

    fn op(&mut self, code: i32, inputs: Vec<i32>, outputs: Vec<i32>, options: Options) {
        self.ops.push(Operator {
            code,
            inputs,
            outputs,
            options,
        });
    }

    /// The TFLite tensor holding runtime tensor `id` (any rank).
    fn input(&self, id: u16) -> Result<i32, TfliteError> {
        self.act
            .get(&id)
            .copied()
            .ok_or_else(|| TfliteError::Unsupported(format!("tensor {id} is read before written")))
    }

    /// Runtime tensor `id` as a 4-D NHWC tensor: itself, or (for an fc output, `[1, N]`) a
    /// `RESHAPE` to `[1, 1, 1, N]`, made once.
    fn input4(&mut self, id: u16, d: &TensorDesc) -> Result<i32, TfliteError> {
        let i = self.input(id)?;
        if self.tensors[i as usize].shape.len() == 4 {
            return Ok(i);
        }
        if let Some(&r) = self.act4.get(&id) {
            return Ok(r);
        }
        let r = self.reshape(i, &format!("t{id}.nhwc"), d, nhwc(d));
        self.act4.insert(id, r);
        Ok(r)
    }

    /// `RESHAPE` of tensor `x` into a new int8 tensor `name` of `shape` (same quantisation).
    fn reshape(&mut self, x: i32, name: &str, d: &TensorDesc, shape: Vec<i32>) -> i32 {
        let s = self.const_i32(format!("{name}.shape"), vec![shape.len() as i32], &shape);
        let y = self.tensor(Tensor {
            name: name.to_string(),
            shape: shape.clone(),
            ty: fb::INT8,
            buffer: 0,
            quant: per_tensor(d.scale, d.zp),
        });
        self.op(
            fb::op::RESHAPE,
            vec![x, s],
            vec![y],
            Options::Reshape { new_shape: shape },
        );
        y
    }

    /// The tensor a conv or max pool over `win` reads and its TFLite padding: the input
    /// itself with `SAME` or `VALID` when one of them is the window's padding, else an explicit
    /// pad (`PAD`, the zero point, for conv; `PADV2` with −128 for max pool) and `VALID`.
    fn padded(
        &mut self,
        win: &Window,
        x: i32,
        d: &TensorDesc,
        fill_lowest: bool,
        name: &str,
    ) -> Result<(i32, i8), TfliteError> {
        if let Some(padding) = tflite_padding(win) {
            return Ok((x, padding));
        }
        let p = win.pads();
        let valid_out = |n: usize, k: usize, s: usize| (n >= k).then(|| (n - k) / s + 1);
        let (ph, pw) = (win.in_h + p[0] + p[2], win.in_w + p[1] + p[3]);
        if valid_out(ph, win.kh, win.stride_h) != Some(win.out_h)
            || valid_out(pw, win.kw, win.stride_w) != Some(win.out_w)
        {
            return Err(TfliteError::Unsupported(format!(
                "{name}: padding {p:?} does not give its {}x{} output",
                win.out_h, win.out_w
            )));
        }
        let paddings = [
            0,
            0,
            p[0] as i32,
            p[2] as i32,
            p[1] as i32,
            p[3] as i32,
            0,
            0,
        ];
        let pt = self.const_i32(format!("{name}.paddings"), vec![4, 2], &paddings);
        let y = self.tensor(Tensor {
            name: format!("{name}.padded"),
            shape: vec![1, ph as i32, pw as i32, d.c as i32],
            ty: fb::INT8,
            buffer: 0,
            quant: per_tensor(d.scale, d.zp),
        });
        if fill_lowest {
            let buffer = self.buffer(vec![i8::MIN as u8]);
            let c = self.tensor(Tensor {
                name: format!("{name}.pad_value"),
                shape: vec![],
                ty: fb::INT8,
                buffer,
                quant: per_tensor(d.scale, d.zp),
            });
            self.op(fb::op::PADV2, vec![x, pt, c], vec![y], Options::PadV2);
        } else {
            self.op(fb::op::PAD, vec![x, pt], vec![y], Options::Pad);
        }
        Ok((y, fb::VALID))
    }

    /// The fused activation of an int8 conv, dwconv or fc and its per-channel weight scales
    /// ([`weight_scales`], which notes where they give TFLite other multipliers).
    fn act_and_scales(
        &mut self,
        name: &str,
        l: &Int8Layer,
        ai: &TensorDesc,
        ao: &TensorDesc,
    ) -> Result<(i8, Vec<f32>), TfliteError> {
        let act = fused(l.act_min, l.act_max, ao.zp, name)?;
        let scales = (ai.scale, ao.scale);
        let ws = weight_scales(l.stored, l.mult, l.shift, scales, name, &mut self.notes);
        Ok((act, ws))
    }

    /// CONV_2D (`dm` `None`: an OHWI filter quantised along axis 0) or DEPTHWISE_CONV_2D
    /// (`dm`: its depth multiplier; a `[1, KH, KW, OC]` filter quantised along axis 3) over
    /// `win` from tensor `ii` to `io`: the same tensors, written in the same order.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        l: &Int8Layer,
        win: &Window,
        out_c: usize,
        dm: Option<usize>,
        (ii, ai): (u16, &TensorDesc),
        (io, ao): (u16, &TensorDesc),
    ) -> Result<(), TfliteError> {
        let (act, ws) = self.act_and_scales(name, l, ai, ao)?;
        let x = self.input4(ii, ai)?;
        let (x, padding) = self.padded(win, x, ai, false, name)?;
        let (kh, kw, oc) = (win.kh as i32, win.kw as i32, out_c as i32);
        let (shape, axis) = match dm {
            None => (vec![oc, kh, kw, win.in_c as i32], 0),
            Some(_) => (vec![1, kh, kw, oc], 3),
        };
        let (wt, bt) =
            self.weights_and_bias(name, shape, axis, l.weights, l.bias.iter(), ai.scale, &ws);
        let y = self.activation(io, ao, nhwc(ao));
        let stride = [win.stride_w as i32, win.stride_h as i32];
        let (code, options) = match dm {
            None => (
                fb::op::CONV_2D,
                Options::Conv {
                    padding,
                    stride,
                    act,
                },
            ),
            Some(dm) => (
                fb::op::DEPTHWISE_CONV_2D,
                Options::DepthwiseConv {
                    padding,
                    stride,
                    depth_multiplier: dm as i32,
                    act,
                },
            ),
        };
        self.op(code, vec![x, wt, bt], vec![y], options);
        Ok(())
    }

    /// Per-channel int8 weights (`ws.len()` channels along axis `dim`: 0 for conv and fc, 3
    /// for depthwise conv; zero points 0) and the int32 bias at scale `in_scale·w_scale[c]`;
    /// returns (weights, bias).
    #[allow(clippy::too_many_arguments)]
    fn weights_and_bias(
        &mut self,
        name: &str,
        shape: Vec<i32>,
        dim: i32,
        w: &[i8],
        bias: impl Iterator<Item = i32>,
        in_scale: f32,
        ws: &[f32],
    ) -> (i32, i32) {
        let oc = ws.len();
        let wb = self.buffer(w.iter().map(|&x| x as u8).collect());
        let wt = self.tensor(Tensor {
            name: format!("{name}.weight"),
            shape,
            ty: fb::INT8,
            buffer: wb,
            quant: Some(Quant {
                scale: ws.to_vec(),
                zero_point: vec![0; oc],
                dim,
            }),
        });
        let bb = self.buffer(bias.flat_map(|x| x.to_le_bytes()).collect());
        let bt = self.tensor(Tensor {
            name: format!("{name}.bias"),
            shape: vec![oc as i32],
            ty: fb::INT32,
            buffer: bb,
            quant: Some(Quant {
                scale: ws
                    .iter()
                    .map(|&s| (in_scale as f64 * s as f64) as f32)
                    .collect(),
                zero_point: vec![0; oc],
                dim: 0,
            }),
        });
        (wt, bt)
    }
}

/// The parameters an int8 conv, dwconv or fc writes alike.
struct Int8Layer<'a> {
    weights: &'a [i8],
    bias: I32Le<'a>,
    mult: I32Le<'a>,
    shift: I32Le<'a>,
    /// The file's weight scales (`ws=`), where it has them.
    stored: Option<F32Le<'a>>,
    act_min: i32,
    act_max: i32,
}

/// TFLite's `VALID` or `SAME` when one of them is the window's padding (module doc).
fn tflite_padding(win: &Window) -> Option<i8> {
    let p = win.pads();
    let valid_out = |n: usize, k: usize, s: usize| (n >= k).then(|| (n - k) / s + 1);
    let axes = [
        (win.in_h, win.out_h, win.kh, win.stride_h, p[0], p[2]),
        (win.in_w, win.out_w, win.kw, win.stride_w, p[1], p[3]),
    ];
    if axes
        .iter()
        .all(|&(n, o, k, s, a, b)| a == 0 && b == 0 && valid_out(n, k, s) == Some(o))
    {
        return Some(fb::VALID);
    }
    let same = |&(n, o, k, s, a, _): &(usize, usize, usize, usize, usize, usize)| {
        o == n.div_ceil(s) && a == ((o - 1) * s + k).saturating_sub(n) / 2
    };
    axes.iter().all(same).then_some(fb::SAME)
}

/// TFLite's fused activation for a runtime clamp `[act_min, act_max]` on an output with zero
/// point `zp`: `RELU` clamps at `[max(zp, −128), 127]` (TFLite `CalculateActivationRangeQuantized`),
/// `NONE` at `[−128, 127]`; any other range has no TFLite form.
fn fused(act_min: i32, act_max: i32, zp: i32, name: &str) -> Result<i8, TfliteError> {
    match (act_min, act_max) {
        (-128, 127) => Ok(fb::ACT_NONE),
        (lo, 127) if lo == zp => Ok(fb::ACT_RELU),
        _ => Err(TfliteError::Unsupported(format!(
            "{name}: activation range [{act_min}, {act_max}] is neither NONE nor RELU at the \
             output zero point {zp}"
        ))),
    }
}

/// The per-channel weight scales of a conv/fc: the file's (`ws=`), or recovered from the
/// multipliers (see [`super::onnx`]); notes every channel whose TFLite multiplier
/// (`layer_multiplier(in, ws, out)`, TFLite's own formula) is not the runtime's.
fn weight_scales(
    stored: Option<F32Le>,
    mult: I32Le,
    shift: I32Le,
    (in_scale, out_scale): (f32, f32),
    name: &str,
    notes: &mut Vec<String>,
) -> Vec<f32> {
    let ws = match stored {
        Some(ws) => ws.iter().collect(),
        None => {
            let (m, s): (Vec<i32>, Vec<i32>) = (mult.iter().collect(), shift.iter().collect());
            super::onnx::weight_scales(&m, &s, in_scale, out_scale)
        }
    };
    let differ: Vec<usize> = (0..ws.len())
        .filter(|&c| {
            let rt = (mult.get(c), shift.get(c));
            rt != (0, 0) && layer_multiplier(in_scale, ws[c], out_scale) != rt
        })
        .collect();
    if !differ.is_empty() {
        notes.push(format!(
            "{name}: the file has no weight scales (ws=); for channels {differ:?} the scales \
             recovered from the multipliers give TFLite a multiplier other than the runtime's \
             (the outputs can differ by 1 LSB there)"
        ));
    }
    ws
}

/// TFLite Micro's int8 MEAN parameters (`reduce_common.cc`, `reference_ops::QuantizedMeanOrSum`):
/// `QuantizeMultiplier(in/out)`, then `1/n` folded in with an integer divide.
pub fn tflm_mean_multiplier(in_scale: f32, out_scale: f32, n: usize) -> (i32, i32) {
    let (m, s) = quantize_multiplier(in_scale as f64 / out_scale as f64);
    let k = (63 - (n as u64).leading_zeros() as i32).min(32).min(31 + s);
    ((((m as i64) << k) / n as i64) as i32, s - k)
}

/// How many of `inputs` requantise differently with `a` than with `b`, and the largest
/// difference (in LSB, after the +zp and int8 clamp).
fn count_differences(
    inputs: impl Iterator<Item = i32>,
    out: impl Fn(i32, (i32, i32)) -> i32,
    a: (i32, i32),
    b: (i32, i32),
) -> (usize, usize, i32) {
    let (mut total, mut n, mut max) = (0, 0, 0);
    for x in inputs {
        total += 1;
        let d = (out(x, a) - out(x, b)).abs();
        if d > 0 {
            n += 1;
            max = max.max(d);
        }
    }
    (n, total, max)
}

/// Converts a runtime-core int8 model file (`rt.graph` safetensors) into `.tflite` bytes.
pub fn to_tflite(model_bytes: &[u8]) -> Result<TfliteModel, TfliteError> {
    let g = build(model_bytes)?;
    Ok(TfliteModel {
        bytes: serialize(&g, &description(model_bytes)),
        notes: g.notes,
    })
}

fn description(model_bytes: &[u8]) -> String {
    let about = super::onnx::provenance(model_bytes);
    format!("runtime-core int8 model converted to TFLite by host-trainer; {about}")
}

/// The TFLite graph of a runtime model (see the module doc for the mapping).
pub(crate) fn build(model_bytes: &[u8]) -> Result<Graph, TfliteError> {
    let m = Model::parse(model_bytes).map_err(|e| TfliteError::Model(e.to_string()))?;
    if m.dtype() != Dtype::Int8 {
        return Err(TfliteError::Unsupported(
            "an f32 model: only int8 models are written as TFLite".into(),
        ));
    }
    let tensors = m.tensors();
    let desc = |id: u16| tensors[id as usize];
    let mut g = Graph {
        buffers: vec![vec![]],
        ..Default::default()
    };
    let (iid, oid) = (m.input_id(), m.output_id());
    let ia = desc(iid);
    g.input = g.activation(iid, &ia, nhwc(&ia));
    for n in m.nodes() {
        let (ii, io) = (n.inputs()[0], n.output());
        let (ai, ao) = (desc(ii), desc(io));
        match n.op() {
            Op::ConvI8 {
                conv,
                weight_scales: stored,
            } => {
                let l = Int8Layer {
                    weights: conv.weights,
                    bias: conv.bias,
                    mult: conv.mult,
                    shift: conv.shift,
                    stored,
                    act_min: conv.act_min,
                    act_max: conv.act_max,
                };
                let name = format!("conv_t{io}");
                g.conv(&name, &l, &conv.win, conv.out_c, None, (ii, &ai), (io, &ao))?;
            }
            Op::DwConvI8 {
                conv,
                weight_scales: stored,
            } => {
                let l = Int8Layer {
                    weights: conv.weights,
                    bias: conv.bias,
                    mult: conv.mult,
                    shift: conv.shift,
                    stored,
                    act_min: conv.act_min,
                    act_max: conv.act_max,
                };
                let (name, dm) = (format!("dwconv_t{io}"), Some(conv.depth_mult));
                g.conv(&name, &l, &conv.win, conv.out_c(), dm, (ii, &ai), (io, &ao))?;
            }
            Op::FcI8 {
                fc,
                weight_scales: stored,
            } => {
                let l = Int8Layer {
                    weights: fc.weights,
                    bias: fc.bias,
                    mult: fc.mult,
                    shift: fc.shift,
                    stored,
                    act_min: fc.act_min,
                    act_max: fc.act_max,
                };
                let name = format!("fc_t{io}");
                let (act, ws) = g.act_and_scales(&name, &l, &ai, &ao)?;
                // FULLY_CONNECTED reads any input shape as [batch, in_len] in memory order,
                // i.e. NHWC flattened, the runtime's order.
                let x = g.input(ii)?;
                let shape = vec![fc.out_len as i32, fc.in_len as i32];
                let (wt, bt) =
                    g.weights_and_bias(&name, shape, 0, l.weights, l.bias.iter(), ai.scale, &ws);
                let y = g.activation(io, &ao, vec![1, fc.out_len as i32]);
                g.op(
                    fb::op::FULLY_CONNECTED,
                    vec![x, wt, bt],
                    vec![y],
                    Options::FullyConnected { act },
                );
            }
            Op::AddI8(add) => {
                let name = format!("add_t{io}");
                let ib = n.inputs()[1];
                let bd = desc(ib);
                let act = fused(add.act_min, add.act_max, ao.zp, &name)?;
                // TFLite's ADD parameters (add_common.cc), to check they are the file's.
                let twice_max = 2.0 * (ai.scale as f64).max(bd.scale as f64);
                let tfl = [
                    quantize_multiplier(ai.scale as f64 / twice_max),
                    quantize_multiplier(bd.scale as f64 / twice_max),
                    quantize_multiplier(twice_max / ((1i64 << 20) as f64 * ao.scale as f64)),
                ];
                let rt = [
                    (add.a_mult, add.a_shift),
                    (add.b_mult, add.b_shift),
                    (add.out_mult, add.out_shift),
                ];
                if tfl != rt {
                    g.notes.push(format!(
                        "{name}: TFLite's ADD multipliers {tfl:?} are not the file's {rt:?}"
                    ));
                }
                let (x, z) = (g.input4(ii, &ai)?, g.input4(ib, &bd)?);
                let y = g.activation(io, &ao, nhwc(&ao));
                g.op(fb::op::ADD, vec![x, z], vec![y], Options::Add { act });
            }
            Op::MaxPool(win) => {
                let name = format!("maxpool_t{io}");
                let x = g.input4(ii, &ai)?;
                let (x, padding) = g.padded(&win, x, &ai, true, &name)?;
                let y = g.activation(io, &ao, nhwc(&ao));
                g.op(
                    fb::op::MAX_POOL_2D,
                    vec![x],
                    vec![y],
                    Options::Pool {
                        padding,
                        stride: [win.stride_w as i32, win.stride_h as i32],
                        filter: [win.kw as i32, win.kh as i32],
                        act: fb::ACT_NONE,
                    },
                );
            }
            Op::AvgPoolI8 {
                win,
                act_min,
                act_max,
            } => {
                let name = format!("avgpool_t{io}");
                let act = fused(act_min, act_max, ao.zp, &name)?;
                // Padding is left out of the average in both engines, so an explicit PAD (whose
                // values would count) cannot stand in for it: SAME or VALID only.
                let padding = tflite_padding(&win).ok_or_else(|| {
                    TfliteError::Unsupported(format!(
                        "{name}: padding {:?} is neither TFLite's SAME nor VALID",
                        win.pads()
                    ))
                })?;
                let x = g.input4(ii, &ai)?;
                let y = g.activation(io, &ao, nhwc(&ao));
                g.op(
                    fb::op::AVERAGE_POOL_2D,
                    vec![x],
                    vec![y],
                    Options::Pool {
                        padding,
                        stride: [win.stride_w as i32, win.stride_h as i32],
                        filter: [win.kw as i32, win.kh as i32],
                        act,
                    },
                );
            }
            Op::SoftmaxI8 { softmax, beta } => {
                let name = format!("softmax_t{io}");
                // TFLite's input multiplier (softmax_common.cc), to check it is the file's.
                let tfl = runtime_core::ops::softmax::softmax_multiplier(beta, ai.scale);
                let rt = (softmax.mult, softmax.shift);
                if tfl != Some(rt) {
                    g.notes.push(format!(
                        "{name}: TFLite's SOFTMAX input multiplier {tfl:?} is not the file's {rt:?}"
                    ));
                }
                // Over the last axis, in whatever rank the input has ([1, N] after an fc).
                let x = g.input(ii)?;
                let shape = g.tensors[x as usize].shape.clone();
                let y = g.activation(io, &ao, shape);
                g.op(fb::op::SOFTMAX, vec![x], vec![y], Options::Softmax { beta });
            }
            Op::MeanI8(mean) => {
                let name = format!("mean_t{io}");
                let tfl = tflm_mean_multiplier(ai.scale, ao.scale, mean.hw);
                let rt = (mean.mult, mean.shift);
                if tfl != rt {
                    let n = mean.hw as i32;
                    let out = |sum: i32, (m, s): (i32, i32)| {
                        (multiply_by_quantized_multiplier(sum, m, s) + mean.out_zp).clamp(-128, 127)
                    };
                    let sums = n * (-128 - mean.in_zp)..=n * (127 - mean.in_zp);
                    let (k, total, max) = count_differences(sums, out, tfl, rt);
                    // A multiplier that differs only where no reachable sum notices is exact.
                    if k > 0 {
                        g.notes.push(format!(
                        "{name}: MEAN over {n} = {}x{} values: TFLite Micro folds 1/{n} into its \
                         multiplier as {tfl:?}, runtime-core as {rt:?}; the output differs for \
                         {k} of the {total} possible sums, by at most {max} LSB",
                        ai.h, ai.w
                    ));
                    }
                }
                let x = g.input4(ii, &ai)?;
                let axes = g.const_i32(format!("{name}.axes"), vec![2], &[1, 2]);
                let y = g.activation(io, &ao, nhwc(&ao));
                g.op(
                    fb::op::MEAN,
                    vec![x, axes],
                    vec![y],
                    Options::Reducer { keep_dims: true },
                );
            }
            Op::LeakyI8 { leaky, alpha } => {
                let name = format!("leaky_t{io}");
                // TFLite's multipliers, in/out and alpha·in/out (f64; see the module doc on
                // builds that compute them in f32), to check they are the file's.
                let r = ai.scale as f64 / ao.scale as f64;
                let tfl = [
                    quantize_multiplier(r),
                    quantize_multiplier(alpha as f64 * r),
                ];
                let rt = [
                    (leaky.id_mult, leaky.id_shift),
                    (leaky.alpha_mult, leaky.alpha_shift),
                ];
                if tfl != rt {
                    g.notes.push(format!(
                        "{name}: TFLite's LEAKY_RELU multipliers {tfl:?} are not the file's {rt:?}"
                    ));
                }
                let x = g.input4(ii, &ai)?;
                let y = g.activation(io, &ao, nhwc(&ao));
                g.op(
                    fb::op::LEAKY_RELU,
                    vec![x],
                    vec![y],
                    Options::LeakyRelu { alpha },
                );
            }
            Op::ConvF32(_)
            | Op::DwConvF32(_)
            | Op::FcF32(_)
            | Op::AddF32 { .. }
            | Op::MeanF32
            | Op::LeakyF32 { .. }
            | Op::AvgPoolF32 { .. }
            | Op::SoftmaxF32 { .. } => {
                return Err(TfliteError::Unsupported(format!(
                    "f32 op writing tensor {io} in an int8 model"
                )))
            }
        }
    }
    // The output, flattened: `[1, N]`.
    let oa = desc(oid);
    let y = g.input(oid)?;
    g.output = if g.tensors[y as usize].shape.len() == 2 {
        y
    } else {
        g.reshape(y, "output", &oa, vec![1, oa.len() as i32])
    };
    let (mean, std) = m.normalisation();
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let task = match m.task() {
        Task::Features => "features",
        Task::Landmarks => "landmarks",
    };
    for (k, v) in [
        ("rt.task", task.to_string()),
        ("rt.mean", list(mean)),
        ("rt.std", list(std)),
    ] {
        let b = g.buffer(v.into_bytes());
        g.metadata.push((k.to_string(), b));
    }
    Ok(g)
}

/// Writes the graph as a `.tflite` flatbuffer (field ids: [`fb`]).
pub(crate) fn serialize(g: &Graph, description: &str) -> Vec<u8> {
    use fb::slot;
    let mut b = FlatBufferBuilder::with_capacity(1 << 16);
    // Buffers.
    let buffers: Vec<_> = g
        .buffers
        .iter()
        .map(|d| {
            let data = (!d.is_empty()).then(|| b.create_vector(d.as_slice()));
            let t = b.start_table();
            if let Some(data) = data {
                b.push_slot_always(slot(fb::buffer::DATA), data);
            }
            b.end_table(t)
        })
        .collect();
    // Tensors.
    let tensors: Vec<_> = g
        .tensors
        .iter()
        .map(|t| {
            let shape = b.create_vector(t.shape.as_slice());
            let name = b.create_string(&t.name);
            let quant = t.quant.as_ref().map(|q| {
                let scale = b.create_vector(q.scale.as_slice());
                let zp = b.create_vector(q.zero_point.as_slice());
                let qt = b.start_table();
                b.push_slot_always(slot(fb::quantization::SCALE), scale);
                b.push_slot_always(slot(fb::quantization::ZERO_POINT), zp);
                b.push_slot(slot(fb::quantization::QUANTIZED_DIMENSION), q.dim, 0);
                b.end_table(qt)
            });
            let tt = b.start_table();
            b.push_slot_always(slot(fb::tensor::SHAPE), shape);
            b.push_slot(slot(fb::tensor::TYPE), t.ty, 0);
            b.push_slot(slot(fb::tensor::BUFFER), t.buffer, 0);
            b.push_slot_always(slot(fb::tensor::NAME), name);
            if let Some(q) = quant {
                b.push_slot_always(slot(fb::tensor::QUANTIZATION), q);
            }
            b.end_table(tt)
        })
        .collect();
    // Operator codes, in order of first use.
    let mut codes: Vec<i32> = Vec::new();
    for op in &g.ops {
        if !codes.contains(&op.code) {
            codes.push(op.code);
        }
    }
    let opcodes: Vec<_> = codes
        .iter()
        .map(|&c| {
            let t = b.start_table();
            let deprecated = c.min(fb::op::PLACEHOLDER_FOR_GREATER_OP_CODES) as i8;
            b.push_slot(
                slot(fb::operator_code::DEPRECATED_BUILTIN_CODE),
                deprecated,
                0,
            );
            b.push_slot_always(slot(fb::operator_code::VERSION), 1i32);
            b.push_slot(slot(fb::operator_code::BUILTIN_CODE), c, 0);
            b.end_table(t)
        })
        .collect();
    // Operators.
    let operators: Vec<_> = g
        .ops
        .iter()
        .map(|op| {
            let inputs = b.create_vector(op.inputs.as_slice());
            let outputs = b.create_vector(op.outputs.as_slice());
            let (tag, options) = options_table(&mut b, &op.options);
            let index = codes.iter().position(|&c| c == op.code).unwrap_or(0) as u32;
            let t = b.start_table();
            b.push_slot(slot(fb::operator::OPCODE_INDEX), index, 0);
            b.push_slot_always(slot(fb::operator::INPUTS), inputs);
            b.push_slot_always(slot(fb::operator::OUTPUTS), outputs);
            b.push_slot(slot(fb::operator::BUILTIN_OPTIONS_TYPE), tag, 0);
            b.push_slot_always(slot(fb::operator::BUILTIN_OPTIONS), options);
            b.end_table(t)
        })
        .collect();
    let tensors = b.create_vector(&tensors);
    let operators = b.create_vector(&operators);
    let inputs = b.create_vector(&[g.input]);
    let outputs = b.create_vector(&[g.output]);
    let sg_name = b.create_string("main");
    let sg = b.start_table();
    b.push_slot_always(slot(fb::subgraph::TENSORS), tensors);
    b.push_slot_always(slot(fb::subgraph::INPUTS), inputs);
    b.push_slot_always(slot(fb::subgraph::OUTPUTS), outputs);
    b.push_slot_always(slot(fb::subgraph::OPERATORS), operators);
    b.push_slot_always(slot(fb::subgraph::NAME), sg_name);
    let sg = b.end_table(sg);
    let metadata: Vec<_> = g
        .metadata
        .iter()
        .map(|(k, buf)| {
            let name = b.create_string(k);
            let t = b.start_table();
            b.push_slot_always(slot(fb::metadata::NAME), name);
            b.push_slot_always(slot(fb::metadata::BUFFER), *buf);
            b.end_table(t)
        })
        .collect();
    let opcodes = b.create_vector(&opcodes);
    let subgraphs = b.create_vector(&[sg]);
    let desc = b.create_string(description);
    let buffers = b.create_vector(&buffers);
    let metadata = b.create_vector(&metadata);
    let root = b.start_table();
    b.push_slot_always(slot(fb::model::VERSION), SCHEMA_VERSION);
    b.push_slot_always(slot(fb::model::OPERATOR_CODES), opcodes);
    b.push_slot_always(slot(fb::model::SUBGRAPHS), subgraphs);
    b.push_slot_always(slot(fb::model::DESCRIPTION), desc);
    b.push_slot_always(slot(fb::model::BUFFERS), buffers);
    b.push_slot_always(slot(fb::model::METADATA), metadata);
    let root = b.end_table(root);
    b.finish(root, Some(FILE_IDENTIFIER));
    b.finished_data().to_vec()
}

/// The builtin-options table of one op and its union tag.
fn options_table(
    b: &mut FlatBufferBuilder,
    o: &Options,
) -> (u8, WIPOffset<flatbuffers::UnionWIPOffset>) {
    use fb::{options as tag, slot};
    let shape = match o {
        Options::Reshape { new_shape } => Some(b.create_vector(new_shape.as_slice())),
        _ => None,
    };
    let t = b.start_table();
    let tag = match *o {
        Options::Conv {
            padding,
            stride,
            act,
        } => {
            b.push_slot(slot(0), padding, 0);
            b.push_slot(slot(1), stride[0], 0);
            b.push_slot(slot(2), stride[1], 0);
            b.push_slot(slot(3), act, 0);
            tag::CONV_2D
        }
        Options::DepthwiseConv {
            padding,
            stride,
            depth_multiplier,
            act,
        } => {
            b.push_slot(slot(0), padding, 0);
            b.push_slot(slot(1), stride[0], 0);
            b.push_slot(slot(2), stride[1], 0);
            b.push_slot(slot(3), depth_multiplier, 0);
            b.push_slot(slot(4), act, 0);
            tag::DEPTHWISE_CONV_2D
        }
        Options::Pool {
            padding,
            stride,
            filter,
            act,
        } => {
            b.push_slot(slot(0), padding, 0);
            b.push_slot(slot(1), stride[0], 0);
            b.push_slot(slot(2), stride[1], 0);
            b.push_slot(slot(3), filter[0], 0);
            b.push_slot(slot(4), filter[1], 0);
            b.push_slot(slot(5), act, 0);
            tag::POOL_2D
        }
        Options::Softmax { beta } => {
            b.push_slot_always(slot(0), beta);
            tag::SOFTMAX
        }
        Options::FullyConnected { act } => {
            b.push_slot(slot(0), act, 0);
            tag::FULLY_CONNECTED
        }
        Options::Add { act } => {
            b.push_slot(slot(0), act, 0);
            tag::ADD
        }
        Options::Reducer { keep_dims } => {
            b.push_slot(slot(0), keep_dims, false);
            tag::REDUCER
        }
        Options::LeakyRelu { alpha } => {
            b.push_slot(slot(0), alpha, 0.0);
            tag::LEAKY_RELU
        }
        Options::Pad => tag::PAD,
        Options::PadV2 => tag::PADV2,
        Options::Reshape { .. } => {
            if let Some(s) = shape {
                b.push_slot_always(slot(0), s);
            }
            tag::RESHAPE
        }
    };
    let t = b.end_table(t);
    (tag, t.as_union_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fb::slot;
    use flatbuffers::{
        ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier, VerifierOptions,
    };
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// RELU6 (what Keras' ReLU6 converts to) is read as RELU exactly where its upper clamp
    /// `zp + round(6/scale)` reaches 127, and refused, naming the operator, where it does not.
    #[test]
    fn relu6_reads_as_relu_only_where_it_is_relu() {
        let bytes = fixture("mcu/resnet8.safetensors");
        let k = build(&bytes)
            .unwrap()
            .ops
            .iter()
            .position(|o| matches!(o.options, Options::Conv { .. }))
            .expect("a conv");
        // The conv's output at `scale` and zero point 0 (where RELU clamps), its activation
        // `act`, as a .tflite read back.
        let read = |scale: f32, act: i8| {
            let mut g = build(&bytes).unwrap();
            let out = g.ops[k].outputs[0] as usize;
            let q = g.tensors[out].quant.as_mut().unwrap();
            (q.scale, q.zero_point) = (vec![scale], vec![0]);
            if let Options::Conv { act: a, .. } = &mut g.ops[k].options {
                *a = act;
            }
            runtime_core::tflite::to_model_bytes(&serialize(&g, ""))
        };
        // 6/0.02 = 300 steps above the zero point: the clamp is RELU's.
        assert_eq!(
            read(0.02, fb::ACT_RELU6).unwrap(),
            read(0.02, fb::ACT_RELU).unwrap()
        );
        // 6/1.0 = 6 steps: RELU6 would clamp inside the range.
        let e = read(1.0, fb::ACT_RELU6).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "operator {k} (CONV_2D = builtin 3): unsupported: fused RELU6"
            )),
            "{e}"
        );
    }

    const INT8_MODELS: &[&str] = &[
        "tiny/backbone-int8.safetensors",
        "tiny/landmarks-int8.safetensors",
        "mcu/resnet8.safetensors",
        "mcu/backbone.safetensors",
        "mcu/landmark.safetensors",
    ];

    // A flatbuffers verifier for the tables written (the schema's field ids, [`fb`]): every
    // offset, vtable, vector and string in bounds and aligned, the required fields there.
    type Scalars<T> = ForwardsUOffset<Vector<'static, T>>;
    type Tables<T> = ForwardsUOffset<Vector<'static, ForwardsUOffset<T>>>;
    type Str = ForwardsUOffset<&'static str>;
    struct ModelV;
    struct OperatorCodeV;
    struct SubGraphV;
    struct TensorV;
    struct QuantV;
    struct OperatorV;
    struct BufferV;
    struct MetadataV;
    /// A builtin-options table of union tag `TAG`.
    struct OptionsV<const TAG: u8>;

    impl Verifiable for ModelV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::model::*;
            v.visit_table(pos)?
                .visit_field::<u32>("version", slot(VERSION), true)?
                .visit_field::<Tables<OperatorCodeV>>("operator_codes", slot(OPERATOR_CODES), true)?
                .visit_field::<Tables<SubGraphV>>("subgraphs", slot(SUBGRAPHS), true)?
                .visit_field::<Str>("description", slot(DESCRIPTION), false)?
                .visit_field::<Tables<BufferV>>("buffers", slot(BUFFERS), true)?
                .visit_field::<Tables<MetadataV>>("metadata", slot(METADATA), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for OperatorCodeV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::operator_code::*;
            v.visit_table(pos)?
                .visit_field::<i8>(
                    "deprecated_builtin_code",
                    slot(DEPRECATED_BUILTIN_CODE),
                    false,
                )?
                .visit_field::<i32>("version", slot(VERSION), true)?
                .visit_field::<i32>("builtin_code", slot(BUILTIN_CODE), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for SubGraphV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::subgraph::*;
            v.visit_table(pos)?
                .visit_field::<Tables<TensorV>>("tensors", slot(TENSORS), true)?
                .visit_field::<Scalars<i32>>("inputs", slot(INPUTS), true)?
                .visit_field::<Scalars<i32>>("outputs", slot(OUTPUTS), true)?
                .visit_field::<Tables<OperatorV>>("operators", slot(OPERATORS), true)?
                .visit_field::<Str>("name", slot(NAME), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for TensorV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::tensor::*;
            v.visit_table(pos)?
                .visit_field::<Scalars<i32>>("shape", slot(SHAPE), true)?
                .visit_field::<i8>("type", slot(TYPE), false)?
                .visit_field::<u32>("buffer", slot(BUFFER), false)?
                .visit_field::<Str>("name", slot(NAME), true)?
                .visit_field::<ForwardsUOffset<QuantV>>("quantization", slot(QUANTIZATION), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for QuantV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::quantization::*;
            v.visit_table(pos)?
                .visit_field::<Scalars<f32>>("scale", slot(SCALE), true)?
                .visit_field::<Scalars<i64>>("zero_point", slot(ZERO_POINT), true)?
                .visit_field::<i32>("quantized_dimension", slot(QUANTIZED_DIMENSION), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for BufferV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            v.visit_table(pos)?
                .visit_field::<Scalars<u8>>("data", slot(fb::buffer::DATA), false)?
                .finish();
            Ok(())
        }
    }
    impl Verifiable for MetadataV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            v.visit_table(pos)?
                .visit_field::<Str>("name", slot(fb::metadata::NAME), true)?
                .visit_field::<u32>("buffer", slot(fb::metadata::BUFFER), true)?
                .finish();
            Ok(())
        }
    }
    impl<const TAG: u8> Verifiable for OptionsV<TAG> {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::options::*;
            let t = v.visit_table(pos)?;
            let t = match TAG {
                CONV_2D | POOL_2D | DEPTHWISE_CONV_2D => t
                    .visit_field::<i8>("padding", slot(0), false)?
                    .visit_field::<i32>("stride_w", slot(1), true)?
                    .visit_field::<i32>("stride_h", slot(2), true)?,
                FULLY_CONNECTED | ADD => t.visit_field::<i8>("fused_activation", slot(0), false)?,
                REDUCER => t.visit_field::<bool>("keep_dims", slot(0), true)?,
                LEAKY_RELU => t.visit_field::<f32>("alpha", slot(0), false)?,
                RESHAPE => t.visit_field::<Scalars<i32>>("new_shape", slot(0), true)?,
                _ => t,
            };
            t.finish();
            Ok(())
        }
    }
    impl Verifiable for OperatorV {
        fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
            use fb::operator::*;
            v.visit_table(pos)?
                .visit_field::<u32>("opcode_index", slot(OPCODE_INDEX), false)?
                .visit_field::<Scalars<i32>>("inputs", slot(INPUTS), true)?
                .visit_field::<Scalars<i32>>("outputs", slot(OUTPUTS), true)?
                .visit_union::<u8, _>(
                    "builtin_options_type",
                    slot(BUILTIN_OPTIONS_TYPE),
                    "builtin_options",
                    slot(BUILTIN_OPTIONS),
                    true,
                    |tag, v, pos| {
                        use fb::options::*;
                        match tag {
                            CONV_2D => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<CONV_2D>>>(
                                    "Conv2DOptions",
                                    pos,
                                ),
                            POOL_2D => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<POOL_2D>>>(
                                    "Pool2DOptions",
                                    pos,
                                ),
                            DEPTHWISE_CONV_2D => v
                                .verify_union_variant::<ForwardsUOffset<
                                    OptionsV<DEPTHWISE_CONV_2D>,
                                >>("DepthwiseConv2DOptions", pos),
                            FULLY_CONNECTED => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<FULLY_CONNECTED>>>(
                                    "FullyConnectedOptions",
                                    pos,
                                ),
                            ADD => v.verify_union_variant::<ForwardsUOffset<OptionsV<ADD>>>(
                                "AddOptions",
                                pos,
                            ),
                            RESHAPE => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<RESHAPE>>>(
                                    "ReshapeOptions",
                                    pos,
                                ),
                            PAD => v.verify_union_variant::<ForwardsUOffset<OptionsV<PAD>>>(
                                "PadOptions",
                                pos,
                            ),
                            PADV2 => v.verify_union_variant::<ForwardsUOffset<OptionsV<PADV2>>>(
                                "PadV2Options",
                                pos,
                            ),
                            REDUCER => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<REDUCER>>>(
                                    "ReducerOptions",
                                    pos,
                                ),
                            LEAKY_RELU => v
                                .verify_union_variant::<ForwardsUOffset<OptionsV<LEAKY_RELU>>>(
                                    "LeakyReluOptions",
                                    pos,
                                ),
                            _ => Err(InvalidFlatbuffer::InconsistentUnion {
                                field: "builtin_options_type".into(),
                                field_type: "unknown tag".into(),
                                error_trace: Default::default(),
                            }),
                        }
                    },
                )?
                .finish();
            Ok(())
        }
    }

    /// Verifies `buf` as a TFLite model and reads back (version, op codes in operator order,
    /// tensor count, subgraph input and output).
    type RTables<'a> = ForwardsUOffset<Vector<'a, ForwardsUOffset<Table<'a>>>>;
    type RInts<'a> = ForwardsUOffset<Vector<'a, i32>>;

    fn verify_and_read<'a>(buf: &'a [u8]) -> (u32, Vec<i32>, usize, i32, i32) {
        assert!(flatbuffers::buffer_has_identifier(
            buf,
            FILE_IDENTIFIER,
            false
        ));
        let opts = VerifierOptions::default();
        let mut v = Verifier::new(&opts, buf);
        <ForwardsUOffset<ModelV>>::run_verifier(&mut v, 0).expect("verifies");
        // SAFETY: the whole buffer was verified above against these field types.
        unsafe {
            let model = <ForwardsUOffset<Table<'a>>>::follow(buf, 0);
            let version = model.get::<u32>(slot(fb::model::VERSION), None).unwrap();
            let codes: Vec<i32> = model
                .get::<RTables<'a>>(slot(fb::model::OPERATOR_CODES), None)
                .unwrap()
                .iter()
                .map(|c| {
                    c.get::<i32>(slot(fb::operator_code::BUILTIN_CODE), Some(0))
                        .unwrap()
                })
                .collect();
            let sg = model
                .get::<RTables<'a>>(slot(fb::model::SUBGRAPHS), None)
                .unwrap()
                .get(0);
            let ops: Vec<i32> = sg
                .get::<RTables<'a>>(slot(fb::subgraph::OPERATORS), None)
                .unwrap()
                .iter()
                .map(|o| {
                    let i = o
                        .get::<u32>(slot(fb::operator::OPCODE_INDEX), Some(0))
                        .unwrap();
                    codes[i as usize]
                })
                .collect();
            let n = sg
                .get::<RTables<'a>>(slot(fb::subgraph::TENSORS), None)
                .unwrap()
                .len();
            let io = |f| sg.get::<RInts<'a>>(slot(f), None).unwrap().get(0);
            (
                version,
                ops,
                n,
                io(fb::subgraph::INPUTS),
                io(fb::subgraph::OUTPUTS),
            )
        }
    }

    use flatbuffers::Follow;

    /// Every written model passes the flatbuffers verifier, and what it reads back is the
    /// graph that was built: op codes in order, tensor count, input and output.
    #[test]
    fn written_files_pass_the_flatbuffer_verifier() {
        for name in INT8_MODELS {
            let bytes = fixture(name);
            let g = build(&bytes).unwrap();
            let t = to_tflite(&bytes).unwrap();
            let (version, ops, tensors, input, output) = verify_and_read(&t.bytes);
            assert_eq!(version, SCHEMA_VERSION, "{name}");
            assert_eq!(
                ops,
                g.ops.iter().map(|o| o.code).collect::<Vec<_>>(),
                "{name}"
            );
            assert_eq!(tensors, g.tensors.len(), "{name}");
            assert_eq!((input, output), (g.input, g.output), "{name}");
            // A corrupted copy (an offset pointing out of the buffer) is rejected.
            let mut bad = t.bytes.clone();
            let past_end = bad.len() as u32 + 16;
            bad[0..4].copy_from_slice(&past_end.to_le_bytes());
            let opts = VerifierOptions::default();
            assert!(
                <ForwardsUOffset<ModelV>>::run_verifier(&mut Verifier::new(&opts, &bad), 0)
                    .is_err()
            );
        }
    }

    /// The graph carries the runtime's parameters: one CONV_2D per runtime conv with the
    /// file's OHWI weights, biases and weight scales (whose TFLite multipliers are the file's
    /// `m`, `s`), bias scales `in·w`, the activations' scales and zero points; 3×3 stride-1
    /// pad-1 convs are `SAME`, 1×1 stride-2 `VALID`, 3×3 stride-2 pad-1 on even sizes an
    /// explicit `PAD` + `VALID`; the input and `[1, N]` output are int8 with the runtime's
    /// quantisation.
    #[test]
    fn graph_carries_the_runtime_parameters() {
        for name in INT8_MODELS {
            let bytes = fixture(name);
            let m = Model::parse(&bytes).unwrap();
            let g = build(&bytes).unwrap();
            assert!(g.notes.is_empty(), "{name}: {:?}", g.notes);
            let by_name = |n: &str| {
                g.tensors
                    .iter()
                    .position(|t| t.name == n)
                    .unwrap_or_else(|| panic!("{name}: no tensor {n}"))
            };
            let desc = m.tensors();
            for n in m.nodes() {
                let io = n.output();
                let t = &g.tensors[by_name(&format!("t{io}"))];
                let d = desc[io as usize];
                assert_eq!(t.ty, fb::INT8);
                assert_eq!(t.quant, per_tensor(d.scale, d.zp), "{name} t{io}");
                let Op::ConvI8 {
                    conv,
                    weight_scales,
                } = n.op()
                else {
                    continue;
                };
                let op = g
                    .ops
                    .iter()
                    .find(|o| o.outputs == [by_name(&format!("t{io}")) as i32])
                    .unwrap();
                assert_eq!(op.code, fb::op::CONV_2D);
                let (w, b) = (
                    &g.tensors[op.inputs[1] as usize],
                    &g.tensors[op.inputs[2] as usize],
                );
                let win = conv.win;
                assert_eq!(
                    w.shape,
                    [conv.out_c, win.kh, win.kw, win.in_c].map(|v| v as i32)
                );
                let wbytes: Vec<i8> = g.buffers[w.buffer as usize]
                    .iter()
                    .map(|&x| x as i8)
                    .collect();
                assert_eq!(wbytes, conv.weights);
                let bias: Vec<i32> = g.buffers[b.buffer as usize]
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                assert_eq!(bias, conv.bias.iter().collect::<Vec<_>>());
                let (wq, bq) = (w.quant.as_ref().unwrap(), b.quant.as_ref().unwrap());
                // The file's weight scales where it stores them (the mcu models predate `ws=`:
                // recovered from the multipliers, they give back the same multipliers below).
                let ws = &wq.scale;
                if let Some(stored) = weight_scales {
                    assert_eq!(*ws, stored.iter().collect::<Vec<_>>());
                }
                assert_eq!(wq.dim, 0);
                assert!(wq.zero_point.iter().chain(&bq.zero_point).all(|&z| z == 0));
                let (ai, ao) = (desc[n.inputs()[0] as usize], desc[io as usize]);
                for (c, (&w, &bs)) in ws.iter().zip(&bq.scale).enumerate() {
                    assert_eq!(
                        layer_multiplier(ai.scale, w, ao.scale),
                        (conv.mult.get(c), conv.shift.get(c))
                    );
                    assert_eq!(bs, (ai.scale as f64 * w as f64) as f32);
                }
                let Options::Conv { padding, .. } = op.options else {
                    panic!("{name}: conv options {:?}", op.options)
                };
                let read = &g.tensors[op.inputs[0] as usize];
                match (win.kh, win.stride_h, win.pad_top, win.in_h % 2) {
                    (3, 1, 1, _) => assert_eq!(padding, fb::SAME, "{name} t{io}"),
                    (1, 2, 0, _) => assert_eq!(padding, fb::VALID, "{name} t{io}"),
                    (3, 2, 1, 0) => {
                        assert_eq!(padding, fb::VALID, "{name} t{io}");
                        assert!(read.name.ends_with(".padded"), "{name} t{io}");
                        assert_eq!(read.shape[1] as usize, win.in_h + 1);
                    }
                    _ => {}
                }
            }
            let (i, o) = (&g.tensors[g.input as usize], &g.tensors[g.output as usize]);
            let (id, od) = (m.input_desc(), m.output_desc());
            assert_eq!(i.shape, [1, id.h as i32, id.w as i32, id.c as i32]);
            assert_eq!(i.quant, per_tensor(id.scale, id.zp));
            assert_eq!(o.shape, [1, m.output_len() as i32]);
            assert_eq!(o.quant, per_tensor(od.scale, od.zp));
        }
    }

    fn window(n: usize, k: usize, s: usize, pad: usize, out: usize) -> Window {
        Window {
            in_h: n,
            in_w: n,
            in_c: 1,
            out_h: out,
            out_w: out,
            kh: k,
            kw: k,
            stride_h: s,
            stride_w: s,
            pad_top: pad,
            pad_left: pad,
        }
    }

    /// `SAME` only where its padding is the window's, `VALID` where there is none, else an
    /// explicit pad of exactly the runtime's rows and columns (`PADV2` with −128 for max pool).
    #[test]
    fn padding_is_same_valid_or_explicit() {
        let d = TensorDesc {
            h: 0,
            w: 0,
            c: 1,
            scale: 0.1,
            zp: 3,
        };
        let cases = [
            // (in, k, s, pad, out) → TFLite padding, explicit [top, bottom]
            ((16, 3, 1, 1, 16), fb::SAME, None),
            ((7, 3, 2, 1, 4), fb::SAME, None),
            ((16, 1, 2, 0, 8), fb::VALID, None),
            ((16, 3, 2, 0, 7), fb::VALID, None),
            ((16, 3, 2, 1, 8), fb::VALID, Some([1, 0])),
            ((32, 7, 2, 3, 16), fb::VALID, Some([3, 2])),
            ((5, 3, 1, 2, 7), fb::VALID, Some([2, 2])),
        ];
        for ((n, k, s, p, o), want, explicit) in cases {
            for lowest in [false, true] {
                let mut g = Graph::default();
                let x = g.tensor(Tensor {
                    name: "x".into(),
                    shape: vec![1, n as i32, n as i32, 1],
                    ty: fb::INT8,
                    buffer: 0,
                    quant: per_tensor(d.scale, d.zp),
                });
                let (y, padding) = g
                    .padded(&window(n, k, s, p, o), x, &d, lowest, "op")
                    .unwrap();
                assert_eq!(padding, want, "{n} {k} {s} {p}");
                match explicit {
                    None => assert_eq!((y, g.ops.len()), (x, 0)),
                    Some([top, bottom]) => {
                        let op = &g.ops[0];
                        assert_eq!(op.code, if lowest { fb::op::PADV2 } else { fb::op::PAD });
                        let pads = &g.buffers[g.tensors[op.inputs[1] as usize].buffer as usize];
                        let pads: Vec<i32> = pads
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect();
                        assert_eq!(pads, [0, 0, top, bottom, top, bottom, 0, 0]);
                        assert_eq!(
                            g.tensors[y as usize].shape[1],
                            (n + top as usize + bottom as usize) as i32
                        );
                        if lowest {
                            let c = &g.tensors[op.inputs[2] as usize];
                            assert_eq!(g.buffers[c.buffer as usize], [0x80]);
                            assert_eq!(c.quant, per_tensor(d.scale, d.zp));
                        }
                    }
                }
            }
        }
        // A window whose output its padding cannot give is an error naming the op.
        let mut g = Graph::default();
        let e = g.padded(&window(8, 3, 1, 0, 3), 0, &d, false, "conv_t5");
        assert!(matches!(e, Err(TfliteError::Unsupported(s)) if s.contains("conv_t5")));
    }

    /// TFLite Micro's MEAN folding gives runtime-core's multiplier for every power-of-two
    /// count (an exact exponent change), and may differ for others.
    #[test]
    fn mean_multiplier_is_the_runtimes_for_powers_of_two() {
        let mut differ = 0;
        for (i, &(a, b)) in [
            (0.0183f32, 0.0219f32),
            (0.05, 0.0071),
            (0.3, 0.29),
            (1e-3, 0.2),
        ]
        .iter()
        .enumerate()
        {
            for n in [1usize, 2, 4, 16, 64, 1024] {
                let rt = quantize_multiplier(a as f64 / (b as f64 * n as f64));
                assert_eq!(tflm_mean_multiplier(a, b, n), rt, "case {i} n {n}");
            }
            for n in [3usize, 9, 12, 25, 49] {
                let rt = quantize_multiplier(a as f64 / (b as f64 * n as f64));
                differ += usize::from(tflm_mean_multiplier(a, b, n) != rt);
            }
        }
        assert!(
            differ > 0,
            "truncating (m << k)/n differs from rounding somewhere"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(to_tflite(b"hello"), Err(TfliteError::Model(_))));
        let mut b = fixture("tiny/backbone-int8.safetensors");
        b.truncate(b.len() / 2);
        assert!(matches!(to_tflite(&b), Err(TfliteError::Model(_))));
        let f32_model = fixture("tiny/backbone-f32.safetensors");
        assert!(matches!(
            to_tflite(&f32_model),
            Err(TfliteError::Unsupported(s)) if s.contains("f32")
        ));
        assert!(matches!(
            fused(-5, 127, 3, "conv_t9"),
            Err(TfliteError::Unsupported(s)) if s.contains("conv_t9")
        ));
        assert!(fused(-128, 100, -128, "x").is_err());
    }
}
