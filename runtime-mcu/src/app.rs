//! What the MCU computes, written once and compiled twice: into the firmware, and into the host
//! parity test (`tests/tests/mcu_parity.rs` includes this file with `#[path]`). Both run it on
//! the same fixture bytes with runtime-core, so any difference in the printed results is a
//! difference between the Cortex-M4F build (thumbv7em, hard-float FPU, LTO) and the x86 build —
//! exactly what the parity test is there to catch. Only `core`, `alloc` (in `encode_images`)
//! and runtime-core are used; output goes through [`Platform`].
//!
//! The program: landmark prediction on each landmark image, then one few-shot episode (backbone
//! features for support and query images, the linear classifier fitted on the device with the
//! paper's SGD recipe, nearest-centroid as a second head), then one MLPerf-Tiny ResNet-8
//! inference for the footprint report — all on builder-made random-weight models and RGB8
//! images. Then the same landmark and few-shot parts again with the models the training
//! pipeline exported (`fixtures/tiny/*-int8.safetensors`) on inputs runtime-cli's preprocessing
//! made from the fixture images on the host (`fixtures/mcu/tiny-inputs.bin`); their result tags
//! start with `tiny.`. Last, the landmark model's `.tflite` twin (`fixtures/tflite/landmark.tflite`,
//! what `export --tflite` writes for it) is converted on the device (`runtime_core::tflite`)
//! and runs the landmark images; its tags start with `tfl.`. A build with
//! `MCU_MODELS=mlperf-resnet8` runs MLPerf Tiny's own ResNet-8 instead (its `.tflite`, which
//! stays out of the repository, converted on the host: [`mlperf_part`]).

use runtime_core::heads::centroid::NearestCentroid;
use runtime_core::heads::landmarks::{self, N_LANDMARKS};
use runtime_core::heads::linear::{LinearClassifier, SgdRecipe};
use runtime_core::heads::HeadError;
use runtime_core::model::quantize;
use runtime_core::{Dtype, Model, ModelError, RunError};

/// Most classes in an episode.
pub const MAX_WAY: usize = 5;
/// Most feature dimensions of the backbone.
pub const MAX_DIM: usize = 64;
/// Most support images (`n_way · n_shot`) and most query images.
pub const MAX_IMAGES: usize = 25;
/// Seed of the on-device classifier fit (weights init and per-epoch permutations).
pub const FIT_SEED: u64 = 0x5EED_F00D;
/// Which parts of the program a build runs: all of them on the host and in the QEMU firmware; a
/// board with less flash leaves models out (`runtime-mcu/README.md` "Boards") and their parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts {
    /// Landmark prediction (the landmark model).
    pub landmark: bool,
    /// The few-shot episode (the backbone and the on-device heads).
    pub fewshot: bool,
    /// The MLPerf-Tiny ResNet-8 inference.
    pub resnet8: bool,
    /// Landmark prediction with the pipeline's exported int8 landmark model.
    pub tiny_landmark: bool,
    /// The few-shot episode with the pipeline's exported int8 backbone.
    pub tiny_fewshot: bool,
    /// Landmark prediction with `landmark.tflite`, converted on the device.
    pub tflite_landmark: bool,
    /// MLPerf Tiny's own ResNet-8 (`pretrainedResnet_quant.tflite`) on int8 inputs: only in a
    /// build that embeds it (`MCU_MODELS=mlperf-resnet8`), never in [`Parts::ALL`] (the file is
    /// not in the repository).
    pub mlperf_resnet8: bool,
}

impl Parts {
    /// The whole program.
    pub const ALL: Parts = Parts {
        landmark: true,
        fewshot: true,
        resnet8: true,
        tiny_landmark: true,
        tiny_fewshot: true,
        tflite_landmark: true,
        mlperf_resnet8: false,
    };
}

