//! The validating loader: safetensors container → graph text (`rt.graph`) → checked [`Model`].
//!
//! Why a hand-parsed line format instead of JSON: the graph is a list of ops with a handful of
//! scalar fields; a `key=value` line per op is trivially parsed with `str` methods (no extra
//! no_std JSON dependency, no recursion, no allocation per token), every error maps to a line
//! number, and it stays readable in `inspect` output. The grammar is in `FORMAT.md`.
//!
//! Every arithmetic step on untrusted numbers is checked; every lookup is `get`-style; nothing
//! here can panic or index out of bounds whatever the bytes.

use alloc::vec::Vec;
use safetensors::tensor::Metadata;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::error::{GraphError as E, ModelError};
use super::*;
use crate::ops::add_lut::AddLut;
use crate::ops::leaky_relu::leaky_lut;
use crate::ops::prepared::PreparedI8;
use crate::ops::requant::{SHIFT_MAX, SHIFT_MIN};
use crate::ops::{bytes_as_i8, F32Le, I32Le};
use crate::plan::{plan, Lifetime};

type R<T> = Result<T, E>;

/// The `key=value` tokens and bare flags of one line; every key must be consumed.
struct Fields<'t> {
    kv: heapless::Vec<(&'t str, &'t str, bool), 16>,
    relu: bool,
}

impl<'t> Fields<'t> {
    fn new(tokens: core::str::SplitAsciiWhitespace<'t>) -> R<Self> {
        let mut f = Fields {
            kv: heapless::Vec::new(),
            relu: false,
        };
        for tok in tokens {
            match tok.split_once('=') {
                Some((k, v)) => {
                    if f.kv.iter().any(|(k2, _, _)| *k2 == k) {
                        return Err(E::DuplicateKey);
                    }
                    f.kv.push((k, v, false)).map_err(|_| E::BadToken)?;
                }
                None if tok == "relu" && !f.relu => f.relu = true,
                None => return Err(E::BadToken),
            }
        }
        Ok(f)
    }

    fn opt(&mut self, key: &'static str) -> Option<&'t str> {
        self.kv.iter_mut().find(|(k, _, _)| *k == key).map(|e| {
            e.2 = true;
            e.1
        })
    }

    fn req(&mut self, key: &'static str) -> R<&'t str> {
        self.opt(key).ok_or(E::MissingKey(key))
    }

    fn num<T: core::str::FromStr>(&mut self, key: &'static str) -> R<T> {
        self.req(key)?.parse().map_err(|_| E::BadValue(key))
    }

    fn tensor_id(&mut self, key: &'static str) -> R<u16> {
        self.num(key)
    }

    /// `a,b` or a single `a` (meaning `a,a`).
    fn pair(&mut self, key: &'static str) -> R<[usize; 2]> {
        let mut out = [0usize; 2];
        let n = list(self.req(key)?, &mut out).ok_or(E::BadValue(key))?;
        match n {
            1 => Ok([out[0], out[0]]),
            2 => Ok(out),
            _ => Err(E::BadValue(key)),
        }
    }

    /// `t,l,b,r` or a single `p` (all sides).
    fn pad(&mut self) -> R<[usize; 4]> {
        let Some(v) = self.opt("pad") else {
            return Ok([0; 4]);
        };
        let mut out = [0usize; 4];
        match list(v, &mut out).ok_or(E::BadValue("pad"))? {
            1 => Ok([out[0]; 4]),
            4 => Ok(out),
            _ => Err(E::BadValue("pad")),
        }
    }

    fn finish(&self) -> R<()> {
        if self.kv.iter().all(|(_, _, used)| *used) {
            Ok(())
        } else {
            Err(E::UnknownKey)
        }
    }
}

/// Parses a comma-separated list into `out`; returns the count, or `None` on a bad number or
/// too many entries.
fn list<T: core::str::FromStr + Copy>(s: &str, out: &mut [T]) -> Option<usize> {
    let mut n = 0;
    for part in s.split(',') {
        *out.get_mut(n)? = part.parse().ok()?;
        n += 1;
    }
    Some(n)
}

fn finite_pos(x: f32) -> bool {
    x.is_finite() && x > 0.0
}

fn check_zp(zp: i32) -> R<()> {
    if (-128..=127).contains(&zp) {
        Ok(())
    } else {
        Err(E::ZeroPointRange)
    }
}

fn check_mult_shift(m: i32, s: i32, max_shift: i32) -> R<()> {
    if m < 0 {
        return Err(E::MultiplierRange);
    }
    if !(SHIFT_MIN..=max_shift).contains(&s) {
        return Err(E::ShiftRange);
    }
    Ok(())
}

/// The parsed safetensors header and the data section it indexes.
struct Container<'a> {
    meta: Metadata,
    data: &'a [u8],
}

impl<'a> Container<'a> {
    /// Parses the header once (`SafeTensors::read_metadata` checks the JSON, the dtypes, that
    /// offsets are contiguous and match each shape, and that they cover the buffer exactly).
    fn parse(bytes: &'a [u8]) -> Result<Self, ModelError> {
        let (n, meta) = SafeTensors::read_metadata(bytes).map_err(|_| ModelError::Container)?;
        let data = 8usize
            .checked_add(n)
            .and_then(|start| bytes.get(start..))
            .ok_or(ModelError::Container)?;
        Ok(Container { meta, data })
    }

