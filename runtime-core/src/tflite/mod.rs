//! `.tflite` in: an int8 TFLite flatbuffer converted, at load time, into this crate's own model
//! file, which [`Model::parse`](crate::Model::parse) then validates and runs.
//!
//! Why convert rather than interpret the flatbuffer: the model file is the one place the
//! runtime's checks live (shapes, ranges, the planner), and TFLite's int8 rules are the ones the
//! kernels already follow; the conversion only maps ops and recomputes each fixed-point
//! multiplier from the file's scales with [`ModelBuilder`] (in f64, as TFLite does), so a
//! converted model computes what TFLite Micro computes. The conversion allocates (it runs once,
//! at load); inference afterwards allocates nothing, as for any model.
//!
//! Ops: CONV_2D, DEPTHWISE_CONV_2D (any depth multiplier), FULLY_CONNECTED, ADD, MAX_POOL_2D,
//! AVERAGE_POOL_2D, MEAN (over H and W), LEAKY_RELU, SOFTMAX (int8 out at scale 1/256, zero
//! point −128, as TFLite requires), RESHAPE (a no-op on NHWC memory), and PAD / PADV2 folded
//! into the convolution or max pool they feed (the form TFLite converters give PyTorch-style
//! padding and Keras' `ZeroPadding2D`). Fused activations NONE, RELU, and RELU6 where its upper
//! clamp is at or above 127 (then it is RELU exactly; converters calibrate a ReLU6 output to a
//! range ending at most at 6, so theirs always are).
//!
//! Float interface: TensorFlow's converter, asked for full-integer quantisation without
//! `inference_input_type=int8`, keeps a float32 input and output and adds a QUANTIZE after the
//! input and a DEQUANTIZE before the output. Those two are read as the model's boundary: the
//! converted model's input is the QUANTIZE's int8 tensor and its output the DEQUANTIZE's int8
//! input ([`Converted::float_input`], [`Converted::float_output`]). The runtime's own
//! boundary arithmetic is TFLite's: [`Model::load_input_f32`](crate::Model::load_input_f32)
//! quantises as TFLite's QUANTIZE does (`round_half_away(x/scale) + zp`, saturated, in f32) and
//! [`Model::run_int8`](crate::Model::run_int8) dequantises as DEQUANTIZE (`scale·(q − zp)`,
//! one rounding to f32), so feeding the same floats gives the same floats. A QUANTIZE or
//! DEQUANTIZE anywhere else (a requantisation inside the graph) is not read.
//!
//! Anything else — an op without a kernel here, a float model, dilation, broadcasting — is a
//! [`TfliteError`] naming the op, its index and the tensor. Known arithmetic difference: MEAN
//! over an H·W that is not a power of two can differ from TFLite Micro by 1 LSB on rare sums
//! (TFLite Micro divides its multiplier by H·W with an integer division; this runtime folds
//! 1/(H·W) into one rounded multiplier).
//!
//! Every read of the flatbuffer is bounds-checked ([`fb`]); malformed bytes give an error,
//! never a panic.

pub mod schema;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::model::{
    BuildError, Dtype, LayerParams, ModelBuilder, Quant, Task, TensorDesc, TensorId,
};
use schema as s;

/// Why a `.tflite` file could not be converted.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TfliteError {
    /// The operator's index in the subgraph, when the error is about one.
    pub op_index: Option<usize>,
    /// Its builtin code (`schema::op`), when known.
    pub op_code: Option<i32>,
    /// The tensor's index, when the error is about one.
    pub tensor: Option<usize>,
    pub kind: TfliteErrorKind,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TfliteErrorKind {
    /// The bytes are not a well-formed TFLite flatbuffer (an offset or length out of range).
    Malformed(&'static str),
    /// An op this runtime has no kernel for.
    UnsupportedOp,
    /// A float (or mixed) tensor where an int8 one is needed: only int8-quantised models are
    /// read (float only at the input and output, through QUANTIZE / DEQUANTIZE).
    NotInt8,
    /// A setting of a supported op that is not supported (dilation, a RELU6 that is not RELU,
    /// broadcasting …).
    Unsupported(String),
    /// The model's own numbers are inconsistent (a shape that does not follow, a -128 weight).
    Invalid(String),
    /// The converted model failed the runtime's own validation.
    Build(BuildError),
}

/// The builtin op's TFLite name, for messages.
pub fn op_name(code: i32) -> &'static str {
    match code {
        s::op::ADD => "ADD",
        s::op::AVERAGE_POOL_2D => "AVERAGE_POOL_2D",
        s::op::CONV_2D => "CONV_2D",
        s::op::DEPTHWISE_CONV_2D => "DEPTHWISE_CONV_2D",
        s::op::DEQUANTIZE => "DEQUANTIZE",
        s::op::FULLY_CONNECTED => "FULLY_CONNECTED",
        s::op::MAX_POOL_2D => "MAX_POOL_2D",
        s::op::RESHAPE => "RESHAPE",
        s::op::SOFTMAX => "SOFTMAX",
        s::op::PAD => "PAD",
        s::op::MEAN => "MEAN",
        s::op::PADV2 => "PADV2",
        s::op::LEAKY_RELU => "LEAKY_RELU",
        s::op::QUANTIZE => "QUANTIZE",
        _ => "a builtin op",
    }
}