/// The embedded files (see `fixtures/mcu/README.md`). A model whose part is not in
/// [`Platform::PARTS`] is never read (the firmware passes an empty slice).
#[derive(Clone, Copy)]
pub struct Fixtures<'a> {
    pub landmark: &'a [u8],
    pub backbone: &'a [u8],
    pub resnet8: &'a [u8],
    /// RGB8 images (`images.bin`) for the three models above.
    pub images: &'a [u8],
    /// `fixtures/tiny/landmarks-int8.safetensors`, the pipeline's landmark model.
    pub tiny_landmark: &'a [u8],
    /// `fixtures/tiny/backbone-int8.safetensors`, the pipeline's backbone.
    pub tiny_backbone: &'a [u8],
    /// Normalised inputs (`tiny-inputs.bin`) for the two pipeline models.
    pub tiny_inputs: &'a [u8],
    /// `fixtures/tflite/landmark.tflite`, the landmark model as a TFLite flatbuffer, on the
    /// RGB8 images (`images`).
    pub tflite_landmark: &'a [u8],
    /// MLPerf Tiny's ResNet-8 `.tflite` converted by `runtime_core::tflite` (on the host: the
    /// conversion's heap peak is about twice the 96 KiB file, more than the board's RAM).
    pub mlperf_resnet8: &'a [u8],
    /// Its int8 input tensors (32×32×3 each, the model's own layout), one after the other.
    pub mlperf_inputs: &'a [u8],
}

/// Where results and measurements go: defmt on the MCU, strings on the host.
pub trait Platform {
    /// The parts of the program [`run`] runs (a constant, so a build without a part drops its
    /// code).
    const PARTS: Parts = Parts::ALL;
    /// Instructions executed so far (the host returns 0).
    fn now(&mut self) -> u64;
    /// Starts a new heap peak measurement.
    fn reset_heap_peak(&mut self);
    /// Peak heap bytes since the last reset.
    fn heap_peak(&mut self) -> u64;
    /// A result to compare bit for bit: a tag (`prefix` then `tag`, e.g. `""` + `lm_out` or
    /// `"tiny."` + `lm_out`), an index, integer values.
    fn result(&mut self, prefix: &str, tag: &str, idx: usize, values: &[u32]);
    /// The same for f32 values, which are printed as their bit patterns.
    fn result_f32(&mut self, prefix: &str, tag: &str, idx: usize, values: &[f32]);
    /// A measurement for the footprint report (`model.key value`); not compared.
    fn footprint(&mut self, model: &str, key: &str, value: u64);
}

/// Why the program could not run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AppError {
    /// The images file is malformed (the string says which field).
    Images(&'static str),
    /// A model failed to load.
    Model(&'static str, ModelError),
    /// A model is not an int8 model over the images' shape, or its input or output is too long
    /// for the program's fixed capacity.
    Shape(&'static str),
    /// The static arena is smaller than the model's plan.
    Arena {
        model: &'static str,
        need: usize,
        have: usize,
    },
    /// Inference failed.
    Run(&'static str, RunError),
    /// A few-shot head refused its inputs.
    Head(HeadError),
    /// A `.tflite` model could not be converted (`runtime_core::tflite`; the model's name).
    Tflite(&'static str),
}

const IMAGES_MAGIC: &[u8; 8] = b"RTIMG1\0\0";
const NORMALISED_MAGIC: &[u8; 8] = b"RTNRM1\0\0";
const IMAGES_HEADER: usize = 16;

/// What an image file holds per value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    /// RGB8 pixels, normalised and quantised on the device (`Model::preprocess_rgb8`).
    Rgb8,
    /// Model inputs already resized and normalised on the host (`(p/255 − mean)/std`, HWC),
    /// f32 little-endian; the device quantises them (`Model::load_input_f32`), as runtime-cli
    /// does with the inputs its preprocessing makes.
    Normalised,
}

/// One image of a file, as stored.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Rgb8(&'a [u8]),
    /// f32 little-endian values.
    Normalised(&'a [u8]),
}

/// `images.bin` / `tiny-inputs.bin`: 8-byte magic (`RTIMG1\0\0`: RGB8 pixels; `RTNRM1\0\0`:
/// normalised f32 LE values, see [`Encoding`]), then bytes `h, w, c, n_landmark, n_way, n_shot,
/// n_query, 0`, then HWC images: the landmark images, the support images (class-major: class 0
/// shots, class 1 shots, …), the query images (class-major). Labels are implied by the order,
/// so the file cannot disagree with itself.
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    pub encoding: Encoding,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub n_landmark: usize,
    pub n_way: usize,
    pub n_shot: usize,
    pub n_query: usize,
    pixels: &'a [u8],
}

impl<'a> Images<'a> {
    /// Parses and checks `images.bin` or `tiny-inputs.bin`.
    pub fn parse(b: &'a [u8]) -> Result<Self, AppError> {
        let encoding = match b.get(..8) {
            Some(m) if m == IMAGES_MAGIC => Encoding::Rgb8,
            Some(m) if m == NORMALISED_MAGIC => Encoding::Normalised,
            _ => return Err(AppError::Images("magic (expected RTIMG1 or RTNRM1)")),
        };
        if b.len() < IMAGES_HEADER {
            return Err(AppError::Images("header"));
        }
        let f = |i: usize| b[8 + i] as usize;
        let im = Images {
            encoding,
            h: f(0),
            w: f(1),
            c: f(2),
            n_landmark: f(3),
            n_way: f(4),
            n_shot: f(5),
            n_query: f(6),
            pixels: &b[IMAGES_HEADER..],
        };
        if im.h == 0 || im.w == 0 || im.c == 0 {
            return Err(AppError::Images("image shape"));
        }
        if im.n_way == 0 || im.n_way > MAX_WAY || im.n_shot == 0 || im.n_query == 0 {
            return Err(AppError::Images(
                "episode shape (n_way 1..=5, n_shot, n_query >= 1)",
            ));
        }
        if im.n_way * im.n_shot > MAX_IMAGES || im.n_way * im.n_query > MAX_IMAGES {
            return Err(AppError::Images(
                "too many support or query images (max 25)",
            ));
        }
        if im.pixels.len() != im.count() * im.image_len() {
            return Err(AppError::Images("pixel bytes do not match the header"));
        }
        Ok(im)
    }

    fn count(&self) -> usize {
        self.n_landmark + self.n_way * (self.n_shot + self.n_query)
    }

    /// `[h, w, c]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        [self.h, self.w, self.c]
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        let value_bytes = match self.encoding {
            Encoding::Rgb8 => 1,
            Encoding::Normalised => 4,
        };
        self.h * self.w * self.c * value_bytes
    }

    fn image(&self, k: usize) -> Input<'a> {
        let n = self.image_len();
        let b = &self.pixels[k * n..(k + 1) * n];
        match self.encoding {
            Encoding::Rgb8 => Input::Rgb8(b),
            Encoding::Normalised => Input::Normalised(b),
        }
    }

    /// Landmark image `i`.
    pub fn landmark(&self, i: usize) -> Input<'a> {
        self.image(i)
    }

    /// Support image `s` (class-major) and its label.
    pub fn support(&self, s: usize) -> (Input<'a>, u8) {
        (self.image(self.n_landmark + s), (s / self.n_shot) as u8)
    }

    /// Query image `q` (class-major) and its label.
    pub fn query(&self, q: usize) -> (Input<'a>, u8) {
        (
            self.image(self.n_landmark + self.n_way * self.n_shot + q),
            (q / self.n_query) as u8,
        )
    }
}