    /// A tensor's dtype, shape and bytes, borrowed (no copy of the shape, unlike
    /// `SafeTensors::tensor`).
    fn tensor(&self, name: &str) -> Option<(StDtype, &[usize], &'a [u8])> {
        let info = self.meta.info(name)?;
        let (s, e) = info.data_offsets;
        Some((info.dtype, &info.shape, self.data.get(s..e)?))
    }
}

/// The int8 parameters of a conv, dwconv or fc line ([`Loader::int8_params`]).
struct Int8Params<'a> {
    weights: &'a [i8],
    bias: I32Le<'a>,
    mult: I32Le<'a>,
    shift: I32Le<'a>,
    ws: Option<F32Le<'a>>,
    act_min: i32,
    act_max: i32,
}

struct Loader<'a, 'st> {
    st: &'st Container<'a>,
    weight_bytes: usize,
    /// Load-time preparation of each int8 conv/fc (`ops::prepared`), indexed by the kernel.
    prepared: Vec<PreparedI8>,
    /// Each int8 LeakyReLU's table (`ops::leaky_relu::leaky_lut`), indexed by the kernel.
    leaky_luts: Vec<[i8; 256]>,
    /// The lookup tables of the int8 adds that have them (`ops::add_lut`), indexed by the
    /// kernel.
    add_luts: Vec<AddLut>,
}

