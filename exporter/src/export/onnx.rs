//! ONNX out: the exported runtime model, written again as a standard ONNX model (opset 13).
//!
//! Why convert the runtime file rather than the exporter's graph: the ONNX model then carries
//! exactly the parameters runtime-core runs — the same int8 weights, int32 biases, activation
//! scales and zero points — so the two can only differ by the arithmetic of the two engines
//! (below), never by a second calibration or quantisation. Any runtime-core model file converts
//! (`fixtures/tiny/*.safetensors` included).
//!
//! The ONNX model takes the **normalised** input `(pixel/255 − mean)/std` as a float tensor
//! `input` of shape `[1, C, H, W]` (NCHW; mean and std are in the metadata as `rt.mean`,
//! `rt.std`) and gives a float tensor `output` `[1, N]` in runtime-core's output order (HWC
//! flattened; the outputs are `1×1×C`, so that is channel order).
//!
//! Op mapping (runtime-core `FORMAT.md` op → ONNX; all in the default domain, no contrib op):
//!
//! | runtime op | f32 graph | int8 graph |
//! |---|---|---|
//! | input | — | `QuantizeLinear` |
//! | `conv` | `Conv` (+ `Relu`) | `QLinearConv` (per-channel weight scales, int32 bias) (+ `Clip` at the zero point, only if that is above −128) |
//! | `fc` | `Conv` with the kernel as large as its input (= fully connected over CHW) (+ `Relu`) | `QLinearConv`, likewise |
//! | `add` | `Add` (+ `Relu`) | `DequantizeLinear` ×2 → `Add` → `QuantizeLinear` (+ `Clip`) |
//! | `maxpool` | `MaxPool` | `MaxPool` on int8 (scale and zero point unchanged, as in the runtime) |
//! | `mean` | `GlobalAveragePool` | `DequantizeLinear` → `GlobalAveragePool` → `QuantizeLinear` |
//! | `leaky` | `LeakyRelu` | `DequantizeLinear` → `LeakyRelu` → `QuantizeLinear` |
//! | output | `Flatten` | `DequantizeLinear` → `Flatten` |
//!
//! (A `Transpose` to NHWC precedes the final `Flatten` only if the output has H·W > 1.)
//!
//! Weight scales: the runtime file stores each channel's fixed-point multiplier `m·2^(s−31)` of
//! `in_scale·w_scale/out_scale`, not `w_scale` itself; the converter recovers
//! `w_scale = m·2^(s−31)·out_scale/in_scale`, so onnxruntime's float requantisation multiplier
//! `in_scale·w_scale/out_scale` equals the runtime's fixed-point one to float precision.
//!
//! Where the two engines legitimately differ (int8): runtime-core requantises with TFLite's
//! fixed-point `MultiplyByQuantizedMultiplier` (two roundings) and quantises the input rounding
//! half away from zero; ONNX `QuantizeLinear` and onnxruntime's requantisation round a float
//! product once, half to even; the `add`/`mean`/`leaky` rows go through float. The outputs
//! therefore differ by a few steps (measured up to 7 LSB on the fixtures). Every op alone, fed
//! runtime-core's own input tensors (`Model::run_i8_traced`; the ONNX graph names each int8
//! activation `t<id>` after the runtime's tensor id, so each op is the subgraph between them),
//! stays within 1 LSB of runtime-core in onnxruntime, and `maxpool` agrees exactly
//! (`exporter/tests/it/onnx_runtime.rs`, `onnxruntime_agrees_per_op`); the end-to-end bound
//! there is set from measurement.
use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;
use runtime_core::ops::{F32Le, I32Le, Window};
use runtime_core::{Dtype, Model, Op, Task, TensorDesc};
use safetensors::SafeTensors;

/// The ONNX opset the models declare (13: per-axis `QuantizeLinear`/`DequantizeLinear`).
pub const OPSET: i64 = 13;
/// The IR version that goes with opset 13.
pub const IR_VERSION: i64 = 7;
/// Name of the graph input (float, NCHW, normalised).
pub const INPUT_NAME: &str = "input";
/// Name of the graph output (float, `[1, N]`).
pub const OUTPUT_NAME: &str = "output";