impl core::fmt::Display for TfliteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if let Some(i) = self.op_index {
            write!(f, "operator {i}")?;
            if let Some(c) = self.op_code {
                write!(f, " ({} = builtin {c})", op_name(c))?;
            }
            f.write_str(": ")?;
        }
        if let Some(t) = self.tensor {
            write!(f, "tensor {t}: ")?;
        }
        match &self.kind {
            TfliteErrorKind::Malformed(what) => write!(f, "malformed TFLite flatbuffer: {what}"),
            TfliteErrorKind::UnsupportedOp => f.write_str(
                "no kernel for this op in runtime-core (it runs CONV_2D, DEPTHWISE_CONV_2D, \
                 FULLY_CONNECTED, ADD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, LEAKY_RELU, SOFTMAX, \
                 RESHAPE, PAD/PADV2 before a conv, depthwise conv or max pool, QUANTIZE after a \
                 float input and DEQUANTIZE before a float output)",
            ),
            TfliteErrorKind::NotInt8 => f.write_str(
                "not an int8 tensor: only int8-quantised models are read (float only as the \
                     input of a QUANTIZE at the graph input and the output of a DEQUANTIZE at \
                     the graph output)",
            ),
            TfliteErrorKind::Unsupported(m) => write!(f, "unsupported: {m}"),
            TfliteErrorKind::Invalid(m) => write!(f, "invalid: {m}"),
            TfliteErrorKind::Build(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TfliteError {}

type R<T> = Result<T, TfliteError>;

fn malformed(what: &'static str) -> TfliteError {
    TfliteError {
        op_index: None,
        op_code: None,
        tensor: None,
        kind: TfliteErrorKind::Malformed(what),
    }
}

/// Whether `bytes` look like a TFLite flatbuffer (the `TFL3` file identifier).
pub fn is_tflite(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"TFL3")
}

/// A bounds-checked reader of flatbuffer tables, vectors and scalars.
pub mod fb {
    use super::{malformed, R};

    fn get<const N: usize>(b: &[u8], at: usize) -> R<[u8; N]> {
        let end = at
            .checked_add(N)
            .ok_or_else(|| malformed("offset overflow"))?;
        let s = b
            .get(at..end)
            .ok_or_else(|| malformed("read past the end"))?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(super) fn u16_at(b: &[u8], at: usize) -> R<u16> {
        Ok(u16::from_le_bytes(get(b, at)?))
    }
    pub(super) fn u32_at(b: &[u8], at: usize) -> R<u32> {
        Ok(u32::from_le_bytes(get(b, at)?))
    }
    fn i32_at(b: &[u8], at: usize) -> R<i32> {
        Ok(i32::from_le_bytes(get(b, at)?))
    }

    /// A table: its position and its vtable.
    #[derive(Clone, Copy)]
    pub struct Table<'a> {
        buf: &'a [u8],
        pos: usize,
        vt: usize,
        vt_len: usize,
    }

    impl<'a> Table<'a> {
        /// The table at `pos` (its vtable is at `pos − soffset`).
        pub fn at(buf: &'a [u8], pos: usize) -> R<Self> {
            let soff = i32_at(buf, pos)? as isize;
            let vt = (pos as isize)
                .checked_sub(soff)
                .filter(|&v| v >= 0)
                .ok_or_else(|| malformed("vtable offset"))? as usize;
            let vt_len = u16_at(buf, vt)? as usize;
            if vt_len < 4 || !vt_len.is_multiple_of(2) || vt + vt_len > buf.len() {
                return Err(malformed("vtable size"));
            }
            Ok(Table {
                buf,
                pos,
                vt,
                vt_len,
            })
        }

        /// The root table of a buffer.
        pub fn root(buf: &'a [u8]) -> R<Self> {
            Table::at(buf, u32_at(buf, 0)? as usize)
        }

        /// Where field `id` is stored, if present.
        fn field(&self, id: u16) -> R<Option<usize>> {
            let slot = 4 + 2 * id as usize;
            if slot + 2 > self.vt_len {
                return Ok(None);
            }
            let off = u16_at(self.buf, self.vt + slot)? as usize;
            Ok((off != 0).then_some(self.pos + off))
        }

        pub fn u8_or(&self, id: u16, default: u8) -> R<u8> {
            match self.field(id)? {
                Some(p) => Ok(get::<1>(self.buf, p)?[0]),
                None => Ok(default),
            }
        }
        pub fn i8_or(&self, id: u16, default: i8) -> R<i8> {
            Ok(self.u8_or(id, default as u8)? as i8)
        }
        pub fn i32_or(&self, id: u16, default: i32) -> R<i32> {
            match self.field(id)? {
                Some(p) => i32_at(self.buf, p),
                None => Ok(default),
            }
        }
        pub fn u32_or(&self, id: u16, default: u32) -> R<u32> {
            match self.field(id)? {
                Some(p) => u32_at(self.buf, p),
                None => Ok(default),
            }
        }
        pub fn f32_or(&self, id: u16, default: f32) -> R<f32> {
            match self.field(id)? {
                Some(p) => Ok(f32::from_le_bytes(get(self.buf, p)?)),
                None => Ok(default),
            }
        }

        /// The position an offset field points to.
        fn target(&self, id: u16) -> R<Option<usize>> {
            let Some(p) = self.field(id)? else {
                return Ok(None);
            };
            let t = p
                .checked_add(u32_at(self.buf, p)? as usize)
                .ok_or_else(|| malformed("offset overflow"))?;
            Ok(Some(t))
        }

        pub fn table(&self, id: u16) -> R<Option<Table<'a>>> {
            match self.target(id)? {
                Some(t) => Ok(Some(Table::at(self.buf, t)?)),
                None => Ok(None),
            }
        }

        /// A vector of `elem`-byte elements.
        pub fn vector(&self, id: u16, elem: usize) -> R<Option<Vector<'a>>> {
            let Some(t) = self.target(id)? else {
                return Ok(None);
            };
            let len = u32_at(self.buf, t)? as usize;
            let data = t + 4;
            let end = len
                .checked_mul(elem)
                .and_then(|n| n.checked_add(data))
                .ok_or_else(|| malformed("vector length"))?;
            if end > self.buf.len() {
                return Err(malformed("vector past the end"));
            }
            Ok(Some(Vector {
                buf: self.buf,
                data,
                len,
                elem,
            }))
        }

        /// A byte vector (or string) as a slice.
        pub fn bytes(&self, id: u16) -> R<Option<&'a [u8]>> {
            Ok(self
                .vector(id, 1)?
                .map(|v| &self.buf[v.data..v.data + v.len]))
        }
    }

    /// A vector: `len` elements of `elem` bytes at `data` (checked to lie in the buffer).
    #[derive(Clone, Copy)]
    pub struct Vector<'a> {
        buf: &'a [u8],
        data: usize,
        pub len: usize,
        elem: usize,
    }

    impl<'a> Vector<'a> {
        pub fn table(&self, i: usize) -> R<Table<'a>> {
            if i >= self.len || self.elem != 4 {
                return Err(malformed("vector index"));
            }
            let p = self.data + 4 * i;
            let t = p
                .checked_add(u32_at(self.buf, p)? as usize)
                .ok_or_else(|| malformed("offset overflow"))?;
            Table::at(self.buf, t)
        }
        pub fn i32(&self, i: usize) -> R<i32> {
            if i >= self.len || self.elem != 4 {
                return Err(malformed("vector index"));
            }
            i32_at(self.buf, self.data + 4 * i)
        }
        pub fn f32(&self, i: usize) -> R<f32> {
            Ok(f32::from_bits(self.i32(i)? as u32))
        }
        pub fn i64(&self, i: usize) -> R<i64> {
            if i >= self.len || self.elem != 8 {
                return Err(malformed("vector index"));
            }
            Ok(i64::from_le_bytes(get(self.buf, self.data + 8 * i)?))
        }
        pub fn i32s(&self) -> R<alloc::vec::Vec<i32>> {
            (0..self.len).map(|i| self.i32(i)).collect()
        }
    }
}