impl<'a> Loader<'a, '_> {
    /// Fetches a parameter tensor, checking dtype, exact shape and byte length.
    fn param(&mut self, name: &str, dtype: StDtype, shape: &[usize]) -> R<&'a [u8]> {
        let (v_dtype, v_shape, data) = self.st.tensor(name).ok_or(E::MissingTensor)?;
        if v_dtype != dtype {
            return Err(E::Dtype);
        }
        if v_shape != shape {
            return Err(E::Shape);
        }
        let elem = match dtype {
            StDtype::I8 => 1usize,
            _ => 4,
        };
        let n = shape
            .iter()
            .try_fold(elem, |a, &d| a.checked_mul(d))
            .ok_or(E::TooLarge)?;
        if data.len() != n {
            return Err(E::Shape);
        }
        self.weight_bytes = self.weight_bytes.checked_add(n).ok_or(E::TooLarge)?;
        Ok(data)
    }

    fn weights_i8(&mut self, name: &str, shape: &[usize]) -> R<&'a [i8]> {
        let w = bytes_as_i8(self.param(name, StDtype::I8, shape)?);
        if w.contains(&i8::MIN) {
            return Err(E::WeightRange);
        }
        Ok(w)
    }

    fn f32s(&mut self, name: &str, shape: &[usize]) -> R<F32Le<'a>> {
        let v = F32Le::new(self.param(name, StDtype::F32, shape)?);
        if (0..v.len()).any(|i| !v.get(i).is_finite()) {
            return Err(E::NonFinite);
        }
        Ok(v)
    }

    fn i32s(&mut self, name: &str, n: usize) -> R<I32Le<'a>> {
        Ok(I32Le::new(self.param(name, StDtype::I32, &[n])?))
    }

    /// Bias, multipliers and shifts of an int8 conv/fc with `n` output channels.
    fn requant(&mut self, f: &mut Fields<'_>, n: usize) -> R<(I32Le<'a>, I32Le<'a>, I32Le<'a>)> {
        let bias = self.i32s(f.req("b")?, n)?;
        let mult = self.i32s(f.req("m")?, n)?;
        let shift = self.i32s(f.req("s")?, n)?;
        for i in 0..n {
            let b = bias.get(i);
            if !(-MAX_ABS_BIAS..=MAX_ABS_BIAS).contains(&b) {
                return Err(E::BiasRange);
            }
            check_mult_shift(mult.get(i), shift.get(i), SHIFT_MAX)?;
        }
        Ok((bias, mult, shift))
    }

    /// What every int8 conv, dwconv and fc line carries, in the order read: the weights
    /// (`w=`, of `wshape`), bias, multipliers and shifts of the `n` output channels, the
    /// optional weight scales, and the activation range on `dout`'s zero point.
    fn int8_params(
        &mut self,
        f: &mut Fields<'_>,
        wshape: &[usize],
        n: usize,
        di: &TensorDesc,
        dout: &TensorDesc,
        relu: bool,
    ) -> R<Int8Params<'a>> {
        let weights = self.weights_i8(f.req("w")?, wshape)?;
        let (bias, mult, shift) = self.requant(f, n)?;
        let ws = self.weight_scales(f, n, di.scale, dout.scale, mult, shift)?;
        let (act_min, act_max) = crate::ops::requant::activation_range_i8(relu, dout.zp);
        Ok(Int8Params {
            weights,
            bias,
            mult,
            shift,
            ws,
            act_min,
            act_max,
        })
    }

    /// What every f32 conv, dwconv and fc line carries: weights (`w=`, of `wshape`) and the
    /// bias of the `n` output channels.
    fn f32_params(
        &mut self,
        f: &mut Fields<'_>,
        wshape: &[usize],
        n: usize,
    ) -> R<(F32Le<'a>, F32Le<'a>)> {
        let weights = self.f32s(f.req("w")?, wshape)?;
        let bias = self.f32s(f.req("b")?, &[n])?;
        Ok((weights, bias))
    }

    /// Stores an op's preparation; returns its index.
    fn prepare(&mut self, p: PreparedI8) -> R<u16> {
        let i = u16::try_from(self.prepared.len()).map_err(|_| E::TooLarge)?;
        self.prepared.push(p);
        Ok(i)
    }

    /// The optional per-channel weight scales `ws=` of an int8 conv/fc (`F32 [n]`): each finite
    /// and positive, and each giving exactly the stored multiplier and shift
    /// ([`layer_multiplier`]), so a file that carries them cannot disagree with them.
    fn weight_scales(
        &mut self,
        f: &mut Fields<'_>,
        n: usize,
        in_scale: f32,
        out_scale: f32,
        mult: I32Le<'a>,
        shift: I32Le<'a>,
    ) -> R<Option<F32Le<'a>>> {
        let Some(name) = f.opt("ws") else {
            return Ok(None);
        };
        let ws = self.f32s(name, &[n]).map_err(|e| match e {
            E::NonFinite => E::WeightScale,
            e => e,
        })?;
        for c in 0..n {
            let w = ws.get(c);
            if !finite_pos(w)
                || layer_multiplier(in_scale, w, out_scale) != (mult.get(c), shift.get(c))
            {
                return Err(E::WeightScale);
            }
        }
        Ok(Some(ws))
    }

    /// Scalar `mult`/`shift` pair from keys.
    fn scalar_requant(
        f: &mut Fields<'_>,
        mk: &'static str,
        sk: &'static str,
        max_shift: i32,
    ) -> R<(i32, i32)> {
        let m: i32 = f.num(mk)?;
        let s: i32 = f.num(sk)?;
        check_mult_shift(m, s, max_shift)?;
        Ok((m, s))
    }
}

/// Loader state shared by all graph lines: declared tensors, which are computed, the nodes so
/// far, the input (with its normalisation) and the output.
#[derive(Default)]
struct Graph<'a> {
    tensors: Vec<TensorDesc>,
    produced_by: Vec<Option<usize>>,
    last_use: Vec<usize>,
    nodes: Vec<Node<'a>>,
    input: Option<u16>,
    output: Option<u16>,
    mean: heapless::Vec<f32, MAX_INPUT_CHANNELS>,
    std: heapless::Vec<f32, MAX_INPUT_CHANNELS>,
}

impl Graph<'_> {
    fn read(&mut self, t: u16) -> R<TensorDesc> {
        let i = t as usize;
        let d = *self.tensors.get(i).ok_or(E::TensorId)?;
        let known = self.produced_by.get(i).copied().flatten().is_some() || self.input == Some(t);
        if !known {
            return Err(E::NotYetComputed);
        }
        let now = self.nodes.len();
        if let Some(u) = self.last_use.get_mut(i) {
            *u = (*u).max(now);
        }
        Ok(d)
    }

    fn write(&mut self, t: u16) -> R<TensorDesc> {
        let i = t as usize;
        let d = *self.tensors.get(i).ok_or(E::TensorId)?;
        let slot = self.produced_by.get_mut(i).ok_or(E::TensorId)?;
        if slot.is_some() || self.input == Some(t) {
            return Err(E::ProducedTwice);
        }
        *slot = Some(self.nodes.len());
        Ok(d)
    }
}