/// Why a runtime model could not be converted: the runtime's loader rejected it (the message
/// names the graph line or tensor).
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not a runtime-core model: {0}")]
    Model(String),
    /// An op with no ONNX writer (the message names the op and its output tensor).
    #[error("cannot write as ONNX: {0}")]
    Unsupported(String),
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ONNX graph under construction: nodes and initializers, named after the runtime's
/// tensors (`t<id>` activations, `<layer>.weight` etc. parameters).
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    init_names: std::collections::HashSet<String>,
}

impl Builder {
    fn node(&mut self, op: &str, name: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    fn init(&mut self, name: &str, dt: DataType, dims: &[i64], raw: Vec<u8>) {
        if self.init_names.insert(name.to_string()) {
            self.inits.push(TensorProto {
                name: name.into(),
                data_type: dt as i32,
                dims: dims.to_vec(),
                raw_data: raw,
                ..Default::default()
            });
        }
    }

    fn f32s(&mut self, name: &str, dims: &[i64], v: &[f32]) {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, DataType::Float, dims, raw);
    }

    fn i32s(&mut self, name: &str, dims: &[i64], v: &[i32]) {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, DataType::Int32, dims, raw);
    }

    fn i8s(&mut self, name: &str, dims: &[i64], v: &[i8]) {
        let raw = v.iter().map(|&x| x as u8).collect();
        self.init(name, DataType::Int8, dims, raw);
    }

    /// Scalar scale and zero point of activation `id` (`t<id>.scale`, `t<id>.zp`).
    fn qparams(&mut self, id: u16, a: &TensorDesc) -> (String, String) {
        let (s, z) = (format!("t{id}.scale"), format!("t{id}.zp"));
        self.f32s(&s, &[], &[a.scale]);
        self.i8s(&z, &[], &[a.zp as i8]);
        (s, z)
    }

    /// Dequantises int8 activation `id` to `t<id>.f`.
    fn dequant(&mut self, id: u16, a: &TensorDesc) -> String {
        let (s, z) = self.qparams(id, a);
        let out = format!("t{id}.f");
        if !self.nodes.iter().any(|n| n.output.first() == Some(&out)) {
            self.node(
                "DequantizeLinear",
                &format!("dequant_t{id}"),
                &[&format!("t{id}"), &s, &z],
                &out,
                vec![],
            );
        }
        out
    }

    /// Quantises float `x` into int8 activation `id` (`t<id>`), then applies the runtime's
    /// fused ReLU clamp `[max(zp, −128), 127]` when it is not a no-op.
    fn quant_into(&mut self, x: &str, id: u16, a: &TensorDesc, relu: bool, name: &str) {
        let (s, z) = self.qparams(id, a);
        let clamp = relu && a.zp > -128;
        let q = if clamp {
            format!("t{id}.pre")
        } else {
            format!("t{id}")
        };
        self.node("QuantizeLinear", name, &[x, &s, &z], &q, vec![]);
        if clamp {
            self.clip_relu(&q, id, a, name);
        }
    }

    /// int8 ReLU at zero point `zp`: `Clip(q, zp, 127)` into `t<id>`.
    fn clip_relu(&mut self, q: &str, id: u16, a: &TensorDesc, name: &str) {
        let (_, z) = self.qparams(id, a);
        self.i8s("i8.max", &[], &[127]);
        self.node(
            "Clip",
            &format!("{name}.relu"),
            &[q, &z, "i8.max"],
            &format!("t{id}"),
            vec![],
        );
    }
}

/// Conv weights `[OC, KH, KW, IC]` (OHWI, the runtime's) → OIHW.
fn ohwi_to_oihw<T: Copy>(w: &[T], oc: usize, kh: usize, kw: usize, ic: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    for o in 0..oc {
        for i in 0..ic {
            for y in 0..kh {
                for x in 0..kw {
                    out.push(w[((o * kh + y) * kw + x) * ic + i]);
                }
            }
        }
    }
    out
}

/// The real weight scale of each channel from the runtime's fixed-point multiplier (see the
/// module doc). A zero multiplier (the runtime's `(0, 0)` for a real multiplier < 2⁻³²) maps to
/// the smallest normal f32, which requantises every accumulator to the zero point as well.
pub(crate) fn weight_scales(m: &[i32], s: &[i32], in_scale: f32, out_scale: f32) -> Vec<f32> {
    m.iter()
        .zip(s)
        .map(|(&m, &s)| {
            let real = m as f64 * 2f64.powi(s - 31);
            let w = (real * out_scale as f64 / in_scale as f64) as f32;
            if w > 0.0 && w.is_finite() {
                w
            } else {
                f32::MIN_POSITIVE
            }
        })
        .collect()
}