use fb::Table;

/// One tensor of the subgraph, as read.
struct TensorInfo<'a> {
    shape: Vec<i32>,
    ty: i8,
    /// Constant data (weights, biases, axes, paddings); empty for activations.
    data: &'a [u8],
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    /// The axis of per-channel scales (`quantized_dimension`, default 0).
    quant_dim: i32,
}

impl TensorInfo<'_> {
    fn quant(&self) -> Option<Quant> {
        Some(Quant {
            scale: *self.scales.first()?,
            zp: i32::try_from(*self.zero_points.first().unwrap_or(&0)).ok()?,
        })
    }
    /// The element count; `None` when the shape's product overflows (a malformed file: the
    /// fuzzer found shapes whose product does not fit a `usize`).
    fn len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d.max(0) as usize))
    }
}

/// A pending PAD/PADV2: its input, `[top, left, bottom, right]` and the padding value.
#[derive(Clone, Copy)]
struct Pad {
    input: TensorId,
    pads: [usize; 4],
    value: i32,
}

/// Converts an int8 `.tflite` file into this runtime's model file (safetensors with `rt.graph`),
/// ready for [`Model::parse`](crate::Model::parse). The input normalisation (`rt.mean`, `rt.std`)
/// and the task (`rt.task`) come from the file's metadata when it has them (the exporter writes
/// them), else mean 0 and std 1 (pixels in [0, 1]) and `Task::Features`.
pub fn to_model_bytes(tflite: &[u8]) -> Result<Vec<u8>, TfliteError> {
    convert(tflite).map(|c| c.model)
}

/// A converted `.tflite`: the runtime model file and where each TFLite tensor went.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Converted {
    /// The runtime model file ([`to_model_bytes`]).
    pub model: Vec<u8>,
    /// For each TFLite tensor (by subgraph index), the runtime activation tensor holding the
    /// same int8 values ([`Node::output`](crate::Node::output) ids; a RESHAPE's output is its
    /// input's), or `None` (constants, and PAD outputs folded into the op they feed). For
    /// comparing every intermediate tensor with another engine. Float tensors (a float
    /// interface's input and output) map to `None`.
    pub tensor_ids: Vec<Option<u16>>,
    /// The file's input is float32, quantised by a QUANTIZE into the model's int8 input (feed
    /// floats with [`Model::load_input_f32`](crate::Model::load_input_f32)).
    pub float_input: bool,
    /// The file's output is float32, the DEQUANTIZE of the model's int8 output (read it with
    /// [`Model::run_int8`](crate::Model::run_int8) or [`Model::run`](crate::Model::run)).
    pub float_output: bool,
}