fn window(d: &TensorDesc, k: [usize; 2], stride: [usize; 2], pad: [usize; 4]) -> R<Window> {
    let [t, l, b, r] = pad;
    if stride[0] == 0 || stride[1] == 0 || k[0] == 0 || k[1] == 0 {
        return Err(E::ZeroDim);
    }
    // Bounded so window arithmetic in the kernels (isize offsets) can never overflow.
    if k.iter().chain(&stride).any(|&v| v > MAX_WINDOW) {
        return Err(E::TooLarge);
    }
    if t >= k[0] || b >= k[0] || l >= k[1] || r >= k[1] {
        return Err(E::Window);
    }
    let out_h = Window::out_dim(d.h, k[0], stride[0], t, b).ok_or(E::Window)?;
    let out_w = Window::out_dim(d.w, k[1], stride[1], l, r).ok_or(E::Window)?;
    Ok(Window {
        in_h: d.h,
        in_w: d.w,
        in_c: d.c,
        out_h,
        out_w,
        kh: k[0],
        kw: k[1],
        stride_h: stride[0],
        stride_w: stride[1],
        pad_top: t,
        pad_left: l,
    })
}

fn same_shape(a: &TensorDesc, b: &TensorDesc) -> bool {
    (a.h, a.w, a.c) == (b.h, b.w, b.c)
}

fn expect_shape(d: &TensorDesc, h: usize, w: usize, c: usize) -> R<()> {
    if (d.h, d.w, d.c) == (h, w, c) {
        Ok(())
    } else {
        Err(E::Shape)
    }
}

fn mul(a: usize, b: usize) -> R<usize> {
    a.checked_mul(b).ok_or(E::TooLarge)
}

pub(super) fn parse(bytes: &[u8]) -> Result<Model<'_>, ModelError> {
    let st = Container::parse(bytes)?;
    let text = st
        .meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(GRAPH_KEY))
        .ok_or(ModelError::MissingGraph)?;
    let mut line_no = 0u32;
    parse_text(&st, text, &mut line_no).map_err(|kind| ModelError::Graph {
        line: line_no,
        kind,
    })
}

/// The tokens of one line after its first word.
type Toks<'t> = core::str::SplitAsciiWhitespace<'t>;

/// An op line's parser: reads its fields, records its reads and writes in the graph and loads
/// its parameters; returns the node (the caller checks every field was used, then pushes it).
type OpParser =
    for<'a, 'st> fn(&mut Fields<'_>, &mut Graph<'a>, &mut Loader<'a, 'st>, bool) -> R<Node<'a>>;

/// Parses the graph text into a checked model; `line_no` follows the line being parsed (0 during
/// the whole-graph checks) so `parse` can report where an error is.
fn parse_text<'a>(st: &Container<'a>, text: &str, line_no: &mut u32) -> R<Model<'a>> {
    let mut lines = text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim();
        (!l.is_empty() && !l.starts_with('#')).then_some((i as u32 + 1, l))
    });
    let (dtype, task) = parse_header(&mut lines, line_no)?;
    let int8 = dtype == Dtype::Int8;
    let mut ld = Loader {
        st,
        weight_bytes: 0,
        prepared: Vec::new(),
        leaky_luts: Vec::new(),
        add_luts: Vec::new(),
    };
    let mut g = Graph::default();

    for (n, l) in lines {
        *line_no = n;
        let mut toks = l.split_ascii_whitespace();
        let op = toks.next().ok_or(E::BadToken)?;
        let parse_op: OpParser = match op {
            // Declarations take a positional id first and add no node.
            "tensor" => {
                parse_tensor(toks, &mut g, int8)?;
                continue;
            }
            "input" => {
                parse_input(toks, &mut g)?;
                continue;
            }
            "output" => {
                parse_output(toks, &mut g)?;
                continue;
            }
            "conv" => parse_conv,
            "dwconv" => parse_dwconv,
            "fc" => parse_fc,
            "add" => parse_add,
            "maxpool" => parse_maxpool,
            "mean" => parse_mean,
            "leaky" => parse_leaky,
            "avgpool" => parse_avgpool,
            "softmax" => parse_softmax,
            _ => unknown_op,
        };
        let mut f = Fields::new(toks)?;
        if g.nodes.len() >= MAX_TENSORS {
            return Err(E::TooLarge);
        }
        let node = parse_op(&mut f, &mut g, &mut ld, int8)?;
        f.finish()?;
        g.nodes.push(node);
    }

    *line_no = 0;
    let luts = (ld.leaky_luts, ld.add_luts);
    finish_model(g, dtype, task, ld.weight_bytes, ld.prepared, luts)
}

/// Header: `rtgraph`, `dtype`, `task`, in this order; errors before the first is found are line 1.
fn parse_header<'t>(
    lines: &mut impl Iterator<Item = (u32, &'t str)>,
    line_no: &mut u32,
) -> R<(Dtype, Task)> {
    *line_no = 1;
    let (n, v) = header_line(lines, "rtgraph")?;
    *line_no = n;
    parse_version(v)?;
    let (n, v) = header_line(lines, "dtype")?;
    *line_no = n;
    let dtype = parse_dtype(v)?;
    let (n, v) = header_line(lines, "task")?;
    *line_no = n;
    let task = parse_task(v)?;
    Ok((dtype, task))
}