/// Writes `images.bin` (the inverse of [`Images::parse`]); `images` in file order.
#[allow(dead_code)] // used by the host-side fixture generator only
pub fn encode_images(
    shape: [u8; 3],
    n_landmark: u8,
    n_way: u8,
    n_shot: u8,
    n_query: u8,
    images: &[&[u8]],
) -> alloc::vec::Vec<u8> {
    encode(
        IMAGES_MAGIC,
        shape,
        n_landmark,
        n_way,
        n_shot,
        n_query,
        images,
    )
}

/// Writes `tiny-inputs.bin` (normalised f32 inputs, HWC, in file order; see [`Encoding`]).
#[allow(dead_code)] // used by the host-side fixture generator only
pub fn encode_normalised(
    shape: [u8; 3],
    n_landmark: u8,
    n_way: u8,
    n_shot: u8,
    n_query: u8,
    inputs: &[&[f32]],
) -> alloc::vec::Vec<u8> {
    let bytes: alloc::vec::Vec<alloc::vec::Vec<u8>> = inputs
        .iter()
        .map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let refs: alloc::vec::Vec<&[u8]> = bytes.iter().map(|v| v.as_slice()).collect();
    let (m, s) = (NORMALISED_MAGIC, shape);
    encode(m, s, n_landmark, n_way, n_shot, n_query, &refs)
}

#[allow(dead_code)] // used by the host-side fixture generator only
fn encode(
    magic: &[u8; 8],
    shape: [u8; 3],
    n_landmark: u8,
    n_way: u8,
    n_shot: u8,
    n_query: u8,
    images: &[&[u8]],
) -> alloc::vec::Vec<u8> {
    let mut v = alloc::vec::Vec::new();
    v.extend_from_slice(magic);
    v.extend_from_slice(&[
        shape[0], shape[1], shape[2], n_landmark, n_way, n_shot, n_query, 0,
    ]);
    for im in images {
        v.extend_from_slice(im);
    }
    v
}