/// [`to_model_bytes`], with the tensor map of [`Converted`].
pub fn convert(tflite: &[u8]) -> Result<Converted, TfliteError> {
    let model = Table::root(tflite)?;
    let subgraphs = model
        .vector(s::model::SUBGRAPHS, 4)?
        .ok_or_else(|| malformed("no subgraphs"))?;
    if subgraphs.len != 1 {
        return Err(unsupported(
            None,
            None,
            format!("{} subgraphs (1 is read)", subgraphs.len),
        ));
    }
    let g = subgraphs.table(0)?;
    let buffers = model.vector(s::model::BUFFERS, 4)?;
    let codes = model
        .vector(s::model::OPERATOR_CODES, 4)?
        .ok_or_else(|| malformed("no operator codes"))?;

    // Tensors.
    let tv = g
        .vector(s::subgraph::TENSORS, 4)?
        .ok_or_else(|| malformed("no tensors"))?;
    let mut tensors = Vec::with_capacity(tv.len);
    for i in 0..tv.len {
        let t = tv.table(i)?;
        let shape = match t.vector(s::tensor::SHAPE, 4)? {
            Some(v) => v.i32s()?,
            None => Vec::new(),
        };
        let (mut scales, mut zero_points, mut quant_dim) = (Vec::new(), Vec::new(), 0);
        if let Some(q) = t.table(s::tensor::QUANTIZATION)? {
            quant_dim = q.i32_or(s::quantization::QUANTIZED_DIMENSION, 0)?;
            if let Some(v) = q.vector(s::quantization::SCALE, 4)? {
                scales = (0..v.len).map(|i| v.f32(i)).collect::<R<_>>()?;
            }
            if let Some(v) = q.vector(s::quantization::ZERO_POINT, 8)? {
                zero_points = (0..v.len).map(|i| v.i64(i)).collect::<R<_>>()?;
            }
        }
        let b = t.u32_or(s::tensor::BUFFER, 0)? as usize;
        tensors.push(TensorInfo {
            shape,
            ty: t.i8_or(s::tensor::TYPE, 0)?,
            data: buffer_data(buffers, b)?,
            scales,
            zero_points,
            quant_dim,
        });
    }
    let tensor = |i: i32| -> R<&TensorInfo> {
        usize::try_from(i)
            .ok()
            .and_then(|i| tensors.get(i))
            .ok_or_else(|| malformed("tensor index"))
    };

    // The input.
    let inputs = g
        .vector(s::subgraph::INPUTS, 4)?
        .ok_or_else(|| malformed("no inputs"))?
        .i32s()?;
    let outputs = g
        .vector(s::subgraph::OUTPUTS, 4)?
        .ok_or_else(|| malformed("no outputs"))?
        .i32s()?;
    let ([input], [output]) = (&inputs[..], &outputs[..]) else {
        return Err(unsupported(
            None,
            None,
            "a graph with several inputs or outputs".into(),
        ));
    };
    let at_tensor = |i: i32, kind: TfliteErrorKind| TfliteError {
        op_index: None,
        op_code: None,
        tensor: Some(i as usize),
        kind,
    };
    tensor(*input)?;
    tensor(*output)?;

    // The operators: their codes, inputs, outputs and options.
    let ops = g
        .vector(s::subgraph::OPERATORS, 4)?
        .ok_or_else(|| malformed("no operators"))?;
    let mut op_list = Vec::with_capacity(ops.len);
    for i in 0..ops.len {
        let op = ops.table(i)?;
        let ci = op.u32_or(s::operator::OPCODE_INDEX, 0)? as usize;
        if ci >= codes.len {
            return Err(malformed("opcode index"));
        }
        let oc = codes.table(ci)?;
        let code = (oc.i8_or(s::operator_code::DEPRECATED_BUILTIN_CODE, 0)? as i32)
            .max(oc.i32_or(s::operator_code::BUILTIN_CODE, 0)?);
        let ins = match op.vector(s::operator::INPUTS, 4)? {
            Some(v) => v.i32s()?,
            None => Vec::new(),
        };
        let outs = match op.vector(s::operator::OUTPUTS, 4)? {
            Some(v) => v.i32s()?,
            None => Vec::new(),
        };
        let opts = op.table(s::operator::BUILTIN_OPTIONS)?;
        op_list.push((code, ins, outs, opts));
    }

    // A float input is read through the QUANTIZE that turns it into int8 (see the module doc):
    // the model's input is then that op's output.
    let mut quantize_op = None;
    let model_input = if tensor(*input)?.ty == s::FLOAT32 {
        let found = op_list
            .iter()
            .position(|(code, ins, _, _)| *code == s::op::QUANTIZE && ins.first() == Some(input));
        let Some(q) = found else {
            return Err(at_tensor(*input, TfliteErrorKind::NotInt8));
        };
        let (_, _, outs, _) = &op_list[q];
        let qerr = |t: Option<i32>, kind| TfliteError {
            op_index: Some(q),
            op_code: Some(s::op::QUANTIZE),
            tensor: t.map(|t| t as usize),
            kind,
        };
        let [out] = outs[..] else {
            return Err(qerr(
                None,
                TfliteErrorKind::Invalid("needs exactly one output".into()),
            ));
        };
        let to = tensor(out)?;
        if to.ty != s::INT8 {
            return Err(qerr(Some(out), TfliteErrorKind::NotInt8));
        }
        if to.shape != tensor(*input)?.shape {
            return Err(qerr(
                Some(out),
                TfliteErrorKind::Invalid("QUANTIZE changes the shape".into()),
            ));
        }
        quantize_op = Some(q);
        out
    } else {
        *input
    };
    let ti = tensor(model_input)?;
    if ti.ty != s::INT8 {
        return Err(at_tensor(model_input, TfliteErrorKind::NotInt8));
    }
    let [1, h, w, c] = ti.shape[..] else {
        return Err(at_tensor(
            model_input,
            TfliteErrorKind::Unsupported(format!("input shape {:?} (NHWC, N = 1)", ti.shape)),
        ));
    };
    let (h, w, c) = (h.max(0) as usize, w.max(0) as usize, c.max(0) as usize);
    // Before the per-channel mean/std are allocated: a hostile channel count (libFuzzer found
    // 1.5 G) would otherwise ask for gigabytes here, ahead of the builder's own check.
    if c > crate::model::MAX_INPUT_CHANNELS {
        return Err(at_tensor(
            model_input,
            TfliteErrorKind::Unsupported(format!(
                "input with {c} channels (at most {})",
                crate::model::MAX_INPUT_CHANNELS
            )),
        ));
    }
    let floats = |key: &str| -> R<Option<Vec<f32>>> {
        let Some(b) = metadata(model, buffers, key)? else {
            return Ok(None);
        };
        let text = core::str::from_utf8(b).map_err(|_| malformed("metadata text"))?;
        text.split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .map_err(|_| malformed("metadata number"))
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    };
    let mean = floats("rt.mean")?.unwrap_or_else(|| vec![0.0; c]);
    let std = floats("rt.std")?.unwrap_or_else(|| vec![1.0; c]);
    let task = match metadata(model, buffers, "rt.task")? {
        Some(b"landmarks") => Task::Landmarks,
        _ => Task::Features,
    };
    let mut mb = ModelBuilder::new(Dtype::Int8, task).with_weight_scales();
    let in_q = ti
        .quant()
        .ok_or_else(|| at_tensor(model_input, TfliteErrorKind::NotInt8))?;
    let x = mb
        .input([h, w, c], &mean, &std, in_q)
        .map_err(|e| at_tensor(model_input, TfliteErrorKind::Build(e)))?;
    let mut ids: Vec<Option<TensorId>> = vec![None; tensors.len()];
    let mut pads: Vec<Option<Pad>> = vec![None; tensors.len()];
    ids[model_input as usize] = Some(x);

    // The operators, in order (the input's QUANTIZE is the model's input, done above).
    let mut float_output = false;
    for (i, (code, ins, outs, opts)) in op_list.iter().enumerate() {
        if quantize_op == Some(i) {
            continue;
        }
        let mut cx = OpCx {
            index: i,
            code: *code,
            ins,
            outs,
            tensors: &tensors,
            ids: &mut ids,
            pads: &mut pads,
            mb: &mut mb,
            graph_output: *output,
            float_output: &mut float_output,
        };
        convert_op(&mut cx, *opts)?;
    }
    let y = ids
        .get(*output as usize)
        .copied()
        .flatten()
        .ok_or_else(|| malformed("the output is not produced by any operator"))?;
    let build = |e| at_tensor(*output, TfliteErrorKind::Build(e));
    mb.output(y).map_err(build)?;
    Ok(Converted {
        model: mb.into_bytes().map_err(build)?,
        tensor_ids: ids
            .iter()
            .zip(&tensors)
            .map(|(t, info)| t.filter(|_| info.ty == s::INT8).map(|t| t.0))
            .collect(),
        float_input: quantize_op.is_some(),
        float_output,
    })
}