/// Whether the file at `path` is a runtime-core model (has `rt.graph` metadata) rather than a
/// host-trainer checkpoint. Unreadable or non-safetensors files are errors naming the file.
pub fn is_runtime_model(path: &std::path::Path) -> Result<bool, trainer::model::ModelIoError> {
    let bytes = std::fs::read(path).map_err(|source| trainer::model::ModelIoError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref().map(|m| m.contains_key("rt.graph")))
        .unwrap_or(false))
}

/// Converts a runtime-core model file (`rt.graph` safetensors) into ONNX protobuf bytes.
pub fn to_onnx(model_bytes: &[u8]) -> Result<Vec<u8>, OnnxError> {
    Ok(to_onnx_proto(model_bytes)?.encode_to_vec())
}

/// [`to_onnx`] before encoding.
pub fn to_onnx_proto(model_bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    // The runtime's own loader validates the file; the walk below reads its typed view of the
    // graph (`Node::op`), the parameters the runtime runs, so there is one parser of the graph.
    let m = Model::parse(model_bytes).map_err(|e| OnnxError::Model(e.to_string()))?;
    let (dtype, task) = (m.dtype(), m.task());
    let (mean, std) = m.normalisation();
    let (mean, std) = (mean.to_vec(), std.to_vec());
    let about = provenance(model_bytes);
    let int8 = dtype == Dtype::Int8;
    let tensors = m.tensors();
    let desc = |id: u16| tensors[id as usize];
    let mut b = Builder::default();
    let (iid, oid) = (m.input_id(), m.output_id());
    let (ia, oa) = (desc(iid), desc(oid));
    if int8 {
        b.quant_into(INPUT_NAME, iid, &ia, false, "quantize_input");
    } else {
        b.node(
            "Identity",
            "input",
            &[INPUT_NAME],
            &format!("t{iid}"),
            vec![],
        );
    }
    for n in m.nodes() {
        let (ii, io) = (n.inputs()[0], n.output());
        let (ai, ao) = (desc(ii), desc(io));
        match n.op() {
            Op::DwConvI8 { .. } | Op::DwConvF32(_) => {
                // A grouped QLinearConv could carry it; not written yet (runtime-core reads
                // depthwise convs from .tflite and writes them back as .tflite).
                return Err(OnnxError::Unsupported(format!(
                    "dwconv writing tensor {io}: depthwise convolution has no ONNX writer yet \
                     (export to .tflite instead)"
                )));
            }
            Op::ConvI8 { conv, .. } => {
                let geom = ConvGeom::of_window(&conv.win);
                let q = QuantParams {
                    weights: conv.weights,
                    bias: conv.bias,
                    mult: conv.mult,
                    shift: conv.shift,
                    relu: conv.act_min > -128,
                };
                conv_i8(
                    &mut b,
                    &format!("conv_t{io}"),
                    geom,
                    q,
                    (ii, &ai),
                    (io, &ao),
                );
            }
            Op::FcI8 { fc, .. } => {
                let q = QuantParams {
                    weights: fc.weights,
                    bias: fc.bias,
                    mult: fc.mult,
                    shift: fc.shift,
                    relu: fc.act_min > -128,
                };
                let geom = ConvGeom::covering(&ai);
                conv_i8(&mut b, &format!("fc_t{io}"), geom, q, (ii, &ai), (io, &ao));
            }
            Op::ConvF32(conv) => {
                let geom = ConvGeom::of_window(&conv.win);
                let p = (conv.weights, conv.bias, conv.relu);
                conv_f32(
                    &mut b,
                    &format!("conv_t{io}"),
                    geom,
                    p,
                    (ii, &ai),
                    (io, &ao),
                );
            }
            Op::FcF32(fc) => {
                let geom = ConvGeom::covering(&ai);
                let p = (fc.weights, fc.bias, fc.relu);
                conv_f32(&mut b, &format!("fc_t{io}"), geom, p, (ii, &ai), (io, &ao));
            }
            Op::AddI8(add) => {
                let ib = n.inputs()[1];
                let name = format!("add_t{io}");
                let fa = b.dequant(ii, &ai);
                let fb = b.dequant(ib, &desc(ib));
                let sum = format!("t{io}.sum");
                b.node("Add", &name, &[&fa, &fb], &sum, vec![]);
                let relu = add.act_min > -128;
                b.quant_into(&sum, io, &ao, relu, &format!("{name}.quant"));
            }
            Op::AddF32 { relu } => {
                let ib = n.inputs()[1];
                let (x, y) = (format!("t{ii}"), format!("t{ib}"));
                let name = format!("add_t{io}");
                f32_relu(&mut b, "Add", &name, &[&x, &y], io, relu, vec![]);
            }
            Op::MaxPool(win) => {
                let geom = ConvGeom::of_window(&win);
                b.node(
                    "MaxPool",
                    &format!("maxpool_t{io}"),
                    &[&format!("t{ii}")],
                    &format!("t{io}"),
                    geom.attrs(),
                );
            }
            Op::MeanI8(_) | Op::MeanF32 => float_op(
                &mut b,
                int8,
                "GlobalAveragePool",
                "mean",
                vec![],
                (ii, &ai),
                (io, &ao),
            ),
            Op::LeakyI8 { alpha, .. } | Op::LeakyF32 { alpha } => {
                let attrs = vec![attr_float("alpha", alpha)];
                float_op(
                    &mut b,
                    int8,
                    "LeakyRelu",
                    "leaky",
                    attrs,
                    (ii, &ai),
                    (io, &ao),
                )
            }
            // ONNX's AveragePool leaves padding out of the count by default
            // (`count_include_pad = 0`), as the runtime does.
            Op::AvgPoolI8 { win, act_min, .. } => {
                let name = format!("avgpool_t{io}");
                let x = b.dequant(ii, &ai);
                let y = format!("t{io}.avgpool");
                let attrs = ConvGeom::of_window(&win).attrs();
                b.node("AveragePool", &name, &[&x], &y, attrs);
                b.quant_into(&y, io, &ao, act_min > -128, &format!("{name}.quant"));
            }
            Op::AvgPoolF32 { win, relu } => {
                let attrs = ConvGeom::of_window(&win).attrs();
                let (x, name) = (format!("t{ii}"), format!("avgpool_t{io}"));
                f32_relu(&mut b, "AveragePool", &name, &[&x], io, relu, attrs);
            }
            Op::SoftmaxI8 { beta, .. } | Op::SoftmaxF32 { beta } => {
                // Softmax(β·x) over the channels (axis 1 of NCHW).
                let x = if int8 {
                    b.dequant(ii, &ai)
                } else {
                    format!("t{ii}")
                };
                let name = format!("softmax_t{io}");
                let scaled = format!("t{io}.beta_x");
                let beta_t = format!("{name}.beta");
                b.f32s(&beta_t, &[], &[beta]);
                b.node(
                    "Mul",
                    &format!("{name}.beta_mul"),
                    &[&x, &beta_t],
                    &scaled,
                    vec![],
                );
                let attrs = vec![attr_int("axis", 1)];
                if int8 {
                    let y = format!("t{io}.softmax");
                    b.node("Softmax", &name, &[&scaled], &y, attrs);
                    b.quant_into(&y, io, &ao, false, &format!("{name}.quant"));
                } else {
                    b.node("Softmax", &name, &[&scaled], &format!("t{io}"), attrs);
                }
            }
        }
    }
    // Output: float, then flattened in the runtime's HWC order.
    let mut y = if int8 {
        b.dequant(oid, &oa)
    } else {
        format!("t{oid}")
    };
    if oa.h * oa.w > 1 {
        let t = format!("t{oid}.nhwc");
        b.node(
            "Transpose",
            "output_nhwc",
            &[&y],
            &t,
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        );
        y = t;
    }
    b.node(
        "Flatten",
        "output",
        &[&y],
        OUTPUT_NAME,
        vec![attr_int("axis", 1)],
    );
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let task_name = match task {
        Task::Features => "features",
        Task::Landmarks => "landmarks",
    };
    let dtype_name = if int8 { "int8" } else { "f32" };
    let props = [
        ("rt.task", task_name.to_string()),
        ("rt.dtype", dtype_name.to_string()),
        ("rt.mean", list(&mean)),
        ("rt.std", list(&std)),
        (
            "rt.input",
            "float NCHW [1,C,H,W]: (pixel/255 - mean[c]) / std[c]".to_string(),
        ),
    ];
    let graph = GraphProto {
        name: format!("{task_name}_{dtype_name}"),
        node: b.nodes,
        initializer: b.inits,
        input: vec![value_info(
            INPUT_NAME,
            &[1, ia.c as i64, ia.h as i64, ia.w as i64],
        )],
        output: vec![value_info(OUTPUT_NAME, &[1, oa.len() as i64])],
        doc_string: about.clone(),
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "host-trainer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("runtime-core {dtype_name} model converted to ONNX; {about}"),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.into(),
                value: v,
            })
            .collect(),
        ..Default::default()
    })
}