/// Loads a model, checks it fits the arena and the images, and reports its static figures and
/// the cost of loading (heap peak, instructions).
fn load<'m, P: Platform>(
    p: &mut P,
    name: &'static str,
    bytes: &'m [u8],
    arena: &[u8],
    shape: [usize; 3],
) -> Result<Model<'m>, AppError> {
    p.reset_heap_peak();
    let t0 = p.now();
    let m = Model::parse(bytes).map_err(|e| AppError::Model(name, e))?;
    let t1 = p.now();
    p.footprint(name, "parse_insns", t1 - t0);
    let heap = p.heap_peak();
    p.footprint(name, "heap_peak_bytes", heap);
    p.footprint(name, "file_bytes", bytes.len() as u64);
    p.footprint(name, "weight_bytes", m.weight_bytes() as u64);
    p.footprint(name, "arena_bytes", m.arena_bytes() as u64);
    p.footprint(name, "macs", m.macs());
    if m.dtype() != Dtype::Int8 || m.input_shape() != shape {
        return Err(AppError::Shape(name));
    }
    if m.arena_bytes() > arena.len() {
        return Err(AppError::Arena {
            model: name,
            need: m.arena_bytes(),
            have: arena.len(),
        });
    }
    Ok(m)
}

/// Quantises a normalised f32 LE input straight into the arena's input slot, value by value
/// with runtime-core's `quantize`, which is what `Model::load_input_f32` (runtime-cli's path)
/// does: no decode buffer, so the input size is bounded by the arena alone.
fn load_normalised(m: &Model, b: &[u8], arena: &mut [u8]) -> Result<(), RunError> {
    let n = b.len() / 4;
    if n != m.input_len() || !b.len().is_multiple_of(4) {
        return Err(RunError::InputLen {
            expected: m.input_len(),
            got: n,
        });
    }
    let values = b
        .chunks_exact(4)
        .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]));
    match m.dtype() {
        Dtype::Int8 => {
            let d = m.input_desc();
            for (q, x) in m.input_slot_i8(arena)?.iter_mut().zip(values) {
                *q = quantize(x, d.scale, d.zp);
            }
        }
        Dtype::F32 => {
            for (v, x) in m.input_slot_f32(arena)?.iter_mut().zip(values) {
                *v = x;
            }
        }
    }
    Ok(())
}

/// Puts one input into the arena (RGB8: normalised and quantised; normalised: quantised) and
/// runs the int8 graph once; the output is read from the arena and dequantised into `out`.
/// The first call per model reports its instruction counts.
fn infer<P: Platform>(
    p: &mut P,
    name: &'static str,
    m: &Model,
    x: Input,
    arena: &mut [u8],
    out: &mut [f32],
    measure: bool,
) -> Result<(), AppError> {
    let t0 = p.now();
    match x {
        Input::Rgb8(rgb) => m.preprocess_rgb8(rgb, arena),
        Input::Normalised(b) => load_normalised(m, b, arena),
    }
    .map_err(|e| AppError::Run(name, e))?;
    let t1 = p.now();
    let y = m
        .run_i8_in_arena(arena)
        .map_err(|e| AppError::Run(name, e))?;
    let t2 = p.now();
    m.dequantize_output(y, out)
        .map_err(|e| AppError::Run(name, e))?;
    if measure {
        p.footprint(name, "preprocess_insns", t1 - t0);
        p.footprint(name, "infer_insns", t2 - t1);
    }
    Ok(())
}

/// Landmark prediction on each landmark image of `im` with model `name`; results tagged
/// `prefix` + `lm_out` (the model's outputs) and `lm_px` (decoded points, input pixels).
#[inline(never)]
fn landmark_part<P: Platform>(
    p: &mut P,
    name: &'static str,
    prefix: &str,
    bytes: &[u8],
    im: &Images,
    arena: &mut [u8],
) -> Result<(), AppError> {
    let m = load(p, name, bytes, arena, im.shape())?;
    if m.output_len() != 2 * N_LANDMARKS {
        return Err(AppError::Shape(name));
    }
    let mut out = [0.0f32; 2 * N_LANDMARKS];
    for i in 0..im.n_landmark {
        infer(p, name, &m, im.landmark(i), arena, &mut out, i == 0)?;
        p.result_f32(prefix, "lm_out", i, &out);
        let pts = landmarks::decode(&out, im.w, im.h).ok_or(AppError::Shape(name))?;
        let mut xy = [0.0f32; 2 * N_LANDMARKS];
        for (k, q) in pts.iter().enumerate() {
            (xy[2 * k], xy[2 * k + 1]) = (q.x, q.y);
        }
        p.result_f32(prefix, "lm_px", i, &xy);
    }
    Ok(())
}