/// The next line, which must be `want <value>`: its number and the trimmed value.
fn header_line<'t>(
    lines: &mut impl Iterator<Item = (u32, &'t str)>,
    want: &str,
) -> R<(u32, &'t str)> {
    let (n, l) = lines.next().ok_or(E::Header)?;
    let (head, rest) = l.split_once(' ').ok_or(E::Header)?;
    if head != want {
        return Err(if want == "rtgraph" {
            E::Version
        } else {
            E::Header
        });
    }
    Ok((n, rest.trim()))
}

/// `rtgraph <version>`: only [`FORMAT_VERSION`] is accepted.
fn parse_version(v: &str) -> R<()> {
    if v.parse::<u32>() != Ok(FORMAT_VERSION) {
        return Err(E::Version);
    }
    Ok(())
}

/// `dtype i8|f32`.
fn parse_dtype(v: &str) -> R<Dtype> {
    match v {
        "i8" => Ok(Dtype::Int8),
        "f32" => Ok(Dtype::F32),
        _ => Err(E::BadValue("dtype")),
    }
}

/// `task features|landmarks`.
fn parse_task(v: &str) -> R<Task> {
    match v {
        "features" => Ok(Task::Features),
        "landmarks" => Ok(Task::Landmarks),
        _ => Err(E::BadValue("task")),
    }
}

/// The positional tensor id that follows `tensor`, `input` and `output`.
fn positional_id(toks: &mut Toks<'_>) -> R<u16> {
    toks.next().and_then(|t| t.parse().ok()).ok_or(E::TensorId)
}

/// `tensor <id> shape=H,W,C [scale= zp=]`: declares the next activation tensor.
fn parse_tensor(mut toks: Toks<'_>, g: &mut Graph<'_>, int8: bool) -> R<()> {
    let id = positional_id(&mut toks)?;
    if id as usize != g.tensors.len() || g.tensors.len() >= MAX_TENSORS {
        return Err(E::TensorId);
    }
    let mut f = Fields::new(toks)?;
    let mut s = [0usize; 3];
    if list(f.req("shape")?, &mut s) != Some(3) {
        return Err(E::BadValue("shape"));
    }
    if s.contains(&0) {
        return Err(E::ZeroDim);
    }
    let len = mul(mul(s[0], s[1])?, s[2])?;
    if len > MAX_ELEMENTS {
        return Err(E::TooLarge);
    }
    let (scale, zp) = if int8 {
        (f.num::<f32>("scale")?, f.num::<i32>("zp")?)
    } else {
        (1.0, 0)
    };
    if !finite_pos(scale) {
        return Err(E::ScaleRange);
    }
    check_zp(zp)?;
    g.tensors.push(TensorDesc {
        h: s[0],
        w: s[1],
        c: s[2],
        scale,
        zp,
    });
    g.produced_by.push(None);
    g.last_use.push(0);
    f.finish()
}

/// `input <id> mean=… std=…`: the input tensor and its per-channel normalisation.
fn parse_input(mut toks: Toks<'_>, g: &mut Graph<'_>) -> R<()> {
    let id = positional_id(&mut toks)?;
    let d = *g.tensors.get(id as usize).ok_or(E::TensorId)?;
    let mut f = Fields::new(toks)?;
    if g.input.is_some() || g.produced_by.get(id as usize).copied().flatten().is_some() {
        return Err(E::Header);
    }
    g.input = Some(id);
    let (mut m, mut sd) = ([0f32; MAX_INPUT_CHANNELS], [0f32; MAX_INPUT_CHANNELS]);
    let nm = list(f.req("mean")?, &mut m).ok_or(E::BadValue("mean"))?;
    let ns = list(f.req("std")?, &mut sd).ok_or(E::BadValue("std"))?;
    if nm != d.c || ns != d.c {
        return Err(E::Shape);
    }
    if m[..nm].iter().any(|x| !x.is_finite()) || !sd[..ns].iter().all(|&x| finite_pos(x)) {
        return Err(E::ScaleRange);
    }
    g.mean.extend_from_slice(&m[..nm]).map_err(|_| E::Shape)?;
    g.std.extend_from_slice(&sd[..ns]).map_err(|_| E::Shape)?;
    f.finish()
}

/// `output <id>`: the output tensor (checked to be produced once the whole graph is read).
fn parse_output(mut toks: Toks<'_>, g: &mut Graph<'_>) -> R<()> {
    let id = positional_id(&mut toks)?;
    g.tensors.get(id as usize).ok_or(E::TensorId)?;
    let f = Fields::new(toks)?;
    if g.output.is_some() {
        return Err(E::Header);
    }
    g.output = Some(id);
    f.finish()
}