/// An f32 op writing `t<out>`, followed by `Relu` when the runtime op fuses one.
fn f32_relu(
    b: &mut Builder,
    op: &str,
    name: &str,
    ins: &[&str],
    out: u16,
    relu: bool,
    attrs: Vec<AttributeProto>,
) {
    let y = format!("t{out}");
    if relu {
        let pre = format!("t{out}.pre");
        b.node(op, name, ins, &pre, attrs);
        b.node("Relu", &format!("{name}.relu"), &[&pre], &y, vec![]);
    } else {
        b.node(op, name, ins, &y, attrs);
    }
}

/// The provenance comment `# host-trainer export: …` of an exported file ("" if none): the
/// ONNX model's doc string. Reads comments only; the graph itself comes from `Model::parse`.
pub(crate) fn provenance(model_bytes: &[u8]) -> String {
    SafeTensors::read_metadata(model_bytes)
        .ok()
        .and_then(|(_, meta)| {
            meta.metadata()
                .as_ref()?
                .get(runtime_core::model::GRAPH_KEY)
                .cloned()
        })
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("# host-trainer export:")
                    .map(|c| c.trim().to_string())
            })
        })
        .unwrap_or_default()
}

/// A conv's geometry in ONNX terms.
#[derive(Clone, Copy)]
struct ConvGeom {
    kh: usize,
    kw: usize,
    strides: [i64; 2],
    /// ONNX `pads`: begin H, begin W, end H, end W — the runtime's `[top, left, bottom, right]`.
    pads: [i64; 4],
}