/// The bytes of metadata entry `key` (the exporter writes `rt.mean`, `rt.std`, `rt.task`).
fn metadata<'a>(
    model: Table<'a>,
    buffers: Option<fb::Vector<'a>>,
    key: &str,
) -> R<Option<&'a [u8]>> {
    let Some(list) = model.vector(s::model::METADATA, 4)? else {
        return Ok(None);
    };
    for i in 0..list.len {
        let m = list.table(i)?;
        if m.bytes(s::metadata::NAME)? == Some(key.as_bytes()) {
            let b = m.u32_or(s::metadata::BUFFER, 0)? as usize;
            return buffer_data(buffers, b).map(Some);
        }
    }
    Ok(None)
}

/// The data of buffer `b` (empty for buffer 0 and for activations).
fn buffer_data<'a>(buffers: Option<fb::Vector<'a>>, b: usize) -> R<&'a [u8]> {
    let Some(v) = buffers else {
        return Ok(&[]);
    };
    if b >= v.len {
        return Err(malformed("buffer index"));
    }
    Ok(v.table(b)?.bytes(s::buffer::DATA)?.unwrap_or(&[]))
}

fn unsupported(op_index: Option<usize>, op_code: Option<i32>, m: String) -> TfliteError {
    TfliteError {
        op_index,
        op_code,
        tensor: None,
        kind: TfliteErrorKind::Unsupported(m),
    }
}

/// One operator's conversion context.
struct OpCx<'c, 'a> {
    index: usize,
    code: i32,
    ins: &'c [i32],
    outs: &'c [i32],
    tensors: &'c [TensorInfo<'a>],
    ids: &'c mut Vec<Option<TensorId>>,
    pads: &'c mut Vec<Option<Pad>>,
    mb: &'c mut ModelBuilder,
    /// The subgraph's output tensor (a DEQUANTIZE may write it).
    graph_output: i32,
    /// Set when a DEQUANTIZE gives the float output.
    float_output: &'c mut bool,
}

