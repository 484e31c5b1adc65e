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

struct Loader<'a, 'st> {
    st: &'st Container<'a>,
    weight_bytes: usize,
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

/// Loader state shared by all op lines: declared tensors and which are computed.
struct Graph<'a> {
    tensors: Vec<TensorDesc>,
    produced_by: Vec<Option<usize>>,
    last_use: Vec<usize>,
    nodes: Vec<Node<'a>>,
    input: Option<u16>,
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

fn parse_text<'a>(st: &Container<'a>, text: &str, line_no: &mut u32) -> R<Model<'a>> {
    let mut lines = text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim();
        (!l.is_empty() && !l.starts_with('#')).then_some((i as u32 + 1, l))
    });

    // Header: version, dtype, task, in this order.
    let mut next = |want: &str| -> R<(u32, &str)> {
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
    };
    *line_no = 1;
    let (n, v) = next("rtgraph")?;
    *line_no = n;
    if v.parse::<u32>() != Ok(FORMAT_VERSION) {
        return Err(E::Version);
    }
    let (n, v) = next("dtype")?;
    *line_no = n;
    let dtype = match v {
        "i8" => Dtype::Int8,
        "f32" => Dtype::F32,
        _ => return Err(E::BadValue("dtype")),
    };
    let (n, v) = next("task")?;
    *line_no = n;
    let task = match v {
        "features" => Task::Features,
        "landmarks" => Task::Landmarks,
        _ => return Err(E::BadValue("task")),
    };

    let mut ld = Loader {
        st,
        weight_bytes: 0,
    };
    let mut g = Graph {
        tensors: Vec::new(),
        produced_by: Vec::new(),
        last_use: Vec::new(),
        nodes: Vec::new(),
        input: None,
    };
    let mut output: Option<u16> = None;
    let mut mean = heapless::Vec::<f32, MAX_INPUT_CHANNELS>::new();
    let mut std = heapless::Vec::<f32, MAX_INPUT_CHANNELS>::new();
    let int8 = dtype == Dtype::Int8;

    for (n, l) in lines {
        *line_no = n;
        let mut toks = l.split_ascii_whitespace();
        let op = toks.next().ok_or(E::BadToken)?;
        // `tensor`/`input`/`output` take a positional id first.
        let mut f;
        match op {
            "tensor" => {
                let id: u16 = toks
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or(E::TensorId)?;
                if id as usize != g.tensors.len() || g.tensors.len() >= MAX_TENSORS {
                    return Err(E::TensorId);
                }
                f = Fields::new(toks)?;
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
                f.finish()?;
                continue;
            }
            "input" | "output" => {
                let id: u16 = toks
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or(E::TensorId)?;
                let d = *g.tensors.get(id as usize).ok_or(E::TensorId)?;
                f = Fields::new(toks)?;
                if op == "output" {
                    if output.is_some() {
                        return Err(E::Header);
                    }
                    output = Some(id);
                } else {
                    if g.input.is_some()
                        || g.produced_by.get(id as usize).copied().flatten().is_some()
                    {
                        return Err(E::Header);
                    }
                    g.input = Some(id);
                    let (mut m, mut sd) = ([0f32; MAX_INPUT_CHANNELS], [0f32; MAX_INPUT_CHANNELS]);
                    let nm = list(f.req("mean")?, &mut m).ok_or(E::BadValue("mean"))?;
                    let ns = list(f.req("std")?, &mut sd).ok_or(E::BadValue("std"))?;
                    if nm != d.c || ns != d.c {
                        return Err(E::Shape);
                    }
                    if m[..nm].iter().any(|x| !x.is_finite())
                        || !sd[..ns].iter().all(|&x| finite_pos(x))
                    {
                        return Err(E::ScaleRange);
                    }
                    mean.extend_from_slice(&m[..nm]).map_err(|_| E::Shape)?;
                    std.extend_from_slice(&sd[..ns]).map_err(|_| E::Shape)?;
                }
                f.finish()?;
                continue;
            }
            _ => f = Fields::new(toks)?,
        }
        if g.nodes.len() >= MAX_TENSORS {
            return Err(E::TooLarge);
        }
        let relu = f.relu;
        let (node_in, node_out);
        let (kernel, macs, n_in, second) = match op {
            "conv" => {
                let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
                let (di, dout) = (g.read(ti)?, g.write(to)?);
                (node_in, node_out) = (ti, to);
                let k = f.pair("k")?;
                let stride = f.pair("stride")?;
                let pad = f.pad()?;
                let win = window(&di, k, stride, pad)?;
                let oc = dout.c;
                expect_shape(&dout, win.out_h, win.out_w, oc)?;
                let red = mul(mul(k[0], k[1])?, di.c)?;
                if red > MAX_REDUCTION {
                    return Err(E::TooLarge);
                }
                let wshape = [oc, k[0], k[1], di.c];
                let macs = (red as u64) * (dout.len() as u64);
                let kern = if int8 {
                    let weights = ld.weights_i8(f.req("w")?, &wshape)?;
                    let (bias, mult, shift) = ld.requant(&mut f, oc)?;
                    let (act_min, act_max) =
                        crate::ops::requant::activation_range_i8(relu, dout.zp);
                    Kernel::ConvI8(ConvI8 {
                        win,
                        out_c: oc,
                        weights,
                        bias,
                        mult,
                        shift,
                        in_zp: di.zp,
                        out_zp: dout.zp,
                        act_min,
                        act_max,
                    })
                } else {
                    let weights = ld.f32s(f.req("w")?, &wshape)?;
                    let bias = ld.f32s(f.req("b")?, &[oc])?;
                    Kernel::ConvF32(ConvF32 {
                        win,
                        out_c: oc,
                        weights,
                        bias,
                        relu,
                    })
                };
                (kern, macs, 1u8, 0u16)
            }
            "fc" => {
                let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
                let (di, dout) = (g.read(ti)?, g.write(to)?);
                (node_in, node_out) = (ti, to);
                expect_shape(&dout, 1, 1, dout.c)?;
                let (il, ol) = (di.len(), dout.c);
                if il > MAX_REDUCTION {
                    return Err(E::TooLarge);
                }
                let macs = (il as u64) * (ol as u64);
                let kern = if int8 {
                    let weights = ld.weights_i8(f.req("w")?, &[ol, il])?;
                    let (bias, mult, shift) = ld.requant(&mut f, ol)?;
                    let (act_min, act_max) =
                        crate::ops::requant::activation_range_i8(relu, dout.zp);
                    Kernel::FcI8(FcI8 {
                        in_len: il,
                        out_len: ol,
                        weights,
                        bias,
                        mult,
                        shift,
                        in_zp: di.zp,
                        out_zp: dout.zp,
                        act_min,
                        act_max,
                    })
                } else {
                    let weights = ld.f32s(f.req("w")?, &[ol, il])?;
                    let bias = ld.f32s(f.req("b")?, &[ol])?;
                    Kernel::FcF32(FcF32 {
                        in_len: il,
                        out_len: ol,
                        weights,
                        bias,
                        relu,
                    })
                };
                (kern, macs, 1, 0)
            }
            "add" => {
                let (ta, tb, to) = (f.tensor_id("a")?, f.tensor_id("b")?, f.tensor_id("out")?);
                let (da, db, dout) = (g.read(ta)?, g.read(tb)?, g.write(to)?);
                (node_in, node_out) = (ta, to);
                if !same_shape(&da, &db) || !same_shape(&da, &dout) {
                    return Err(E::Shape);
                }
                let kern = if int8 {
                    // Input multipliers are ≤ 1 (s/(2·max)), so their shifts are ≤ 0: the sum of
                    // two rescaled inputs then fits in i32 exactly.
                    let (a_mult, a_shift) = Loader::scalar_requant(&mut f, "ma", "sa", 0)?;
                    let (b_mult, b_shift) = Loader::scalar_requant(&mut f, "mb", "sb", 0)?;
                    let (out_mult, out_shift) =
                        Loader::scalar_requant(&mut f, "m", "s", SHIFT_MAX)?;
                    let (act_min, act_max) =
                        crate::ops::requant::activation_range_i8(relu, dout.zp);
                    Kernel::AddI8(AddI8 {
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
                    })
                } else {
                    Kernel::AddF32 { relu }
                };
                (kern, dout.len() as u64, 2, tb)
            }
            "maxpool" => {
                let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
                let (di, dout) = (g.read(ti)?, g.write(to)?);
                (node_in, node_out) = (ti, to);
                let win = window(&di, f.pair("k")?, f.pair("stride")?, f.pad()?)?;
                expect_shape(&dout, win.out_h, win.out_w, di.c)?;
                if relu {
                    return Err(E::BadToken);
                }
                let kern = if int8 {
                    if dout.scale.to_bits() != di.scale.to_bits() || dout.zp != di.zp {
                        return Err(E::PoolQuant);
                    }
                    Kernel::MaxPoolI8(win)
                } else {
                    Kernel::MaxPoolF32(win)
                };
                (kern, (dout.len() as u64) * (win.kh * win.kw) as u64, 1, 0)
            }
            "mean" => {
                let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
                let (di, dout) = (g.read(ti)?, g.write(to)?);
                (node_in, node_out) = (ti, to);
                expect_shape(&dout, 1, 1, di.c)?;
                let hw = mul(di.h, di.w)?;
                if hw > 1 << 22 || relu {
                    return Err(if relu { E::BadToken } else { E::TooLarge });
                }
                let kern = if int8 {
                    let (mult, shift) = Loader::scalar_requant(&mut f, "m", "s", SHIFT_MAX)?;
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
                (kern, di.len() as u64, 1, 0)
            }
            "leaky" => {
                let (ti, to) = (f.tensor_id("in")?, f.tensor_id("out")?);
                let (di, dout) = (g.read(ti)?, g.write(to)?);
                (node_in, node_out) = (ti, to);
                if !same_shape(&di, &dout) || relu {
                    return Err(if relu { E::BadToken } else { E::Shape });
                }
                let alpha: f32 = f.num("alpha")?;
                if !alpha.is_finite() {
                    return Err(E::ScaleRange);
                }
                let kern = if int8 {
                    let (id_mult, id_shift) =
                        Loader::scalar_requant(&mut f, "mi", "si", SHIFT_MAX)?;
                    let (alpha_mult, alpha_shift) =
                        Loader::scalar_requant(&mut f, "ma", "sa", SHIFT_MAX)?;
                    Kernel::LeakyI8(LeakyI8 {
                        in_zp: di.zp,
                        out_zp: dout.zp,
                        id_mult,
                        id_shift,
                        alpha_mult,
                        alpha_shift,
                    })
                } else {
                    Kernel::LeakyF32 { alpha }
                };
                (kern, di.len() as u64, 1, 0)
            }
            _ => return Err(E::UnknownOp),
        };
        f.finish()?;
        g.nodes.push(Node {
            kernel,
            inputs: [node_in, second],
            n_inputs: n_in,
            output: node_out,
            macs,
        });
    }

    // Whole-graph checks.
    *line_no = 0;
    let input = g.input.ok_or(E::Header)?;
    let output = output.ok_or(E::Output)?;
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
    let esize = if int8 { 1 } else { 4 };
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
        mean,
        std,
        offsets,
        plan_bytes,
        weight_bytes: ld.weight_bytes,
    })
}