impl ConvGeom {
    fn of_window(w: &Window) -> Self {
        ConvGeom {
            kh: w.kh,
            kw: w.kw,
            strides: [w.stride_h as i64, w.stride_w as i64],
            pads: w.pads().map(|p| p as i64),
        }
    }

    /// A fully connected layer: a convolution whose kernel covers its whole input (the
    /// runtime's HWC-flattened weight rows become OIHW kernels).
    fn covering(input: &TensorDesc) -> Self {
        ConvGeom {
            kh: input.h,
            kw: input.w,
            strides: [1, 1],
            pads: [0; 4],
        }
    }

    fn attrs(&self) -> Vec<AttributeProto> {
        vec![
            attr_ints("kernel_shape", &[self.kh as i64, self.kw as i64]),
            attr_ints("strides", &self.strides),
            attr_ints("pads", &self.pads),
        ]
    }
}

/// An int8 conv's parameters as the runtime holds them (OHWI weights).
struct QuantParams<'a> {
    weights: &'a [i8],
    bias: I32Le<'a>,
    mult: I32Le<'a>,
    shift: I32Le<'a>,
    relu: bool,
}

/// int8 `conv`/`fc` → `QLinearConv` (+ `Clip` for a fused ReLU above −128).
fn conv_i8(
    b: &mut Builder,
    name: &str,
    g: ConvGeom,
    q: QuantParams,
    (ii, ai): (u16, &TensorDesc),
    (io, ao): (u16, &TensorDesc),
) {
    let (oc, ic) = (ao.c, ai.c);
    let dims = [oc as i64, ic as i64, g.kh as i64, g.kw as i64];
    let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
    b.i8s(&wn, &dims, &ohwi_to_oihw(q.weights, oc, g.kh, g.kw, ic));
    b.i32s(&bn, &[oc as i64], &q.bias.iter().collect::<Vec<_>>());
    let (m, s): (Vec<i32>, Vec<i32>) = (q.mult.iter().collect(), q.shift.iter().collect());
    let (ws, wz) = (format!("{name}.w_scale"), format!("{name}.w_zp"));
    b.f32s(
        &ws,
        &[oc as i64],
        &weight_scales(&m, &s, ai.scale, ao.scale),
    );
    b.i8s(&wz, &[oc as i64], &vec![0; oc]);
    let (xs, xz) = b.qparams(ii, ai);
    let (ys, yz) = b.qparams(io, ao);
    let clamp = q.relu && ao.zp > -128;
    let y = if clamp {
        format!("t{io}.pre")
    } else {
        format!("t{io}")
    };
    let x = format!("t{ii}");
    b.node(
        "QLinearConv",
        name,
        &[&x, &xs, &xz, &wn, &ws, &wz, &ys, &yz, &bn],
        &y,
        g.attrs(),
    );
    if clamp {
        b.clip_relu(&y, io, ao, name);
    }
}