impl<'a> OpCx<'_, 'a> {
    fn err(&self, tensor: Option<i32>, kind: TfliteErrorKind) -> TfliteError {
        TfliteError {
            op_index: Some(self.index),
            op_code: Some(self.code),
            tensor: tensor.map(|t| t as usize),
            kind,
        }
    }
    fn unsupported(&self, m: String) -> TfliteError {
        self.err(None, TfliteErrorKind::Unsupported(m))
    }
    fn invalid(&self, t: Option<i32>, m: String) -> TfliteError {
        self.err(t, TfliteErrorKind::Invalid(m))
    }
    fn build(&self, t: i32) -> impl Fn(BuildError) -> TfliteError + '_ {
        move |e| self.err(Some(t), TfliteErrorKind::Build(e))
    }

    /// Input `k`'s tensor index.
    fn input(&self, k: usize) -> R<i32> {
        self.ins
            .get(k)
            .copied()
            .filter(|&t| t >= 0 && (t as usize) < self.tensors.len())
            .ok_or_else(|| self.invalid(None, format!("input {k} missing")))
    }
    /// Optional input `k` (absent, or −1 in the file: `None`).
    fn optional_input(&self, k: usize) -> R<Option<i32>> {
        match self.ins.get(k).copied() {
            None | Some(-1) => Ok(None),
            Some(_) => self.input(k).map(Some),
        }
    }
    fn output(&self) -> R<i32> {
        match self.outs {
            [t] if *t >= 0 && (*t as usize) < self.tensors.len() => Ok(*t),
            _ => Err(self.invalid(None, "needs exactly one output".into())),
        }
    }
    fn info(&self, t: i32) -> &TensorInfo<'_> {
        &self.tensors[t as usize]
    }
    /// An int8 activation produced earlier (or the input).
    fn activation(&self, t: i32) -> R<TensorId> {
        if self.info(t).ty != s::INT8 {
            return Err(self.err(Some(t), TfliteErrorKind::NotInt8));
        }
        self.ids[t as usize].ok_or_else(|| {
            if self.pads[t as usize].is_some() {
                self.unsupported(
                    "a PAD whose output feeds an op other than CONV_2D, DEPTHWISE_CONV_2D or \
                     MAX_POOL_2D"
                        .into(),
                )
            } else {
                self.invalid(
                    Some(t),
                    "read before any operator writes it (or a constant)".into(),
                )
            }
        })
    }
    /// The activation input `t` with the padding of a PAD/PADV2 that produced it, if any.
    fn padded(&self, t: i32) -> R<(TensorId, [usize; 4], Option<i32>)> {
        match self.pads[t as usize] {
            Some(p) => Ok((p.input, p.pads, Some(p.value))),
            None => Ok((self.activation(t)?, [0; 4], None)),
        }
    }
    fn out_quant(&self, t: i32) -> R<Quant> {
        let i = self.info(t);
        if i.ty != s::INT8 {
            return Err(self.err(Some(t), TfliteErrorKind::NotInt8));
        }
        i.quant()
            .ok_or_else(|| self.invalid(Some(t), "no quantisation".into()))
    }
    /// Whether fused activation `act` of an op writing `out` clamps at the zero point. RELU6
    /// is read where it is RELU exactly: TFLite clamps to `[max(zp, −128), min(zp +
    /// round(6/scale), 127)]`, and when the upper bound reaches 127 (as it does whenever the
    /// output's range was calibrated on a ReLU6, `[0, ≤ 6]`) only the lower clamp remains.
    fn relu(&self, act: i8, out: i32) -> R<bool> {
        match act {
            s::ACT_NONE => Ok(false),
            s::ACT_RELU => Ok(true),
            s::ACT_RELU6 => {
                let q = self.out_quant(out)?;
                // TFLite's `quantize(6.0)`: `zp + round_half_away(6.0f / scale)`, in f32.
                let hi = (libm::roundf(6.0f32 / q.scale) as i32).saturating_add(q.zp);
                if hi >= 127 {
                    Ok(true)
                } else {
                    Err(self.unsupported(format!(
                        "fused RELU6 whose upper clamp ({hi}) is inside the int8 range (RELU6 \
                         is read only where it equals RELU: 6 at or above the output's largest \
                         value)"
                    )))
                }
            }
            other => Err(self.unsupported(format!(
                "fused activation {other} (NONE, RELU, and RELU6 where it equals RELU, are)"
            ))),
        }
    }
    /// Records `out` as the builder's tensor `id`, checking its shape against the file's.
    fn produce(&mut self, out: i32, id: TensorId) -> R<()> {
        let d = self.mb.desc(id).map_err(self.build(out))?;
        let want = &self.info(out).shape;
        let same = match want[..] {
            [1, h, w, c] => [d.h, d.w, d.c] == [h as usize, w as usize, c as usize],
            [1, n] => d.h * d.w * d.c == n as usize && d.h * d.w == 1,
            _ => false,
        };
        if !same {
            return Err(self.invalid(
                Some(out),
                format!("shape {want:?}, but the op gives {}x{}x{}", d.h, d.w, d.c),
            ));
        }
        self.ids[out as usize] = Some(id);
        Ok(())
    }

    /// Constant int8 weights with per-channel (or per-tensor) scales along axis `ch_axis` (the
    /// output channels: 0 for CONV_2D and FULLY_CONNECTED, 3 for DEPTHWISE_CONV_2D) and zero
    /// points 0, and the int32 bias (zeros if absent).
    fn weights(
        &self,
        wt: i32,
        bt: Option<i32>,
        oc: usize,
        ch_axis: i32,
    ) -> R<(&'a [i8], Vec<f32>, Vec<i32>)> {
        let w = &self.tensors[wt as usize];
        if w.scales.len() > 1 && w.quant_dim != ch_axis {
            return Err(self.invalid(
                Some(wt),
                format!(
                    "per-channel scales along axis {} (the output channels are axis {ch_axis})",
                    w.quant_dim
                ),
            ));
        }
        if w.ty != s::INT8 {
            return Err(self.err(Some(wt), TfliteErrorKind::NotInt8));
        }
        if w.len() != Some(w.data.len()) || w.data.is_empty() {
            return Err(self.invalid(Some(wt), "weights are not a constant of their shape".into()));
        }
        if w.zero_points.iter().any(|&z| z != 0) {
            return Err(self.unsupported("weights with a non-zero zero point".into()));
        }
        let scales = match w.scales.len() {
            1 => vec![w.scales[0]; oc],
            n if n == oc => w.scales.clone(),
            n => return Err(self.invalid(Some(wt), format!("{n} scales for {oc} channels"))),
        };
        // Borrowed from the file, not copied: the builder makes the one copy it stores, and a
        // second, transient one would fragment a small MCU heap.
        let weights: &'a [i8] = crate::ops::bytes_as_i8(w.data);
        if weights.contains(&-128) {
            return Err(self.invalid(
                Some(wt),
                "an int8 weight of -128 (TFLite's are in [-127, 127])".into(),
            ));
        }
        let bias = match bt {
            None => vec![0; oc],
            Some(bt) => {
                let b = self.info(bt);
                if b.ty != s::INT32 || b.data.len() != 4 * oc {
                    return Err(self.invalid(Some(bt), format!("bias is not {oc} int32 constants")));
                }
                b.data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
        };
        Ok((weights, scales, bias))
    }

    /// `[top, left, bottom, right]` of TFLite padding `padding` for a `k`/`stride` window on an
    /// `h×w` input (SAME: the total split with the smaller half on top/left).
    fn window_pads(
        &self,
        padding: i8,
        hw: [usize; 2],
        k: [usize; 2],
        st: [usize; 2],
    ) -> R<[usize; 4]> {
        match padding {
            s::VALID => Ok([0; 4]),
            s::SAME => {
                let total = |n: usize, k: usize, s: usize| {
                    let out = n.div_ceil(s.max(1));
                    ((out.max(1) - 1) * s + k).saturating_sub(n)
                };
                let (th, tw) = (total(hw[0], k[0], st[0]), total(hw[1], k[1], st[1]));
                Ok([th / 2, tw / 2, th - th / 2, tw - tw / 2])
            }
            p => Err(self.unsupported(format!("padding {p}"))),
        }
    }
}

fn add_pads(a: [usize; 4], b: [usize; 4]) -> [usize; 4] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
}

fn pos(v: i32) -> usize {
    v.max(0) as usize
}