/// `conv in= out= k= stride= [pad=] w= b= [m= s= [ws=]] [relu]`: 2-D convolution.
fn parse_conv<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    parse_conv_or_dw(f, g, ld, int8, false)
}

/// `dwconv in= out= k= stride= [pad=] dm= w= b= [m= s= [ws=]] [relu]`: depthwise convolution,
/// `out_c = in_c·dm`, weights `[1, KH, KW, out_c]` (TFLite's layout).
fn parse_dwconv<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    parse_conv_or_dw(f, g, ld, int8, true)
}

/// The two windowed ops: the same fields and checks but for the depth multiplier (`dm=`,
/// depthwise only) and what it decides, the output channels, the reduction per output and
/// the weight layout.
fn parse_conv_or_dw<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
    depthwise: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    let k = f.pair("k")?;
    let stride = f.pair("stride")?;
    let pad = f.pad()?;
    let dm = if depthwise {
        let dm: usize = f.num("dm")?;
        if dm == 0 {
            return Err(E::ZeroDim);
        }
        Some(dm)
    } else {
        None
    };
    let win = window(&di, k, stride, pad)?;
    let oc = match dm {
        Some(dm) => mul(di.c, dm)?,
        None => dout.c,
    };
    expect_shape(&dout, win.out_h, win.out_w, oc)?;
    // Products summed per output: kh·kw·in_c (conv) or kh·kw (depthwise).
    let red = match dm {
        Some(_) => mul(k[0], k[1])?,
        None => mul(mul(k[0], k[1])?, di.c)?,
    };
    if red > MAX_REDUCTION {
        return Err(E::TooLarge);
    }
    let wshape = match dm {
        Some(_) => [1, k[0], k[1], oc],
        None => [oc, k[0], k[1], di.c],
    };
    let macs = (red as u64) * (dout.len() as u64);
    let kernel = if int8 {
        let q = ld.int8_params(f, &wshape, oc, &di, &dout, relu)?;
        match dm {
            Some(depth_mult) => Kernel::DwConvI8(
                DwConvI8 {
                    win,
                    depth_mult,
                    weights: q.weights,
                    bias: q.bias,
                    mult: q.mult,
                    shift: q.shift,
                    in_zp: di.zp,
                    out_zp: dout.zp,
                    act_min: q.act_min,
                    act_max: q.act_max,
                },
                q.ws,
            ),
            None => {
                let p = ConvI8 {
                    win,
                    out_c: oc,
                    weights: q.weights,
                    bias: q.bias,
                    mult: q.mult,
                    shift: q.shift,
                    in_zp: di.zp,
                    out_zp: dout.zp,
                    act_min: q.act_min,
                    act_max: q.act_max,
                };
                let i = ld.prepare(PreparedI8::new(&p))?;
                Kernel::ConvI8(p, i, q.ws)
            }
        }
    } else {
        let (weights, bias) = ld.f32_params(f, &wshape, oc)?;
        match dm {
            Some(depth_mult) => Kernel::DwConvF32(DwConvF32 {
                win,
                depth_mult,
                weights,
                bias,
                relu,
            }),
            None => Kernel::ConvF32(ConvF32 {
                win,
                out_c: oc,
                weights,
                bias,
                relu,
            }),
        }
    };
    Ok(Node::unary(kernel, ti, to, macs))
}

/// `fc in= out= w= b= [m= s=] [relu]`: fully connected over the input flattened in HWC order.
fn parse_fc<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    expect_shape(&dout, 1, 1, dout.c)?;
    let (il, ol) = (di.len(), dout.c);
    if il > MAX_REDUCTION {
        return Err(E::TooLarge);
    }
    let macs = (il as u64) * (ol as u64);
    let kernel = if int8 {
        let q = ld.int8_params(f, &[ol, il], ol, &di, &dout, relu)?;
        let p = FcI8 {
            in_len: il,
            out_len: ol,
            weights: q.weights,
            bias: q.bias,
            mult: q.mult,
            shift: q.shift,
            in_zp: di.zp,
            out_zp: dout.zp,
            act_min: q.act_min,
            act_max: q.act_max,
        };
        let i = ld.prepare(PreparedI8::new_fc(&p))?;
        Kernel::FcI8(p, i, q.ws)
    } else {
        let (weights, bias) = ld.f32_params(f, &[ol, il], ol)?;
        Kernel::FcF32(FcF32 {
            in_len: il,
            out_len: ol,
            weights,
            bias,
            relu,
        })
    };
    Ok(Node::unary(kernel, ti, to, macs))
}