/// f32 `conv`/`fc` → `Conv` (+ `Relu`).
fn conv_f32(
    b: &mut Builder,
    name: &str,
    g: ConvGeom,
    (weights, bias, relu): (F32Le, F32Le, bool),
    (ii, ai): (u16, &TensorDesc),
    (io, ao): (u16, &TensorDesc),
) {
    let (oc, ic) = (ao.c, ai.c);
    let dims = [oc as i64, ic as i64, g.kh as i64, g.kw as i64];
    let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
    let w: Vec<f32> = weights.iter().collect();
    b.f32s(&wn, &dims, &ohwi_to_oihw(&w, oc, g.kh, g.kw, ic));
    b.f32s(&bn, &[oc as i64], &bias.iter().collect::<Vec<_>>());
    let x = format!("t{ii}");
    f32_relu(b, "Conv", name, &[&x, &wn, &bn], io, relu, g.attrs());
}

/// `mean` and `leaky`: the ONNX float op, between `DequantizeLinear` and `QuantizeLinear` in
/// an int8 graph.
fn float_op(
    b: &mut Builder,
    int8: bool,
    onnx_op: &str,
    op: &str,
    attrs: Vec<AttributeProto>,
    (ii, ai): (u16, &TensorDesc),
    (io, ao): (u16, &TensorDesc),
) {
    let name = format!("{op}_t{io}");
    if int8 {
        let x = b.dequant(ii, ai);
        let y = format!("t{io}.{op}");
        b.node(onnx_op, &name, &[&x], &y, attrs);
        b.quant_into(&y, io, ao, false, &format!("{name}.quant"));
    } else {
        let x = format!("t{ii}");
        b.node(onnx_op, &name, &[&x], &format!("t{io}"), attrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/tiny")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Deterministic normalised inputs in the exact input range (HWC).
    fn inputs(m: &Model, n: usize) -> Vec<Vec<f32>> {
        let (mean, std) = m.normalisation();
        let mut s = 7u64;
        (0..n)
            .map(|_| {
                (0..m.input_len())
                    .map(|i| {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let p = (s >> 56) as f32 / 255.0;
                        (p - mean[i % 3]) / std[i % 3]
                    })
                    .collect()
            })
            .collect()
    }

    /// The f32 ONNX graphs, evaluated by candle-onnx's own interpreter (an evaluator that
    /// shares no code with runtime-core), equal runtime-core's f32 runs. candle-onnx has no
    /// GlobalAveragePool, so the test swaps it for the equivalent ReduceMean over H, W.
    #[test]
    fn f32_graphs_match_runtime_core_in_candle_onnx() {
        for name in ["backbone-f32.safetensors", "landmarks-f32.safetensors"] {
            let bytes = fixture(name);
            let m = Model::parse(&bytes).unwrap();
            let mut p = to_onnx_proto(&bytes).unwrap();
            for n in &mut p.graph.as_mut().unwrap().node {
                if n.op_type == "GlobalAveragePool" {
                    n.op_type = "ReduceMean".into();
                    n.attribute = vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 1)];
                }
            }
            let [h, w, c] = m.input_shape();
            let mut arena = vec![0u8; m.arena_bytes()];
            for x in inputs(&m, 3) {
                let mut want = vec![0f32; m.output_len()];
                m.run_f32(&x, &mut arena, &mut want).unwrap();
                let t = Tensor::from_vec(x, (1, h, w, c), &Device::Cpu)
                    .unwrap()
                    .permute((0, 3, 1, 2))
                    .unwrap()
                    .contiguous()
                    .unwrap();
                let outs =
                    candle_onnx::simple_eval(&p, HashMap::from([(INPUT_NAME.to_string(), t)]))
                        .unwrap();
                let got: Vec<f32> = outs[OUTPUT_NAME].flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(outs[OUTPUT_NAME].dims(), &[1, m.output_len()]);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4, "{name}: {a} vs {b}");
                }
            }
        }
    }

    fn init<'a>(g: &'a GraphProto, name: &str) -> &'a TensorProto {
        g.initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no initializer {name}"))
    }

    fn f32s(t: &TensorProto) -> Vec<f32> {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The int8 graph uses only the documented standard ops, and its scales give back the
    /// runtime's own fixed-point multipliers: `x_scale·w_scale/y_scale`, computed from the ONNX
    /// initializers in f32 as onnxruntime does, equals the file's `m·2^(s−31)` to f32
    /// precision for every channel of every conv.
    #[test]
    fn int8_graph_carries_the_runtime_parameters() {
        for name in ["backbone-int8.safetensors", "landmarks-int8.safetensors"] {
            let bytes = fixture(name);
            let model = Model::parse(&bytes).unwrap();
            let p = ModelProto::decode(to_onnx(&bytes).unwrap().as_slice()).unwrap();
            assert_eq!(p.opset_import[0].version, OPSET);
            let g = p.graph.as_ref().unwrap();
            let allowed = [
                "QuantizeLinear",
                "DequantizeLinear",
                "QLinearConv",
                "Add",
                "MaxPool",
                "GlobalAveragePool",
                "LeakyRelu",
                "Clip",
                "Flatten",
                "Transpose",
            ];
            let mut convs = 0;
            for n in &g.node {
                assert!(allowed.contains(&n.op_type.as_str()), "{}", n.op_type);
                assert!(n.domain.is_empty(), "contrib op {}", n.op_type);
                if n.op_type != "QLinearConv" {
                    continue;
                }
                convs += 1;
                // The runtime op this QLinearConv came from: the one writing `t<io>`.
                let io: u16 = n.name.rsplit_once("_t").unwrap().1.parse().unwrap();
                let node = model.nodes().iter().find(|x| x.output() == io).unwrap();
                let (w, m, s, win) = match node.op() {
                    Op::ConvI8 { conv, .. } => {
                        (conv.weights, conv.mult, conv.shift, Some(conv.win))
                    }
                    Op::FcI8 { fc, .. } => (fc.weights, fc.mult, fc.shift, None),
                    other => panic!("{} is {other:?}", n.name),
                };
                let xs = f32s(init(g, &n.input[1]))[0];
                let ws = f32s(init(g, &n.input[4]));
                let ys = f32s(init(g, &n.input[6]))[0];
                assert_eq!(ws.len(), m.len());
                for (c, &w) in ws.iter().enumerate() {
                    let onnx = (xs * w / ys) as f64;
                    let rt = m.get(c) as f64 * 2f64.powi(s.get(c) - 31);
                    if m.get(c) == 0 {
                        assert!(onnx < 2f64.powi(-32), "{name} {} channel {c}", n.name);
                        continue;
                    }
                    assert!(
                        (onnx - rt).abs() <= 1e-6 * rt,
                        "{name} {} channel {c}: {onnx} vs {rt}",
                        n.name
                    );
                }
                // The weights are the file's, permuted OHWI → OIHW; the geometry is the op's.
                let d = &init(g, &n.input[3]).dims;
                let (oc, ic, kh, kw) = (d[0] as usize, d[1] as usize, d[2] as usize, d[3] as usize);
                if let Some(win) = win {
                    assert_eq!((kh, kw, ic), (win.kh, win.kw, win.in_c));
                }
                let onnx_w = &init(g, &n.input[3]).raw_data;
                let (o, i, y, x) = (oc - 1, ic / 2, kh / 2, kw - 1);
                assert_eq!(
                    onnx_w[((o * ic + i) * kh + y) * kw + x] as i8,
                    w[((o * kh + y) * kw + x) * ic + i]
                );
            }
            assert!(convs >= 20, "{name}: {convs} QLinearConv");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(to_onnx(b"hello"), Err(OnnxError::Model(_))));
        let mut b = fixture("backbone-int8.safetensors");
        b.truncate(b.len() / 2);
        assert!(to_onnx(&b).is_err());
    }
}