/// The landmark model read from its `.tflite` on the device: converted once (the conversion
/// allocates; its heap peak and instructions go to the footprint report), then run as
/// [`landmark_part`] with tags `tfl.…`.
#[inline(never)]
fn tflite_landmark_part<P: Platform>(
    p: &mut P,
    tflite: &[u8],
    im: &Images,
    arena: &mut [u8],
) -> Result<(), AppError> {
    let name = "tflite-landmark";
    p.reset_heap_peak();
    let t0 = p.now();
    let model = runtime_core::tflite::to_model_bytes(tflite).map_err(|_| AppError::Tflite(name))?;
    let t1 = p.now();
    p.footprint(name, "convert_insns", t1 - t0);
    let heap = p.heap_peak();
    p.footprint(name, "convert_heap_peak_bytes", heap);
    p.footprint(name, "tflite_bytes", tflite.len() as u64);
    landmark_part(p, name, "tfl.", &model, im, arena)
}

/// The few-shot episode of `im` with backbone `name`: features of every support and query
/// image, the linear classifier fitted on the device (footprint `part.linear_fit_insns`) and
/// nearest-centroid; results tagged `prefix` + `fs_…`.
// Not inlined: `run` calls it twice, and two inlined copies could keep two sets of
// feature buffers in its frame.
#[inline(never)]
fn fewshot_part<P: Platform>(
    p: &mut P,
    name: &'static str,
    part: &'static str,
    prefix: &str,
    bytes: &[u8],
    im: &Images,
    arena: &mut [u8],
) -> Result<(), AppError> {
    let m = load(p, name, bytes, arena, im.shape())?;
    let dim = m.output_len();
    if dim > MAX_DIM {
        return Err(AppError::Shape(name));
    }
    let (n_sup, n_qry) = (im.n_way * im.n_shot, im.n_way * im.n_query);
    let mut sup = [0.0f32; MAX_IMAGES * MAX_DIM];
    let mut qry = [0.0f32; MAX_IMAGES * MAX_DIM];
    let mut sup_labels = [0u8; MAX_IMAGES];
    for s in 0..n_sup {
        let (x, label) = im.support(s);
        let f = &mut sup[s * dim..(s + 1) * dim];
        infer(p, name, &m, x, arena, f, s == 0)?;
        sup_labels[s] = label;
        p.result_f32(prefix, "fs_support_feat", s, f);
    }
    for q in 0..n_qry {
        let f = &mut qry[q * dim..(q + 1) * dim];
        infer(p, name, &m, im.query(q).0, arena, f, false)?;
        p.result_f32(prefix, "fs_query_feat", q, f);
    }
    let (sup, labels) = (&sup[..n_sup * dim], &sup_labels[..n_sup]);
    let t0 = p.now();
    let lin = LinearClassifier::<MAX_WAY, MAX_DIM>::fit(
        sup,
        labels,
        im.n_way,
        dim,
        &SgdRecipe::default(),
        FIT_SEED,
    )
    .map_err(AppError::Head)?;
    let t1 = p.now();
    let cen = NearestCentroid::<MAX_WAY, MAX_DIM>::fit(sup, labels, im.n_way, dim)
        .map_err(AppError::Head)?;
    p.footprint(part, "linear_fit_insns", t1 - t0);
    let (mut pred_lin, mut pred_cen) = ([0u32; MAX_IMAGES], [0u32; MAX_IMAGES]);
    let (mut ok_lin, mut ok_cen) = (0u32, 0u32);
    for q in 0..n_qry {
        let f = &qry[q * dim..(q + 1) * dim];
        let label = im.query(q).1 as u32;
        let mut s = [0.0f32; MAX_WAY];
        lin.logits(f, &mut s).map_err(AppError::Head)?;
        p.result_f32(prefix, "fs_linear_logits", q, &s[..im.n_way]);
        cen.scores(f, &mut s).map_err(AppError::Head)?;
        p.result_f32(prefix, "fs_centroid_cos", q, &s[..im.n_way]);
        pred_lin[q] = lin.predict(f).map_err(AppError::Head)? as u32;
        pred_cen[q] = cen.predict(f).map_err(AppError::Head)? as u32;
        ok_lin += (pred_lin[q] == label) as u32;
        ok_cen += (pred_cen[q] == label) as u32;
    }
    p.result(prefix, "fs_linear_pred", 0, &pred_lin[..n_qry]);
    p.result(prefix, "fs_centroid_pred", 0, &pred_cen[..n_qry]);
    p.result(
        prefix,
        "fs_correct_linear_centroid_of",
        0,
        &[ok_lin, ok_cen, n_qry as u32],
    );
    Ok(())
}