/// CONV_2D and DEPTHWISE_CONV_2D: the same inputs, options and checks but for the filter
/// layout (OHWI or `[1, KH, KW, OC]`), the channel rule (the input's channels, or a multiple of
/// them), the quantisation axis of the weights (0 or 3) and the options' ids (the depthwise
/// table has `depth_multiplier` at 3, which moves the activation and the dilations up by one).
fn convert_conv(cx: &mut OpCx, opts: Option<Table>, name: &str, depthwise: bool) -> R<()> {
    let opt = |id: u16, d: i32| -> R<i32> { opts.map_or(Ok(d), |t| t.i32_or(id, d)) };
    let opt8 = |id: u16, d: i8| -> R<i8> { opts.map_or(Ok(d), |t| t.i8_or(id, d)) };
    let after_dm = u16::from(depthwise);
    let (xt, wt, out) = (cx.input(0)?, cx.input(1)?, cx.output()?);
    let bt = cx.optional_input(2)?;
    let (x, pre, pad_value) = cx.padded(xt)?;
    // `ic`: the filter's input channels (a depthwise filter has none).
    let (oc, kh, kw, ic) = if depthwise {
        let [1, kh, kw, oc] = cx.info(wt).shape[..] else {
            return Err(cx.invalid(Some(wt), "filter is not [1, KH, KW, OC]".into()));
        };
        (pos(oc), pos(kh), pos(kw), None)
    } else {
        let [oc, kh, kw, ic] = cx.info(wt).shape[..] else {
            return Err(cx.invalid(Some(wt), "filter is not OHWI".into()));
        };
        (pos(oc), pos(kh), pos(kw), Some(pos(ic)))
    };
    if opt(4 + after_dm, 1)? != 1 || opt(5 + after_dm, 1)? != 1 {
        return Err(cx.unsupported("dilation".into()));
    }
    let st = [pos(opt(2, 1)?), pos(opt(1, 1)?)];
    let d = cx.mb.desc(x).map_err(cx.build(xt))?;
    // The depth multiplier (depthwise only).
    let dm = if let Some(ic) = ic {
        if ic != d.c {
            return Err(cx.invalid(
                Some(wt),
                format!("{ic} input channels, the input has {}", d.c),
            ));
        }
        None
    } else {
        // TFLite derives the multiplier from the shapes; the option, when set, must agree.
        if d.c == 0 || oc == 0 || !oc.is_multiple_of(d.c) {
            return Err(cx.invalid(
                Some(wt),
                format!("{oc} output channels for {} input channels", d.c),
            ));
        }
        let dm = oc / d.c;
        let dm_opt = opt(3, 0)?;
        if dm_opt != 0 && usize::try_from(dm_opt) != Ok(dm) {
            return Err(cx.invalid(
                Some(wt),
                format!(
                    "depth_multiplier {dm_opt}, but {oc} output channels for {} input \
                     channels",
                    d.c
                ),
            ));
        }
        Some(dm)
    };
    if pad_value.is_some_and(|v| v != d.zp) {
        let op = if depthwise { "depthwise conv" } else { "conv" };
        return Err(cx.unsupported(format!(
            "a PADV2 before a {op} with a value other than the zero point"
        )));
    }
    let (ph, pw) = (d.h + pre[0] + pre[2], d.w + pre[1] + pre[3]);
    let own = cx.window_pads(opt8(0, s::SAME)?, [ph, pw], [kh, kw], st)?;
    let relu = cx.relu(opt8(3 + after_dm, s::ACT_NONE)?, out)?;
    let axis = if depthwise { 3 } else { 0 };
    let (weights, w_scale, bias) = cx.weights(wt, bt, oc, axis)?;
    let q = cx.out_quant(out)?;
    let p = LayerParams::I8 {
        weights,
        w_scale: &w_scale,
        bias: &bias,
    };
    let pads = add_pads(pre, own);
    let y = match dm {
        Some(dm) => cx.mb.dwconv(name, x, dm, [kh, kw], st, pads, relu, p, q),
        None => cx.mb.conv(name, x, oc, [kh, kw], st, pads, relu, p, q),
    };
    let y = y.map_err(cx.build(out))?;
    cx.produce(out, y)
}

/// A pool's (`op`'s) strides and filter size from its options, and its input `x`'s
/// descriptor, once its output is checked to keep the input's quantisation (TFLite's pools do).
fn pool_window(
    cx: &mut OpCx,
    opts: Option<Table>,
    (xt, x): (i32, TensorId),
    out: i32,
    op: &str,
) -> R<([usize; 2], [usize; 2], TensorDesc)> {
    let opt = |id: u16, d: i32| -> R<i32> { opts.map_or(Ok(d), |t| t.i32_or(id, d)) };
    let st = [pos(opt(2, 1)?), pos(opt(1, 1)?)];
    let k = [pos(opt(4, 1)?), pos(opt(3, 1)?)];
    let d = cx.mb.desc(x).map_err(cx.build(xt))?;
    let same = Quant {
        scale: d.scale,
        zp: d.zp,
    };
    if cx.out_quant(out)? != same {
        return Err(cx.unsupported(format!(
            "{op} whose output quantisation differs from its input's"
        )));
    }
    Ok((st, k, d))
}