/// `add a= b= out= [ma= sa= mb= sb= m= s=] [relu]`: elementwise add of equal shapes.
fn parse_add<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ta, tb, to) = (f.tensor_id("a")?, f.tensor_id("b")?, f.tensor_id("out")?);
    let (da, db, dout) = (g.read(ta)?, g.read(tb)?, g.write(to)?);
    if !same_shape(&da, &db) || !same_shape(&da, &dout) {
        return Err(E::Shape);
    }
    let kernel = if int8 {
        // Input multipliers are ≤ 1 (s/(2·max)), so their shifts are ≤ 0: the sum of
        // two rescaled inputs then fits in i32 exactly.
        let (a_mult, a_shift) = Loader::scalar_requant(f, "ma", "sa", 0)?;
        let (b_mult, b_shift) = Loader::scalar_requant(f, "mb", "sb", 0)?;
        let (out_mult, out_shift) = Loader::scalar_requant(f, "m", "s", SHIFT_MAX)?;
        let (act_min, act_max) = crate::ops::requant::activation_range_i8(relu, dout.zp);
        let add = AddI8 {
            a_zp: da.zp,
            a_mult,
            a_shift,
            b_zp: db.zp,
            b_mult,
            b_shift,
            out_zp: dout.zp,
            out_mult,
            out_shift,
            act_min,
            act_max,
        };
        let lut = match AddLut::for_this_cpu(&add) {
            Some(t) => {
                let i = u16::try_from(ld.add_luts.len()).map_err(|_| E::TooLarge)?;
                ld.add_luts.push(t);
                Some(i)
            }
            None => None,
        };
        Kernel::AddI8(add, lut)
    } else {
        Kernel::AddF32 { relu }
    };
    Ok(Node {
        kernel,
        inputs: [ta, tb],
        n_inputs: 2,
        output: to,
        macs: dout.len() as u64,
    })
}

/// `maxpool in= out= k= stride= [pad=]`: max over the window's in-image taps.
fn parse_maxpool<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    _ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    let win = window(&di, f.pair("k")?, f.pair("stride")?, f.pad()?)?;
    expect_shape(&dout, win.out_h, win.out_w, di.c)?;
    if relu {
        return Err(E::BadToken);
    }
    let kernel = if int8 {
        if dout.scale.to_bits() != di.scale.to_bits() || dout.zp != di.zp {
            return Err(E::PoolQuant);
        }
        Kernel::MaxPoolI8(win)
    } else {
        Kernel::MaxPoolF32(win)
    };
    Ok(Node::unary(
        kernel,
        ti,
        to,
        (dout.len() as u64) * (win.kh * win.kw) as u64,
    ))
}

/// `mean in= out= [m= s=]`: global average pool H×W×C → 1×1×C.
fn parse_mean<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    _ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    expect_shape(&dout, 1, 1, di.c)?;
    let hw = mul(di.h, di.w)?;
    if hw > 1 << 22 || relu {
        return Err(if relu { E::BadToken } else { E::TooLarge });
    }
    let kernel = if int8 {
        let (mult, shift) = Loader::scalar_requant(f, "m", "s", SHIFT_MAX)?;
        Kernel::MeanI8(MeanI8 {
            hw,
            c: di.c,
            in_zp: di.zp,
            out_zp: dout.zp,
            mult,
            shift,
        })
    } else {
        Kernel::MeanF32 { hw, c: di.c }
    };
    Ok(Node::unary(kernel, ti, to, di.len() as u64))
}

/// `leaky in= out= alpha= [mi= si= ma= sa=]`: LeakyReLU.
fn parse_leaky<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    if !same_shape(&di, &dout) || relu {
        return Err(if relu { E::BadToken } else { E::Shape });
    }
    let alpha: f32 = f.num("alpha")?;
    if !alpha.is_finite() {
        return Err(E::ScaleRange);
    }
    let kernel = if int8 {
        let (id_mult, id_shift) = Loader::scalar_requant(f, "mi", "si", SHIFT_MAX)?;
        let (alpha_mult, alpha_shift) = Loader::scalar_requant(f, "ma", "sa", SHIFT_MAX)?;
        let leaky = LeakyI8 {
            in_zp: di.zp,
            out_zp: dout.zp,
            id_mult,
            id_shift,
            alpha_mult,
            alpha_shift,
        };
        let i = u16::try_from(ld.leaky_luts.len()).map_err(|_| E::TooLarge)?;
        ld.leaky_luts.push(leaky_lut(&leaky));
        Kernel::LeakyI8(leaky, alpha, i)
    } else {
        Kernel::LeakyF32 { alpha }
    };
    Ok(Node::unary(kernel, ti, to, di.len() as u64))
}

