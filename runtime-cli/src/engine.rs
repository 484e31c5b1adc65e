//! Loading a model file and running it on one image: the single place where the CLI turns
//! runtime-core errors into one-line messages that name the file.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use runtime_core::model::GRAPH_KEY;
use runtime_core::{Dtype, GraphError, Model, ModelError, Task};

use crate::preprocess;

/// Reads a model file's bytes (the [`Model`] borrows them, so the caller keeps them alive). A
/// `.tflite` file (int8; recognised by its `TFL3` identifier, whatever its name) is converted
/// into the runtime's own format on the way (`runtime_core::tflite`), so every command takes
/// both.
pub fn read_model(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read model file", path.display()))?;
    if runtime_core::tflite::is_tflite(&bytes) {
        return runtime_core::tflite::to_model_bytes(&bytes)
            .map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    Ok(bytes)
}

/// Parses and validates a model; errors read `FILE: graph line N: …` or
/// `FILE: malformed safetensors container`.
pub fn parse_model<'a>(bytes: &'a [u8], path: &Path) -> Result<Model<'a>> {
    let model = Model::parse(bytes).map_err(|e| match non_finite_tensor(bytes, &e) {
        Some(name) => anyhow!("{}: {e} (tensor `{name}`)", path.display()),
        None => anyhow!("{}: {e}", path.display()),
    })?;
    let [h, w, c] = model.input_shape();
    if c != 3 {
        bail!(
            "{}: the model takes {h}×{w}×{c} inputs; this CLI feeds RGB images (3 channels)",
            path.display()
        );
    }
    Ok(model)
}

/// For a model refused because an f32 parameter is NaN or infinite: the first tensor named on
/// the graph line at fault whose values are not all finite. runtime-core's errors are `Copy` and
/// carry the line alone (no_std, no allocation); the host CLI can afford to name the tensor.
fn non_finite_tensor(bytes: &[u8], e: &ModelError) -> Option<String> {
    let ModelError::Graph {
        line,
        kind: GraphError::NonFinite,
    } = *e
    else {
        return None;
    };
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let graph = header.metadata().as_ref()?.get(GRAPH_KEY)?.clone();
    let text = graph.lines().nth((line as usize).checked_sub(1)?)?;
    text.split_ascii_whitespace()
        .filter_map(|tok| tok.split_once('=').map(|(_, v)| v))
        .find(|name| {
            st.tensor(name).is_ok_and(|v| {
                v.dtype() == safetensors::Dtype::F32
                    && v.data()
                        .chunks_exact(4)
                        .any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            })
        })
        .map(str::to_string)
}

/// Name of a task as the graph text spells it.
pub fn task_name(t: Task) -> &'static str {
    match t {
        Task::Features => "features",
        Task::Landmarks => "landmarks",
    }
}

/// Name of a dtype as the graph text spells it.
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Int8 => "i8",
        Dtype::F32 => "f32",
    }
}

/// Refuses a model of the wrong task for `command`.
pub fn require_task(model: &Model, path: &Path, want: Task, command: &str) -> Result<()> {
    if model.task() != want {
        bail!(
            "{}: a `{}` model; `{command}` needs a `{}` model",
            path.display(),
            task_name(model.task()),
            task_name(want)
        );
    }
    Ok(())
}

/// A model plus its arena: one per thread (inference writes into the arena).
pub struct Runner<'m, 'a> {
    pub model: &'m Model<'a>,
    arena: Vec<u8>,
    out: Vec<f32>,
}

impl<'m, 'a> Runner<'m, 'a> {
    pub fn new(model: &'m Model<'a>) -> Self {
        Runner {
            model,
            arena: vec![0u8; model.arena_bytes()],
            out: vec![0.0; model.output_len()],
        }
    }

    /// Model input `(W, H)`.
    pub fn input_wh(&self) -> (usize, usize) {
        let [h, w, _] = self.model.input_shape();
        (w, h)
    }

    /// Runs the model on an already-normalised HWC input (quantised here for int8 models) and
    /// returns the real-valued output. Int8 or f32 is the model's own dtype.
    pub fn run_normalised(&mut self, x: &[f32]) -> Result<&[f32]> {
        self.model
            .load_input_f32(x, &mut self.arena)
            .map_err(|e| anyhow!("inference: {e}"))?;
        self.model
            .run(&mut self.arena, &mut self.out)
            .map_err(|e| anyhow!("inference: {e}"))?;
        Ok(&self.out)
    }

    /// Runs an int8 model on an already-normalised HWC input and returns the raw int8 output
    /// (a view into the arena).
    pub fn run_raw_i8(&mut self, x: &[f32]) -> Result<&[i8]> {
        self.model
            .load_input_f32(x, &mut self.arena)
            .map_err(|e| anyhow!("inference: {e}"))?;
        self.model
            .run_i8_in_arena(&mut self.arena)
            .map_err(|e| anyhow!("inference: {e}"))
    }

    /// The host's eval transform for a whole image: stretch to the input size, normalise.
    pub fn normalised_input(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = self.input_wh();
        let (mean, std) = self.model.normalisation();
        preprocess::normalise_hwc(&preprocess::resize_planar(img, w, h), w, h, mean, std)
    }

    /// Like [`Runner::normalised_input`] but without resizing: the image must already be the
    /// model's input size (`--exact-size`, e.g. to reproduce a device camera frame).
    pub fn exact_input(&self, img: &RgbImage, path: &Path) -> Result<Vec<f32>> {
        let (w, h) = self.input_wh();
        if (img.width() as usize, img.height() as usize) != (w, h) {
            bail!(
                "{}: image is {}×{}, the model takes {w}×{h} (without --exact-size it is resized)",
                path.display(),
                img.width(),
                img.height()
            );
        }
        let (mean, std) = self.model.normalisation();
        Ok(preprocess::normalise_hwc(
            &preprocess::exact_planar(img),
            w,
            h,
            mean,
            std,
        ))
    }

    /// Whole-image features (or logits) of an image.
    pub fn features(&mut self, img: &RgbImage) -> Result<Vec<f32>> {
        let x = self.normalised_input(img);
        Ok(self.run_normalised(&x)?.to_vec())
    }
}

/// Loads an image for the CLI: PNG or JPEG (sniffed), non-empty; errors name the file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img = data::load_rgb(path)?;
    preprocess::check_size(&img).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    Ok(img)
}
