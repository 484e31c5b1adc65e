//! The model: a validated graph whose parameters borrow the file bytes, plus inference.
//!
//! `Model::parse` does all the checking (see `graph.rs`); after that, inference can only fail on
//! the caller's buffers. Inference slices the caller's arena by the plan and allocates nothing.

mod builder;
mod error;
mod graph;
#[cfg(feature = "zoo")]
pub mod zoo;

pub use builder::{
    write_safetensors, BuildError, LayerParams, ModelBuilder, Quant, RawTensor, TensorId,
    SOFTMAX_OUTPUT,
};
pub use error::{GraphError, ModelError, RunError};

use alloc::vec::Vec;

use crate::ops::{
    self, add::AddI8, conv2d::*, depthwise::*, fully_connected::*, leaky_relu::LeakyI8,
    mean::MeanI8, prepared::PreparedI8, softmax::SoftmaxI8, F32Le, Window,
};

/// The fixed-point multiplier and shift of one int8 conv/fc output channel:
/// `quantize_multiplier(in_scale·w_scale/out_scale)` computed in f64. The one definition the
/// builder writes `m=`/`s=` with and the loader checks a `ws=` weight scale against, so any
/// reader can recompute every multiplier from the scales stored in the file (FORMAT.md).
pub fn layer_multiplier(in_scale: f32, w_scale: f32, out_scale: f32) -> (i32, i32) {
    crate::ops::requant::quantize_multiplier(in_scale as f64 * w_scale as f64 / out_scale as f64)
}

/// Format version this runtime reads (first graph line `rtgraph 1`).
pub const FORMAT_VERSION: u32 = 1;
/// safetensors `__metadata__` key holding the graph text.
pub const GRAPH_KEY: &str = "rt.graph";
/// Upper bound on activation tensors and on ops (keeps the loader's work bounded).
pub const MAX_TENSORS: usize = 4096;
/// Upper bound on elements of one activation tensor.
pub const MAX_ELEMENTS: usize = 1 << 26;
/// Most input channels (per-channel mean/std are stored inline, no heap).
pub const MAX_INPUT_CHANNELS: usize = 64;
/// Upper bound on a kernel/pool window side and on a stride (padding is below the window).
pub const MAX_WINDOW: usize = 1 << 12;
/// Upper bound on `kh·kw·in_c` (conv) or `in_len` (fc): keeps the i32 accumulator exact.
pub const MAX_REDUCTION: usize = 32768;
/// Upper bound on `|bias|` for int8 models (with [`MAX_REDUCTION`], `|acc| < 2³¹`).
pub const MAX_ABS_BIAS: i32 = 1 << 30;

/// Element type of every activation and weight in a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Dtype {
    /// TFLite-style int8 (weights i8, biases/multipliers i32).
    Int8,
    /// Plain f32, the same graph unquantised.
    F32,
}

/// What the output means, so a CLI picks the right head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Task {
    /// A feature vector for few-shot heads.
    Features,
    /// 10 numbers: 5 (x, y) points normalised to [0, 1] of the input (see `heads::landmarks`).
    Landmarks,
}

/// An activation tensor: shape (NHWC with N = 1) and, for int8, its quantisation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorDesc {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Real value = `scale · (q − zp)` (int8 models; 1.0 and 0 for f32 models).
    pub scale: f32,
    pub zp: i32,
}

impl TensorDesc {
    /// Number of elements `h·w·c` (validated not to overflow at load).
    pub fn len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// True for a zero-sized tensor (never true for a loaded model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Operator kind, for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OpKind {
    Conv2d,
    DepthwiseConv2d,
    Add,
    MaxPool,
    Mean,
    FullyConnected,
    LeakyRelu,
    AvgPool,
    Softmax,
}