/// `avgpool in= out= k= stride= [pad=] [relu]`: average over the window's in-image taps.
fn parse_avgpool<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    _ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    let win = window(&di, f.pair("k")?, f.pair("stride")?, f.pad()?)?;
    expect_shape(&dout, win.out_h, win.out_w, di.c)?;
    let kernel = if int8 {
        // The average of the stored values is only the average of the real values if both
        // tensors share scale and zero point (TFLite requires the same).
        if dout.scale.to_bits() != di.scale.to_bits() || dout.zp != di.zp {
            return Err(E::PoolQuant);
        }
        let (act_min, act_max) = crate::ops::requant::activation_range_i8(relu, dout.zp);
        Kernel::AvgPoolI8 {
            win,
            act_min,
            act_max,
        }
    } else {
        Kernel::AvgPoolF32 { win, relu }
    };
    Ok(Node::unary(
        kernel,
        ti,
        to,
        (dout.len() as u64) * (win.kh * win.kw) as u64,
    ))
}

/// `softmax in= out= beta= [m= s=]`: softmax over the channels of each pixel.
fn parse_softmax<'a>(
    f: &mut Fields<'_>,
    g: &mut Graph<'a>,
    _ld: &mut Loader<'a, '_>,
    int8: bool,
) -> R<Node<'a>> {
    use crate::ops::softmax::{softmax_diff_min, SoftmaxI8, MAX_SOFTMAX_DEPTH};
    let relu = f.relu;
    let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
    let (di, dout) = (g.read(ti)?, g.write(to)?);
    if relu {
        return Err(E::BadToken);
    }
    if !same_shape(&di, &dout) {
        return Err(E::Shape);
    }
    if di.c > MAX_SOFTMAX_DEPTH {
        return Err(E::TooLarge);
    }
    let beta: f32 = f.num("beta")?;
    if !finite_pos(beta) {
        return Err(E::ScaleRange);
    }
    let kernel = if int8 {
        // The kernel's output is the probability in 1/256 steps from −128 (TFLite's rule).
        if dout.scale.to_bits() != (1.0f32 / 256.0).to_bits() || dout.zp != -128 {
            return Err(E::SoftmaxQuant);
        }
        let (mult, shift) = Loader::scalar_requant(f, "m", "s", SHIFT_MAX)?;
        if shift < 0 {
            return Err(E::ShiftRange);
        }
        Kernel::SoftmaxI8(
            SoftmaxI8 {
                depth: di.c,
                mult,
                shift,
                diff_min: softmax_diff_min(shift),
            },
            beta,
        )
    } else {
        Kernel::SoftmaxF32 { depth: di.c, beta }
    };
    Ok(Node::unary(kernel, ti, to, di.len() as u64))
}

/// Any other op name: `UnknownOp`, after the fields and node-count checks every op line gets.
fn unknown_op<'a>(
    _f: &mut Fields<'_>,
    _g: &mut Graph<'a>,
    _ld: &mut Loader<'a, '_>,
    _int8: bool,
) -> R<Node<'a>> {
    Err(E::UnknownOp)
}

/// Whole-graph checks (an input, a produced output, every tensor produced) and the arena plan.
fn finish_model<'a>(
    g: Graph<'a>,
    dtype: Dtype,
    task: Task,
    weight_bytes: usize,
    prepared: Vec<PreparedI8>,
    (leaky_luts, add_luts): (Vec<[i8; 256]>, Vec<AddLut>),
) -> R<Model<'a>> {
    let input = g.input.ok_or(E::Header)?;
    let output = g.output.ok_or(E::Output)?;
    if g.nodes.is_empty()
        || g.produced_by
            .get(output as usize)
            .copied()
            .flatten()
            .is_none()
    {
        return Err(E::Output);
    }
    let last = g.nodes.len() - 1;
    let esize = if dtype == Dtype::Int8 { 1 } else { 4 };
    let mut lives = Vec::with_capacity(g.tensors.len());
    for (i, d) in g.tensors.iter().enumerate() {
        let first = if i == input as usize {
            0
        } else {
            g.produced_by[i].ok_or(E::NeverProduced)?
        };
        // The output must survive to the end (it is read after the last op).
        let end = if i == output as usize {
            last
        } else {
            g.last_use[i].max(first)
        };
        lives.push(Lifetime {
            bytes: mul(d.len(), esize)?,
            first,
            last: end,
        });
    }
    let mut offsets = alloc::vec![0usize; lives.len()];
    let plan_bytes = plan(&lives, &mut offsets).ok_or(E::TooLarge)?;
    Ok(Model {
        dtype,
        task,
        tensors: g.tensors,
        nodes: g.nodes,
        input,
        output,
        mean: g.mean,
        std: g.std,
        offsets,
        plan_bytes,
        weight_bytes,
        prepared,
        leaky_luts,
        add_luts,
        reference_kernels: false,
        threads: 1,
        splits: false,
    })
}