/// MLPerf Tiny's own ResNet-8 (converted from its `.tflite`) on each int8 input of `inputs`,
/// written into the arena's input slot as they are (the model's input is the pixel − 128, scale
/// 1): the int8 output (10 class scores, after its int8 SOFTMAX) as the result `mlperf_out` (its
/// bytes), and
/// the first inference's instructions in the footprint report.
#[inline(never)]
fn mlperf_part<P: Platform>(
    p: &mut P,
    model: &[u8],
    inputs: &[u8],
    arena: &mut [u8],
) -> Result<(), AppError> {
    let name = "mlperf-resnet8";
    let m = load(p, name, model, arena, [32, 32, 3])?;
    let (n_in, n_out) = (m.input_len(), m.output_len());
    let mut out = [0u32; 16];
    if n_out > out.len() || inputs.is_empty() || !inputs.len().is_multiple_of(n_in) {
        return Err(AppError::Shape(name));
    }
    for (i, x) in inputs.chunks_exact(n_in).enumerate() {
        let slot = m.input_slot_i8(arena).map_err(|e| AppError::Run(name, e))?;
        for (d, &b) in slot.iter_mut().zip(x) {
            *d = b as i8;
        }
        let t0 = p.now();
        let y = m
            .run_i8_in_arena(arena)
            .map_err(|e| AppError::Run(name, e))?;
        let t1 = p.now();
        if i == 0 {
            p.footprint(name, "infer_insns", t1 - t0);
        }
        for (o, &v) in out.iter_mut().zip(y) {
            *o = u32::from(v as u8);
        }
        p.result("", "mlperf_out", i, &out[..n_out]);
    }
    Ok(())
}

/// Runs the program (the parts in [`Platform::PARTS`]); `arena` is the one inference buffer all
/// models share.
pub fn run<P: Platform>(p: &mut P, fx: Fixtures, arena: &mut [u8]) -> Result<(), AppError> {
    // The builder-made random-weight models on RGB8 images.
    if P::PARTS.landmark || P::PARTS.fewshot || P::PARTS.resnet8 || P::PARTS.tflite_landmark {
        let im = Images::parse(fx.images)?;
        if P::PARTS.landmark {
            landmark_part(p, "landmark", "", fx.landmark, &im, arena)?;
        }
        if P::PARTS.fewshot {
            fewshot_part(p, "backbone", "fewshot", "", fx.backbone, &im, arena)?;
        }

        // MLPerf-Tiny ResNet-8: one inference, for the footprint report (and parity).
        if P::PARTS.resnet8 {
            let name = "resnet8";
            let m = load(p, name, fx.resnet8, arena, im.shape())?;
            let mut out = [0.0f32; 16];
            let n = m.output_len();
            if n > out.len() {
                return Err(AppError::Shape(name));
            }
            let (x, _) = im.query(0);
            infer(p, name, &m, x, arena, &mut out[..n], true)?;
            p.result_f32("", "resnet8_out", 0, &out[..n]);
        }

        // The landmark model from its `.tflite`, converted here (the converter's code and its
        // heap peak are this part's: a board without it carries neither).
        if P::PARTS.tflite_landmark {
            tflite_landmark_part(p, fx.tflite_landmark, &im, arena)?;
        }
    }

    // The training pipeline's exported int8 models on runtime-cli-preprocessed inputs.
    if P::PARTS.tiny_landmark || P::PARTS.tiny_fewshot {
        let tiny = Images::parse(fx.tiny_inputs)?;
        if P::PARTS.tiny_landmark {
            landmark_part(p, "tiny-landmark", "tiny.", fx.tiny_landmark, &tiny, arena)?;
        }
        if P::PARTS.tiny_fewshot {
            let (name, part) = ("tiny-backbone", "tiny-fewshot");
            fewshot_part(p, name, part, "tiny.", fx.tiny_backbone, &tiny, arena)?;
        }
    }

    if P::PARTS.mlperf_resnet8 {
        mlperf_part(p, fx.mlperf_resnet8, fx.mlperf_inputs, arena)?;
    }
    Ok(())
}