impl OpKind {
    /// The op's name in the graph text (`FORMAT.md`): `conv`, `dwconv`, `add`, `maxpool`, `mean`, `fc`,
    /// `leaky`, `avgpool`, `softmax`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv2d => "conv",
            OpKind::DepthwiseConv2d => "dwconv",
            OpKind::Add => "add",
            OpKind::MaxPool => "maxpool",
            OpKind::Mean => "mean",
            OpKind::FullyConnected => "fc",
            OpKind::LeakyRelu => "leaky",
            OpKind::AvgPool => "avgpool",
            OpKind::Softmax => "softmax",
        }
    }
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) enum Kernel<'a> {
    /// The op, the index of its load-time preparation in `Model::prepared`, and the weight
    /// scales when the file stores them (`ws=`; for [`Node::op`], not for inference).
    ConvI8(ConvI8<'a>, u16, Option<F32Le<'a>>),
    ConvF32(ConvF32<'a>),
    /// The op and the weight scales when the file stores them (as for `ConvI8`).
    DwConvI8(DwConvI8<'a>, Option<F32Le<'a>>),
    DwConvF32(DwConvF32<'a>),
    /// The op and, where the loader built them, the index of its lookup tables in
    /// `Model::add_luts`.
    AddI8(AddI8, Option<u16>),
    AddF32 {
        relu: bool,
    },
    MaxPoolI8(Window),
    MaxPoolF32(Window),
    MeanI8(MeanI8),
    MeanF32 {
        hw: usize,
        c: usize,
    },
    FcI8(FcI8<'a>, u16, Option<F32Le<'a>>),
    FcF32(FcF32<'a>),
    /// The kernel's fixed-point parameters, the real slope they came from (for [`Node::op`])
    /// and the index of its table in `Model::leaky_luts`.
    LeakyI8(LeakyI8, f32, u16),
    LeakyF32 {
        alpha: f32,
    },
    /// The window and the fused activation range (`[-128, 127]`, or from the zero point up
    /// with `relu`).
    AvgPoolI8 {
        win: Window,
        act_min: i32,
        act_max: i32,
    },
    AvgPoolF32 {
        win: Window,
        relu: bool,
    },
    /// The kernel's fixed-point parameters and the real β they came from (for [`Node::op`]).
    SoftmaxI8(SoftmaxI8, f32),
    SoftmaxF32 {
        depth: usize,
        beta: f32,
    },
}

/// One op and its parameters: the public, typed view of a loaded graph ([`Node::op`]).
///
/// Everything here is what the loader validated and the kernels run — shapes in [`Window`],
/// int8 weights (OHWI for conv, `[out, H·W·C]` for fc), int32 biases, the per-channel
/// fixed-point multipliers and shifts, zero points and the fused activation range — so a
/// format writer reads the model as the runtime sees it. Tensor shapes and quantisation are in
/// [`Model::tensors`], indexed by [`Node::inputs`] and [`Node::output`]. int8 ops fuse a ReLU
/// as `act_min = max(zp_out, −128)`; f32 ops carry a `relu` flag.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Op<'a> {
    /// int8 convolution; `weight_scales` are the real per-channel weight scales when the file
    /// stores them (`ws=`, which every `host-trainer export` writes and the loader checks
    /// against the multipliers).
    ConvI8 {
        conv: ConvI8<'a>,
        weight_scales: Option<F32Le<'a>>,
    },
    ConvF32(ConvF32<'a>),
    /// int8 depthwise convolution (weights `[1, KH, KW, OC]`, output channel `ic·dm + m`);
    /// `weight_scales` as for [`Op::ConvI8`].
    DwConvI8 {
        conv: DwConvI8<'a>,
        weight_scales: Option<F32Le<'a>>,
    },
    DwConvF32(DwConvF32<'a>),
    /// int8 fully connected over the input flattened in HWC order.
    FcI8 {
        fc: FcI8<'a>,
        weight_scales: Option<F32Le<'a>>,
    },
    FcF32(FcF32<'a>),
    AddI8(AddI8),
    AddF32 {
        relu: bool,
    },
    /// Max over the window's in-image taps (int8: same scale and zero point in and out).
    MaxPool(Window),
    /// Global average pool, int8 (`MeanI8::mult` folds the `1/(H·W)`).
    MeanI8(MeanI8),
    /// Global average pool, f32.
    MeanF32,
    /// LeakyReLU, int8: the kernel's parameters and the real slope `alpha` they came from.
    LeakyI8 {
        leaky: LeakyI8,
        alpha: f32,
    },
    LeakyF32 {
        alpha: f32,
    },
    /// Average over the window's in-image taps (int8: same scale and zero point in and out;
    /// the average rounded half away from zero, then clamped to `[act_min, act_max]`).
    AvgPoolI8 {
        win: Window,
        act_min: i32,
        act_max: i32,
    },
    AvgPoolF32 {
        win: Window,
        relu: bool,
    },
    /// Softmax over the channels, int8 (TFLite's integer method; output scale 1/256, zero
    /// point −128): the kernel's parameters and the real β they came from.
    SoftmaxI8 {
        softmax: SoftmaxI8,
        beta: f32,
    },
    SoftmaxF32 {
        beta: f32,
    },
}

/// One op of the graph: its kernel and the activation tensors it reads and writes.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Node<'a> {
    pub(crate) kernel: Kernel<'a>,
    pub(crate) inputs: [u16; 2],
    pub(crate) n_inputs: u8,
    pub(crate) output: u16,
    pub(crate) macs: u64,
}

impl<'a> Node<'a> {
    /// A node of one input tensor (every op but `add`).
    pub(crate) fn unary(kernel: Kernel<'a>, input: u16, output: u16, macs: u64) -> Self {
        Node {
            kernel,
            inputs: [input, 0],
            n_inputs: 1,
            output,
            macs,
        }
    }

    /// The operator.
    pub fn kind(&self) -> OpKind {
        match self.kernel {
            Kernel::ConvI8(..) | Kernel::ConvF32(_) => OpKind::Conv2d,
            Kernel::DwConvI8(..) | Kernel::DwConvF32(_) => OpKind::DepthwiseConv2d,
            Kernel::AddI8(..) | Kernel::AddF32 { .. } => OpKind::Add,
            Kernel::MaxPoolI8(_) | Kernel::MaxPoolF32(_) => OpKind::MaxPool,
            Kernel::MeanI8(_) | Kernel::MeanF32 { .. } => OpKind::Mean,
            Kernel::FcI8(..) | Kernel::FcF32(_) => OpKind::FullyConnected,
            Kernel::LeakyI8(..) | Kernel::LeakyF32 { .. } => OpKind::LeakyRelu,
            Kernel::AvgPoolI8 { .. } | Kernel::AvgPoolF32 { .. } => OpKind::AvgPool,
            Kernel::SoftmaxI8(..) | Kernel::SoftmaxF32 { .. } => OpKind::Softmax,
        }
    }
    /// The op with its parameters, as the loader checked them: the typed view format writers
    /// (ONNX, TFLite) and `inspect` read, so no one parses the graph text a second time.
    pub fn op(&self) -> Op<'a> {
        match self.kernel {
            Kernel::ConvI8(conv, _, weight_scales) => Op::ConvI8 {
                conv,
                weight_scales,
            },
            Kernel::ConvF32(conv) => Op::ConvF32(conv),
            Kernel::DwConvI8(conv, weight_scales) => Op::DwConvI8 {
                conv,
                weight_scales,
            },
            Kernel::DwConvF32(conv) => Op::DwConvF32(conv),
            Kernel::AddI8(add, _) => Op::AddI8(add),
            Kernel::AddF32 { relu } => Op::AddF32 { relu },
            Kernel::MaxPoolI8(win) | Kernel::MaxPoolF32(win) => Op::MaxPool(win),
            Kernel::MeanI8(mean) => Op::MeanI8(mean),
            Kernel::MeanF32 { .. } => Op::MeanF32,
            Kernel::FcI8(fc, _, weight_scales) => Op::FcI8 { fc, weight_scales },
            Kernel::FcF32(fc) => Op::FcF32(fc),
            Kernel::LeakyI8(leaky, alpha, _) => Op::LeakyI8 { leaky, alpha },
            Kernel::LeakyF32 { alpha } => Op::LeakyF32 { alpha },
            Kernel::AvgPoolI8 {
                win,
                act_min,
                act_max,
            } => Op::AvgPoolI8 {
                win,
                act_min,
                act_max,
            },
            Kernel::AvgPoolF32 { win, relu } => Op::AvgPoolF32 { win, relu },
            Kernel::SoftmaxI8(softmax, beta) => Op::SoftmaxI8 { softmax, beta },
            Kernel::SoftmaxF32 { beta, .. } => Op::SoftmaxF32 { beta },
        }
    }
    /// Activation tensor ids read.
    pub fn inputs(&self) -> &[u16] {
        &self.inputs[..self.n_inputs as usize]
    }
    /// Activation tensor id written.
    pub fn output(&self) -> u16 {
        self.output
    }
    /// Multiply-accumulates (conv/depthwise conv/fc) or element operations (others).
    pub fn macs(&self) -> u64 {
        self.macs
    }
}

/// A validated model borrowing its parameters from the file bytes.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Model<'a> {
    pub(crate) dtype: Dtype,
    pub(crate) task: Task,
    pub(crate) tensors: Vec<TensorDesc>,
    pub(crate) nodes: Vec<Node<'a>>,
    pub(crate) input: u16,
    pub(crate) output: u16,
    pub(crate) mean: heapless::Vec<f32, MAX_INPUT_CHANNELS>,
    pub(crate) std: heapless::Vec<f32, MAX_INPUT_CHANNELS>,
    /// Byte offset of each activation tensor in the arena.
    pub(crate) offsets: Vec<usize>,
    pub(crate) plan_bytes: usize,
    pub(crate) weight_bytes: usize,
    /// Folded biases (and packed weights where a SIMD kernel wants them) of every int8 conv
    /// and fc, made once by the loader (`ops::prepared`).
    pub(crate) prepared: Vec<PreparedI8>,
    /// Each int8 LeakyReLU's output for every input byte (`ops::leaky_relu::leaky_lut`), made
    /// once by the loader.
    pub(crate) leaky_luts: Vec<[i8; 256]>,
    /// The lookup tables of the int8 adds that have them (`ops::add_lut`: AVX-512 VBMI hosts),
    /// made once by the loader.
    pub(crate) add_luts: Vec<crate::ops::add_lut::AddLut>,
    /// Run the reference int8 conv/fc kernels instead of the prepared ones (a baseline for
    /// benchmarks; same results).
    pub(crate) reference_kernels: bool,
    /// Threads the int8 convs may split over (`threads` feature; 1 otherwise).
    pub(crate) threads: usize,
    /// Whether some int8 op splits over `threads` (set by [`Model::set_threads`]). If none does
    /// (small models: every conv under two tiles' worth of MACs), an inference leaves the helper
    /// team parked instead of waking it to spin for nothing.
    #[cfg_attr(not(feature = "threads"), allow(dead_code))]
    pub(crate) splits: bool,
}

impl<'a> Model<'a> {
    /// Parses and validates a model file; parameter data is borrowed from `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>, ModelError> {
        graph::parse(bytes)
    }

    /// Element type of the graph.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// What the output means.
    pub fn task(&self) -> Task {
        self.task
    }
    /// Bytes the caller's arena must have (includes 3 bytes of alignment slack for f32 models,
    /// so any `&mut [u8]` of this length works).
    pub fn arena_bytes(&self) -> usize {
        self.plan_bytes + if self.dtype == Dtype::F32 { 3 } else { 0 }
    }
    /// Total bytes of parameter tensors the graph uses (weights, biases, multipliers, shifts).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    /// Heap bytes the loader added for the fast int8 kernels (folded biases: 4 B per output
    /// channel of each conv/fc; with `std` on an AVX-512 VNNI CPU also the packed weights, and
    /// with VBMI the adds' lookup tables).
    pub fn prepared_bytes(&self) -> usize {
        self.prepared
            .iter()
            .map(PreparedI8::heap_bytes)
            .sum::<usize>()
            + self.add_luts.len() * crate::ops::add_lut::AddLut::BYTES
    }
    /// Runs int8 conv/fc on the reference kernels (`ops::conv2d::conv2d_i8`,
    /// `ops::fully_connected::fully_connected_i8`) instead of the fast path: the same results,
    /// for measuring the fast path against them in one process.
    pub fn set_reference_kernels(&mut self, on: bool) {
        self.reference_kernels = on;
    }
    /// Lets each int8 conv and add split its output over up to `n` threads: the caller and up
    /// to `n − 1` helpers of the process's team (`team`, one helper per further CPU), which
    /// spin while an inference holds them (`ops::prepared::conv2d_i8_prepared_threads`: the
    /// x86-64 and aarch64 SIMD kernels and the portable loop, convs large enough to pay for the
    /// split; `ops::prepared::add_i8_threads`). The results are the same bytes for every `n`;
    /// 0 counts as 1. Several threads running models at once share the helpers: each takes
    /// the free ones it may use, and one that finds none free runs alone.
    #[cfg(feature = "threads")]
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
        self.splits = self.nodes.iter().any(|node| match &node.kernel {
            Kernel::ConvI8(p, ..) => ops::prepared::conv_tasks(p, self.threads) > 1,
            Kernel::AddI8(..) => {
                ops::prepared::add_tasks(self.range(node.output).1, self.threads) > 1
            }
            _ => false,
        });
    }
    /// Threads the int8 convs may use ([`Model::set_threads`]; 1 without the `threads` feature).
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Id of the input tensor (what [`Node::inputs`] and [`Node::output`] refer to).
    pub fn input_id(&self) -> u16 {
        self.input
    }
    /// Id of the output tensor.
    pub fn output_id(&self) -> u16 {
        self.output
    }
    /// The int8 kernel each conv/fc runs on this machine, in op order (see
    /// [`PreparedI8::backend`]; `"reference"` everywhere after
    /// [`Model::set_reference_kernels`]).
    pub fn kernel_backends(&self) -> Vec<&'static str> {
        if self.reference_kernels {
            return self
                .nodes
                .iter()
                .filter(|n| matches!(n.kernel, Kernel::ConvI8(..) | Kernel::FcI8(..)))
                .map(|_| "reference")
                .collect();
        }
        self.nodes
            .iter()
            .filter_map(|n| match &n.kernel {
                Kernel::ConvI8(p, i, _) => Some(self.prepared[*i as usize].backend(p)),
                Kernel::FcI8(p, i, _) => {
                    Some(self.prepared[*i as usize].backend(&ops::prepared::fc_as_conv(p)))
                }
                _ => None,
            })
            .collect()
    }
    /// Input shape `[h, w, c]`.
    pub fn input_shape(&self) -> [usize; 3] {
        let t = &self.tensors[self.input as usize];
        [t.h, t.w, t.c]
    }
    /// Input quantisation and shape.
    pub fn input_desc(&self) -> TensorDesc {
        self.tensors[self.input as usize]
    }
    /// Output quantisation and shape.
    pub fn output_desc(&self) -> TensorDesc {
        self.tensors[self.output as usize]
    }
    /// Number of input values `h·w·c`.
    pub fn input_len(&self) -> usize {
        self.input_desc().len()
    }
    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.output_desc().len()
    }
    /// Per-channel preprocessing mean and std (on [0, 1] pixel values).
    pub fn normalisation(&self) -> (&[f32], &[f32]) {
        (&self.mean, &self.std)
    }
    /// The ops in execution order.
    pub fn nodes(&self) -> &[Node<'a>] {
        &self.nodes
    }
    /// All activation tensors, indexed by id.
    pub fn tensors(&self) -> &[TensorDesc] {
        &self.tensors
    }
    /// Arena byte offset of each activation tensor (relative to the aligned arena start).
    pub fn arena_offsets(&self) -> &[usize] {
        &self.offsets
    }
    /// Total multiply-accumulates of conv, depthwise conv and fc ops.
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.kind(),
                    OpKind::Conv2d | OpKind::DepthwiseConv2d | OpKind::FullyConnected
                )
            })
            .map(|n| n.macs)
            .sum()
    }

    fn range(&self, t: u16) -> (usize, usize) {
        (
            self.offsets[t as usize] / self.elem_size(),
            self.tensors[t as usize].len(),
        )
    }

    fn elem_size(&self) -> usize {
        match self.dtype {
            Dtype::Int8 => 1,
            Dtype::F32 => 4,
        }
    }

    fn check_arena(&self, arena: &[u8]) -> Result<(), RunError> {
        if arena.len() < self.arena_bytes() {
            return Err(RunError::ArenaTooSmall {
                need: self.arena_bytes(),
                got: arena.len(),
            });
        }
        Ok(())
    }

    fn arena_i8<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [i8], RunError> {
        if self.dtype != Dtype::Int8 {
            return Err(RunError::WrongDtype);
        }
        self.check_arena(arena)?;
        Ok(ops::bytes_as_i8_mut(&mut arena[..self.plan_bytes]))
    }

    fn arena_f32<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [f32], RunError> {
        if self.dtype != Dtype::F32 {
            return Err(RunError::WrongDtype);
        }
        self.check_arena(arena)?;
        let skip = arena.as_ptr().align_offset(core::mem::align_of::<f32>());
        let bytes = arena
            .get_mut(skip..skip + self.plan_bytes)
            .ok_or(RunError::Internal)?;
        // SAFETY: `bytes` starts f32-aligned (align_offset), its length is a multiple of 4
        // (the planner rounds to ALIGN), every bit pattern is a valid f32, and the exclusive
        // borrow is carried over.
        Ok(unsafe {
            core::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut f32, bytes.len() / 4)
        })
    }

    /// The input slot of an int8 model's arena, to fill in place (e.g. from a camera).
    pub fn input_slot_i8<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [i8], RunError> {
        let (o, n) = self.range(self.input);
        self.arena_i8(arena)?
            .get_mut(o..o + n)
            .ok_or(RunError::Internal)
    }

    /// The input slot of an f32 model's arena.
    pub fn input_slot_f32<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [f32], RunError> {
        let (o, n) = self.range(self.input);
        self.arena_f32(arena)?
            .get_mut(o..o + n)
            .ok_or(RunError::Internal)
    }

    /// Writes an already-normalised f32 input (`(pixel/255 − mean)/std`, HWC) into the arena,
    /// quantising it with the input scale and zero point for int8 models (round half away from
    /// zero, saturate) — the same values a host f32 model sees.
    pub fn load_input_f32(&self, input: &[f32], arena: &mut [u8]) -> Result<(), RunError> {
        self.expect_input(input.len())?;
        match self.dtype {
            Dtype::F32 => self.input_slot_f32(arena)?.copy_from_slice(input),
            Dtype::Int8 => {
                let d = self.input_desc();
                for (q, &x) in self.input_slot_i8(arena)?.iter_mut().zip(input) {
                    *q = quantize(x, d.scale, d.zp);
                }
            }
        }
        Ok(())
    }

    /// Normalises an RGB8 image (HWC, already at the model input size) with the model's
    /// mean/std and writes it into the arena's input slot (quantised for int8 models).
    pub fn preprocess_rgb8(&self, rgb: &[u8], arena: &mut [u8]) -> Result<(), RunError> {
        self.expect_input(rgb.len())?;
        let d = self.input_desc();
        // Pixel by pixel (HWC): channel k is normalised with mean[k] and std[k] (c of each,
        // checked at load).
        let mean = self.mean.get(..d.c).ok_or(RunError::Internal)?;
        let std = self.std.get(..d.c).ok_or(RunError::Internal)?;
        let norm = |p: u8, m: f32, s: f32| (p as f32 / 255.0 - m) / s;
        let pixels = rgb.chunks_exact(d.c);
        match self.dtype {
            Dtype::F32 => {
                let slot = self.input_slot_f32(arena)?;
                for (px, rgb_px) in slot.chunks_exact_mut(d.c).zip(pixels) {
                    for ((x, &p), (&m, &s)) in px.iter_mut().zip(rgb_px).zip(mean.iter().zip(std)) {
                        *x = norm(p, m, s);
                    }
                }
            }
            Dtype::Int8 => {
                let slot = self.input_slot_i8(arena)?;
                for (px, rgb_px) in slot.chunks_exact_mut(d.c).zip(pixels) {
                    for ((q, &p), (&m, &s)) in px.iter_mut().zip(rgb_px).zip(mean.iter().zip(std)) {
                        *q = quantize(norm(p, m, s), d.scale, d.zp);
                    }
                }
            }
        }
        Ok(())
    }

    fn expect_input(&self, got: usize) -> Result<(), RunError> {
        if got != self.input_len() {
            return Err(RunError::InputLen {
                expected: self.input_len(),
                got,
            });
        }
        Ok(())
    }

    fn expect_output(&self, got: usize) -> Result<(), RunError> {
        if got != self.output_len() {
            return Err(RunError::OutputLen {
                expected: self.output_len(),
                got,
            });
        }
        Ok(())
    }

    /// Runs an int8 model on a quantised input; returns the raw int8 output (a view into the
    /// arena), for bit-exact comparisons.
    pub fn run_int8_raw<'b>(
        &self,
        input_q: &[i8],
        arena: &'b mut [u8],
    ) -> Result<&'b [i8], RunError> {
        self.expect_input(input_q.len())?;
        self.input_slot_i8(arena)?.copy_from_slice(input_q);
        self.run_i8_in_arena(arena)
    }

    /// Runs an int8 model on a quantised input and dequantises the output into `out`.
    pub fn run_int8(
        &self,
        input_q: &[i8],
        arena: &mut [u8],
        out: &mut [f32],
    ) -> Result<(), RunError> {
        self.expect_output(out.len())?;
        let d = self.output_desc();
        let y = self.run_int8_raw(input_q, arena)?;
        dequantize(y, d, out);
        Ok(())
    }

    /// Runs an f32 model.
    pub fn run_f32(
        &self,
        input: &[f32],
        arena: &mut [u8],
        out: &mut [f32],
    ) -> Result<(), RunError> {
        self.expect_output(out.len())?;
        self.expect_input(input.len())?;
        self.input_slot_f32(arena)?.copy_from_slice(input);
        out.copy_from_slice(self.run_f32_in_arena(arena)?);
        Ok(())
    }

    /// Runs whichever dtype the model has on the input already in the arena (see
    /// [`Model::preprocess_rgb8`], [`Model::load_input_f32`]); writes the real-valued output.
    pub fn run(&self, arena: &mut [u8], out: &mut [f32]) -> Result<(), RunError> {
        self.expect_output(out.len())?;
        match self.dtype {
            Dtype::Int8 => {
                let d = self.output_desc();
                dequantize(self.run_i8_in_arena(arena)?, d, out);
            }
            Dtype::F32 => out.copy_from_slice(self.run_f32_in_arena(arena)?),
        }
        Ok(())
    }

    /// Dequantises an int8 model's raw output `y` (the view [`Model::run_i8_in_arena`] returns)
    /// into `out`: the values [`Model::run`] writes, read from the arena without running the
    /// graph again.
    pub fn dequantize_output(&self, y: &[i8], out: &mut [f32]) -> Result<(), RunError> {
        if self.dtype != Dtype::Int8 {
            return Err(RunError::WrongDtype);
        }
        self.expect_output(y.len())?;
        self.expect_output(out.len())?;
        dequantize(y, self.output_desc(), out);
        Ok(())
    }

    /// Runs an int8 model on the input already in the arena; returns the raw output.
    pub fn run_i8_in_arena<'b>(&self, arena: &'b mut [u8]) -> Result<&'b [i8], RunError> {
        self.run_i8_traced(arena, &mut |_, _| {})
    }

    /// [`Model::run_i8_in_arena`], calling `on_tensor(id, values)` with the input tensor (id
    /// [`Model::input_id`]) and then with each node's output tensor ([`Node::output`]) right
    /// after the node ran: the planner reuses arena memory, so that is the one moment each
    /// tensor is whole. For comparing every op with another engine
    /// (`exporter/tests/it/onnx_runtime.rs` does so with onnxruntime). Values are HWC.
    pub fn run_i8_traced<'b>(
        &self,
        arena: &'b mut [u8],
        on_tensor: &mut dyn FnMut(u16, &[i8]),
    ) -> Result<&'b [i8], RunError> {
        let a = self.arena_i8(arena)?;
        // With threads the inference holds the helper team (they spin while it runs), and
        // every conv large enough splits over it; a model with no such op leaves it parked.
        #[cfg(feature = "threads")]
        let team = crate::team::engage(if self.splits { self.threads } else { 1 });
        #[cfg(feature = "threads")]
        let team = team.as_ref();
        #[cfg(not(feature = "threads"))]
        let team = None;
        let (o, len) = self.range(self.input);
        on_tensor(self.input, a.get(o..o + len).ok_or(RunError::Internal)?);
        self.run_nodes_i8(a, team, on_tensor)?;
        let (o, len) = self.range(self.output);
        let a: &'b [i8] = a;
        a.get(o..o + len).ok_or(RunError::Internal)
    }

    /// Every node of an int8 graph, in order, in the arena `a`.
    fn run_nodes_i8(
        &self,
        a: &mut [i8],
        team: ops::prepared::Team,
        on_tensor: &mut dyn FnMut(u16, &[i8]),
    ) -> Result<(), RunError> {
        for n in &self.nodes {
            let (out, x0, x1) = self.views(a, n)?;
            let r = match &n.kernel {
                Kernel::ConvI8(p, ..) if self.reference_kernels => {
                    ops::conv2d::conv2d_i8(p, x0, out)
                }
                Kernel::ConvI8(p, i, _) => {
                    let prep = self.prepared.get(*i as usize).ok_or(RunError::Internal)?;
                    ops::prepared::conv2d_i8_prepared_threads(p, prep, x0, out, team, self.threads)
                }
                Kernel::DwConvI8(p, _) => ops::depthwise::depthwise_i8(p, x0, out),
                Kernel::AddI8(p, lut) => ops::prepared::add_i8_threads(
                    p,
                    match lut {
                        Some(i) => Some(self.add_luts.get(*i as usize).ok_or(RunError::Internal)?),
                        None => None,
                    },
                    x0,
                    x1.ok_or(RunError::Internal)?,
                    out,
                    team,
                    self.threads,
                ),
                Kernel::MaxPoolI8(w) => ops::maxpool::maxpool_i8(w, -128, 127, x0, out),
                Kernel::MeanI8(p) => ops::mean::mean_i8(p, x0, out),
                Kernel::FcI8(p, ..) if self.reference_kernels => {
                    ops::fully_connected::fully_connected_i8(p, x0, out)
                }
                Kernel::FcI8(p, i, _) => {
                    let prep = self.prepared.get(*i as usize).ok_or(RunError::Internal)?;
                    ops::prepared::fully_connected_i8_prepared(p, prep, x0, out)
                }
                Kernel::LeakyI8(_, _, i) => {
                    let lut = self.leaky_luts.get(*i as usize).ok_or(RunError::Internal)?;
                    ops::leaky_relu::leaky_relu_i8_lut(lut, x0, out)
                }
                Kernel::AvgPoolI8 {
                    win,
                    act_min,
                    act_max,
                } => ops::avgpool::avgpool_i8(win, *act_min, *act_max, x0, out),
                Kernel::SoftmaxI8(p, _) => ops::softmax::softmax_i8(p, x0, out),
                _ => return Err(RunError::Internal),
            };
            r.map_err(|error| RunError::Kernel {
                op: n.kind(),
                error,
            })?;
            let (o, len) = self.range(n.output);
            on_tensor(n.output, a.get(o..o + len).ok_or(RunError::Internal)?);
        }
        Ok(())
    }

    /// Runs an f32 model on the input already in the arena; returns the output view.
    // Never inlined: callers such as `run` would otherwise carry every f32 kernel inline, which
    // on the MCU (int8 only) bloats them and costs registers in their own loops.
    #[inline(never)]
    pub fn run_f32_in_arena<'b>(&self, arena: &'b mut [u8]) -> Result<&'b [f32], RunError> {
        let a = self.arena_f32(arena)?;
        for n in &self.nodes {
            let (out, x0, x1) = self.views(a, n)?;
            let r = match &n.kernel {
                Kernel::ConvF32(p) => ops::conv2d::conv2d_f32(p, x0, out),
                Kernel::DwConvF32(p) => ops::depthwise::depthwise_f32(p, x0, out),
                Kernel::AddF32 { relu } => {
                    ops::add::add_f32(x0, x1.ok_or(RunError::Internal)?, out, *relu)
                }
                Kernel::MaxPoolF32(w) => ops::maxpool::maxpool_f32(w, x0, out),
                Kernel::MeanF32 { hw, c } => ops::mean::mean_f32(*hw, *c, x0, out),
                Kernel::FcF32(p) => ops::fully_connected::fully_connected_f32(p, x0, out),
                Kernel::LeakyF32 { alpha } => ops::leaky_relu::leaky_relu_f32(*alpha, x0, out),
                Kernel::AvgPoolF32 { win, relu } => ops::avgpool::avgpool_f32(win, *relu, x0, out),
                Kernel::SoftmaxF32 { depth, beta } => {
                    ops::softmax::softmax_f32(*depth, *beta, x0, out)
                }
                _ => return Err(RunError::Internal),
            };
            r.map_err(|error| RunError::Kernel {
                op: n.kind(),
                error,
            })?;
        }
        let (o, len) = self.range(self.output);
        let a: &'b [f32] = a;
        a.get(o..o + len).ok_or(RunError::Internal)
    }

    /// Splits the arena into the node's output (mutable) and its inputs (shared). The planner
    /// guarantees they are disjoint; if not, this reports `Internal` rather than aliasing.
    #[allow(clippy::type_complexity)]
    fn views<'b, T>(
        &self,
        arena: &'b mut [T],
        n: &Node,
    ) -> Result<(&'b mut [T], &'b [T], Option<&'b [T]>), RunError> {
        let (oo, ol) = self.range(n.output);
        let end = oo.checked_add(ol).ok_or(RunError::Internal)?;
        if end > arena.len() {
            return Err(RunError::Internal);
        }
        let (lo, rest) = arena.split_at_mut(oo);
        let (out, hi) = rest.split_at_mut(ol);
        let (lo, hi): (&'b [T], &'b [T]) = (lo, hi);
        let pick = |t: u16| -> Result<&'b [T], RunError> {
            let (s, l) = self.range(t);
            if s + l <= oo {
                Ok(&lo[s..s + l])
            } else if s >= end {
                hi.get(s - end..s - end + l).ok_or(RunError::Internal)
            } else {
                Err(RunError::Internal)
            }
        };
        let x0 = pick(n.inputs[0])?;
        let x1 = if n.n_inputs > 1 {
            Some(pick(n.inputs[1])?)
        } else {
            None
        };
        Ok((out, x0, x1))
    }
}

/// `clamp(round_half_away(x / scale) + zp, −128, 127)`: TFLite's input quantisation.
pub fn quantize(x: f32, scale: f32, zp: i32) -> i8 {
    let q = libm::roundf(x / scale);
    // `as i32` saturates (and maps NaN to 0), so no overflow whatever x is.
    (q as i32).saturating_add(zp).clamp(-128, 127) as i8
}

fn dequantize(y: &[i8], d: TensorDesc, out: &mut [f32]) {
    for (o, &q) in out.iter_mut().zip(y) {
        *o = d.scale * (q as i32 - d.zp) as f32;
    }
}