fn convert_op(cx: &mut OpCx, opts: Option<Table>) -> R<()> {
    let name = format!("op{}", cx.index);
    let opt8 = |id: u16, d: i8| -> R<i8> { opts.map_or(Ok(d), |t| t.i8_or(id, d)) };
    match cx.code {
        s::op::CONV_2D => convert_conv(cx, opts, &name, false),
        s::op::DEPTHWISE_CONV_2D => convert_conv(cx, opts, &name, true),
        s::op::FULLY_CONNECTED => {
            let (xt, wt, out) = (cx.input(0)?, cx.input(1)?, cx.output()?);
            let bt = cx.optional_input(2)?;
            let x = cx.activation(xt)?;
            let [o, _] = cx.info(wt).shape[..] else {
                return Err(cx.invalid(Some(wt), "weights are not [out, in]".into()));
            };
            if opt8(1, 0)? != 0 {
                return Err(cx.unsupported("shuffled FULLY_CONNECTED weights".into()));
            }
            let relu = cx.relu(opt8(0, s::ACT_NONE)?, out)?;
            let (weights, w_scale, bias) = cx.weights(wt, bt, pos(o), 0)?;
            let q = cx.out_quant(out)?;
            let p = LayerParams::I8 {
                weights,
                w_scale: &w_scale,
                bias: &bias,
            };
            let y = cx
                .mb
                .fc(&name, x, pos(o), relu, p, q)
                .map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::ADD => {
            let (at, bt, out) = (cx.input(0)?, cx.input(1)?, cx.output()?);
            let (a, b) = (cx.activation(at)?, cx.activation(bt)?);
            if cx.info(at).shape != cx.info(bt).shape {
                return Err(cx.unsupported("ADD with broadcasting".into()));
            }
            let relu = cx.relu(opt8(0, s::ACT_NONE)?, out)?;
            let q = cx.out_quant(out)?;
            let y = cx.mb.add(a, b, relu, q).map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::MAX_POOL_2D => {
            let (xt, out) = (cx.input(0)?, cx.output()?);
            let (x, pre, pad_value) = cx.padded(xt)?;
            if pad_value.is_some_and(|v| v != -128) {
                return Err(cx.unsupported(
                    "a PAD before a max pool with a value above -128 (it could win the max)".into(),
                ));
            }
            if cx.relu(opt8(5, s::ACT_NONE)?, out)? {
                return Err(cx.unsupported("MAX_POOL_2D with a fused RELU".into()));
            }
            let (st, k, d) = pool_window(cx, opts, (xt, x), out, "MAX_POOL_2D")?;
            let (ph, pw) = (d.h + pre[0] + pre[2], d.w + pre[1] + pre[3]);
            let own = cx.window_pads(opt8(0, s::SAME)?, [ph, pw], k, st)?;
            let y = cx
                .mb
                .maxpool(x, k, st, add_pads(pre, own))
                .map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::AVERAGE_POOL_2D => {
            let (xt, out) = (cx.input(0)?, cx.output()?);
            let x = cx.activation(xt)?;
            let relu = cx.relu(opt8(5, s::ACT_NONE)?, out)?;
            let (st, k, d) = pool_window(cx, opts, (xt, x), out, "AVERAGE_POOL_2D")?;
            let pads = cx.window_pads(opt8(0, s::SAME)?, [d.h, d.w], k, st)?;
            let y = cx.mb.avgpool(x, k, st, pads, relu).map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::SOFTMAX => {
            let (xt, out) = (cx.input(0)?, cx.output()?);
            let x = cx.activation(xt)?;
            // The schema's default is 0 (a file leaves a default field out); β = 0 is refused.
            let beta = opts.map_or(Ok(0.0), |t| t.f32_or(0, 0.0))?;
            if cx.out_quant(out)? != crate::model::SOFTMAX_OUTPUT {
                return Err(cx.unsupported(
                    "an int8 SOFTMAX output whose scale is not 1/256 or zero point not -128".into(),
                ));
            }
            let y = cx.mb.softmax(x, beta).map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::MEAN => {
            let (xt, at, out) = (cx.input(0)?, cx.input(1)?, cx.output()?);
            let x = cx.activation(xt)?;
            let axes = cx.info(at);
            let mut ax: Vec<i32> = axes
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            ax.sort_unstable();
            if axes.ty != s::INT32 || ax != [1, 2] {
                return Err(
                    cx.unsupported(format!("MEAN over axes {ax:?} (over [1, 2], H and W, is)"))
                );
            }
            let q = cx.out_quant(out)?;
            let y = cx.mb.mean(x, q).map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::LEAKY_RELU => {
            let (xt, out) = (cx.input(0)?, cx.output()?);
            let x = cx.activation(xt)?;
            let alpha = opts.map_or(Ok(0.0), |t| t.f32_or(0, 0.0))?;
            let q = cx.out_quant(out)?;
            let y = cx.mb.leaky_relu(x, alpha, q).map_err(cx.build(out))?;
            cx.produce(out, y)
        }
        s::op::RESHAPE => {
            // NHWC memory is the same whatever the shape: the output is the input, re-read.
            let (xt, out) = (cx.input(0)?, cx.output()?);
            let x = cx.activation(xt)?;
            let n = cx.info(xt).len();
            if n.is_none() || n != cx.info(out).len() {
                return Err(cx.invalid(Some(out), "RESHAPE changes the element count".into()));
            }
            if cx.out_quant(out)? != cx.out_quant(xt)? {
                return Err(cx.unsupported("RESHAPE that requantises".into()));
            }
            cx.ids[out as usize] = Some(x);
            Ok(())
        }
        s::op::PAD | s::op::PADV2 => {
            let (xt, pt, out) = (cx.input(0)?, cx.input(1)?, cx.output()?);
            let x = cx.activation(xt)?;
            let d = cx.mb.desc(x).map_err(cx.build(xt))?;
            let p = cx.info(pt);
            let v: Vec<i64> = match p.ty {
                s::INT32 => p
                    .data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                _ => return Err(cx.unsupported("PAD paddings that are not int32 constants".into())),
            };
            let [0, 0, top, bottom, left, right, 0, 0] = v[..] else {
                return Err(cx.unsupported(format!("PAD {v:?} (only H and W are padded)")));
            };
            let value = if cx.code == s::op::PADV2 {
                let c = cx.info(cx.input(2)?);
                match c.data {
                    [b] => *b as i8 as i32,
                    _ => return Err(cx.unsupported("PADV2 value that is not one int8".into())),
                }
            } else {
                d.zp
            };
            if cx.out_quant(out)?
                != (Quant {
                    scale: d.scale,
                    zp: d.zp,
                })
            {
                return Err(cx.unsupported("PAD that requantises".into()));
            }
            let n = |v: i64| {
                usize::try_from(v).map_err(|_| cx.invalid(Some(pt), "negative padding".into()))
            };
            cx.pads[out as usize] = Some(Pad {
                input: x,
                pads: [n(top)?, n(left)?, n(bottom)?, n(right)?],
                value,
            });
            Ok(())
        }
        s::op::DEQUANTIZE => {
            // Only as the float output's producer (see the module doc).
            let (xt, out) = (cx.input(0)?, cx.output()?);
            if out != cx.graph_output || cx.info(out).ty != s::FLOAT32 {
                return Err(cx.unsupported(
                    "a DEQUANTIZE other than the one giving the graph's float32 output".into(),
                ));
            }
            let x = cx.activation(xt)?;
            cx.ids[out as usize] = Some(x);
            *cx.float_output = true;
            Ok(())
        }
        s::op::QUANTIZE => Err(cx.unsupported(
            "a QUANTIZE other than the one after the graph's float32 input (a requantisation \
             inside the graph)"
                .into(),
        )),
        _ => Err(cx.err(None, TfliteErrorKind::UnsupportedOp)),
    }
}
